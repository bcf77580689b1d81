"""Per-cluster configuration of the alert monitor: each cluster's own host-metrics source and pool scaler.

One full disk must raise disk_usage on its own cluster only, and an alert on one cluster must never
resize another cluster's pool. Real parts: the sandbox, the Prefect API (blocks, deployments), the
monitor and remediation flows.
"""

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.client.orchestration import get_client

from blocks.metrics_source import MetricsSource
from flows.alert_monitor import alert_monitor
from flows.connection_remediation import connection_remediation
from tasks.alerts.evaluate import AlertInstance
from tasks.alerts.metrics import host_samples, unsampled_host
from tasks.alerts.monitor import MonitorParams
from tasks.alerts.rules import default_rules
from tasks.alerts.sources import BlockChoice, block_for
from tasks.alerts.state import load_states

DISK_RULES = "rules:\n  - {name: disk_usage, metric: disk_usage_percent, threshold: 0.01, for: 1m, " \
             "action: notify_team}\n"


def test_which_block_each_cluster_uses():
    assert block_for("orders", "{cluster}-host", None, 200) == BlockChoice(
        block="orders-host", optional=True, note="'orders-host' (from '{cluster}-host')")
    assert block_for("orders", "{cluster}-host", {"orders": "shared-host"}, 200).block == "shared-host"
    assert block_for("orders", "{cluster}-host", {"orders": ""}, 200).block is None  # mapped to none
    assert block_for("orders", "orders-host", None, 1).block == "orders-host"  # one cluster: the plain name
    many = block_for("orders", "orders-host", None, 2)
    assert many.block is None and "names one block for 2 clusters" in many.note
    assert block_for("orders", None, None, 1).block is None


@pytest.fixture(scope="module")
def fleet(sandbox, prefect_api):
    """src-a: a local host source; src-b: no source block; src-c: a source of kind none."""
    from sandbox.blocks import sandbox_cluster_block, sandbox_pool_scaler_block, save_sandbox_blocks

    save_sandbox_blocks(sandbox, "src-a")  # cluster block src-a + host-metrics-source/src-a-host
    sandbox_pool_scaler_block(sandbox).save("src-a", overwrite=True)  # pgbouncer-pool-scaler/src-a
    for name in ("src-b", "src-c"):
        sandbox_cluster_block(sandbox, name=name).save(name, overwrite=True)
    MetricsSource(kind="none").save("src-c-host", overwrite=True)
    return ["src-a", "src-b", "src-c"]


def host_series(report, block):
    (cluster,) = [c for c in report.clusters if c.block == block]
    return {s.rule: s for s in cluster.series if s.metric == "disk_usage_percent"}


def test_each_cluster_reads_its_own_host_metrics_source(fleet, tmp_path):
    path = tmp_path / "disk.yaml"
    path.write_text(DISK_RULES)
    params = MonitorParams(rules_file=str(path))
    report = alert_monitor(cluster_blocks=fleet, metrics_block="{cluster}-host", params=params,
                           evaluated_at=datetime.now(UTC))
    disk_a = host_series(report, "src-a")["disk_usage"]
    assert disk_a.state == "pending" and 0 < disk_a.value <= 100  # its own source, real figures
    for block, why in (("src-b", "no host-metrics-source block 'src-b-host'"), ("src-c", "is kind none")):
        series = host_series(report, block)
        assert series["disk_usage"].state == "nodata" and series["disk_usage"].unconfigured, series
        assert why in series["disk_usage"].summary
        assert "no_data" not in series  # not configured is not an alert
        assert not [k for k in load_states([block])[block].alerts if "disk" in k or "cpu" in k]
    assert "no source configured" in report.summary and report.status == "ok"

    # a plain name for a fleet of three is not "the same source for all": only the mapping counts
    mapped = alert_monitor(cluster_blocks=fleet[:2], metrics_block="src-a-host",
                           metrics_blocks={"src-b": "src-a-host"}, params=params, evaluated_at=datetime.now(UTC))
    unset = host_series(mapped, "src-a")["disk_usage"]
    assert unset.unconfigured and "names one block for 2 clusters" in unset.summary
    assert host_series(mapped, "src-b")["disk_usage"].value is not None


def test_kind_none_and_unsampled_clusters_are_not_configured(fleet):
    assert all(s.unconfigured and s.value is None for s in host_samples("src-c-host"))
    missing = host_samples(BlockChoice(block="src-b-host", optional=True))
    assert all(s.unconfigured for s in missing)
    explicit = host_samples("src-b-host")  # named explicitly: a missing block is a failure (its own alert)
    assert all(not s.unconfigured and "failed" in s.no_data for s in explicit)
    # a cluster past its deadline: CPU/disk are no data only when it has a source
    assert all(s.unconfigured for s in unsampled_host(BlockChoice(note="not configured"), "deadline"))
    assert all(not s.unconfigured and s.no_data == "deadline"
               for s in unsampled_host(BlockChoice(block="src-a-host"), "deadline"))


def connection_alert(labels=None, fired_at=None):
    now = fired_at or datetime.now(UTC)
    return AlertInstance(rule="connection_limit", labels=labels or {}, status="firing", active_since=now,
                         last_eval=now, fired_at=now, value=95.0)


def test_remediation_scales_only_the_alerting_clusters_pool(fleet, sandbox):
    from tasks.alerts.actions import start_action

    rule = next(r for r in default_rules().rules if r.name == "connection_limit")
    template = "pgbouncer-pool-scaler/{cluster}"
    # no deployment registered: the action runs as a subflow, dry run
    other = start_action(rule, "src-b", "src-b", connection_alert(), None, None,
                         block_for("src-b", template, None, 3, "scaler_block"))
    assert other.started and "scaler: none configured" in other.note, other.note
    own = connection_remediation(cluster_block="src-a", scaler_block=template)
    assert own.scaler.startswith("scaler: dry run: would raise"), own.scaler
    alone = connection_remediation(cluster_block="src-b", scaler_block=template)
    assert "none configured for this cluster (no block 'pgbouncer-pool-scaler/src-b')" in alone.scaler


def test_action_runs_carry_the_clusters_scaler_and_one_key_per_series(fleet):
    from tasks.alerts.actions import start_action

    deployment_id = connection_remediation.to_deployment(
        name="connection-remediation", parameters={"scaler_block": "pgbouncer-pool-scaler/sandbox"}).apply()
    try:
        rule = next(r for r in default_rules().rules if r.name == "connection_limit")
        template = "pgbouncer-pool-scaler/{cluster}"
        fired = datetime.now(UTC)
        b = start_action(rule, "src-b", "src-b", connection_alert({"db": "orders"}, fired), None, None,
                         block_for("src-b", template, None, 3, "scaler_block"))
        b_again = start_action(rule, "src-b", "src-b", connection_alert({"db": "orders"}, fired), None, None,
                               block_for("src-b", template, None, 3, "scaler_block"))
        b_other = start_action(rule, "src-b", "src-b", connection_alert({"db": "billing"}, fired), None, None,
                               block_for("src-b", template, None, 3, "scaler_block"))
        a = start_action(rule, "src-a", "src-a", connection_alert(None, fired), None, None,
                         block_for("src-a", template, None, 3, "scaler_block"))
        assert b.started and b_again.run_id == b.run_id  # a retried monitor run starts nothing new
        assert b_other.run_id != b.run_id  # same rule, same moment, other labels: its own episode
        with get_client(sync_client=True) as client:
            run_b, run_a = client.read_flow_run(b.run_id), client.read_flow_run(a.run_id)
        assert run_b.parameters["scaler_block"] is None  # not the deployment's sandbox pool
        assert run_a.parameters["scaler_block"] == "pgbouncer-pool-scaler/src-a"
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def test_trigger_waits_through_cancelling_to_a_final_state():
    from tools.trigger_runbook import TERMINAL, wait_for

    states = iter(["RUNNING", "CANCELLING", "CANCELLING", "CANCELLED"])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            body = json.dumps({"id": "r1", "state": {"type": next(states)}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = wait_for(f"http://127.0.0.1:{server.server_address[1]}/api", "r1", timeout=10, poll=0.01)
    finally:
        server.shutdown()
        server.server_close()
    assert "CANCELLING" not in TERMINAL and run["state"]["type"] == "CANCELLED"
