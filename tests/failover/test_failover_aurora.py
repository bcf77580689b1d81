"""The failover runbook with the Aurora backend, end to end: moto's real HTTP server is the RDS API and a sandbox
PostgreSQL is the cluster's SQL side (node names = instance identifiers). A stand-in for Aurora's own work runs
beside it: once DescribeDBClusters shows the target as the writer, it stops the old writer and promotes the target
(what Aurora does to its instances). Phase 1 refuses on Aurora's view and warns on promotion tiers; a dry run
shows the exact FailoverDBCluster request and sends nothing; the switchover loses no acknowledged write."""

from __future__ import annotations

import tempfile
import threading
import time

import pytest

from blocks.failover_adapters import EndpointControl, NodeControl
from flows.failover import failover
from sandbox.blocks import sandbox_cluster_block
from sandbox.cluster import Sandbox
from tasks.failover.model import FailoverRefused
from tests.aws_stand_in import SECRET_KEY, MotoStandIn
from tests.helpers import failover_request, own_sandbox

BLOCK = "fo-aurora"


box = own_sandbox("pgrb-fo-aurora-")


@pytest.fixture(scope="module")
def cluster_id(moto, box, prefect_api):
    cid = moto.seed_cluster(writer="primary", readers={"replica": 2})
    sandbox_cluster_block(box, name=BLOCK).save(BLOCK, overwrite=True)
    # the writer endpoint: the sandbox's pgbouncer stands in for Aurora's CNAME (repointed when Aurora "acts")
    moto.aurora_block(cid, failover_timeout_seconds=30, writer_host="127.0.0.1",
                      writer_port=box.config.pgbouncer_port, writer_is_pooler=True).save(BLOCK, overwrite=True)
    NodeControl(kind="aurora", aurora_block=BLOCK).save(BLOCK, overwrite=True)
    EndpointControl(kind="none").save(BLOCK, overwrite=True)
    return cid


@pytest.fixture(scope="module")
def journal_dir():
    return tempfile.mkdtemp(prefix="pgrb-journal-aurora-")


def writer(moto: MotoStandIn, cid: str) -> str:
    members = moto.client("rds").describe_db_clusters(DBClusterIdentifier=cid)["DBClusters"][0]["DBClusterMembers"]
    return next(m["DBInstanceIdentifier"] for m in members if m["IsClusterWriter"])


class AuroraActs(threading.Thread):
    """What Aurora does to its instances once the API says `target` is the writer: the old writer stops, the
    target is promoted (here: the sandbox's nodes)."""

    def __init__(self, moto: MotoStandIn, cid: str, box: Sandbox, old: str, target: str):
        super().__init__(daemon=True)
        self.moto, self.cid, self.box, self.old, self.target = moto, cid, box, old, target
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            if writer(self.moto, self.cid) == self.target:
                self.box.stop_node(self.old, "fast")
                with self.box.connect(self.target) as conn:
                    conn.execute("SELECT pg_catalog.pg_promote(true, 30)")
                self.box.write_pgbouncer_ini(self.box.node_port(self.target))  # the writer endpoint's CNAME moves
                with self.box.connect("pgbouncer", dbname="pgbouncer", autocommit=True,
                                      prepare_threshold=None) as admin:
                    admin.execute("RELOAD")
                return
            time.sleep(0.02)


def test_dry_run_shows_the_request_and_sends_nothing(box, moto, cluster_id, journal_dir):
    report = failover(failover_request(BLOCK, journal_dir, mode="switchover", candidate="replica", dry_run=True))
    assert report.status == "dry_run" and writer(moto, cluster_id) == "primary"
    step = next(s for s in report.plan.steps if s.step == "aurora-failover")
    assert (f'rds FailoverDBCluster {{"DBClusterIdentifier": "{cluster_id}", "TargetDBInstanceIdentifier": '
            '"replica"}') in step.why
    assert not {"fence", "promote", "lsn-gate", "checkpoint"} & {s.step for s in report.plan.steps}
    assert any("promotion tier 2" in w for w in report.plan.warnings)


def test_refused_when_aurora_disagrees(box, moto, cluster_id, journal_dir):
    """SQL says 'primary' writes, Aurora's writer is already 'replica' (changed behind our back): phase 1 refuses,
    naming both views; nothing is sent and no node is touched."""
    rds = moto.client("rds")
    rds.failover_db_cluster(DBClusterIdentifier=cluster_id, TargetDBInstanceIdentifier="replica")
    try:
        with pytest.raises(FailoverRefused, match="Aurora's writer is replica, the plan's old primary is primary"):
            failover(failover_request(BLOCK, journal_dir, mode="switchover", candidate="replica"))
    finally:
        rds.failover_db_cluster(DBClusterIdentifier=cluster_id, TargetDBInstanceIdentifier="primary")
    assert writer(moto, cluster_id) == "primary" and box.node_running("primary")


def test_switchover_through_aurora(box, moto, cluster_id, journal_dir, caplog):
    with box.connect("primary") as conn:
        conn.execute("CREATE TABLE public.aurora_writes (n int PRIMARY KEY)")
        for n in range(100):
            conn.execute("INSERT INTO public.aurora_writes VALUES (%s)", (n,))
    box.wait_streaming("primary")
    acts = AuroraActs(moto, cluster_id, box, "primary", "replica")
    acts.start()
    try:
        report = failover(failover_request(BLOCK, journal_dir, mode="switchover", candidate="replica"))
    finally:
        acts.stop_event.set()
        acts.join(timeout=30)
    assert report.status == "completed" and report.new_primary == "replica", report.summary
    assert writer(moto, cluster_id) == "replica"
    done = {s.step: s for s in report.steps if s.status == "done"}
    assert "rds FailoverDBCluster" in done["aurora-failover"].detail
    endpoint = f"through writer endpoint (127.0.0.1:{box.config.pgbouncer_port}) reached it out of recovery"
    assert endpoint in done["aurora-failover"].detail
    assert "verify-promotion" in done and "await-old-demoted" in done
    assert report.followers == {"primary": "streaming"}
    # the 25006 window as far as a server can see it: both measured moments, and the client's DNS cache named
    assert "a fresh lookup of the writer endpoint reached the new writer" in report.summary
    assert "the old writer refused writes" in report.summary and "SQLSTATE 25006" in report.summary
    with box.connect("replica") as conn:
        assert conn.execute("SELECT count(*) FROM public.aurora_writes").fetchone()[0] == 100
    assert SECRET_KEY not in caplog.text and SECRET_KEY not in report.model_dump_json()
