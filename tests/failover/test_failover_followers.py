"""A three-node cluster: after the promotion the other standby follows the new primary (repmgr's `standby
follow`), and one that cannot is a warning with its action, not a failed failover.

Real parts: a sandbox of its own plus a second standby (pg_basebackup from the primary, its own slot), the real
Prefect API, pgbouncer as the endpoint.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from blocks.failover_adapters import NodeControl
from blocks.postgres_cluster import PostgresCluster, PostgresNode
from flows.failover import failover
from flows.rejoin import rejoin
from sandbox.blocks import sandbox_cluster_block, sandbox_endpoint_block, sandbox_node_control_block
from sandbox.cluster import HOST, SUPERUSER, Sandbox, free_port
from tasks.failover.followers import repointed_conninfo
from tasks.failover.model import FailoverRequest, RejoinRequest
from tests.helpers import wait_for

pytestmark = pytest.mark.versioned  # failover, rejoin and followers on 14 and 18 too

BLOCK = "fo-three"
THIRD = "replica2"


def _start_third_standby(box: Sandbox, port: int) -> Path:
    """A second standby of the primary: base backup with its own slot, its own port, started."""
    data = box.base / THIRD
    box.run_as_server_user([box.pg("pg_basebackup"), "-h", HOST, "-p", str(box.config.primary_port),
                            "-U", SUPERUSER, "-D", str(data), "-X", "stream", "-C", "-S", THIRD, "-c", "fast"])
    box._write(data / "node.conf", f"port = {port}\ncluster_name = 'sandbox-{THIRD}'\n")
    auto = data / "postgresql.auto.conf"
    kept = [ln for ln in auto.read_text().splitlines() if not ln.startswith(("primary_conninfo", "primary_slot"))]
    conninfo = (f"host={HOST} port={box.config.primary_port} user={SUPERUSER} passfile={box.passfile} "
                f"application_name={THIRD}")
    box._write(auto, "\n".join([*kept, f"primary_conninfo = '{conninfo}'", f"primary_slot_name = '{THIRD}'"]) + "\n")
    box._write(data / "standby.signal", "")
    _pg_ctl(box, data, "start")
    return data


def _pg_ctl(box: Sandbox, data: Path, action: str) -> None:
    args = [box.pg("pg_ctl"), action, "-w", "-t", "60", "-D", str(data)]
    if action == "start":
        args += ["-l", str(data / "server.log")]
    else:
        args += ["-m", "fast"]
    box.run_as_server_user(args, check=action == "start")


@pytest.fixture(scope="module")
def three(prefect_api):
    box = Sandbox.ephemeral("pgrb-three-")
    box.start()
    port = free_port()
    data = _start_third_standby(box, port)
    cluster = sandbox_cluster_block(box, name=BLOCK)
    cluster.nodes.append(PostgresNode(name=THIRD, host=HOST, port=port))
    cluster.save(BLOCK, overwrite=True)
    control = sandbox_node_control_block(box)
    NodeControl(**{**control.model_dump(), "data_dirs": {**control.data_dirs, THIRD: str(data)}}).save(
        BLOCK, overwrite=True)
    sandbox_endpoint_block(box).save(BLOCK, overwrite=True)
    try:
        yield box, port, data
    finally:
        _pg_ctl(box, data, "stop")
        box.destroy()


def _request(**kw) -> FailoverRequest:
    return FailoverRequest(**{"cluster_block": BLOCK, "node_control_block": BLOCK, "endpoint_block": BLOCK,
                              "journal_dir": tempfile.mkdtemp(prefix="pgrb-three-journal-"),
                              "follow_timeout_seconds": 20, "confirm_cluster": BLOCK, **kw})


def _at(box: Sandbox, node_port: int) -> str:
    """The sandbox superuser's connection string, for a node the sandbox does not name (the third one)."""
    return psycopg.conninfo.make_conninfo(box.conninfo("primary"), port=node_port)


def test_the_other_standby_follows_the_new_primary(three):
    box, port, _ = three
    plan = failover(_request(candidate="replica", dry_run=True)).plan
    assert [(s.step, s.node) for s in plan.steps if s.phase == 3][2:4] == [
        ("update-cluster-block", "cluster"), ("follow-new-primary", THIRD)]
    report = failover(_request(candidate="replica"))
    assert report.status == "completed", report.summary
    assert report.followers == {THIRD: "following"} and "WARNING" not in report.summary
    step = next(s for s in report.steps if s.step == "follow-new-primary" and s.status == "done")
    assert f"slot {THIRD} created on replica" in step.detail and "password" not in step.detail
    assert _receiver(box, port) == ("streaming", box.config.replica_port)
    with box.connect("replica") as conn:  # ground truth on the new primary: the follower and its slot
        assert conn.execute("SELECT state FROM pg_stat_replication WHERE application_name = %s",
                            (THIRD,)).fetchone() == ("streaming",)
        assert conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (THIRD,)).fetchone() == (
            True,)
        conn.execute("CREATE TABLE after_switch AS SELECT 42 AS answer")
    third = _at(box, port)

    def replicated():
        with psycopg.connect(third, autocommit=True) as conn:
            return conn.execute("SELECT to_regclass('after_switch') IS NOT NULL").fetchone()[0]
    wait_for(replicated, timeout=30, what="a write on the new primary replayed on the follower")


def test_a_standby_that_cannot_follow_is_a_warning_not_a_failed_failover(three):
    box, port, data = three
    assert rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK)).status == "completed"
    _pg_ctl(box, data, "stop")  # the third node is down when the primary moves back
    try:
        report = failover(_request(candidate="primary"))
        assert report.status == "completed", report.summary
        assert report.followers == {THIRD: "failed"}
        assert f"WARNING: standby {THIRD} does not follow" in report.summary
        step = next(s for s in report.steps if s.step == "follow-new-primary" and s.status == "done")
        assert "could not be repointed" in step.detail and "rejoin" in step.detail
        assert PostgresCluster.load(BLOCK).primary_node == "primary"
    finally:
        _pg_ctl(box, data, "start")


def test_the_repointed_conninfo_keeps_every_option_but_the_address():
    old = "host=10.0.0.1 hostaddr=10.0.0.1 port=5432 user=rep passfile=/x sslmode=verify-full application_name=n3"
    new = psycopg.conninfo.conninfo_to_dict(repointed_conninfo(old, "10.0.0.2", 6432))
    assert new == {"host": "10.0.0.2", "port": "6432", "user": "rep", "passfile": "/x", "sslmode": "verify-full",
                   "application_name": "n3"}
    quoted = repointed_conninfo("host=a port=1 password='it\\'s secret' user=rep", "b", 2)
    assert psycopg.conninfo.conninfo_to_dict(quoted)["password"] == "it's secret"


def test_after_a_crash_a_standby_ahead_of_the_candidate_is_left_alone_for_a_rejoin(three):
    """Crash failover to the standby that received less: the other one replayed WAL the new primary never had.
    It is not repointed (it could not follow); the rejoin it is told to run (pg_rewind) brings it back."""
    from tasks.failover.followers import follow_new_primary

    box, port, _ = three
    cluster = PostgresCluster.load(BLOCK)
    assert rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK, node="replica")).status == "completed"
    assert follow_new_primary.fn(cluster.target(THIRD), cluster.target("primary"), 30).status == "following"
    with box.connect("replica") as conn:  # the candidate stops receiving: it will be behind
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_reload_conf()")
    wait_for(lambda: _receiver(box, box.config.replica_port) is None, timeout=30, what="candidate receiver stopped")
    with box.connect("primary") as conn:
        conn.execute("CREATE TABLE only_on_the_third AS SELECT 1 AS x")
        ahead = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    wait_for(lambda: _replayed_past(box, port, ahead), timeout=30, what="the third standby replayed the write")
    box.stop_node("primary", mode="immediate")

    report = failover(_request(mode="failover", candidate="replica"))
    assert report.status == "completed", report.summary
    assert report.followers == {THIRD: "failed"}
    step = next(s for s in report.steps if s.step == "follow-new-primary" and s.status == "done")
    assert "cannot follow" in step.detail and f"rejoin flow with node {THIRD}" in step.detail
    assert _receiver(box, port) != ("streaming", box.config.replica_port)  # left as it was

    back = rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK, node=THIRD))
    assert back.status == "completed" and back.rewind_needed, back.summary
    wait_for(lambda: _receiver(box, port) == ("streaming", box.config.replica_port), timeout=30,
             what="the rewound third standby streams from the new primary")


def _receiver(box: Sandbox, node_port: int):
    with psycopg.connect(_at(box, node_port), autocommit=True) as conn:
        return conn.execute("SELECT status, sender_port FROM pg_stat_wal_receiver").fetchone()


def _replayed_past(box: Sandbox, node_port: int, lsn: str) -> bool:
    with psycopg.connect(_at(box, node_port), autocommit=True) as conn:
        return conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]


def test_the_health_check_knows_a_cascading_standby(three):
    """The third node streams from the other standby (cascading): the health check says so, and does not count
    it as missing from the primary's pg_stat_replication."""
    from flows.health_check import health_check
    from tasks.core.replication import ReceiverRow, upstream_of
    from tasks.health.report import upstream_check

    box, port, _ = three
    assert rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK, node="primary")).status == "completed"
    with box.connect("primary") as conn:  # the standby "primary" serves the third one a slot of its own
        if not conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (THIRD,)).fetchone():
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (THIRD,))
    with psycopg.connect(_at(box, port), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(psycopg.sql.Literal(
            f"host={HOST} port={box.config.primary_port} user={SUPERUSER} passfile={box.passfile} "
            f"application_name={THIRD}")))
        conn.execute("SELECT pg_reload_conf()")
    wait_for(lambda: _receiver(box, port) == ("streaming", box.config.primary_port), timeout=30,
             what="the third standby cascades from the standby 'primary'")

    report = health_check(cluster_block=BLOCK)
    assert report.primary == "replica"
    upstream = [c for c in report.checks if c.name == "upstream"]
    assert [(c.node, c.status) for c in upstream] == [(THIRD, "ok")] and "cascading" in upstream[0].summary
    assert not [c for c in report.checks if "standby(s) connected" in c.summary], report.summary

    # the monitor reads every standby too: a cascading standby is found from its own receiver (declared or not)
    # and measured on its upstream standby, never a false no-data
    from tasks.alerts.metrics import database_samples

    cluster = PostgresCluster.load(BLOCK)
    for upstream in (None, "primary"):
        cluster.nodes = [n.model_copy(update={"upstream": upstream}) if n.name == THIRD else n for n in cluster.nodes]
        lag = {s.labels["replica"]: s for s in database_samples(cluster, 5) if s.metric == "replication_lag_seconds"}
        assert lag[THIRD].value is not None and lag["primary"].value is not None, lag
    assert [c.node for c in report.checks if c.name == "replication"] == ["primary", THIRD]  # by identity

    row = ReceiverRow(receiver_status="streaming", sender_host="10.9.9.9", sender_port=5999, slot_name=None,
                      receive_lsn=None, replay_lsn=None, replay_backlog_bytes=0, replay_paused=False,
                      seconds_since_last_replay=None)
    nodes = {"a": ("10.0.0.1", 5432), "b": ("10.0.0.2", 5432), "old": ("db-old", 5999)}
    assert upstream_of(row, nodes) == "old"  # only node on that port (the block names it, the standby uses an IP)
    assert upstream_check("b", row, "a", "old", ["old"]).status == "critical"
    assert upstream_check("b", row, "a", None, []).status == "warning"
    assert upstream_check("b", row.model_copy(update={"sender_port": 5432, "sender_host": "10.0.0.1"}), "a",
                          "a", []) is None


def test_a_standby_cascading_from_a_live_standby_is_left_in_place():
    from blocks.postgres_cluster import ConnectionTarget
    from tasks.failover.followers import _cascades, _Source

    old = ConnectionTarget(cluster="c", node="old", host="10.0.0.1", port=5432, database="postgres", user="u")
    src = _Source(in_recovery=True, conninfo="host=10.0.0.3", slot="", replay_lsn="0/1", receiver_status="streaming",
                  sender_host="10.0.0.3", sender_port=5432, received_tli=1)
    assert _cascades(src, old)  # streams from another standby: it follows through it
    assert not _cascades(src.model_copy(update={"sender_host": "10.0.0.1"}), old)  # from the old primary
    assert not _cascades(src.model_copy(update={"receiver_status": "waiting"}), old)  # its upstream is gone


def test_switchover_without_a_pooler_moves_libpq_multi_host_clients_and_loses_nothing(three):
    """Endpoint `none`: applications list every node with target_session_attrs=read-write, so the fence is what
    moves them. A writer that reconnects on error keeps every acknowledged row; afterwards it writes to the new
    primary. The cascading third standby stays where it is and follows the new timeline through its upstream."""
    import threading

    from blocks.failover_adapters import EndpointControl

    box, port, _ = three
    EndpointControl(kind="none").save("fo-three-none", overwrite=True)
    with box.connect("replica") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS multi_host_writes (v int PRIMARY KEY, port int)")
    ports = f"{box.config.primary_port},{box.config.replica_port},{port}"
    dsn = psycopg.conninfo.make_conninfo(box.conninfo("replica"), host=",".join([HOST] * 3), port=ports,
                                         target_session_attrs="read-write", connect_timeout=2)
    acked: list[tuple[int, int]] = []
    stop = threading.Event()

    def writer():
        i, conn = 0, None
        while not stop.is_set():
            try:
                conn = conn or psycopg.connect(dsn, autocommit=True)
                i += 1
                row = conn.execute("INSERT INTO multi_host_writes VALUES (%s, inet_server_port()) RETURNING port",
                                   (i,)).fetchone()
                acked.append((i, row[0]))
            except psycopg.Error:
                conn = None
                time.sleep(0.05)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    wait_for(lambda: len(acked) > 20, timeout=30, what="the writer writes before the switchover")
    report = failover(_request(candidate="primary", endpoint_block="fo-three-none"))
    assert report.status == "completed", report.summary
    wait_for(lambda: acked[-1][1] == box.config.primary_port, timeout=30, what="the writer reaches the new primary")
    stop.set()
    thread.join(10)
    with box.connect("primary") as conn:
        stored = {v for (v,) in conn.execute("SELECT v FROM multi_host_writes")}
    assert {v for v, _ in acked} <= stored  # zero acknowledged writes lost
    assert {p for _, p in acked} == {box.config.replica_port, box.config.primary_port}
    assert report.followers == {THIRD: "already"}
    wait_for(lambda: _receiver(box, port) == ("streaming", box.config.primary_port), timeout=30,
             what="the third standby streams on the new timeline from its upstream, now the primary")
