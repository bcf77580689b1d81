"""Connection and performance troubleshooters against the real sandbox: the situation is created,
the recommendations' evidence is compared with what PostgreSQL says directly."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from blocks.postgres_cluster import PostgresCluster
from flows.troubleshoot_connections import troubleshoot_connections
from flows.troubleshoot_performance import troubleshoot_performance
from sandbox.blocks import sandbox_cluster_block
from tasks.core.recommendations import SEVERITY_RANK
from tasks.report.connection_rules import ConnectionRules
from tasks.report.performance_rules import PerformanceRules
from tests.helpers import psql, save_slack_block, wait_for

pytestmark = pytest.mark.versioned  # database-facing, version-dependent: run on 14 and 18 too


def ranked(report) -> bool:
    keys = [(-SEVERITY_RANK[r.severity], -r.impact) for r in report.recommendations]
    return keys == sorted(keys)


@pytest.fixture
def greedy_idle_sessions(sandbox):
    """11 sessions of one application, each idle inside an open transaction."""
    conns = []
    for _ in range(11):
        conn = sandbox.connect("primary")
        conn.execute("SET application_name = 'greedy-app'")
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        conns.append(conn)
    yield conns
    for conn in conns:
        conn.close()


def test_connection_troubleshooter_finds_idle_transactions_and_a_greedy_app(sandbox, cluster_block, slack,
                                                                            greedy_idle_sessions):
    stop = threading.Event()

    def churn():  # short-lived sessions, as an application without a pool opens them
        while not stop.is_set():
            with sandbox.connect("primary") as conn:
                conn.execute("SELECT 1")
            time.sleep(0.05)

    time.sleep(0.7)  # the sessions have been idle in transaction for more than 0.6 s
    truth = psql(sandbox, "primary", "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction' "
                 "AND application_name = 'greedy-app'")
    all_idle_tx = psql(sandbox, "primary",
                       "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'")[0][0]
    usable = psql(sandbox, "primary", "SELECT current_setting('max_connections')::int - "
                  "current_setting('superuser_reserved_connections')::int")[0][0]
    save_slack_block(slack, "slack-ts", "xoxb-ok-ts")
    rules = ConnectionRules(usage_warning_percent=1, idle_in_transaction_minutes=0.01, app_min_sessions=10,
                            churn_per_second=2, churn_sample_seconds=1.5)
    thread = threading.Thread(target=churn)
    thread.start()
    try:
        report = troubleshoot_connections(cluster_block=cluster_block, rules=rules, slack_block="slack-ts")
    finally:
        stop.set()
        thread.join()

    assert len(truth) == 11
    many = report.by_rule("idle-in-transaction-many")[0]
    assert many.evidence["count"] == all_idle_tx
    assert "idle_in_transaction_session_timeout" in many.action
    old = report.by_rule("idle-in-transaction-old")[0]
    assert {r[0] for r in truth} <= set(old.evidence["pids"])
    assert old.fix_flow == "high-load-response"
    app = report.by_rule("application-share")[0]
    assert app.subject == "application greedy-app" and app.evidence["sessions"] == 11 and app.evidence["idle"] == 0
    assert "pgbouncer in transaction mode" in app.action
    usage = report.by_rule("connection-usage")[0]
    assert usage.evidence["usable"] == usable and usage.evidence["used"] >= 11
    churn_rec = report.by_rule("connection-churn")[0]
    assert churn_rec.evidence["new_sessions"] > 0
    assert report.by_rule("no-pooler") == []  # the sandbox block has pgbouncer as its endpoint
    assert report.status == "warning" and ranked(report)
    assert report.notification.ok
    thread_reply = slack.calls("chat.postMessage", token="xoxb-ok-ts")[1].body
    assert "greedy-app" in thread_reply["blocks"][1]["text"]["text"]


def test_connection_troubleshooter_with_pg_monitor_and_no_pooler(sandbox, prefect_api):
    block = sandbox_cluster_block(sandbox, superuser=False, name="ts-nopooler")
    PostgresCluster.model_validate({**block.model_dump(), "endpoint": None}).save("ts-nopooler", overwrite=True)
    report = troubleshoot_connections(cluster_block="ts-nopooler", rules=ConnectionRules(churn_sample_seconds=0.5))
    assert report.failed_sections == {}
    assert report.by_rule("no-pooler")[0].severity in ("info", "warning")
    usable = psql(sandbox, "primary", "SELECT current_setting('max_connections')::int - "
                  "current_setting('superuser_reserved_connections')::int")[0][0]
    assert report.figures["usable slots"] == usable


@pytest.fixture(scope="module")
def perf_tables(sandbox):
    """A large table scanned in full, a table with dead rows and an unused index, a slow statement."""
    with sandbox.connect("primary") as conn:
        conn.execute("DROP TABLE IF EXISTS ts_seq, ts_dead")
        conn.execute("CREATE TABLE ts_seq (id int, v int) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO ts_seq SELECT g, g % 1000 FROM generate_series(1, 60000) g")
        conn.execute("CREATE TABLE ts_dead (id int, pad text) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO ts_dead SELECT g, md5(g::text) FROM generate_series(1, 40000) g")
        conn.execute("CREATE INDEX ts_dead_pad_idx ON ts_dead (pad)")
        conn.execute("DELETE FROM ts_dead WHERE id % 2 = 0")
        for i in range(6):
            conn.execute("SELECT count(*) FROM ts_seq WHERE v = %s", (i,)).fetchone()
        for _ in range(3):
            conn.execute("SELECT pg_sleep(%s) AS ts_slow", (0.12,))
    wait_for(lambda: psql(sandbox, "primary", "SELECT seq_scan >= 6 FROM pg_stat_user_tables "
                                              "WHERE relname = 'ts_seq'")[0][0], what="table stats flushed")
    wait_for(lambda: psql(sandbox, "primary", "SELECT n_dead_tup > 0 FROM pg_stat_user_tables "
                                              "WHERE relname = 'ts_dead'")[0][0], what="dead tuples counted")
    yield
    psql(sandbox, "primary", "DROP TABLE IF EXISTS ts_seq, ts_dead")  # leave the shared sandbox as found
    psql(sandbox, "primary", "DROP DATABASE IF EXISTS ts_noext_db WITH (FORCE)")


PERF_RULES = PerformanceRules(seq_scan_min_rows=50_000, seq_scan_min_count=5, dead_tuple_min=10_000,
                              unused_index_min_bytes=0, min_calls=3, slow_mean_ms=100)


def _truth(sandbox):
    table = {r[0]: r[1:] for r in psql(sandbox, "primary", "SELECT relname, seq_scan, n_dead_tup, n_live_tup "
                                                           "FROM pg_stat_user_tables WHERE relname LIKE 'ts_%'")}
    index_size = psql(sandbox, "primary", "SELECT pg_relation_size('ts_dead_pad_idx')")[0][0]
    slow_calls = psql(sandbox, "primary",
                      "SELECT sum(calls) FROM pg_stat_statements WHERE query LIKE '%%AS ts_slow%%'")[0][0]
    return table, index_size, slow_calls


@pytest.mark.parametrize("block", ["cluster_block", "monitor_cluster_block"])
def test_performance_troubleshooter_evidence_matches_postgres(request, sandbox, perf_tables, block):
    cluster = request.getfixturevalue(block)
    table, index_size, slow_calls = _truth(sandbox)
    report = troubleshoot_performance(cluster_block=cluster, rules=PERF_RULES, baseline="stats_reset")
    assert report.failed_sections == {}

    seq = next(r for r in report.by_rule("seq-scan") if r.subject == "table public.ts_seq")
    assert seq.evidence["seq_scan"] == table["ts_seq"][0]
    assert seq.evidence["n_live_tup"] == table["ts_seq"][2] == 60000
    dead = next(r for r in report.by_rule("dead-tuples") if r.subject == "table public.ts_dead")
    assert dead.evidence["n_dead_tup"] == table["ts_dead"][1] == 20000
    assert dead.fix_flow == "vacuum"
    assert any(r.subject == "table public.ts_dead" for r in report.by_rule("never-analyzed"))
    unused = next(r for r in report.by_rule("unused-index") if r.subject == "index public.ts_dead_pad_idx")
    assert unused.evidence["size_bytes"] == index_size and unused.fix_flow == "index-maintenance"
    slow = next(r for r in report.by_rule("slow-statement") if "ts_slow" in r.evidence["query"])
    assert slow.evidence["calls"] == slow_calls == 3 and slow.evidence["mean_ms"] >= 100
    assert report.by_rule("track-io-timing-off") == []  # the sandbox runs with track_io_timing = on
    assert report.figures["track_io_timing"] is True
    assert ranked(report) and report.status == "warning"
    assert report.artifact_key == f"troubleshoot-performance-{cluster}"



def test_performance_troubleshooter_counts_since_the_last_daily_report(sandbox, cluster_block, perf_tables, tmp_path):
    """By default statements are ranked by what they did since the stored daily report, not since the last
    statistics reset: the calls since, against pg_stat_statements' cumulative count (the ground truth)."""
    from flows.performance_report import performance_report
    from tasks.report.performance import ReportParams

    def calls():  # the alias is not part of pg_stat_statements' query id: one entry for pg_sleep($1)
        return psql(sandbox, "primary", "SELECT sum(calls) FROM pg_stat_statements "
                                        "WHERE query LIKE 'SELECT pg_sleep($1) AS %%'")[0][0]

    performance_report(cluster_block=cluster_block, params=ReportParams(state_dir=str(tmp_path)))
    before = calls()
    with sandbox.connect("primary") as conn:
        for _ in range(4):
            conn.execute("SELECT pg_sleep(%s) AS ts_since_report", (0.11,))
    lately = troubleshoot_performance(cluster_block=cluster_block, rules=PERF_RULES, report_state_dir=str(tmp_path))
    assert lately.baseline.startswith("since the daily report of"), lately.baseline
    slow = next(r for r in lately.by_rule("slow-statement") if "pg_sleep" in r.evidence["query"])
    assert slow.evidence["calls"] == 4 and before >= 3
    cumulative = troubleshoot_performance(cluster_block=cluster_block, rules=PERF_RULES, baseline="stats_reset")
    total = next(r for r in cumulative.by_rule("slow-statement") if "pg_sleep" in r.evidence["query"])
    assert total.evidence["calls"] == calls() == before + 4 and "reset" in cumulative.baseline
    empty = troubleshoot_performance(cluster_block=cluster_block, rules=PERF_RULES,
                                     report_state_dir=str(tmp_path / "none-here"))
    assert "no previous report" in empty.baseline and empty.by_rule("slow-statement")


def test_performance_troubleshooter_without_pg_stat_statements(sandbox, prefect_api, perf_tables):
    db = "ts_noext_db"
    if not psql(sandbox, "primary", "SELECT 1 FROM pg_database WHERE datname = %s", (db,)):
        psql(sandbox, "primary", psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(db)))
    block = sandbox_cluster_block(sandbox, name="ts-noext")
    PostgresCluster.model_validate({**block.model_dump(), "database": db}).save("ts-noext", overwrite=True)
    report = troubleshoot_performance(cluster_block="ts-noext", rules=PERF_RULES, baseline="stats_reset")
    missing = report.by_rule("pg-stat-statements-missing")[0]
    assert "CREATE EXTENSION pg_stat_statements" in missing.action
    assert report.failed_sections == {}


@pytest.fixture(scope="module")
def io_and_stale_tables(sandbox):
    """A table analyzed and then three quarters rewritten (stale statistics), and a table larger than a
    quarter of shared_buffers written by CREATE TABLE AS (bulk-write ring) and scanned three times: its
    blocks come from the OS cache through the scan's small ring, so the statement reads (timed: the
    sandbox runs with track_io_timing = on) and the table's heap hit ratio stays low."""
    def stat(column, table):
        query = psycopg.sql.SQL("SELECT {} FROM pg_catalog.pg_stat_user_tables WHERE relname = %s").format(
            psycopg.sql.Identifier(column))
        return psql(sandbox, "primary", query, (table,))[0][0]

    psql(sandbox, "primary", "DROP TABLE IF EXISTS ts_stale, ts_cold")
    psql(sandbox, "primary", "CREATE TABLE ts_stale (id int, v int) WITH (autovacuum_enabled = off)")
    psql(sandbox, "primary", "INSERT INTO ts_stale SELECT g, 0 FROM generate_series(1, 20000) g")
    wait_for(lambda: stat("n_tup_ins", "ts_stale") >= 20000, what="inserts counted")
    psql(sandbox, "primary", "ANALYZE ts_stale")
    psql(sandbox, "primary", "UPDATE ts_stale SET v = 1 WHERE id <= 15000")
    wait_for(lambda: stat("n_mod_since_analyze", "ts_stale") >= 15000, what="modifications counted")
    psql(sandbox, "primary", "CREATE TABLE ts_cold WITH (autovacuum_enabled = off) AS "
                             "SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 300000) g")
    with sandbox.connect("primary") as conn:
        conn.execute("SET max_parallel_workers_per_gather = 0")
        for _ in range(3):
            conn.execute("SELECT count(*) AS ts_io_read FROM ts_cold").fetchone()
    wait_for(lambda: stat("seq_scan", "ts_cold") >= 3, what="scans counted")
    yield
    psql(sandbox, "primary", "DROP TABLE IF EXISTS ts_stale, ts_cold")  # leave the shared sandbox as found


def test_performance_troubleshooter_io_cache_and_stale_statistics_match_postgres(sandbox, cluster_block,
                                                                                  io_and_stale_tables):
    stale_truth = psql(sandbox, "primary", "SELECT n_mod_since_analyze, n_live_tup, last_analyze "
                                           "FROM pg_stat_user_tables WHERE relname = 'ts_stale'")[0]
    cold_truth = psql(sandbox, "primary", "SELECT heap_blks_read, heap_blks_hit, pg_relation_size(relid) "
                                          "FROM pg_statio_user_tables WHERE relname = 'ts_cold'")[0]
    major = int(psql(sandbox, "primary", "SHOW server_version_num")[0][0]) // 10000
    read_time = "shared_blk_read_time" if major >= 17 else "blk_read_time"  # renamed in 1.11 (PostgreSQL 17)
    calls, total_ms, read_ms, blks_read = psql(
        sandbox, "primary", psycopg.sql.SQL("SELECT sum(calls), sum(total_exec_time), sum({}), sum(shared_blks_read) "
                                            "FROM pg_stat_statements WHERE query LIKE '%%AS ts_io_read%%'").format(
            psycopg.sql.Identifier(read_time)))[0]
    assert calls == 3 and read_ms > 0 and blks_read > 0
    read_share = read_ms / total_ms
    rules = PerformanceRules(min_calls=3, max_statements=100, io_bound_min_read_ms=0,
                             io_bound_share=min(0.5, read_share / 2), table_cache_min_reads=1000)
    report = troubleshoot_performance(cluster_block=cluster_block, rules=rules, baseline="stats_reset")
    assert report.failed_sections == {}

    stale = next(r for r in report.by_rule("stale-statistics") if r.subject == "table public.ts_stale")
    assert (stale.evidence["n_mod_since_analyze"], stale.evidence["n_live_tup"]) == stale_truth[:2] == (15000, 20000)
    assert stale.evidence["modified_ratio"] == 0.75 and stale.evidence["last_analyze"] == str(stale_truth[2])
    assert stale.fix_flow == "vacuum" and "ANALYZE public.ts_stale" in stale.action
    assert not any(r.subject == "table public.ts_stale" for r in report.by_rule("never-analyzed"))

    cold = next(r for r in report.by_rule("table-cache-low") if r.subject == "table public.ts_cold")
    ev = cold.evidence
    assert (ev["heap_blks_read"], ev["heap_blks_hit"], ev["size_bytes"]) == cold_truth
    assert ev["heap_hit_ratio"] == round(cold_truth[1] / (cold_truth[0] + cold_truth[1]), 4) < 0.9

    io = next(r for r in report.by_rule("io-bound-statement") if "ts_io_read" in r.evidence["query"])
    assert io.evidence["calls"] == 3 and io.evidence["shared_blks_read"] == blks_read
    assert io.evidence["blk_read_ms"] == pytest.approx(read_ms, abs=0.001)
    assert io.evidence["total_ms"] == pytest.approx(total_ms, abs=0.001)
    assert io.evidence["read_share"] == pytest.approx(read_share, abs=0.0001)
    assert ranked(report) and all(0 <= r.impact <= 100 for r in report.recommendations)
    print(f"\nts_io_read: {read_ms:.1f} ms reading {blks_read} blocks of {total_ms:.1f} ms ({read_share:.0%}); "
          f"ts_cold heap hit ratio {ev['heap_hit_ratio']}")


def test_io_by_backend_type_in_the_report_and_the_troubleshooter_matches_pg_stat_io(sandbox, cluster_block, tmp_path):
    """A bulk load writes its own buffers (a bulkwrite ring: the client backend, not the background writer or
    checkpointer, writes them): since the stored daily report the troubleshooter sees client backends doing
    most buffer writes. Figures against pg_stat_io itself; before PG16 the section says pg_stat_io is missing."""
    from flows.performance_report import performance_report
    from tasks.report.performance import ReportParams, render_markdown

    def client_writes():
        return psql(sandbox, "primary", "SELECT coalesce(sum(writes), 0)::bigint FROM pg_stat_io "
                                        "WHERE backend_type = 'client backend' AND object = 'relation'")[0][0]

    major = int(psql(sandbox, "primary", "SHOW server_version_num")[0][0]) // 10000
    first = performance_report(cluster_block=cluster_block, params=ReportParams(state_dir=str(tmp_path)))
    if major < 16:
        assert not first.io.available and "needs PostgreSQL 16" in first.check("io").summary
        report = troubleshoot_performance(cluster_block=cluster_block, rules=PERF_RULES,
                                          report_state_dir=str(tmp_path))
        assert not report.by_rule("client-backend-writes") and "I/O by backend type" not in report.failed_sections
        return
    before = client_writes()
    psql(sandbox, "primary", "DROP TABLE IF EXISTS ts_bulk")
    psql(sandbox, "primary", "CREATE TABLE ts_bulk AS SELECT g AS id, repeat('b', 200) AS pad "
                             "FROM generate_series(1, 200000) AS g")
    written = client_writes() - before
    try:
        report = troubleshoot_performance(cluster_block=cluster_block, rules=PERF_RULES, report_state_dir=str(tmp_path))
        found = report.by_rule("client-backend-writes")
        assert found and found[0].evidence["since"] == "previous report", report.recommendations
        by = found[0].evidence["writes"]
        assert by["client backend"] >= written > 1000  # pg_stat_io's own count, since the stored report
        assert found[0].evidence["client_write_share"] > 0.5
        second = performance_report(cluster_block=cluster_block, params=ReportParams(state_dir=str(tmp_path)))
        delta = {r.backend_type: r for r in second.io_delta.rows}
        now = {r.backend_type: r for r in second.io.rows}
        then = {r.backend_type: r for r in first.io.rows}
        assert second.io_delta.since == "previous report"
        assert all(delta[b].writes == now[b].writes - then.get(b, now[b].model_copy(update={"writes": 0})).writes
                   for b in delta)
        assert delta["client backend"].writes >= written and delta["client backend"].write_bytes > 0
        assert "## I/O by backend type" in render_markdown(second, ReportParams())
    finally:
        psql(sandbox, "primary", "DROP TABLE IF EXISTS ts_bulk")
