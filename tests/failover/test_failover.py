"""Failover and switchover end to end on a sandbox of their own (primary, replica, pgbouncer),
the real Prefect API and the fake Slack. Tests run in file order and hand the topology on:
each leaves a primary and a streaming standby (rejoined) behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import psycopg.sql
import pytest
from prefect.artifacts import Artifact

from blocks.failover_adapters import EndpointControl, NodeControl
from blocks.postgres_cluster import PostgresCluster
from flows.failover import failover
from flows.rejoin import rejoin
from sandbox.blocks import sandbox_endpoint_block
from sandbox.cluster import REPLICA_SLOT, free_port
from tasks.core.errors import ReadOnlyServer
from tasks.core.limits import exclusive, failover_lock_name
from tasks.failover.journal import JournalStore
from tasks.failover.model import FailoverRefused, FailoverRequest, FailoverStepFailed, RejoinRequest
from tasks.failover.plan import lsn_int
from tasks.failover.run import FAULT_ENV, HANG_ENV
from tasks.failover.slot import lease_file
from tasks.failover.steps import application_target, fence_node, write_then_read
from tests.helpers import Writer, failover_fixtures, failover_request, save_slack_block, wait_for

BLOCK = "fo-test"


box, blocks, journal_dir = failover_fixtures("pgrb-failover-", BLOCK)


def request(journal_dir, **kw) -> FailoverRequest:
    return failover_request(BLOCK, journal_dir, **kw)


def current(box) -> tuple[str, str]:
    """(primary, standby) node names as the servers say."""
    roles = {}
    for node in ("primary", "replica"):
        try:
            with box.connect(node) as conn:
                roles[node] = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        except psycopg.OperationalError:
            roles[node] = None
    primary = [n for n, r in roles.items() if r is False]
    assert len(primary) == 1, roles
    return primary[0], next(n for n in roles if n != primary[0])


def pgbouncer_port_backend(box) -> int:
    with box.connect("pgbouncer") as conn:
        return conn.execute("SELECT inet_server_port()").fetchone()[0]


def psql_one(box, node, query):
    with box.connect(node) as conn:
        return conn.execute(query).fetchone()[0]


def test_refusals_change_nothing(box, blocks, journal_dir, slack):
    save_slack_block(slack, "fo-slack", "xoxb-ok-refusals")
    # a real run without the cluster typed again (a form submitted as it opens), or with another cluster's name
    with pytest.raises(FailoverRefused, match="needs the cluster typed again in confirm_cluster"):
        failover(request(journal_dir, confirm_cluster="", slack_block="fo-slack"))
    with pytest.raises(FailoverRefused, match="confirm_cluster 'orders' is not the cluster of this run"):
        failover(request(journal_dir, confirm_cluster="orders"))
    assert JournalStore(journal_dir).load(BLOCK) is None  # refused before phase 1: no journal, no backup
    # the candidate is the primary
    with pytest.raises(FailoverRefused, match="actually a primary"):
        failover(request(journal_dir, candidate="primary", slack_block="fo-slack"))
    # a lagging, paused candidate
    with box.connect("replica") as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        with box.connect("primary") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS public.fo_lag AS SELECT g FROM generate_series(1, 20000) g")
        with pytest.raises(FailoverRefused) as refused:
            failover(request(journal_dir, max_lag_bytes=1024, candidate="replica"))
        text = str(refused.value)
        assert "replay paused" in text and "behind, more than max_lag_bytes" in text
    finally:
        with box.connect("replica") as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
    # pgbouncer unreachable
    broken = sandbox_endpoint_block(box)
    broken.admin_port = free_port()
    broken.save("fo-broken-endpoint", overwrite=True)
    with pytest.raises(FailoverRefused, match="endpoint is unusable"):
        failover(request(journal_dir, endpoint_block="fo-broken-endpoint"))
    # a second trigger while one run holds the cluster's lock
    with JournalStore(journal_dir).exclusive(BLOCK, "run-holding-the-lock"):
        with pytest.raises(FailoverRefused, match="already running .*run-holding-the-lock"):
            failover(request(journal_dir))
    # accept_unconfirmed_fence without a pooler to repoint away from the old primary
    EndpointControl(kind="none").save("fo-none-endpoint", overwrite=True)
    with pytest.raises(FailoverRefused, match="accept_unconfirmed_fence is refused with endpoint kind 'none'"):
        failover(request(journal_dir, endpoint_block="fo-none-endpoint", accept_unconfirmed_fence=True))
    # another run of the cluster holds its Prefect concurrency slot (e.g. from another journal directory)
    with exclusive(failover_lock_name(BLOCK)) as mine:
        assert mine
        with pytest.raises(FailoverRefused, match=f"holds the Prefect concurrency limit failover-{BLOCK}"):
            failover(request(journal_dir))
    # a run from another worker (another journal directory) still meets the database-side lock
    from tasks.failover.dblock import FAILOVER_LOCK_KEY

    with box.connect("replica") as other:
        other.execute("SET application_name = 'other-worker-failover'")
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (FAILOVER_LOCK_KEY,)).fetchone()[0]
        with pytest.raises(FailoverRefused, match="database-side lock on replica: .*other-worker-failover"):
            failover(request(journal_dir))
    # nothing changed: same primary, clients flow, no journal left in progress
    assert current(box) == ("primary", "replica")
    assert pgbouncer_port_backend(box) == box.config.primary_port
    assert JournalStore(journal_dir).load(BLOCK) is None
    refusals = [c for c in slack.calls("chat.update") + slack.calls("chat.postMessage") if "REFUSED" in c.raw]
    assert refusals


def test_dry_run_returns_the_plan(box, blocks, journal_dir):
    report = failover(request(journal_dir, dry_run=True))
    assert report.status == "dry_run"
    assert [s.step for s in report.plan.steps][:4] == ["checkpoint", "pause-endpoint", "fence", "lsn-gate"]
    assert report.plan.candidate == "replica" and report.plan.lag_bytes is not None
    assert Path(report.backup_path).exists()
    assert current(box) == ("primary", "replica")


def test_one_failover_per_cluster_not_per_fleet(box, blocks, journal_dir):
    """Another cluster's failover slot does not block this cluster; a slot left by a dead run of this
    journal directory (its lease file, its flock released) is reclaimed instead of waited for."""
    with exclusive(failover_lock_name("another-cluster")) as mine:
        assert mine
        assert failover(request(journal_dir, dry_run=True)).status == "dry_run"
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    dead = acquire_concurrency_slots_with_lease([failover_lock_name(BLOCK)], 1, max_retries=0, strict=True,
                                                lease_duration=300)  # never released: its run "died"
    lease_file(JournalStore(journal_dir), BLOCK).write_text(str(dead.lease_id))
    assert failover(request(journal_dir, dry_run=True)).status == "dry_run"
    assert not lease_file(JournalStore(journal_dir), BLOCK).exists()
    with exclusive(failover_lock_name(BLOCK)) as mine:
        assert mine  # the slot is free again after the run


def test_write_probe_really_writes_and_refuses_a_read_only_server(box, blocks):
    cluster = PostgresCluster.load(BLOCK)
    primary, standby = current(box)
    endpoint = EndpointControl.load(BLOCK)
    probe = write_then_read(application_target(cluster.target(primary), endpoint), "test")  # through pgbouncer
    assert probe["port"] == box.node_port(primary) and int(probe["xid"]) > 0
    with box.connect(primary) as conn:  # the temp table went with its transaction
        left = conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'pg_runbooks_write_probe'").fetchone()
    assert left[0] == 0
    with pytest.raises(ReadOnlyServer, match="read-only|recovery"):
        write_then_read(cluster.target(standby), "test")
    dbname = psycopg.sql.Identifier(cluster.database)
    with box.connect(primary) as conn:
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(dbname))
    try:
        with pytest.raises(ReadOnlyServer, match="default_transaction_read_only is on"):
            write_then_read(cluster.target(primary), "test")
    finally:
        with box.connect(primary) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(psycopg.sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(dbname))


def test_verify_on_a_held_session_the_server_closed_reconnects(box, blocks):
    """Phase 2 verifies on the session it held on the candidate; one the server closed meanwhile (a backend that
    restarted the node) is replaced by a new connection, not reported as a failed promotion."""
    from tasks.core.db import connect
    from tasks.failover.steps import verify_promotion

    target = PostgresCluster.load(BLOCK).target(current(box)[0])
    with connect(target, purpose="failover") as held:
        pid = held.scalar("SELECT pg_backend_pid()")
        assert verify_promotion.fn(target, None, held)["timeline"] >= 1  # on the held session itself
        with box.connect(target.node) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        verified = verify_promotion.fn(target, None, held)
    assert verified["timeline"] >= 1 and int(verified["xid"]) > 0


def test_force_never_skips_the_fence(box, blocks, journal_dir):
    """Node control that cannot tell whether the old primary stopped: `force` does not pass the fence,
    accept_unconfirmed_fence does (pgbouncer only), and the refused switchover is undone."""
    blind = NodeControl(kind="shell", data_dirs={"primary": "/nonexistent", "replica": "/nonexistent"},
                        status_command="false", stop_command="false", start_command="false",
                        controldata_command="false")
    blind.save("fo-blind", overwrite=True)
    with pytest.raises(FailoverStepFailed, match="rerun with accept_unconfirmed_fence"):
        fence_node.fn(blind, "primary", "127.0.0.1", "fast", 5, False, "pgbouncer")
    with pytest.raises(FailoverStepFailed, match="accept_unconfirmed_fence is refused"):
        fence_node.fn(blind, "primary", "127.0.0.1", "fast", 5, True, "none")
    assert "UNCONFIRMED" in fence_node.fn(blind, "primary", "127.0.0.1", "fast", 5, True, "pgbouncer")
    with pytest.raises(Exception, match="cannot confirm that primary is stopped"):
        failover(request(journal_dir, node_control_block="fo-blind", force=True))
    assert current(box) == ("primary", "replica")
    assert pgbouncer_port_backend(box) == box.config.primary_port  # clients resumed on the old primary
    journal = JournalStore(journal_dir).load(BLOCK)
    assert journal.status == "rolled_back" and not journal.attempted("promote")


def test_pause_blocked_by_a_long_transaction_is_undone(box, blocks, journal_dir, slack):
    save_slack_block(slack, "fo-slack", "xoxb-ok-pause")
    holder = box.connect("pgbouncer", autocommit=False)
    holder.execute("SELECT 1")  # an open transaction holds a server connection: PAUSE cannot finish
    try:
        with pytest.raises(Exception, match="PAUSE did not complete"):
            failover(request(journal_dir, slack_block="fo-slack", pause_timeout_seconds=1))
    finally:
        holder.rollback()
        holder.close()
    assert current(box) == ("primary", "replica")
    with box.connect("pgbouncer") as conn:  # clients are not held
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    hook = [c for c in slack.calls("chat.postMessage", "xoxb-ok-pause") if "failed at step pause-endpoint" in c.raw]
    assert hook and "writable: primary" in hook[0].raw
    assert JournalStore(journal_dir).load(BLOCK).status == "rolled_back"


def test_lsn_gate_failure_after_the_fence_is_undone(box, blocks, journal_dir, slack):
    """A real LSN-gate failure after the fence: the candidate holds replay (recovery_min_apply_delay) at a commit
    written just before the switchover, so it never replays past the old primary's shutdown checkpoint. The
    phase-2 hook restarts the cleanly stopped old primary and RESUMEs pgbouncer: held clients carry on there,
    nothing is promoted, and the journal says rolled back (the next run decides afresh)."""
    save_slack_block(slack, "fo-slack", "xoxb-ok-gate")
    old, cand = current(box)
    with box.connect(old) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.fo_gate_writes (n int PRIMARY KEY)")
        tli = conn.execute("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
                           ).fetchone()[0]
    box.wait_streaming(old)
    wait_for(lambda: psql_one(box, cand, "SELECT to_regclass('public.fo_gate_writes') IS NOT NULL"), what="replay")
    with box.connect(cand) as conn:
        conn.execute("ALTER SYSTEM SET recovery_min_apply_delay = '1h'")
        conn.execute("SELECT pg_reload_conf()")
    writer = Writer(box, "fo_gate_writes")  # commits through pgbouncer the whole time: replay stalls at the first
    writer.start()
    try:
        wait_for(lambda: len(writer.acked) > 5, what="writes through pgbouncer")
        with pytest.raises(Exception, match="not past the old primary's shutdown checkpoint"):
            failover(request(journal_dir, slack_block="fo-slack", lsn_gate_timeout_seconds=1))
        acked_at_failure = len(writer.acked)
        wait_for(lambda: len(writer.acked) > acked_at_failure + 20, what="clients to resume")
    finally:
        writer.stop_event.set()
        writer.join(10)
        with box.connect(cand) as conn:
            conn.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
            conn.execute("SELECT pg_reload_conf()")
    assert writer.errors == []  # held at pgbouncer during the pause, never refused
    journal = JournalStore(journal_dir).load(BLOCK)
    assert [s.status for s in journal.steps if s.step == "fence"][-1] == "done"
    assert [s.status for s in journal.steps if s.step == "lsn-gate"][-1] == "failed"
    assert journal.status == "rolled_back" and not journal.attempted("promote")
    assert current(box) == (old, cand)  # the old primary is back and writable; nothing was promoted
    assert pgbouncer_port_backend(box) == box.node_port(old)
    with box.connect(old) as conn:
        assert conn.execute("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
                            ).fetchone()[0] == tli
        have = {r[0] for r in conn.execute("SELECT n FROM public.fo_gate_writes").fetchall()}
    assert set(writer.acked) <= have  # every acknowledged commit is on the old primary
    block = PostgresCluster.load(BLOCK)
    assert block.primary_node == old and block.fenced_nodes == []
    bar = Artifact.get(f"failover-progress-{block.cluster_name}")  # stopped where the run stopped
    assert 0 < bar.data < 100 and f"stopped at step lsn-gate on {cand}" in bar.description, bar
    hook = [c for c in slack.calls("chat.postMessage", "xoxb-ok-gate") if "failed at step lsn-gate" in c.raw]
    assert hook and f"restarted {old}" in hook[0].raw and "RESUME sent to pgbouncer" in hook[0].raw
    box.wait_streaming(old)  # the standby follows the restarted primary again
    end = psql_one(box, old, "SELECT pg_current_wal_lsn()::text")
    wait_for(lambda: lsn_int(psql_one(box, cand, "SELECT pg_last_wal_replay_lsn()::text")) >= lsn_int(end),
             what="the candidate to catch up")


@pytest.mark.versioned
def test_switchover_under_writes_loses_nothing_and_one_trigger_wins(box, blocks, journal_dir, slack):
    save_slack_block(slack, "fo-slack", "xoxb-ok-switchover")
    with box.connect("primary") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.fo_writes (n int PRIMARY KEY)")
    box.wait_streaming()
    writer = Writer(box)
    writer.start()
    time.sleep(0.5)
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def trigger(i):
        barrier.wait()
        try:
            outcomes[i] = failover(request(journal_dir, slack_block="fo-slack"))
        except Exception as exc:  # noqa: BLE001
            outcomes[i] = exc

    threads = [threading.Thread(target=trigger, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    time.sleep(0.5)
    writer.stop_event.set()
    writer.join(10)

    reports = [o for o in outcomes.values() if not isinstance(o, Exception)]
    refused = [o for o in outcomes.values() if isinstance(o, Exception)]
    assert len(reports) == 1 and len(refused) == 1, outcomes
    # the loser is refused by the lock while the winner runs, or (if it started after the winner
    # finished) by the cluster's new state: either way nothing of it ran
    assert isinstance(refused[0], FailoverRefused)
    assert "already running" in str(refused[0]) or "no standby qualifies" in str(refused[0])
    report = reports[0]
    assert report.status == "completed", report.summary
    assert report.new_primary == "replica" and report.data_loss.gap_bytes == 0
    assert writer.errors == []
    assert len(writer.acked) > 50
    assert current(box) == ("replica", "primary")
    with box.connect("replica") as conn:
        have = {r[0] for r in conn.execute("SELECT n FROM public.fo_writes").fetchall()}
    assert set(writer.acked) <= have
    assert pgbouncer_port_backend(box) == box.config.replica_port
    block = PostgresCluster.load(BLOCK)
    assert block.primary_node == "replica" and block.fenced_nodes == ["primary"]
    # one parent message updated in place, one thread reply per phase
    parent = [c for c in slack.calls("chat.postMessage", "xoxb-ok-switchover") if not c.body.get("thread_ts")]
    replies = [c for c in slack.calls("chat.postMessage", "xoxb-ok-switchover") if c.body.get("thread_ts")]
    assert any("Phase 1/3" in r.raw for r in replies) and any("Phase 3/3" in r.raw for r in replies)
    assert any("0 bytes lost" in c.raw for c in slack.calls("chat.update", "xoxb-ok-switchover"))
    # no secret in the journal, the backup or Slack
    secret = box.config.password
    for f in Path(journal_dir).iterdir():
        assert secret not in f.read_text(), f
    assert not [c for c in slack.calls() if secret in c.raw]
    done = {c.body.get("ts") for c in slack.calls("chat.update", "xoxb-ok-switchover") if "DONE" in c.raw}
    assert parent and len(done) == 1  # the winner's one parent message, updated in place to DONE
    bar = Artifact.get(f"failover-progress-{report.cluster}")  # the steps of phases 2 and 3, all done
    assert bar.type == "progress" and bar.data == 100.0, bar
    assert f"{len(report.plan.steps)} of {len(report.plan.steps)} steps" in bar.description
    assert "completed: " in bar.description and "primary → replica" in bar.description, bar.description


@pytest.mark.versioned
def test_rejoin_after_switchover_needs_no_rewind(box, blocks):
    report = rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK))
    assert report.status == "completed", report.summary
    assert report.node == "primary" and report.rewind_needed is False
    assert report.dropped_slots == [REPLICA_SLOT]  # the slot its old standby used; it would only hold WAL
    box.wait_streaming("replica")
    assert PostgresCluster.load(BLOCK).fenced_nodes == []


@pytest.mark.versioned
def test_crash_failover_reports_the_lsn_gap_even_with_slack_down(box, blocks, journal_dir, slack):
    """The standby stops receiving, 1001 rows commit on the primary only, the primary crashes:
    the report's gap must equal the WAL the candidate never had, and those rows are really gone."""
    save_slack_block(slack, "fo-slack-down", "xoxb-server-error", server_error_retries=0)
    old, cand = current(box)
    with box.connect(old) as conn:
        conn.execute("INSERT INTO public.fo_writes VALUES (99999)")  # replicated before the cut
    box.wait_streaming(old)
    wait_for(lambda: psql_one(box, cand, "SELECT count(*) FROM public.fo_writes WHERE n = 99999"), what="replay")
    with box.connect(cand) as conn:  # cut replication: the candidate receives nothing more
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_reload_conf()")
    wait_for(lambda: not psql_one(box, cand, "SELECT count(*) FROM pg_stat_wal_receiver"), what="receiver to stop")
    with box.connect(old) as conn:
        conn.execute("INSERT INTO public.fo_writes SELECT g FROM generate_series(100000, 101000) g")
    box.stop_node(old, "immediate")
    report = failover(request(journal_dir, mode="failover", slack_block="fo-slack-down"))
    assert report.status == "completed", report.summary
    assert report.new_primary == cand
    assert report.notification.failed > 0 and not report.notification.ok  # Slack down did not stop it
    assert current(box)[0] == cand
    with box.connect(cand) as conn:
        conn.execute("ALTER SYSTEM RESET primary_conninfo")
        survived = psql_one(box, cand, "SELECT count(*) FROM public.fo_writes WHERE n BETWEEN 100000 AND 101000")
    loss = report.data_loss
    assert survived == 0 and loss.gap_bytes > 50_000  # ground truth: 1001 acknowledged rows lost
    assert lsn_int(loss.old_wal_end) - lsn_int(loss.promoted_at_lsn) == loss.gap_bytes
    assert "commits in that range are lost" in loss.sentence and "LSN gap" in report.summary


@pytest.mark.versioned
def test_rejoin_after_crash_uses_pg_rewind(box, blocks):
    old = PostgresCluster.load(BLOCK).fenced_nodes[0]
    report = rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK))
    assert report.status == "completed", report.summary
    assert report.node == old and report.rewind_needed is True
    major = int(psql_one(box, current(box)[0], "SHOW server_version_num")) // 10000
    checkpointed = any(a.startswith("CHECKPOINT on") for a in report.actions)
    assert checkpointed == (major <= 15), (major, report.actions)  # pg_rewind reads the history itself on 16+
    assert report.diverged_copy and Path(report.diverged_copy).exists()
    assert report.diverged_at
    with box.connect(old) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        assert conn.execute("SHOW port").fetchone()[0] == str(box.node_port(old))
    box.wait_streaming(current(box)[0])


def test_resume_after_promotion_completes(box, blocks, journal_dir, slack, monkeypatch):
    save_slack_block(slack, "fo-slack", "xoxb-ok-resume")
    old, cand = current(box)
    monkeypatch.setenv(FAULT_ENV, "promote")
    with pytest.raises(Exception, match="injected fault"):
        failover(request(journal_dir, slack_block="fo-slack"))
    monkeypatch.delenv(FAULT_ENV)
    # promoted, old primary stopped, clients held: never two writable primaries
    assert current(box)[0] == cand
    posted = slack.calls("chat.postMessage", "xoxb-ok-resume")
    hook = [c for c in posted if "Phase 2 failed after step promote" in c.raw]
    assert hook, [c.raw[:300] for c in slack.calls()]
    assert "clients+PAUSED" in hook[0].raw or "clients PAUSED" in hook[0].raw
    # a crash/cancel alert of that run goes to its thread (the journal's saved parent message)
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    from tasks.failover.hooks import run_crashed

    store = JournalStore(journal_dir)
    journal = store.load(BLOCK)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(journal.run_id)
    run_crashed(failover, flow_run, Crashed())
    alert = [c for c in slack.calls("chat.postMessage", "xoxb-ok-resume") if "CRASHED after step" in c.raw]
    assert alert and alert[0].body.get("thread_ts") == journal.slack_parent_ts
    # a dry run now says what the resume would do and leaves the journal to the real rerun
    before = store.path(BLOCK).read_bytes()
    dry = failover(request(journal_dir, dry_run=True, mode="failover"))  # asking for failover changes nothing now
    assert dry.status == "dry_run" and dry.plan.resumed and dry.plan.resumed_from_run == journal.run_id
    assert dry.plan.mode == "switchover" and any("never two promotions" in w for w in dry.plan.warnings)
    assert dry.plan.resume_after == "promote (done)" and dry.plan.resume_from == "verify-promotion"
    assert f"would resume run {journal.run_id}" in dry.summary and "from step verify-promotion" in dry.summary
    assert store.path(BLOCK).read_bytes() == before
    report = failover(request(journal_dir, slack_block="fo-slack"))
    assert report.status == "completed" and report.resumed and report.plan.resumed_from_run == journal.run_id
    assert any(s.step == "promote" and s.status == "skipped" for s in report.steps)
    assert pgbouncer_port_backend(box) == box.node_port(cand)
    assert rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK)).status == "completed"
    box.wait_streaming(cand)


def test_worker_killed_mid_phase_then_rerun_completes(box, blocks, journal_dir):
    """A real SIGKILL of the worker process right after the promotion (no hook runs), then a rerun."""
    from prefect.settings import PREFECT_API_URL

    old, cand = current(box)
    req = request(journal_dir)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), HANG_ENV: "promote"}
    code = ("import sys; from flows.failover import failover; from tasks.failover.model import FailoverRequest; "
            "failover(FailoverRequest.model_validate_json(sys.argv[1]))")
    worker = subprocess.Popen([sys.executable, "-c", code, req.model_dump_json()], env=env,
                              cwd=Path(__file__).resolve().parents[2],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def promoted_in_journal():
            journal = JournalStore(journal_dir).load(BLOCK)
            return journal and any(s.step == "promote" and s.status == "done" for s in journal.steps)

        wait_for(promoted_in_journal, timeout=90, interval=0.05, what="the worker to promote")
    finally:
        worker.kill()
        worker.wait(10)
    assert current(box)[0] == cand  # the old primary is stopped: one writable node
    report = failover(request(journal_dir))
    assert report.status == "completed" and report.resumed and report.new_primary == cand
    assert pgbouncer_port_backend(box) == box.node_port(cand)
    with box.connect("pgbouncer") as conn:
        conn.execute("INSERT INTO public.fo_writes VALUES (999999)")
    assert rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK)).status == "completed"
    box.wait_streaming(cand)


def test_failover_rerun_supersedes_a_switchover_whose_old_primary_cannot_restart(box, blocks, journal_dir,
                                                                                  monkeypatch):
    """A switchover fenced the old primary, then failed, and its hook could not start it again (node control's start
    command fails): rerunning in failover mode closes that journal as superseded (kept on disk) and runs a fresh
    failover instead of resuming the switchover and failing the same way."""
    old, cand = current(box)
    pre = f"runuser -u {box.config.os_user} -- " if box.as_root else ""
    no_start = NodeControl(kind="shell", bindir=str(box.bindir),
                           data_dirs={"primary": str(box.primary_dir), "replica": str(box.replica_dir)},
                           stop_command=pre + "{bindir}/pg_ctl stop -w -t {timeout} -m {mode} -D {data_dir}",
                           status_command=pre + "{bindir}/pg_ctl status -D {data_dir}",
                           controldata_command=pre + "{bindir}/pg_controldata {data_dir}", start_command="false")
    no_start.save("fo-no-start", overwrite=True)
    store = JournalStore(journal_dir)
    monkeypatch.setenv(FAULT_ENV, "fence")
    with pytest.raises(Exception, match="injected fault"):
        failover(request(journal_dir, node_control_block="fo-no-start"))
    monkeypatch.delenv(FAULT_ENV)
    stuck = store.load(BLOCK)
    assert stuck.status == "in_progress" and stuck.plan.mode == "switchover"
    assert stuck.attempted("fence") and not stuck.attempted("promote")
    assert any("could not restart" in line for lines in stuck.facts["hook_reports"] for line in lines)
    with pytest.raises(psycopg.OperationalError):
        box.connect(old).close()
    # a dry run in failover mode says what will happen and keeps the switchover's journal
    dry = failover(request(journal_dir, mode="failover", dry_run=True))
    assert dry.plan.mode == "failover" and not dry.plan.resumed
    assert any("closed as superseded" in w for w in dry.plan.warnings)
    assert store.load(BLOCK).run_id == stuck.run_id and store.load(BLOCK).status == "in_progress"
    # a refused failover supersedes nothing: the switchover's journal stays for a better rerun
    with pytest.raises(FailoverRefused, match="actually a primary"):
        failover(request(journal_dir, mode="failover", candidate=old))
    assert store.load(BLOCK).run_id == stuck.run_id and store.load(BLOCK).status == "in_progress"
    report = failover(request(journal_dir, mode="failover"))
    assert report.status == "completed" and report.mode == "failover" and not report.resumed, report.summary
    assert report.new_primary == cand and current(box)[0] == cand
    assert any(f"run {stuck.run_id}" in w and "superseded" in w for w in report.plan.warnings)
    assert [s.status for s in report.steps if s.step == "promote"] == ["started", "done"]
    closed = [j for j in (JournalStore(journal_dir).dir.glob(f"{BLOCK}.2*.json"))
              if '"superseded"' in j.read_text()]
    assert len(closed) == 1
    record = json.loads(closed[0].read_text())
    assert record["run_id"] == stuck.run_id and record["facts"]["superseded_by"] != stuck.run_id
    assert record["steps"] == json.loads(stuck.model_dump_json())["steps"]  # recorded as it was, not deleted
    assert pgbouncer_port_backend(box) == box.node_port(cand)
    assert rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK)).status == "completed"
    box.wait_streaming(cand)


def test_journal_is_atomic_json(journal_dir):
    files = os.listdir(journal_dir)
    assert not [f for f in files if f.startswith(".")], files
    assert any(f.endswith(".json") for f in files)


def test_no_secret_reaches_prefect_records(box, prefect_api):
    import asyncio

    from tests.core.test_secrets import _everything_the_api_stored

    stored = "\n".join(asyncio.run(_everything_the_api_stored()))
    assert "Failover" in stored or "failover" in stored
    assert box.config.password not in stored
