"""Switchover and crash failover through a pgbouncer with its DEFAULT settings (server_login_retry 15 s,
max_client_conn 100, ...), not the sandbox's tuned ones, in front of a replica made the ordinary way
(`pg_basebackup -R`: application_name 'walreceiver'): a module of its own (one more sandbox), tests in file order
handing the topology on like tests/failover/test_failover.py. docs/sandbox.md lists what differs from the defaults."""

from __future__ import annotations

import psycopg
import psycopg.sql

from blocks.failover_adapters import EndpointControl
from blocks.postgres_cluster import PostgresCluster
from flows.failover import failover
from flows.rejoin import rejoin
from sandbox.cluster import HOST, free_port
from tasks.failover.model import FailoverRequest, RejoinRequest
from tasks.failover.report import endpoint_sentence
from tasks.failover.steps import probe_application
from tests.failover.test_failover import Writer, current
from tests.helpers import failover_fixtures, failover_request, wait_for

BLOCK = "fo-default"


box, blocks, journal_dir = failover_fixtures("pgrb-fo-default-", BLOCK, defaults=True)


def request(journal_dir, **kw) -> FailoverRequest:
    return failover_request(BLOCK, journal_dir, **kw)


def pgbouncer_config(box) -> dict[str, str]:
    with psycopg.connect(host=HOST, port=box.config.pgbouncer_port, user="postgres", dbname="pgbouncer",
                         password=box.config.password, autocommit=True, prepare_threshold=None) as conn:
        return {r[0]: str(r[1]) for r in conn.execute("SHOW CONFIG").fetchall()}


def without_databases(ini: str) -> str:
    """The ini minus its [databases] entries (what the failover may change)."""
    return "\n".join(line for line in ini.splitlines() if not line.startswith("* ="))


def table(box, node: str, name: str) -> None:
    with box.connect(node) as conn:
        conn.execute(psycopg.sql.SQL("CREATE TABLE {} (n int PRIMARY KEY)").format(psycopg.sql.Identifier(name)))
    box.wait_streaming(node)


def rows(box, node: str, name: str) -> set[int]:
    with box.connect(node) as conn:
        return {r[0] for r in conn.execute(psycopg.sql.SQL("SELECT n FROM {}").format(psycopg.sql.Identifier(name)))}


def test_the_sandbox_runs_with_the_defaults(box):
    config = pgbouncer_config(box)
    assert config["server_login_retry"] == "15" and config["max_client_conn"] == "100"
    assert "server_login_retry" not in box.pgbouncer_ini.read_text()
    with box.connect("primary") as conn:  # the replica as pg_basebackup -R made it
        assert conn.execute("SELECT application_name FROM pg_stat_replication").fetchall() == [("walreceiver",)]


def test_switchover_through_a_default_pgbouncer(box, blocks, journal_dir):
    before_ini, before = box.pgbouncer_ini.read_text(), pgbouncer_config(box)
    table(box, "primary", "fd_switch")
    writer = Writer(box, "fd_switch")
    writer.start()
    wait_for(lambda: len(writer.acked) > 20, what="writes through pgbouncer")
    try:
        report = failover(request(journal_dir))
        acked = len(writer.acked)
        wait_for(lambda: len(writer.acked) > acked + 20, what="writes after the switchover")
    finally:
        writer.stop_event.set()
        writer.join(10)
    assert report.status == "completed", report.summary
    assert report.new_primary == "replica" and report.data_loss.gap_bytes == 0
    assert writer.errors == []
    assert set(writer.acked) <= rows(box, "replica", "fd_switch")
    assert report.endpoint_verified and report.writes_back_at is not None
    assert report.write_availability_from == "run start" and report.write_availability_s > 0
    assert "writes through pgbouncer back at" in report.summary
    # pgbouncer is left as found, apart from its target; the report says what was done to it
    assert pgbouncer_config(box) == before
    assert without_databases(box.pgbouncer_ini.read_text()) == without_databases(before_ini)
    actions = "\n".join(report.endpoint_actions)
    assert "server_login_retry 15 -> 0" in actions and "server_login_retry restored to 15" in actions
    assert "RELOAD" in actions and "resumed" in actions


def test_rejoin_after_the_switchover(box, blocks):
    assert rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK)).status == "completed"
    box.wait_streaming("replica")


def test_crash_failover_under_writes_completes_on_the_first_run(box, blocks, journal_dir):
    """Writers go through pgbouncer while the primary's postmaster is killed: pgbouncer's logins to the dead
    primary fail, which (server_login_retry 15 s) would hold its pool off the new primary. The run completes on the
    first attempt, its first probe through pgbouncer commits, writers carry on on the new primary, and no
    acknowledged row is missing unless the report shows an LSN gap."""
    old, cand = current(box)
    before = pgbouncer_config(box)
    table(box, old, "fd_crash")
    writer = Writer(box, "fd_crash")
    writer.start()
    try:
        wait_for(lambda: len(writer.acked) > 20, what="writes through pgbouncer")
        log = box.pgbouncer_dir / "pgbouncer.log"
        seen = len(log.read_text())
        box.stop_node(old, "immediate")
        wait_for(lambda: "connect failed" in log.read_text()[seen:], what="a failed login in pgbouncer's log")
        report = failover(request(journal_dir, mode="failover"))
        acked = len(writer.acked)
        wait_for(lambda: len(writer.acked) > acked + 20, what="writes after the failover")
    finally:
        writer.stop_event.set()
        writer.join(10)
    assert report.status == "completed" and not report.resumed, report.summary
    assert report.new_primary == cand and current(box)[0] == cand
    probe = next(s for s in report.steps if s.step == "probe-application" and s.status == "done")
    assert "(attempt 1," in probe.detail  # the first probe through pgbouncer committed: no login wait
    assert report.endpoint_verified and "writes through pgbouncer back at" in report.summary
    assert pgbouncer_config(box) == before  # server_login_retry back at 15
    lost = set(writer.acked) - rows(box, cand, "fd_crash")
    assert not lost or report.data_loss.gap_bytes, (len(lost), report.data_loss)  # never zero claimed with a loss
    assert rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK)).status == "completed"
    box.wait_streaming(cand)


def test_an_unreachable_endpoint_is_a_warning_not_a_failed_run(box, blocks):
    """The probe retries until its deadline and then says so: the report names the verified new primary and
    what to check on pgbouncer, instead of failing the run that promoted it."""
    cluster = PostgresCluster.load(BLOCK)
    primary = current(box)[0]
    nowhere = cluster.target(primary).model_copy(update={"node": "endpoint", "port": free_port(), "via_pooler": True})
    probe = probe_application.fn(nowhere, 1)
    assert probe["ok"] is False and probe["attempts"] >= 2 and "unreachable" in probe["error"]
    facts = {"endpoint_verified": False, "endpoint_error": probe["error"]}
    sentence = endpoint_sentence(facts, primary, EndpointControl.load(BLOCK), None, None)
    assert f"{primary} itself is up and verified" in sentence and "SHOW POOLS" in sentence
    assert sentence.startswith("WARNING: writes through pgbouncer NOT confirmed yet")
