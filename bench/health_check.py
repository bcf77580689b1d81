"""Benchmark: the health-check flow vs the same SQL run directly with psycopg.

Reference: the flow's five queries (probe per node, pg_stat_replication, slots, receiver,
long queries per node), each on a fresh connection as the flow's tasks open them, run
sequentially with plain psycopg. Then again on a database with 10,000 tables.
Prints medians of 5 runs and the ratio flow/raw. No thresholds: figures only.
"""

from __future__ import annotations

import argparse

import psycopg
from psycopg import sql

from bench.common import fresh_sandbox, prefect_api, row, timed
from tasks.core import replication
from tasks.health import checks as health

TABLES = 10_000


def raw_sql(box) -> None:
    def one(node, query, params=None):
        with psycopg.connect(box.conninfo(node), autocommit=True, options="-c jit=off") as conn:
            conn.execute(query, params).fetchall()

    for node in ("primary", "replica"):
        one(node, health.PROBE_SQL)
    one("primary", replication.REPLICATION_SQL)
    one("primary", replication.SLOTS_SQL)
    one("replica", replication.RECEIVER_SQL)
    for node in ("primary", "replica"):
        one(node, health.LONG_QUERIES_SQL, {"min_seconds": 300, "limit": 50})


def make_tables(box, n: int, batch: int = 500) -> None:
    """n small tables with a primary key, created in batches (one transaction each)."""
    create = sql.SQL("CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY, v text)")
    with box.connect("primary") as conn:
        for start in range(0, n, batch):
            names = range(start, min(start + batch, n))
            conn.execute(sql.SQL("; ").join(create.format(sql.Identifier(f"bench_t{i}")) for i in names))
    box.wait_streaming()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tables", type=int, default=TABLES)
    args = parser.parse_args()
    from flows.health_check import health_check
    from sandbox.blocks import save_sandbox_blocks

    with fresh_sandbox() as box, prefect_api():
        save_sandbox_blocks(box, "bench")
        print(f"health check, {args.repeat} runs each, median seconds")
        row("case", "flow", "raw SQL", "flow/raw")
        for label, tables in (("empty cluster", 0), (f"{args.tables:,} tables", args.tables)):
            if tables:
                make_tables(box, tables)
            flow_s, _ = timed(lambda: health_check(cluster_block="bench"), args.repeat)
            raw_s, _ = timed(lambda: raw_sql(box), args.repeat)
            row(label, f"{flow_s:.3f}", f"{raw_s:.4f}", f"{flow_s / raw_s:.1f}x")
        print("flow time includes Prefect's per-run overhead (task runs, artifact, ~1 s heartbeat join at exit).")


if __name__ == "__main__":
    main()
