"""The action runbooks on the real sandbox: connection remediation, disk pressure, deployment runs."""

import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import LogSort
from psycopg import sql

from flows.connection_remediation import RemediationFailed, connection_remediation
from flows.disk_pressure import disk_pressure
from sandbox.cluster import HOST
from tasks.alerts.evaluate import AlertInstance
from tasks.alerts.rules import default_rules
from tasks.core.limits import action_lock_name, exclusive
from tasks.emergency.disk_pressure import DiskPressureParams, RetentionPolicy
from tasks.emergency.remediation import RemediationParams, StaleSession, plan_terminations
from tasks.emergency.signal import signal_sessions
from tests.helpers import psql, wait_for

APP_ROLE, APP_PASSWORD = "alert_app", "alert-app-pw"


@pytest.fixture(scope="module")
def app_role(sandbox):
    with sandbox.connect("primary") as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(APP_ROLE), sql.Literal(APP_PASSWORD)))
    yield APP_ROLE
    with sandbox.connect("primary") as conn:  # leave the shared sandbox as found
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (APP_ROLE,))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(APP_ROLE)))


def app_conn(sandbox, application_name, superuser=False):
    if superuser:
        return psycopg.connect(sandbox.conninfo("primary"), autocommit=True, application_name=application_name)
    return psycopg.connect(host=HOST, port=sandbox.config.primary_port, user=APP_ROLE, password=APP_PASSWORD,
                           dbname="postgres", autocommit=True, application_name=application_name)


def alive(sandbox, pids):
    return {r[0] for r in psql(sandbox, "primary", "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)",
                                (list(pids),))}


@contextlib.contextmanager
def sessions(sandbox):
    """Stale and non-stale sessions of every kind the remediation must tell apart."""
    made = {}
    try:
        for name, app, su, stmts in [
            ("iit", "orders-api", False, ["BEGIN", "SELECT 1"]),
            ("leaky_idle", "leaky-app", False, ["SELECT 1"]),
            ("other_idle", "batch", False, ["SELECT 1"]),
            ("superuser_iit", "psql", True, ["BEGIN", "SELECT 1"]),
            ("protected_iit", "billing", False, ["BEGIN", "SELECT 1"]),
        ]:
            conn = app_conn(sandbox, app, superuser=su)
            for stmt in stmts:
                conn.execute(stmt)
            made[name] = conn
        yield {name: conn.info.backend_pid for name, conn in made.items()}
    finally:
        for conn in made.values():
            conn.close()


def test_remediation_terminates_only_stale_sessions(sandbox, cluster_block, app_role):
    params = RemediationParams(dry_run=False, idle_in_transaction_seconds=1, idle_applications=["leaky-app"],
                               idle_seconds=1, protected_applications=["billing"])
    with sessions(sandbox) as pids:
        time.sleep(1.3)
        dry = connection_remediation(cluster_block=cluster_block,
                                     params=params.model_copy(update={"dry_run": True}))
        assert {s.pid for s in dry.stale} == {pids["iit"], pids["leaky_idle"]}
        assert dry.terminated == [] and alive(sandbox, pids.values()) == set(pids.values())
        report = connection_remediation(cluster_block=cluster_block, params=params)
        assert sorted(report.terminated) == sorted([pids["iit"], pids["leaky_idle"]])
        time.sleep(0.2)
        # ground truth: exactly those two are gone
        assert alive(sandbox, pids.values()) == {pids["other_idle"], pids["superuser_iit"], pids["protected_iit"]}
    assert report.status == "acted" and "terminated 2 of 2" in report.summary
    assert "scaler: none configured" in report.summary
    # each termination is in the run's log as it happens, not only in the artifact (logs reach the API
    # asynchronously, through Prefect's log worker: wait for them rather than read once)
    def every_termination_logged():
        logged = run_log_messages()
        return all(any(f"stale-connections: terminated pid {pid} " in m for m in logged) for pid in report.terminated)

    wait_for(every_termination_logged, timeout=60, interval=0.5, what="the terminations in the run's log")


def run_log_messages() -> list[str]:
    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC)]


def test_termination_rechecks_pid_and_backend_start(sandbox, cluster_block, app_role):
    from blocks.postgres_cluster import PostgresCluster

    target = PostgresCluster.load(cluster_block).primary_target()
    params = RemediationParams(dry_run=False, idle_in_transaction_seconds=1)
    with sessions(sandbox) as pids:
        time.sleep(1.2)
        start = psql(sandbox, "primary", "SELECT backend_start FROM pg_stat_activity WHERE pid = %s",
                     (pids["iit"],))[0][0]
        impostor = StaleSession(pid=pids["iit"], backend_start=start - timedelta(seconds=5), usename=APP_ROLE,
                                application_name="orders-api", client_addr=None, datname="postgres",
                                state="idle in transaction", state_seconds=2, reason="idle in transaction")
        [result] = signal_sessions.fn(target, plan_terminations([impostor]), 0, params.wait_ms / 1000,
                                      target.user, True, purpose="connection-remediation")
        assert result.result == "gone"  # a reused pid is left alone
        assert pids["iit"] in alive(sandbox, [pids["iit"]])


def test_a_role_that_may_not_signal_fails_the_run_with_the_grant_to_add(sandbox, monitor_cluster_block, app_role):
    params = RemediationParams(dry_run=False, idle_in_transaction_seconds=1)
    with sessions(sandbox) as pids:
        time.sleep(1.2)
        with pytest.raises(RemediationFailed) as failed:
            connection_remediation(cluster_block=monitor_cluster_block, params=params)
        report = failed.value.report
        assert report.status == "failed" and pids["iit"] in report.failed and report.terminated == []
        assert "GRANT pg_signal_backend" in report.error and "FAILED to terminate" in report.summary
        assert {r.result for r in report.audit} == {"failed"}
        assert pids["iit"] in alive(sandbox, [pids["iit"]])  # nothing was done to it


def test_one_remediation_per_cluster_at_a_time(cluster_block, prefect_api):
    with exclusive(action_lock_name("test-sandbox", "scale_connections")) as mine:
        assert mine
        report = connection_remediation(cluster_block=cluster_block)
    assert report.status == "skipped" and "another connection remediation is running" in report.summary


def test_disk_pressure_recommends_and_drops_only_listed_slots(sandbox, cluster_block):
    for slot in ("abandoned_etl", "keep_me"):
        psql(sandbox, "primary", "SELECT pg_create_physical_replication_slot(%s, true) "
                                 "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
             (slot, slot))
    try:
        report = disk_pressure(cluster_block=cluster_block, params=DiskPressureParams(
            retention=RetentionPolicy(drop_inactive_slots=["abandoned_etl"])))
        text = " ".join(report.recommendations)
        assert "inactive slot abandoned_etl" in text and "the retention policy allows dropping it" in text
        assert "inactive slot keep_me" in text and "not in the retention policy" in text
        assert report.dropped_slots == []  # dry run: recommends only
        assert report.survey.dirs.wal_bytes > 0 and report.survey.relations is not None
        acted = disk_pressure(cluster_block=cluster_block, params=DiskPressureParams(
            dry_run=False, retention=RetentionPolicy(drop_inactive_slots=["abandoned_etl", "replica1"])))
        assert acted.dropped_slots == ["abandoned_etl"]  # replica1 is active: never dropped
        slots = {r[0] for r in psql(sandbox, "primary", "SELECT slot_name FROM pg_replication_slots")}
        assert slots >= {"keep_me", "replica1"} and "abandoned_etl" not in slots
    finally:
        psql(sandbox, "primary", "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                 "WHERE slot_name IN ('abandoned_etl', 'keep_me') AND NOT active")


def test_action_starts_a_deployment_run_when_a_deployment_exists(cluster_block, prefect_api):
    from flows.alert_monitor import alert_monitor  # noqa: F401 - the monitor's module imports the actions
    from tasks.alerts.actions import start_action

    deployment_id = disk_pressure.to_deployment(name="disk-pressure").apply()
    try:
        rule = next(r for r in default_rules().rules if r.name == "disk_usage")
        now = datetime.now(UTC)
        alert = AlertInstance(rule="disk_usage", status="firing", active_since=now, last_eval=now, fired_at=now,
                              value=91.0)
        first = start_action(rule, cluster_block, "test-sandbox", alert, None, None)
        again = start_action(rule, cluster_block, "test-sandbox", alert, None, None)
        assert first.started and first.note == "deployment disk-pressure/disk-pressure"
        assert again.run_id == first.run_id  # idempotent per episode
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(first.run_id)
        assert run.deployment_id == deployment_id and run.parameters["alert"]["value"] == 91.0
        assert run.parameters["cluster_block"] == cluster_block and "alert" in run.tags
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def test_remediation_then_asks_the_high_load_scaler(cluster_block):
    from blocks.scalers import NoScaler

    NoScaler().save("remediation-none", overwrite=True)
    report = connection_remediation(cluster_block=cluster_block, params=RemediationParams(dry_run=True),
                                    scaler_block="no-scaler/remediation-none")
    assert report.scaler.startswith("scaler: ") and "none configured" not in report.scaler
    broken = connection_remediation(cluster_block=cluster_block, params=RemediationParams(dry_run=True),
                                    scaler_block="no-scaler/does-not-exist")
    assert broken.scaler.startswith("scaler failed: ")


def test_high_cpu_can_start_the_high_load_response_with_its_alert(cluster_block, prefect_api):
    from tasks.alerts.actions import start_action
    from tasks.alerts.rules import AlertRule

    rule = AlertRule.model_validate({"name": "cpu_storm", "metric": "cpu_usage_percent", "threshold": 90,
                                     "for": "5m", "action": "high_load_response"})
    assert "high-load response flow" in " ".join(rule.checklist)
    now = datetime.now(UTC)
    alert = AlertInstance(rule="cpu_storm", status="firing", active_since=now, last_eval=now, fired_at=now,
                          value=97.0)
    started = start_action(rule, cluster_block, "test-sandbox", alert, None, None)
    assert started.started and started.note.startswith("no deployment high-load-response/high-load-response: "
                                                       "ran as a subflow, completed"), started.note
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(started.run_id)
    assert run.parameters["alert"]["rule"] == "cpu_storm" and run.parameters["scaler_block"] is None


def test_each_action_names_the_flow_its_deployment_runs():
    """The in-process fallback (a module path, bound late: tasks never import flows) is the flow of the deployment."""
    import yaml

    from tasks.alerts.actions import ACTION_DEPLOYMENTS, ACTION_FLOWS, _flow_for

    root = Path(__file__).resolve().parents[2]
    deployments = {d["name"]: d for d in yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]}
    for action, (flow_name, deployment) in ACTION_DEPLOYMENTS.items():
        module, func = ACTION_FLOWS[action].split(":")
        assert deployments[deployment]["entrypoint"] == f"{module.replace('.', '/')}.py:{func}"
        assert _flow_for(action).name == flow_name
