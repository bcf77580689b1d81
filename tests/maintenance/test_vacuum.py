"""Vacuum runbook against the real sandbox: only what needs it, hostile names, locked tables."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from prefect.artifacts import Artifact
from psycopg import sql

from flows.vacuum import vacuum as vacuum_flow
from tasks.core.errors import UnknownObject
from tasks.core.relations import parse_qualified_name
from tasks.maintenance.maintenance_log import read_maintenance_log
from tasks.maintenance.vacuum import FreezeLimits, TableVacuumState
from tasks.maintenance.vacuum_plan import VacuumParams, select_candidates
from tests.helpers import psql, wait_horizon, wait_table_stats

pytestmark = pytest.mark.versioned  # database-facing, version-dependent: run on 14 and 18 too

SCHEMA = "vac_t"
HOSTILE = 'We"ird; DROP TABLE x; --'
UNICODE = "Ünïcode Tab"
LIMITS = FreezeLimits(autovacuum_freeze_max_age=200_000_000, autovacuum_multixact_freeze_max_age=400_000_000)


def vacuum(**kwargs):
    """The vacuum flow (async: see flows/vacuum.py) run to its end from this synchronous test."""
    return asyncio.run(vacuum_flow(**kwargs))


def _stats(box, schema: str, table: str):
    rows = psql(box, "primary",
                "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s",
                (schema, table))
    return rows[0]


def _all_vacuum_counts(box) -> dict[str, int]:
    rows = psql(box, "primary", "SELECT schemaname || '.' || relname, vacuum_count FROM pg_stat_user_tables")
    return dict(rows)


@pytest.fixture(scope="module")
def vac_tables(sandbox):
    """Tables with dead tuples (including hostile names), a clean one, a decoy named 'x'."""
    with sandbox.connect("primary") as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        for name in ("dirty", "clean", "x", HOSTILE, UNICODE, "Locked"):
            ident = sql.Identifier(SCHEMA, name)
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off)")
                         .format(ident))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, repeat('p', 50) FROM generate_series(1, 5000) g")
                         .format(ident))
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))
        for name in ("dirty", HOSTILE, UNICODE, "Locked"):
            conn.execute(sql.SQL("DELETE FROM {} WHERE id % 2 = 0").format(sql.Identifier(SCHEMA, name)))
    wait_horizon(sandbox)
    wait_table_stats(sandbox, f"count(*) FILTER (WHERE schemaname = '{SCHEMA}' AND n_dead_tup >= 2500) = 4")
    yield SCHEMA
    psql(sandbox, "primary", sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


def test_parse_qualified_name_is_postgresql_syntax_or_structured():
    assert parse_qualified_name('vac_t."We""ird; DROP TABLE x; --"') == ("vac_t", HOSTILE)
    assert parse_qualified_name('"my.schema"."A""b.c"') == ("my.schema", 'A"b.c')
    assert parse_qualified_name('"Ünïcode Tab"') == ("public", "Ünïcode Tab")
    assert parse_qualified_name("Vac_T.Dirty") == ("vac_t", "dirty")  # unquoted folds, as in SQL
    assert parse_qualified_name({"schema": "vac_t", "name": HOSTILE}) == ("vac_t", HOSTILE)
    for bad in ("schema.", "Ünïcode Tab", "a.b.c", 'x."open'):
        with pytest.raises(ValueError):
            parse_qualified_name(bad)


def test_selection_orders_wraparound_first_and_skips_clean_tables():
    def state(name, **kw):
        return TableVacuumState(oid=hash(name) % 10_000, schema_name="s", table_name=name, **kw)

    states = [
        state("clean", n_live_tup=10_000, n_dead_tup=10),
        state("dead", n_live_tup=10_000, n_dead_tup=5_000),
        state("old", n_live_tup=10, xid_age=190_000_000),
        state("stale", n_live_tup=10_000, n_mod_since_analyze=9_000),
        state("older-mxid", mxid_age=390_000_000),
    ]
    chosen = select_candidates(states, VacuumParams(), LIMITS)
    assert [c.table for c in chosen] == ["s.older-mxid", "s.old", "s.dead", "s.stale"]
    assert chosen[0].priority == "wraparound" and "relminmxid" in chosen[0].reasons[0]
    assert select_candidates(states, VacuumParams(max_tables=1), LIMITS)[0].table == "s.older-mxid"


def test_wraparound_order_compares_each_age_with_its_own_limit():
    # Raw ages would put the multixact table first (300M > 180M); as shares of their own limits the
    # xid table is closer: 180M / 200M = 90 % against 300M / 400M = 75 %.
    def state(name, **kw):
        return TableVacuumState(oid=hash(name) % 10_000, schema_name="s", table_name=name, **kw)

    states = [state("mxid-75", mxid_age=300_000_000), state("xid-90", xid_age=180_000_000),
              state("both-80-85", xid_age=160_000_000, mxid_age=340_000_000),
              state("xid-70", xid_age=140_000_000, mxid_age=100)]
    chosen = select_candidates(states, VacuumParams(freeze_age_fraction=0.5), LIMITS)
    assert [c.table for c in chosen] == ["s.xid-90", "s.both-80-85", "s.mxid-75", "s.xid-70"]
    assert all(c.priority == "wraparound" for c in chosen)
    wide = FreezeLimits(autovacuum_freeze_max_age=200_000_000, autovacuum_multixact_freeze_max_age=2_000_000_000)
    assert select_candidates(states, VacuumParams(freeze_age_fraction=0.01), wide)[0].table == "s.xid-90"


def test_vacuums_what_needs_it_and_nothing_else(sandbox, cluster_block, vac_tables, tmp_path):
    before = _all_vacuum_counts(sandbox)
    report = vacuum(cluster_block=cluster_block, params=VacuumParams(
        min_dead_tuples=100, modified_ratio=5, log_dir=str(tmp_path), concurrency=2))
    after = _all_vacuum_counts(sandbox)
    changed = {t for t in after if after[t] != before.get(t)}
    expected = {f"{SCHEMA}.dirty", f"{SCHEMA}.{HOSTILE}", f"{SCHEMA}.{UNICODE}", f"{SCHEMA}.Locked"}
    assert expected <= changed
    assert f"{SCHEMA}.clean" not in changed and f"{SCHEMA}.x" not in changed
    by_table = {r.table: r for r in report.results}
    assert by_table[f"{SCHEMA}.dirty"].status == "vacuumed"
    assert by_table[f"{SCHEMA}.dirty"].dead_before >= 2500 and by_table[f"{SCHEMA}.dirty"].dead_after < 1000
    assert f"{SCHEMA}.clean" not in by_table
    assert report.status == "ok" and "vacuumed" in report.summary
    log = read_maintenance_log(str(tmp_path))
    assert {r["table"] for r in log} == set(by_table) and all(r["runbook"] == "vacuum" for r in log)
    assert psql(sandbox, "primary", sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(SCHEMA, "x")))[0][0] == 5000
    bar = Artifact.get(f"vacuum-progress-{report.cluster}")  # the progress bar ends at what was done
    assert bar.type == "progress" and bar.data == 100.0, bar
    assert f"{len(report.results)} of {len(report.results)} tables" in bar.description
    assert f"finished: {report.count('vacuumed')} vacuumed" in bar.description
    assert report.artifact_key and "**What was done:**" in Artifact.get(report.artifact_key).data
    import json

    table = json.loads(Artifact.get(f"{report.artifact_key}-log").data)  # the per-table records stay
    assert sorted(r["table"] for r in table) == sorted(by_table), table


def test_hostile_name_vacuums_that_table_only(sandbox, cluster_block, vac_tables, tmp_path):
    before = _all_vacuum_counts(sandbox)
    report = vacuum(cluster_block=cluster_block, params=VacuumParams(
        tables=[{"schema": SCHEMA, "name": HOSTILE}, f'{SCHEMA}."{UNICODE}"'], log_dir=str(tmp_path)))
    after = _all_vacuum_counts(sandbox)
    changed = {t for t in after if after[t] != before.get(t)}
    assert changed == {f"{SCHEMA}.{HOSTILE}", f"{SCHEMA}.{UNICODE}"}
    assert [r.status for r in report.results] == ["vacuumed", "vacuumed"]
    assert psql(sandbox, "primary", "SELECT to_regclass('vac_t.x') IS NOT NULL")[0][0]


def test_unknown_table_is_a_clear_error_and_nothing_is_vacuumed(sandbox, cluster_block, vac_tables, tmp_path):
    before = _all_vacuum_counts(sandbox)
    with pytest.raises(UnknownObject) as info:
        vacuum(cluster_block=cluster_block, params=VacuumParams(
            tables=[f"{SCHEMA}.dirty", f"{SCHEMA}.nope"], log_dir=str(tmp_path)))
    assert "no table vac_t.nope" in str(info.value) and "nothing was changed" in str(info.value)
    assert _all_vacuum_counts(sandbox) == before


def test_locked_table_is_skipped_and_reported_others_vacuumed(sandbox, cluster_block, vac_tables, tmp_path,
                                                              slack):
    from tests.helpers import save_slack_block

    psql(sandbox, "primary", sql.SQL("DELETE FROM {} WHERE id % 3 = 0").format(sql.Identifier(SCHEMA, "Locked")))
    psql(sandbox, "primary", sql.SQL("DELETE FROM {} WHERE id % 3 = 0").format(sql.Identifier(SCHEMA, "dirty")))
    wait_horizon(sandbox)
    holder = psycopg.connect(sandbox.conninfo("primary"))
    holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(SCHEMA, "Locked")))
    try:
        before = _stats(sandbox, SCHEMA, "dirty")[0]
        report = vacuum(cluster_block=cluster_block, slack_block=save_slack_block(slack, "vac-slack", "xoxb-ok-vacuum"),
                        params=VacuumParams(tables=[f'{SCHEMA}."Locked"', f"{SCHEMA}.dirty"], lock_timeout_ms=300,
                                            log_dir=str(tmp_path)))
    finally:
        holder.rollback()
        holder.close()
    by_table = {r.table: r for r in report.results}
    assert by_table[f"{SCHEMA}.Locked"].status == "skipped-locked"
    assert by_table[f"{SCHEMA}.dirty"].status == "vacuumed"
    assert _stats(sandbox, SCHEMA, "dirty")[0] == before + 1
    assert report.status == "warning" and "1 skipped because locked" in report.summary
    assert report.notification.ok and any("Locked" in c.raw for c in slack.calls())


def test_window_already_over_starts_nothing(sandbox, cluster_block, vac_tables, tmp_path):
    before = _all_vacuum_counts(sandbox)
    report = vacuum(cluster_block=cluster_block, params=VacuumParams(
        tables=[f"{SCHEMA}.dirty"], window_minutes=0.0001, log_dir=str(tmp_path)))
    # A 6 ms window is over before the first table's turn, or the table starts within it.
    assert all(r.status in ("skipped-window", "vacuumed") for r in report.results)
    if report.results[0].status == "skipped-window":
        assert _all_vacuum_counts(sandbox) == before and "maintenance window" in report.summary


def test_window_ending_during_the_first_table_skips_the_rest(sandbox, cluster_block, vac_tables, tmp_path):
    """Deterministic: one table at a time; the first one's VACUUM (FREEZE) waits for a buffer pin that
    another session holds (SKIP_LOCKED does not skip that) until the window is certainly over. It started
    inside the window, so it finishes; the tables after it are not started and are reported skipped."""
    import threading
    import time

    from tasks.maintenance.vacuum import VacuumOptions
    from tests.helpers import wait_for

    slow = sql.Identifier(SCHEMA, "Slow")
    psql(sandbox, "primary", sql.SQL("CREATE TABLE {} (id int) WITH (autovacuum_enabled = off)").format(slow))
    psql(sandbox, "primary", sql.SQL("INSERT INTO {} SELECT generate_series(1, 1000)").format(slow))
    wait_horizon(sandbox)  # the rows are older than every xmin horizon: FREEZE must freeze them
    pinner = psycopg.connect(sandbox.conninfo("primary"))
    pinner.execute(sql.SQL("DECLARE pin CURSOR FOR SELECT * FROM {}").format(slow))
    pinner.execute("FETCH 1 FROM pin")  # holds a pin on the first page: a freezing VACUUM waits for it
    seen: list[float] = []
    window_s = 4.5

    def release_after_the_window():
        try:
            wait_for(lambda: psql(sandbox, "primary", "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'BufferPin' "
                                                      "AND query LIKE 'VACUUM%%'"), timeout=30, interval=0.02)
            seen.append(time.time())
            time.sleep(window_s + 0.3)  # the window started before the VACUUM began waiting: it is over now
        finally:
            pinner.execute("CLOSE pin")

    releaser = threading.Thread(target=release_after_the_window)
    before = _all_vacuum_counts(sandbox)
    releaser.start()
    try:
        report = vacuum(cluster_block=cluster_block, params=VacuumParams(
            tables=[f'{SCHEMA}."Slow"', f"{SCHEMA}.dirty", f'{SCHEMA}."{UNICODE}"'], concurrency=1, batch_tables=1,
            window_minutes=window_s / 60, options=VacuumOptions(freeze=True), log_dir=str(tmp_path)))
        status = {r.table: r.status for r in report.results}
        assert status == {f"{SCHEMA}.Slow": "vacuumed", f"{SCHEMA}.dirty": "skipped-window",
                          f"{SCHEMA}.{UNICODE}": "skipped-window"}, report.results
        wait_for(lambda: _all_vacuum_counts(sandbox).get(f"{SCHEMA}.Slow") == 1, what="Slow's vacuum counted")
        after = _all_vacuum_counts(sandbox)
    finally:
        releaser.join(40)
        pinner.close()
        psql(sandbox, "primary", sql.SQL("DROP TABLE IF EXISTS {}").format(slow))
    assert seen, "the first table's VACUUM started inside the window and waited for the pin"
    assert {t for t, n in after.items() if n != before.get(t, 0)} == {f"{SCHEMA}.Slow"}, "only Slow was vacuumed"
    assert report.status == "warning" and "2 not started before the maintenance window ended" in report.summary
    assert {r["table"]: r["status"] for r in read_maintenance_log(str(tmp_path))} == status
    bar = Artifact.get(f"vacuum-progress-{report.cluster}")  # the bar stays where the window stopped the run
    assert bar.data == round(100 / 3, 1) and "1 of 3 tables" in bar.description, bar
    assert f"stopped: the maintenance window ended before {SCHEMA}.dirty" in bar.description, bar.description


def test_dry_run_changes_nothing(sandbox, cluster_block, vac_tables):
    psql(sandbox, "primary", sql.SQL("DELETE FROM {} WHERE id % 5 = 0").format(sql.Identifier(SCHEMA, "dirty")))
    wait_table_stats(sandbox, f"bool_or(schemaname = '{SCHEMA}' AND relname = 'dirty' AND n_dead_tup >= 100)")
    before = _all_vacuum_counts(sandbox)
    report = vacuum(cluster_block=cluster_block, params=VacuumParams(dry_run=True, min_dead_tuples=100))
    assert f"{SCHEMA}.dirty" in report.planned and report.results[0].status == "planned"
    assert _all_vacuum_counts(sandbox) == before


def test_role_without_the_grant_fails_that_table_clearly(sandbox, monitor_cluster_block, vac_tables, tmp_path,
                                                         slack):
    from sandbox.cluster import MONITOR_ROLE
    from tests.helpers import save_slack_block

    psql(sandbox, "primary", sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
        sql.Identifier(SCHEMA), sql.Identifier(MONITOR_ROLE)))
    before = _all_vacuum_counts(sandbox)
    report = vacuum(cluster_block=monitor_cluster_block, slack_block=save_slack_block(slack, "vac-s2", "xoxb-ok-v2"),
                    params=VacuumParams(tables=[f"{SCHEMA}.dirty"], log_dir=str(tmp_path)))
    assert _all_vacuum_counts(sandbox) == before
    r = report.results[0]
    assert r.status == "failed" and "permission denied" in r.error and "owner" in r.error
    assert report.status == "critical" and "1 failed" in report.summary
    assert report.notification.ok and slack.calls("chat.postMessage")


def test_vacuum_statement_options_by_server_version(sandbox):
    from tasks.core.relations import RelationRef
    from tasks.maintenance.vacuum import VacuumOptions, vacuum_statement

    ref = RelationRef(oid=1, schema_name="s", name=HOSTILE)
    opts = VacuumOptions(analyze=True, freeze=True, index_cleanup="off", parallel=2)
    with sandbox.connect("primary") as conn:
        text = vacuum_statement(ref, opts, 150000).as_string(conn)
        old = vacuum_statement(ref, opts, 110000).as_string(conn)
    assert text == ('VACUUM (ANALYZE, FREEZE, SKIP_LOCKED, INDEX_CLEANUP OFF, PARALLEL 2) '
                    '"s"."We""ird; DROP TABLE x; --"')
    assert old == 'VACUUM (ANALYZE, FREEZE) "s"."We""ird; DROP TABLE x; --"'


def test_lanes_share_the_work_in_order_and_take_nothing_after_the_deadline():
    import threading
    import time

    from tasks.core.bounded import WorkQueue

    queue = WorkQueue(list(range(40)))
    taken: dict[str, list[int]] = {"slow": [], "fast": []}
    fast_done = threading.Event()

    def slow() -> None:  # takes one item and is held on it until the other lane has done the rest
        for _, item in queue:
            taken["slow"].append(item)
            fast_done.wait(30)

    def fast() -> None:
        for index, item in queue:
            assert index == item
            taken["fast"].append(item)
        fast_done.set()

    lanes = [threading.Thread(target=slow), threading.Thread(target=fast)]
    [t.start() for t in lanes]
    [t.join() for t in lanes]
    assert sorted(taken["slow"] + taken["fast"]) == list(range(40))  # each item once
    assert len(taken["slow"]) <= 1  # the free lane took everything the held one could not
    assert queue.not_started() == [] and queue.take() is None
    late = WorkQueue(list(range(5)), time.time() - 1)
    assert late.take() is None and late.not_started() == list(range(5))
    timed = WorkQueue(list(range(100)), time.time() + 0.05)
    done = [item for _, item in ((i, time.sleep(0.01) or x) for i, x in timed)]
    assert done and timed.not_started() and done + timed.not_started() == list(range(100))


def test_a_batch_on_its_held_connection_carries_on_after_a_locked_table(sandbox, cluster_block, vac_tables):
    from blocks.postgres_cluster import PostgresCluster
    from tasks.maintenance.vacuum import VacuumOptions, VacuumSessions, resolve_tables, vacuum_tables

    for name in ("Locked", "dirty", UNICODE):
        psql(sandbox, "primary", sql.SQL("DELETE FROM {} WHERE id % 7 = 0").format(sql.Identifier(SCHEMA, name)))
    wait_horizon(sandbox)
    holder = psycopg.connect(sandbox.conninfo("primary"))
    holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(SCHEMA, "Locked")))
    try:
        before = _all_vacuum_counts(sandbox)
        target = PostgresCluster.load(cluster_block).primary_target()
        refs = resolve_tables.fn(target, [f'{SCHEMA}."Locked"', f"{SCHEMA}.dirty", f'{SCHEMA}."{UNICODE}"'])
        with VacuumSessions(target, 300, 60_000) as sessions:
            results = vacuum_tables.fn(target, refs, VacuumOptions(), 300, 60_000, None, sessions)
            results += vacuum_tables.fn(target, refs[1:2], VacuumOptions(), 300, 60_000, None, sessions)
    finally:
        holder.rollback()
        holder.close()
    assert [r.status for r in results] == ["skipped-locked", "vacuumed", "vacuumed", "vacuumed"]
    assert sessions.opened == 1, "one connection held for the slot, across batches and after the locked table"
    after = _all_vacuum_counts(sandbox)
    assert {t for t in after if after[t] != before.get(t)} == {f"{SCHEMA}.dirty", f"{SCHEMA}.{UNICODE}"}
    assert after[f"{SCHEMA}.dirty"] == before[f"{SCHEMA}.dirty"] + 2


def test_unwritable_maintenance_log_is_reported_alerted_and_fails_the_run(sandbox, cluster_block, vac_tables,
                                                                          tmp_path, slack):
    from tasks.maintenance.maintenance_log import MaintenanceLogFailed
    from tests.helpers import save_slack_block

    (tmp_path / "a-file").write_text("not a directory")
    state = vacuum(cluster_block=cluster_block, slack_block=save_slack_block(slack, "vac-logfail", "xoxb-ok-vlog"),
                   params=VacuumParams(tables=[f"{SCHEMA}.dirty"], log_dir=str(tmp_path / "a-file" / "logs")),
                   return_state=True)
    assert state.is_failed()
    with pytest.raises(MaintenanceLogFailed) as raised:
        state.result()
    report = raised.value.report
    assert [r.status for r in report.results] == ["vacuumed"]  # the work itself was done
    assert report.log_path is None and "maintenance log was NOT written" in report.log_error
    assert "Not a directory" in report.log_error and report.status == "critical"
    assert report.log_error in report.summary and report.artifact_key
    assert report.notification.ok
    assert any("maintenance log was NOT written" in c.raw for c in slack.calls("chat.postMessage"))


def test_a_cancelled_or_terminated_vacuum_fails_that_table_and_the_batch_goes_on(sandbox, cluster_block,
                                                                               vac_tables):
    """One batch on one held connection: the first VACUUM (FREEZE) waits for a buffer pin and an operator
    cancels it (pg_cancel_backend): that table is failed with the reason, the next runs on the same connection;
    the same table's second VACUUM is terminated (pg_terminate_backend): failed too, and the next table gets a
    new connection. Ground truth: pg_stat_user_tables.vacuum_count."""
    import threading

    from blocks.postgres_cluster import PostgresCluster
    from tasks.maintenance.vacuum import VacuumOptions, VacuumSessions, resolve_tables, vacuum_tables
    from tests.helpers import wait_for

    pinned = sql.Identifier(SCHEMA, "Pinned")
    psql(sandbox, "primary", sql.SQL("CREATE TABLE {} (id int) WITH (autovacuum_enabled = off)").format(pinned))
    psql(sandbox, "primary", sql.SQL("INSERT INTO {} SELECT generate_series(1, 1000)").format(pinned))
    for name in ("dirty", UNICODE):
        psql(sandbox, "primary", sql.SQL("DELETE FROM {} WHERE id % 11 = 0").format(sql.Identifier(SCHEMA, name)))
    wait_horizon(sandbox)  # the rows are older than every xmin horizon: FREEZE must freeze them
    pinner = psycopg.connect(sandbox.conninfo("primary"))
    pinner.execute(sql.SQL("DECLARE pin CURSOR FOR SELECT * FROM {}").format(pinned))
    pinner.execute("FETCH 1 FROM pin")  # holds a pin on the first page: a freezing VACUUM waits for it
    waiting = ("SELECT pid, query_start FROM pg_stat_activity WHERE wait_event = 'BufferPin' "
               "AND query LIKE 'VACUUM%%'")
    stopped: list[str] = []

    def operator():
        for how in ("pg_cancel_backend", "pg_terminate_backend"):
            wait_for(lambda: psql(sandbox, "primary", waiting), timeout=30, interval=0.02, what="a VACUUM waiting")
            pid, started = psql(sandbox, "primary", waiting)[0]
            psql(sandbox, "primary", sql.SQL("SELECT {}(%s)").format(sql.Identifier(how)), (pid,))
            stopped.append(how)
            wait_for(lambda stopped_one=(pid, started): stopped_one not in psql(sandbox, "primary", waiting),
                     timeout=30, interval=0.02, what="that VACUUM stopped")

    thread = threading.Thread(target=operator)
    target = PostgresCluster.load(cluster_block).primary_target()
    names = [f'{SCHEMA}."Pinned"', f"{SCHEMA}.dirty", f'{SCHEMA}."Pinned"', f'{SCHEMA}."{UNICODE}"']
    before = _all_vacuum_counts(sandbox)
    thread.start()
    try:
        refs = resolve_tables.fn(target, names)
        with VacuumSessions(target, 2_000, 60_000) as sessions:
            results = vacuum_tables.fn(target, refs, VacuumOptions(freeze=True), 2_000, 60_000, None, sessions)
    finally:
        thread.join(60)
        pinner.close()
    after = _all_vacuum_counts(sandbox)
    psql(sandbox, "primary", sql.SQL("DROP TABLE IF EXISTS {}").format(pinned))
    assert stopped == ["pg_cancel_backend", "pg_terminate_backend"]
    assert [r.status for r in results] == ["failed", "vacuumed", "failed", "vacuumed"], results
    assert "cancel" in results[0].error.lower(), results[0].error
    assert results[2].error and results[2].summary.startswith(f"{SCHEMA}.Pinned failed"), results[2]
    assert sessions.opened == 2, "the terminated connection was replaced once, for the table after it"
    assert {t for t in after if after[t] != before.get(t, 0)} == {f"{SCHEMA}.dirty", f"{SCHEMA}.{UNICODE}"}


def test_a_missing_synchronous_standby_never_holds_the_vacuum(sandbox, cluster_block, vac_tables):
    """synchronous_standby_names names a standby that is not there, so every ordinary commit would wait for it
    forever. The run's connections commit with synchronous_commit off (the default) or local (as autovacuum),
    so each VACUUM (ANALYZE) ends and the table is vacuumed (ground truth: vacuum_count)."""
    import threading

    from blocks.postgres_cluster import PostgresCluster
    from tasks.maintenance.vacuum import VacuumOptions, VacuumSessions, resolve_tables, vacuum_tables
    from tests.helpers import wait_for

    target = PostgresCluster.load(cluster_block).primary_target()
    refs = resolve_tables.fn(target, [f"{SCHEMA}.clean"])
    results: dict[str, object] = {}

    def run(mode: str) -> None:
        with VacuumSessions(target, 2_000, 60_000, mode) as sessions:
            with sessions.lease() as s:
                results[f"{mode}-setting"] = s.scalar("SHOW synchronous_commit")
            results[mode] = vacuum_tables.fn(target, refs, VacuumOptions(), 2_000, 60_000, None, sessions)

    psql(sandbox, "primary", "ALTER SYSTEM SET synchronous_standby_names = 'pgrb_no_such_standby'")
    psql(sandbox, "primary", "SELECT pg_reload_conf()")
    try:
        for mode in ("off", "local"):
            before = _stats(sandbox, SCHEMA, "clean")[0]
            worker = threading.Thread(target=run, args=(mode,), daemon=True)
            worker.start()
            worker.join(60)
            assert not worker.is_alive(), f"synchronous_commit={mode}: the VACUUM waited for the missing standby"
            assert results[f"{mode}-setting"] == mode
            assert [r.status for r in results[mode]] == ["vacuumed"], results[mode]
            wait_for(lambda before=before: _stats(sandbox, SCHEMA, "clean")[0] == before + 1,
                     what=f"the vacuum counted (synchronous_commit={mode})")
    finally:
        psql(sandbox, "primary", "ALTER SYSTEM RESET synchronous_standby_names")
        psql(sandbox, "primary", "SELECT pg_reload_conf()")


def test_a_vacuum_result_is_a_leaf_for_prefect_and_whole_for_everything_else():
    """Prefect's walk of a flow's return value stops at each per-table record (tasks/core/records.py), and the
    record still dumps, compares, copies and pickles whole."""
    import copy
    import pickle
    from datetime import UTC, datetime

    from prefect.utilities.collections import visit_collection

    from tasks.maintenance.vacuum import VacuumResult
    from tasks.maintenance.vacuum_plan import VacuumReport

    result = VacuumResult(table="s.t", status="vacuumed", started_at=datetime.now(UTC), dead_before=3, dead_after=0)
    report = VacuumReport(cluster="c", started_at=datetime.now(UTC), results=[result] * 3)
    visited: list = []
    visit_collection(report, visit_fn=lambda x: visited.append(x) or x, return_data=False)
    assert sum(isinstance(x, VacuumResult) for x in visited) == 3
    assert not any(x == "s.t" or x == 3 for x in visited), "the walk went into a record's fields"
    assert result.model_dump()["dead_before"] == 3
    assert VacuumResult.model_validate_json(result.model_dump_json()) == result
    assert copy.deepcopy(result) == result == pickle.loads(pickle.dumps(result))
    assert "dead_before=3" in repr(result) and dict(result) == {}
    assert VacuumReport.model_validate(report.model_dump()).results == report.results
