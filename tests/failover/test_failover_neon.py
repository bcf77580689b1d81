"""The failover runbook with the Neon backend, end to end: the stateful Neon API stand-in (tests/neon_server.py) is
the API and a sandbox PostgreSQL is the compute's SQL side (the cluster block's one node). Neon has no standby to
promote: a failover restarts the compute (POST .../restart), and the stand-in's restart restarts the sandbox
PostgreSQL (what Neon does to the compute). A dry run shows the exact request and sends nothing; another candidate
is refused; the real run restarts through the API, waits for the operations, verifies a new compute writes, keeps
every committed row, reports 0 bytes lost, and posts its thread to Slack."""

from __future__ import annotations

import tempfile

import pytest
from pydantic import SecretStr

from blocks.failover_adapters import EndpointControl, NodeControl
from blocks.neon import NeonEndpoint
from blocks.postgres_cluster import PostgresNode
from flows.failover import failover
from sandbox.blocks import sandbox_cluster_block
from tasks.failover.model import FailoverRefused
from tasks.failover.switch_neon import restart_loss
from tests.helpers import failover_request, own_sandbox, save_slack_block
from tests.neon_server import API_KEY

BLOCK = "fo-neon"
PROJECT, ENDPOINT = "proj-failover", "ep-failover-compute"
RESTART = f"neon POST /projects/{PROJECT}/endpoints/{ENDPOINT}/restart"


box = own_sandbox("pgrb-fo-neon-")


@pytest.fixture(scope="module")
def compute(box, neon, prefect_api):
    """A one-node cluster block (the compute: the sandbox's primary), its NeonEndpoint, NodeControl and endpoint."""
    block = sandbox_cluster_block(box, name=BLOCK)
    node = PostgresNode(name="compute", host="127.0.0.1", port=box.config.primary_port)
    block.model_copy(update={"nodes": [node], "primary_node": "compute", "endpoint": None}).save(BLOCK, overwrite=True)
    neon.add_endpoint(PROJECT, ENDPOINT)
    NeonEndpoint(api_key=SecretStr(API_KEY), project_id=PROJECT, endpoint_id=ENDPOINT, base_url=neon.url,
                 poll_seconds=0.01, operation_timeout_seconds=60).save(BLOCK, overwrite=True)
    NodeControl(kind="neon", neon_block=BLOCK).save(BLOCK, overwrite=True)
    EndpointControl(kind="none").save(BLOCK, overwrite=True)
    return "compute"


@pytest.fixture(scope="module")
def journal_dir():
    return tempfile.mkdtemp(prefix="pgrb-journal-neon-")


def restarts(neon) -> list[dict]:
    return [r for r in neon.requests if r["method"] == "POST" and r["path"].endswith(f"{ENDPOINT}/restart")]


def test_dry_run_plans_a_restart_and_sends_nothing(compute, neon, journal_dir):
    report = failover(failover_request(BLOCK, journal_dir, mode="failover", dry_run=True))
    assert report.status == "dry_run" and report.plan.candidate == report.plan.old_primary == "compute"
    step = next(s for s in report.plan.steps if s.step == "neon-restart")
    assert f"restart the compute {ENDPOINT} (Neon has no standby to promote): {RESTART}" in step.why
    assert any(w.startswith("Neon has no standby to promote") for w in report.plan.warnings)
    assert not {"fence", "promote", "lsn-gate", "checkpoint", "follow-new-primary"} & {
        s.step for s in report.plan.steps}
    assert not restarts(neon)


def test_another_candidate_is_refused(compute, neon, journal_dir):
    with pytest.raises(FailoverRefused, match="Neon has no standby to promote"):
        failover(failover_request(BLOCK, journal_dir, mode="failover", candidate="replica"))
    assert not restarts(neon)


def test_failover_restarts_the_compute(box, compute, neon, journal_dir, fake_slack, caplog):
    with box.connect("primary") as conn:
        conn.execute("CREATE TABLE public.neon_writes (n int PRIMARY KEY)")
        for n in range(100):
            conn.execute("INSERT INTO public.neon_writes VALUES (%s)", (n,))
        before = conn.execute("SELECT pg_catalog.pg_postmaster_start_time()").fetchone()[0]

    def neon_acts() -> None:  # what Neon does on a restart: the compute stops and a new one starts
        box.stop_node("primary", "fast")
        box.start_node("primary")

    neon.on_restart = neon_acts
    neon.inject = [423]  # another operation in progress on the project: retried
    slack = save_slack_block(fake_slack, "fo-neon-slack", "xoxb-neon-failover")
    try:
        report = failover(failover_request(BLOCK, journal_dir, mode="failover", slack_block=slack))
    finally:
        neon.on_restart = None
    assert report.status == "completed" and report.new_primary == "compute", report.summary
    assert len(restarts(neon)) == 1
    done = {s.step: s for s in report.steps if s.status == "done"}
    assert RESTART in done["neon-restart"].detail and "2 operation(s) finished" in done["neon-restart"].detail
    assert {"verify-promotion", "probe-application", "update-cluster-block"} <= set(done)
    assert report.data_loss.gap_bytes == 0 and report.data_loss.sentence.startswith("0 bytes lost")
    assert "restarted in place (Neon has no standby to promote)" in report.summary
    with box.connect("primary") as conn:
        assert conn.execute("SELECT count(*) FROM public.neon_writes").fetchone()[0] == 100
        assert conn.execute("SELECT pg_catalog.pg_postmaster_start_time()").fetchone()[0] > before
    assert fake_slack.calls(token="xoxb-neon-failover")
    assert API_KEY not in caplog.text and API_KEY not in report.model_dump_json()


def test_data_loss_compares_the_wal_positions():
    """The restart's data-loss fields: a new compute behind the old one's WAL position is a WARNING with the gap."""
    assert restart_loss("0/3000148", "0/3000148")["gap_bytes"] == 0
    behind = restart_loss("0/3000148", "0/3000000")
    assert behind["gap_bytes"] == 0x148 and behind["sentence"].startswith("WARNING")
    assert restart_loss(None, "0/3000000")["gap_bytes"] is None
