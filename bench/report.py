"""Benchmark: the daily performance report on a database with 10,000 tables and 5,000 distinct
statements in pg_stat_statements, beside the same SQL run directly with psycopg (the reference).

    ./run bench report [--tables 10000] [--statements 5000]

Starts its own sandbox (temp dir, free ports) and its own temporary Prefect API; prints the
figures and the ratio flow / direct SQL. No thresholds: it reports, it does not judge.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from sandbox.blocks import sandbox_cluster_block  # noqa: E402
from sandbox.cluster import Sandbox  # noqa: E402
from tasks.core.server_capabilities import capabilities  # noqa: E402
from tasks.report import cache as report_cache  # noqa: E402
from tasks.report import checkpoints as report_checkpoints  # noqa: E402
from tasks.report import connections as report_connections  # noqa: E402
from tasks.report import statements as report_statements  # noqa: E402
from tasks.report import storage as report_storage  # noqa: E402
from tasks.report import wraparound as report_wraparound  # noqa: E402

BATCH = 500  # tables per transaction (each takes locks on the table, its TOAST table and its index)


def build(box: Sandbox, tables: int, statements: int) -> None:
    with box.connect("primary") as conn:
        conn.execute("ALTER SYSTEM SET pg_stat_statements.max = 10000")
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
    box.stop_node("primary")
    box.start_node("primary")
    with box.connect("primary") as conn:
        for start in range(1, tables + 1, BATCH):
            with conn.transaction():
                for i in range(start, min(start + BATCH, tables + 1)):
                    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(
                        sql.Identifier("bench", f"t{i}")))
        conn.execute("INSERT INTO bench.t1 SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        conn.execute("SELECT pg_stat_statements_reset()")
        for i in range(1, statements + 1):
            conn.execute(sql.SQL("SELECT v FROM {} WHERE id = %s").format(
                sql.Identifier("bench", f"t{(i - 1) % tables + 1}")), (i,))
        conn.execute("ANALYZE")


def direct_queries(version: int, schema: str, extversion: str) -> list[tuple[str, object, object]]:
    """(name, query, params) of every read the report makes, in the order the report makes them."""
    caps = capabilities(version, extversion)
    return [
        ("connections.limits", report_connections.LIMITS_SQL if caps.reserved_connections_setting
         else report_connections.LIMITS_PRE16_SQL, None),
        ("connections.groups", report_connections.GROUPS_SQL, None),
        ("connections.idle_tx", report_connections.IDLE_IN_TRANSACTION_SQL, {"limit": 100}),
        ("connections.sessions", report_connections.SESSIONS_SQL, None),
        ("statements.extension", report_statements.EXTENSION_SQL, None),
        ("statements.rows", report_statements.statements_query(caps.statements, schema), None),
        ("statements.info", sql.SQL(report_statements.INFO_SQL).format(schema=sql.Identifier(schema)), None),
        ("storage.databases", report_storage.DATABASE_SIZES_SQL, None),
        ("storage.relations", report_storage.RELATION_SIZES_SQL, {"limit": 20}),
        ("storage.wal", report_storage.WAL_DIR_SQL, None),
        ("cache.databases", report_cache.DATABASE_BLOCKS_SQL, None),
        ("cache.relations", report_cache.RELATION_BLOCKS_SQL, {"limit": 50}),
        ("wraparound.limits", report_wraparound.LIMITS_SQL, None),
        ("wraparound.databases", report_wraparound.DATABASE_AGES_SQL, None),
        ("wraparound.tables", report_wraparound.TABLE_AGES_SQL, {"limit": 10}),
        ("wraparound.holders", report_wraparound.HOLDERS_SQL, {"limit": 10}),
        ("checkpoints.counters", report_checkpoints.CHECKPOINTS_CHECKPOINTER_SQL if caps.checkpointer_view
         else report_checkpoints.CHECKPOINTS_BGWRITER_SQL, None),
        ("checkpoints.wal", report_checkpoints.WAL_ARCHIVER_SQL, None),
    ]


def run_direct(box: Sandbox) -> tuple[float, dict[str, float], int]:
    """The same SQL over one psycopg connection (jit = off, as in monitoring sessions)."""
    timings = {}
    started = time.perf_counter()
    with psycopg.connect(box.conninfo("primary"), autocommit=True, options="-c jit=off") as conn:
        version = conn.info.server_version
        extversion, schema = conn.execute(report_statements.EXTENSION_SQL).fetchone()[:2]
        rows = 0
        for name, query, params in direct_queries(version, schema, extversion):
            t = time.perf_counter()
            fetched = conn.execute(query, params).fetchall()
            timings[name] = time.perf_counter() - t
            if name == "statements.rows":
                rows = len(fetched)
    return time.perf_counter() - started, timings, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=10_000)
    parser.add_argument("--statements", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side")
    args = parser.parse_args()

    box = Sandbox.ephemeral("pgrb-bench-report-")
    base = box.base
    t = time.perf_counter()
    box.start()
    try:
        build(box, args.tables, args.statements)
        print(f"built {args.tables} tables and {args.statements} statements in {time.perf_counter() - t:.1f} s")

        from prefect.testing.utilities import prefect_test_harness

        from flows.performance_report import performance_report
        from tasks.report.performance import ReportParams

        with prefect_test_harness(server_startup_timeout=120):
            sandbox_cluster_block(box, name="bench").save("bench", overwrite=True)
            params = ReportParams(state_dir=str(base / "reports"))
            performance_report(cluster_block="bench", params=params)  # warm-up; stores the first snapshot
            flow_times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                report = performance_report(cluster_block="bench", params=params)
                flow_times.append(time.perf_counter() - t)
            direct_times, per_query, rows = [], {}, 0
            for _ in range(args.repeat):
                total, per_query, rows = run_direct(box)
                direct_times.append(total)

        tracked = len(report.statements.statements) if report.statements else 0
        flow_s, direct_s = statistics.median(flow_times), statistics.median(direct_times)
        print(f"pg_stat_statements rows: {rows} (report tracked {tracked}); report status {report.status}")
        print(f"report flow (7 concurrent tasks, deltas, artifacts, stored JSON): median {flow_s:.2f} s "
              f"of {[round(x, 2) for x in flow_times]}")
        print(f"same SQL directly with psycopg (one connection, sequential): median {direct_s:.3f} s "
              f"of {[round(x, 3) for x in direct_times]}")
        print("slowest queries (direct): " + ", ".join(
            f"{name} {secs * 1000:.0f} ms" for name, secs in sorted(per_query.items(), key=lambda kv: -kv[1])[:5]))
        stored = Path(base / "reports" / "bench" / "latest.json").stat().st_size
        print(f"stored report: {stored / 1024:.0f} kB")
        print(f"ratio flow / direct SQL: {flow_s / direct_s:.1f}x")
    finally:
        box.destroy()


if __name__ == "__main__":
    main()
