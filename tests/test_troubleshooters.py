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
from tasks.connection_rules import ConnectionRules
from tasks.performance_rules import PerformanceRules
from tasks.recommendations import SEVERITY_RANK
from tests.helpers import psql, save_slack_block, wait_for


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
    report = troubleshoot_performance(cluster_block=cluster, rules=PERF_RULES)
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


def test_performance_troubleshooter_without_pg_stat_statements(sandbox, prefect_api, perf_tables):
    db = "ts_noext_db"
    if not psql(sandbox, "primary", "SELECT 1 FROM pg_database WHERE datname = %s", (db,)):
        psql(sandbox, "primary", psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(db)))
    block = sandbox_cluster_block(sandbox, name="ts-noext")
    PostgresCluster.model_validate({**block.model_dump(), "database": db}).save("ts-noext", overwrite=True)
    report = troubleshoot_performance(cluster_block="ts-noext", rules=PERF_RULES)
    missing = report.by_rule("pg-stat-statements-missing")[0]
    assert "CREATE EXTENSION pg_stat_statements" in missing.action
    assert report.failed_sections == {}
