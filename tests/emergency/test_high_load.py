"""The high-load response against real sessions on the sandbox primary.

Ages are faked with short thresholds. Every test creates its own roles, tables and sessions
and ends its own sessions afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from psycopg import sql
from pydantic import SecretStr

from blocks.scalers import PgBouncerPoolScaler, WebhookScaler
from flows.high_load_response import HighLoadStepsFailed, high_load_response
from sandbox.blocks import sandbox_cluster_block
from sandbox.cluster import HOST, SUPERUSER
from tasks.emergency.high_load_plan import HighLoadParams, PlannedAction
from tasks.emergency.signal import signal_sessions
from tests.emergency.hl_sessions import Client
from tests.helpers import psql, save_slack_block, wait_for
from tests.webhook_server import start_webhook_server

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
PW = secrets.token_urlsafe(12)
ROLES = ("hl_app", "hl_excluded", "hl_nosignal")


@pytest.fixture(scope="module")
def world(sandbox, prefect_api):
    """Roles (hl_app, hl_excluded, hl_nosignal with pg_monitor but no pg_signal_backend), tables, a database."""
    with sandbox.connect("primary") as conn:
        for role in ROLES:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PW)))
        conn.execute("GRANT pg_monitor TO hl_nosignal")
        conn.execute("DROP DATABASE IF EXISTS hl_other")
        conn.execute("CREATE DATABASE hl_other OWNER hl_app")
        conn.execute("DROP DATABASE IF EXISTS hl_bench")
        conn.execute("CREATE DATABASE hl_bench OWNER hl_app")
        conn.execute("DROP TABLE IF EXISTS hl_idle, hl_chain, hl_ddl")
        conn.execute("CREATE TABLE hl_idle (id int PRIMARY KEY, v int)")
        conn.execute("CREATE TABLE hl_chain (id int PRIMARY KEY, v int)")
        conn.execute("CREATE TABLE hl_ddl (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO hl_idle VALUES (1, 0); INSERT INTO hl_chain VALUES (1, 0); "
                     "INSERT INTO hl_ddl VALUES (1, 0)")
        conn.execute("ALTER TABLE hl_idle OWNER TO hl_app; ALTER TABLE hl_chain OWNER TO hl_app; "
                     "ALTER TABLE hl_ddl OWNER TO hl_app")
    sandbox_cluster_block(sandbox, name="hl-sandbox").save("hl-sandbox", overwrite=True)
    nosignal = sandbox_cluster_block(sandbox, name="hl-nosignal").model_copy(
        update={"user": "hl_nosignal", "password": SecretStr(PW)})
    nosignal.save("hl-nosignal", overwrite=True)
    clients: list[Client] = []
    yield sandbox, clients
    for c in clients:
        c.close()
    with sandbox.connect("primary") as conn:
        conn.execute("DROP TABLE IF EXISTS hl_idle, hl_chain, hl_ddl")
        conn.execute("DROP DATABASE IF EXISTS hl_other WITH (FORCE)")
        conn.execute("DROP DATABASE IF EXISTS hl_bench WITH (FORCE)")
        for role in ROLES:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(autouse=True)
def _end_own_sessions(world):
    """Each test ends the sessions it started."""
    yield
    _, clients = world
    while clients:
        clients.pop().close()


def client(world, user="hl_app", **kw) -> Client:
    box, clients = world
    c = Client(box, user, box.config.password if user == SUPERUSER else PW, **kw)
    clients.append(c)
    return c


def ages_over(box, clients, seconds):
    pids = [c.pid for c in clients]
    rows = psql(box, "primary", "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND "
                "now() - coalesce(state_change, query_start) > make_interval(secs => %s)", (pids, seconds))
    return rows[0][0] == len(pids)


def waiting(box, *clients):
    pids = [c.pid for c in clients]
    rows = psql(box, "primary", "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) "
                "AND wait_event_type = 'Lock'", (pids,))
    return rows[0][0] == len(pids)


def by_pid(report):
    return {a.pid: a for a in report.actions}


def step(report, name):
    return next(s for s in report.steps if s.name == name)


async def _artifacts(key):
    async with get_client() as api:
        return await api.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def start_pgbench(box, seconds: int) -> subprocess.Popen:
    env = {**os.environ, "PGPASSWORD": PW, "PGHOST": HOST, "PGPORT": str(box.config.primary_port),
           "PGUSER": "hl_app", "PGDATABASE": "hl_bench"}
    subprocess.run([PGBENCH, "-i", "-q", "-s", "1"], env=env, check=True, capture_output=True, timeout=120)
    return subprocess.Popen([PGBENCH, "-n", "-c", "4", "-j", "2", "-T", str(seconds)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_long_queries_idle_transactions_and_exclusions_under_pgbench_load(world, slack):
    box, _ = world
    threshold = 6.0
    old_a = client(world, app="hl-old").run("SELECT pg_sleep(120)")
    time.sleep(0.5)
    old_b = client(world, app="hl-old").run("SELECT pg_sleep(121)")  # a different, younger age
    # Swallows query_canceled and sleeps on: only pg_terminate_backend ends it.
    stubborn = client(world, app="hl-stubborn").run(
        "DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$")
    idle_tx = client(world, app="hl-idle-tx", autocommit=False)
    idle_tx.now("UPDATE hl_idle SET v = v + 1 WHERE id = 1")      # holds a row lock, then idles
    excluded_role = client(world, user="hl_excluded", app="hl-old").run("SELECT pg_sleep(122)")
    superuser = client(world, user=SUPERUSER, app="hl-old").run("SELECT pg_sleep(123)")
    runbook_app = client(world, app="pg-runbooks/other-runbook").run("SELECT pg_sleep(124)")
    excluded_db = client(world, app="hl-old", dbname="hl_other").run("SELECT pg_sleep(125)")
    bench = start_pgbench(box, 90)
    try:
        wait_for(lambda: len(psql(box, "primary", "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                  "'pgbench'")) == 4, what="pgbench clients")
        bench_sessions = psql(box, "primary", "SELECT pid, backend_start FROM pg_stat_activity "
                              "WHERE application_name = 'pgbench'")
        olds = [old_a, old_b, stubborn, idle_tx, excluded_role, superuser, runbook_app, excluded_db]
        wait_for(lambda: ages_over(box, olds, threshold + 0.5), timeout=30, what="old sessions")
        young = client(world, app="hl-young").run("SELECT pg_sleep(126)")
        params = dict(long_query_seconds=threshold, idle_in_transaction_seconds=threshold, cancel_grace_seconds=1,
                      lock_wait_seconds=60, exclude_roles=["runbook_monitor", "hl_excluded"],
                      exclude_databases=["hl_other"], only_roles=["hl_app", "hl_excluded", SUPERUSER])

        plan = high_load_response(cluster_block="hl-sandbox", params=HighLoadParams(dry_run=True, **params))
        assert plan.status == "ok", plan.summary
        assert {a.pid: (a.action, a.result) for a in plan.actions} == {
            old_a.pid: ("cancel_then_terminate", "planned"), old_b.pid: ("cancel_then_terminate", "planned"),
            stubborn.pid: ("cancel_then_terminate", "planned"), idle_tx.pid: ("terminate", "planned")}
        assert plan.actions[0].pid == old_a.pid  # oldest first
        excluded = {e.pid: e.reason for e in plan.excluded}
        assert "excluded role hl_excluded" in excluded[excluded_role.pid]
        assert "superuser" in excluded[superuser.pid]
        assert "excluded application pg-runbooks/other-runbook" in excluded[runbook_app.pid]
        assert "excluded database hl_other" in excluded[excluded_db.pid]
        everyone = [*olds, young]
        assert all(c.alive() for c in everyone), "a dry run must end nothing"
        assert idle_tx.state()[0] == "idle in transaction"

        save_slack_block(slack, "hl-slack", "xoxb-ok-highload")
        report = high_load_response(cluster_block="hl-sandbox", params=HighLoadParams(dry_run=False, **params),
                                    slack_block="hl-slack")
        assert report.status == "ok", report.summary
        acted = {a.pid: a.result for a in report.actions}
        assert acted == {old_a.pid: "cancelled", old_b.pid: "cancelled", stubborn.pid: "terminated",
                         idle_tx.pid: "terminated"}
        assert stubborn.join() == "terminated" and not stubborn.alive()
        assert "after pg_cancel_backend" in by_pid(report)[stubborn.pid].detail
        assert old_a.join() == "cancelled" and old_b.join() == "cancelled"
        assert old_a.alive() and old_b.alive(), "a cancelled statement leaves its session connected"
        assert not idle_tx.alive()
        for survivor in (excluded_role, superuser, runbook_app, excluded_db, young):
            assert survivor.alive() and survivor.state()[0] == "active", survivor.conn.info.application_name
        assert bench.poll() is None, "pgbench must keep running"
        now = psql(box, "primary", "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name='pgbench'")
        assert sorted(now) == sorted(bench_sessions), "no pgbench session may be touched"
        assert report.remaining is not None and not report.remaining.persistent
        assert [c.done for c in report.checklist] == [True, True, False, True]

        audit = asyncio.run(_artifacts(report.audit_artifact_key))
        rows = json.loads(next(a for a in audit if str(a.flow_run_id) == report.flow_run_id).data)
        assert {(r["pid"], r["action"], r["result"]) for r in rows} == {
            (old_a.pid, "cancel_then_terminate", "cancelled"), (old_b.pid, "cancel_then_terminate", "cancelled"),
            (stubborn.pid, "cancel_then_terminate", "terminated"), (idle_tx.pid, "terminate", "terminated")}
        row = next(r for r in rows if r["pid"] == idle_tx.pid)
        assert row["user"] == "hl_app" and row["application"] == "hl-idle-tx" and row["client"] == "127.0.0.1"
        assert row["database"] == "postgres" and "UPDATE hl_idle" in row["query"] and row["step"]
        assert row["time"] and row["duration"].endswith("s")

        calls = slack.calls(token="xoxb-ok-highload")
        assert [c.method for c in calls] == ["chat.postMessage"] * 4 + ["chat.update"]
        thread = " ".join(c.raw for c in calls[1:4])
        assert str(idle_tx.pid) in thread and "Check active queries" in thread and "Consider scaling" in thread
        assert {c.body.get("thread_ts") for c in calls[1:4]} == {calls[-1].body["ts"]}
        assert "OK" in calls[-1].body["text"]
    finally:
        if bench.poll() is None:
            bench.terminate()
            bench.wait(10)
        for c in (excluded_role, superuser, runbook_app, excluded_db):
            c.close()


def test_lock_chains_root_blocker_policy_and_queued_ddl(world, slack):
    """Chain 1: idle-in-transaction root <- UPDATE <- UPDATE, ALTER TABLE queued, SELECT behind it: the root
    is terminated and everyone else completes. Chain 2: a long SELECT <- queued ALTER TABLE <- SELECT:
    the ALTER is cancelled, the long SELECT keeps running, the SELECT behind it completes."""
    box, _ = world
    root = client(world, app="hl-root", autocommit=False)
    root.now("UPDATE hl_chain SET v = v + 1 WHERE id = 1")
    upd1 = client(world, app="hl-upd1").run("UPDATE hl_chain SET v = v + 10 WHERE id = 1")
    wait_for(lambda: waiting(box, upd1), what="first waiter")
    upd2 = client(world, app="hl-upd2").run("UPDATE hl_chain SET v = v + 100 WHERE id = 1")
    wait_for(lambda: waiting(box, upd2), what="second waiter")
    alter = client(world, app="hl-alter").run("ALTER TABLE hl_chain ADD COLUMN c2 int")
    wait_for(lambda: waiting(box, alter), what="queued ALTER TABLE")
    reader = client(world, app="hl-reader").run("SELECT count(*) FROM hl_chain")

    long_select = client(world, app="hl-long").run("SELECT pg_sleep(60) FROM hl_ddl")
    wait_for(lambda: long_select.state()[0] == "active", what="long select")
    time.sleep(0.2)
    ddl = client(world, app="hl-ddl").run("ALTER TABLE hl_ddl ADD COLUMN c2 int")
    wait_for(lambda: waiting(box, ddl), what="queued DDL")
    behind = client(world, app="hl-behind").run("SELECT * FROM hl_ddl")
    wait_for(lambda: waiting(box, reader, behind), what="sessions behind the DDL")
    time.sleep(1.1)
    everyone = [root, upd1, upd2, alter, reader, long_select, ddl, behind]
    params = dict(long_query_seconds=3600, idle_in_transaction_seconds=3600, lock_wait_seconds=1,
                  cancel_grace_seconds=1, only_roles=["hl_app"])
    try:
        plan = high_load_response(cluster_block="hl-sandbox", params=HighLoadParams(dry_run=True, **params))
        assert {a.pid: (a.action, a.result) for a in plan.actions} == {
            root.pid: ("terminate", "planned"), ddl.pid: ("cancel", "planned")}
        chains = {c.root_pid: c for c in plan.chains}
        assert set(chains) == {root.pid, long_select.pid}
        chain1 = chains[root.pid]
        members = {m.pid: m for m in chain1.members}
        assert set(members) == {root.pid, upd1.pid, upd2.pid, alter.pid, reader.pid}
        assert members[root.pid].depth == 0 and members[root.pid].state == "idle in transaction"
        assert "RowExclusiveLock on hl_chain" in members[root.pid].held_locks
        assert members[alter.pid].waiting_mode == "AccessExclusiveLock"
        assert members[alter.pid].waiting_relation == "hl_chain"
        assert members[reader.pid].blocked_by == [alter.pid] and members[reader.pid].depth == 2
        assert all(m.waiting_seconds >= 1 for m in chain1.members if m.depth)
        assert "ALTER TABLE hl_chain" in members[alter.pid].query and members[upd1.pid].usename == "hl_app"
        chain2 = {m.pid: m for m in chains[long_select.pid].members}
        assert set(chain2) == {long_select.pid, ddl.pid, behind.pid}
        assert "terminate" in chain1.resolution and "cancel" in chains[long_select.pid].resolution
        assert all(c.alive() for c in everyone) and waiting(box, upd1, upd2, alter, reader, ddl, behind)

        hook = start_webhook_server()
        WebhookScaler(url=hook.url, bearer_token=SecretStr("hook-secret"), extra_payload={"size": "xl"}).save(
            "hl-hook", overwrite=True)
        save_slack_block(slack, "hl-slack-chain", "xoxb-ok-chain")
        report = high_load_response(cluster_block="hl-sandbox", params=HighLoadParams(dry_run=False, **params),
                                    scaler_block="webhook-scaler/hl-hook", slack_block="hl-slack-chain")
        hook.stop()
        assert report.status == "ok", report.summary
        assert {a.pid: a.result for a in report.actions} == {root.pid: "terminated", ddl.pid: "cancelled"}
        assert not root.alive()
        assert [upd1.join(), upd2.join(), alter.join(), reader.join()] == ["ok"] * 4
        assert ddl.join() == "cancelled" and behind.join() == "ok"
        assert long_select.alive() and long_select.state()[0] == "active", "the long SELECT keeps running"
        assert report.scale.status == "requested"
        body, headers = hook.requests[0]
        assert body["cluster"] == "hl-sandbox" and body["size"] == "xl" and body["dry_run"] is False
        assert body["waiting_sessions"] >= 6 and headers["Authorization"] == "Bearer hook-secret"
        assert [c.done for c in report.checklist] == [True, True, True, True]
        thread = " ".join(c.raw for c in slack.calls(token="xoxb-ok-chain"))
        assert f"pid+{root.pid}" in thread or f"pid {root.pid}" in thread
        assert "hook-secret" not in report.model_dump_json() and "hook-secret" not in thread
    finally:
        long_select.close()


def test_missing_pg_signal_backend_is_named_and_the_other_steps_still_run(world, slack):
    box, _ = world
    victim = client(world, app="hl-victim").run("SELECT pg_sleep(60)")
    wait_for(lambda: ages_over(box, [victim], 1.2), what="victim age")
    save_slack_block(slack, "hl-slack-fail", "xoxb-ok-nosignal")
    try:
        state = high_load_response(
            cluster_block="hl-nosignal", slack_block="hl-slack-fail", return_state=True,
            params=HighLoadParams(dry_run=False, long_query_seconds=1, cancel_grace_seconds=0.5, only_roles=["hl_app"]))
        assert state.is_failed()
        with pytest.raises(HighLoadStepsFailed) as raised:
            state.result()
        report = raised.value.report
        failed = step(report, "terminate-long-queries")
        assert failed.status == "failed"
        assert "pg_signal_backend" in failed.summary and "GRANT pg_signal_backend TO hl_nosignal" in failed.summary
        assert [s.status for s in report.steps] == ["ok", "failed", "ok", "ok", "ok"]
        assert by_pid(report)[victim.pid].result == "failed"
        assert report.remaining.long_queries >= 1 and report.status == "failed"
        assert "FAILED step(s): terminate-long-queries" in report.summary
        assert victim.alive() and victim.state()[0] == "active"
        calls = slack.calls(token="xoxb-ok-nosignal")
        assert "STEPS FAILED" in calls[-1].body["text"] and "pg_signal_backend" in calls[-1].raw
        assert report.artifact_key and report.audit_artifact_key
    finally:
        victim.close()


def test_pid_reuse_and_sessions_gone_between_plan_and_action(world, sandbox):
    """The plan's (pid, backend_start) no longer match: nothing is signalled, the result is 'gone'."""
    live = client(world, app="hl-reuse").run("SELECT pg_sleep(60)")
    ended = client(world, app="hl-ended")
    wait_for(lambda: live.state()[0] == "active", what="live session")
    target = sandbox_cluster_block(sandbox).primary_target()

    def planned(c: Client, backend_start, query_start=None) -> PlannedAction:
        return PlannedAction(step="long-queries", action="cancel_then_terminate", pid=c.pid,
                             backend_start=backend_start, query_start=query_start, usename="hl_app",
                             application_name="x", client_addr=HOST, datname="postgres", state="active",
                             duration_seconds=1.0,
                             query="SELECT pg_sleep(60)", reason="test")

    ended_pid = ended.pid
    ended.conn.close()
    wait_for(lambda: not ended.alive(), what="session end")
    query_start = psql(sandbox, "primary", "SELECT query_start FROM pg_stat_activity WHERE pid = %s", (live.pid,))[0][0]
    reused = planned(live, live.backend_start - timedelta(seconds=30), query_start)  # same pid, another session
    assert signal_sessions.fn(target, [planned(live, live.backend_start, query_start - timedelta(seconds=1))],
                              0.2, 1.0, SUPERUSER, True)[0].result == "gone", "another statement: not this one"
    try:
        results = signal_sessions.fn(target, [reused, planned(ended, ended.backend_start)], 0.2, 1.0, SUPERUSER, True)
        assert [(r.pid, r.result) for r in results] == [(live.pid, "gone"), (ended_pid, "gone")]
        assert live.alive() and live.state()[0] == "active"
    finally:
        live.close()


def test_a_connection_lost_mid_step_keeps_what_was_already_done(world, sandbox, monkeypatch):
    """The runbook's own signalling backend is terminated (a real lost connection) between its first and second
    signal: the retry, on a new connection, signals only the sessions not yet handled, and the first session
    keeps its 'cancelled' row (a retry of the whole step would re-check it and call it 'gone')."""
    import tasks.emergency.signal as signal_module

    victims = [client(world, app=f"hl-retry-{i}").run("SELECT pg_sleep(60)") for i in range(3)]
    for v in victims:
        wait_for(lambda v=v: v.state()[0] == "active", what="victim running")
    started = {r[0]: r[1] for r in psql(sandbox, "primary", "SELECT pid, query_start FROM pg_stat_activity "
                                        "WHERE pid = ANY(%s)", ([v.pid for v in victims],))}
    actions = [PlannedAction(step="long-queries", action="cancel", pid=v.pid, backend_start=v.backend_start,
                             query_start=started[v.pid], usename="hl_app", application_name="x", client_addr=HOST,
                             datname="postgres", state="active", duration_seconds=1.0, query="SELECT pg_sleep(60)",
                             reason="test") for v in victims]
    real_signal, calls, killed = signal_module._signal, [], []

    def signal_then_lose_connection(db, query, params):
        calls.append(params["pid"])
        if len(calls) == 2:  # after the first signal: the server ends the runbook's own backend
            killed.append(db.conn.info.backend_pid)
            assert psql(sandbox, "primary", "SELECT pg_terminate_backend(%s, 5000)", (killed[0],))[0][0]
        return real_signal(db, query, params)

    monkeypatch.setattr(signal_module, "_signal", signal_then_lose_connection)
    target = sandbox_cluster_block(sandbox).primary_target()
    results = signal_sessions(target, actions, 0.2, 1.0, SUPERUSER, True)  # the task, with its retries
    assert [(r.pid, r.result) for r in results] == [(v.pid, "cancelled") for v in victims]
    assert calls == [victims[0].pid, victims[1].pid, victims[1].pid, victims[2].pid]  # the first never again
    assert results[0].acted_at < results[1].acted_at
    for v in victims:
        wait_for(lambda v=v: v.state()[0] != "active", what="statement cancelled")
    assert psql(sandbox, "primary", "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (killed[0],))[0][0] == 0


def test_retries_that_run_out_still_return_every_result():
    """Bookkeeping only (the real path is above): when every retry fails, the step fails with the rows it
    obtained plus a 'failed' row for each session it never reached, instead of losing them."""
    from datetime import UTC, datetime

    from tasks.core.errors import ConnectionLost
    from tasks.emergency.signal import SignalProgress, SignalStepFailed, conclude, run_attempts

    now = datetime.now(UTC)
    actions = [PlannedAction(step="long-queries", action=act, pid=pid, backend_start=now, query_start=now,
                             usename="u", application_name="a", client_addr=None, datname="d", state="active",
                             duration_seconds=1.0, query="q", reason="test")
               for pid, act in ((1, "cancel"), (2, "cancel_then_terminate"), (3, "terminate"))]
    progress = SignalProgress()
    tries = []

    def attempt():
        tries.append(1)
        progress.attempts += 1  # as signal_attempt does
        if 1 not in progress.results:
            progress.results[1] = signal_module_result(actions[0])
            progress.pending[2] = actions[1]
        raise ConnectionLost("t", "server closed the connection unexpectedly", None)

    lost = run_attempts(attempt, retries=2, delay_seconds=0)
    assert len(tries) == 3 and isinstance(lost, ConnectionLost)
    with pytest.raises(SignalStepFailed) as failed:
        conclude("t", actions, progress, lost, "r", True)
    rows = failed.value.results
    assert [(r.pid, r.result) for r in rows] == [(1, "cancelled"), (2, "failed"), (3, "failed")]
    assert rows[1].detail.startswith("cancelled, then not terminated") and rows[2].detail.startswith("not signalled")
    assert "2 of 3 session(s) not signalled after 3 attempt(s)" in failed.value.detail
    assert failed.value.cause is lost and failed.value.action == lost.action


def signal_module_result(a: PlannedAction):
    from tasks.emergency.signal import _result

    return _result(a, "cancelled")


def test_blast_radius_and_pgbouncer_pool_scaler(world, sandbox):
    box, _ = world
    sleepers = []
    for i in range(4):
        sleepers.append(client(world, app=f"hl-blast-{i}").run("SELECT pg_sleep(60)"))
        time.sleep(0.05)
    wait_for(lambda: ages_over(box, sleepers, 1.2), what="sleepers' age")
    PgBouncerPoolScaler(host=HOST, port=box.config.pgbouncer_port, user=SUPERUSER,
                        password=SecretStr(box.config.password), step=10, max_pool_size=25).save(
        "hl-pool", overwrite=True)
    console = dict(dbname="pgbouncer", prepare_threshold=None, autocommit=True)
    try:
        report = high_load_response(cluster_block="hl-sandbox", scaler_block="pgbouncer-pool-scaler/hl-pool",
                                    params=HighLoadParams(dry_run=False, long_query_seconds=1, max_sessions=2,
                                                          cancel_grace_seconds=0.5, lock_wait_seconds=60,
                                                          only_roles=["hl_app"]))
        results = {a.pid: a.result for a in report.actions}
        assert results == {sleepers[0].pid: "cancelled", sleepers[1].pid: "cancelled",
                           sleepers[2].pid: "skipped", sleepers[3].pid: "skipped"}
        assert [s.join(0.1) for s in sleepers[:2]] == ["cancelled", "cancelled"]
        assert all(s.state()[0] == "active" for s in sleepers[2:]), "over the limit: left alone"
        assert report.remaining.long_queries == 2 and "limit of 2" in report.summary
        assert (report.scale.status, report.scale.before, report.scale.after) == ("scaled", 20, 25)
        assert box.config.password not in report.model_dump_json()
        with box.connect("pgbouncer", **console) as conn:
            size = dict((r[0], r[1]) for r in conn.execute("SHOW CONFIG").fetchall())["default_pool_size"]
            assert size == "25"
        again = high_load_response(cluster_block="hl-sandbox", scaler_block="pgbouncer-pool-scaler/hl-pool",
                                   params=HighLoadParams(dry_run=True, long_query_seconds=1, lock_wait_seconds=60,
                                                         only_roles=["hl_app"]))
        assert again.scale.status == "at_max" and again.checklist[2].done
    finally:
        for s in sleepers:
            s.close()
        with box.connect("pgbouncer", **console) as conn:
            conn.execute("SET default_pool_size = 20")


def test_a_bad_scaler_block_fails_only_its_step(world):
    state = high_load_response(cluster_block="hl-sandbox", scaler_block="no-slash-here", return_state=True,
                               params=HighLoadParams(dry_run=True))
    assert state.is_failed()
    with pytest.raises(HighLoadStepsFailed) as raised:
        state.result()
    report = raised.value.report
    assert [s.status for s in report.steps] == ["ok", "ok", "ok", "failed"]
    assert "<block-type-slug>/<block-name>" in step(report, "increase-resources").summary


@pytest.mark.parametrize("status, transient", [(400, False), (503, True)])
def test_webhook_scaler_refusal_is_a_typed_error(prefect_api, status, transient):
    from tasks.emergency.scale import ScaleRequest, ScalerError, scale_up

    hook = start_webhook_server(status)
    try:
        WebhookScaler(url=hook.url).save("hl-hook-bad", overwrite=True)
        request = ScaleRequest(cluster="c", reason="r", dry_run=False, active_sessions=1, waiting_sessions=0)
        with pytest.raises(ScalerError) as raised:
            scale_up.fn("webhook-scaler/hl-hook-bad", request)
        assert f"HTTP {status}" in str(raised.value) and raised.value.transient is transient
        planned = scale_up.fn("webhook-scaler/hl-hook-bad", request.model_copy(update={"dry_run": True}))
        assert planned.status == "planned" and len(hook.requests) == 1, "a dry run sends nothing"
    finally:
        hook.stop()


def test_the_run_form_has_bounds_and_descriptions():
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(high_load_response.fn).model_dump_for_openapi()
    fields = schema["definitions"]["HighLoadParams"]["properties"]
    assert fields["long_query_seconds"]["minimum"] == 1 and fields["max_sessions"]["maximum"] == 1000
    assert fields["dry_run"]["default"] is True and fields["active_root_blocker"]["enum"]
    assert all(f.get("description") for f in fields.values())
    assert set(schema["properties"]) == {"cluster_block", "params", "scaler_block", "slack_block", "alert"}


def test_deployment_is_on_demand_with_one_run_at_a_time():
    from pathlib import Path

    import yaml
    from prefect.cli.deploy._models import PrefectYamlModel

    config = PrefectYamlModel.model_validate(yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "prefect.yaml").read_text()))
    deployment = next(d for d in config.deployments if d.name == "high-load-response")
    assert deployment.entrypoint == "flows/high_load_response.py:high_load_response"
    assert not deployment.schedules and not deployment.schedule
    assert (deployment.concurrency_limit.limit, deployment.concurrency_limit.collision_strategy) == (1, "CANCEL_NEW")


def test_runs_from_the_api_through_its_deployment_and_rejects_bad_thresholds(world):
    """What the UI's Run button and incident tooling do: create a flow run of the deployment via the API."""
    import httpx
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    async def scenario():
        runner = Runner(query_seconds=1)
        await runner.aadd_flow(high_load_response, name="api-test")
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await run_deployment("high-load-response/api-test", timeout=0,
                                 parameters={"cluster_block": "hl-sandbox", "params": {"long_query_seconds": 0}})
        assert refused.value.response.status_code == 409  # out of range: no run is created
        created = await run_deployment("high-load-response/api-test", timeout=0,
                                       parameters={"cluster_block": "hl-sandbox", "params": {"dry_run": True}})
        await runner.start(run_once=True)
        async with get_client() as api:
            return await api.read_flow_run(created.id)

    flow_run = asyncio.run(scenario())
    assert flow_run.state.is_completed(), flow_run.state
