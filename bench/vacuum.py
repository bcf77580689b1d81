"""Benchmark: the vacuum flow against `vacuumdb --jobs 2 --analyze`, and the bloat estimate's cost.

On a fresh sandbox (temp dir, free ports, autovacuum off):
  1. 1,000 small tables (200 rows), 10 % with dead tuples: wall time of `vacuumdb --jobs 2 --analyze`
     (vacuums every table) and of the vacuum flow (concurrency 2, only what needs it), from the call to
     its return; medians of --rounds alternated rounds and the ratio flow / vacuumdb (goal ≤ 0.3).
  2. the same where every table needs it (goal ≤ 1.1).
  3. 1 and 2 again on --large-tables tables of 100,000 rows (a fifth of each table's rows dead).
     Each comparison also times vacuumdb given only the tables that need it (the work) and an empty async
     Prefect flow: their sum is a floor under any flow, printed with its ratio to the reference.
  4. the progress artifact's cost: the flow with every table needing vacuum, with and without its progress
     artifact (PG_RUNBOOKS_PROGRESS=off), alternated, 3 runs each: medians and the ratio with / without.
  5. the tier-1 bloat estimate (tables and btree indexes from pg_statistic) at 1,000 / 5,000 /
     20,000 tables: median of 3 runs of the catalog reads plus the estimate.
Prints figures; asserts nothing. Usage: ./run bench vacuum [--max-tables 20000] [--large-tables 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from sandbox.blocks import sandbox_cluster_block  # noqa: E402
from sandbox.cluster import HOST, SUPERUSER, Sandbox  # noqa: E402

SCHEMA = "bench"
LARGE_SCHEMA = "bench_large"
ROWS = 200
LARGE_ROWS = 100_000


def execute(box: Sandbox, query, params=None):
    with psycopg.connect(box.conninfo("primary"), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else None


def create_tables(box: Sandbox, start: int, stop: int, rows: int = ROWS, schema: str = SCHEMA) -> None:
    """Tables <schema>.t<start>..t<stop-1>, each (id PK, n, pad) with `rows` rows."""
    with psycopg.connect(box.conninfo("primary"), autocommit=True) as conn:
        for lo in range(start, stop, 500):
            with conn.transaction():
                for i in range(lo, min(lo + 500, stop)):
                    ident = sql.Identifier(schema, f"t{i}")
                    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, n int, pad text)").format(ident))
                    conn.execute(sql.SQL("INSERT INTO {} SELECT g, g, 'padding-padding' "
                                         "FROM generate_series(1, %s) g").format(ident), (rows,))


def make_dead(box: Sandbox, tables: range, schema: str = SCHEMA, every: int = 2) -> None:
    """One row in `every` of each table dead (deleted and re-inserted, so every round is alike)."""
    with psycopg.connect(box.conninfo("primary"), autocommit=True) as conn:
        for i in tables:
            ident = sql.Identifier(schema, f"t{i}")
            conn.execute(sql.SQL("WITH d AS (DELETE FROM {} WHERE id % {} = 0 RETURNING *) "
                                 "INSERT INTO {} SELECT * FROM d").format(ident, sql.Literal(every), ident))
    # Let the statistics of those sessions land and the replica's feedback xmin move on.
    time.sleep(1.5)


def vacuumdb(box: Sandbox, *args: str) -> float:
    env = {**os.environ, "PGPASSWORD": box.config.password}
    t0 = time.monotonic()
    subprocess.run([box.pg("vacuumdb"), "-h", HOST, "-p", str(box.config.primary_port), "-U", SUPERUSER,
                    "-d", "postgres", "--quiet", *args], check=True, env=env)
    return time.monotonic() - t0


def vacuum_counts(box: Sandbox, schema: str) -> dict[str, int]:
    """Ground truth: pg_stat_user_tables.vacuum_count of every table of `schema`."""
    return dict(execute(box, "SELECT relname, vacuum_count FROM pg_catalog.pg_stat_user_tables "
                             "WHERE schemaname = %s", (schema,)))


def run_flow(progress: bool = True) -> tuple[float, int]:
    from flows.vacuum import vacuum
    from tasks.core.progress import PROGRESS_ENV
    from tasks.maintenance.vacuum_plan import VacuumParams

    os.environ[PROGRESS_ENV] = "on" if progress else "off"
    t0 = time.monotonic()
    report = asyncio.run(vacuum(cluster_block="bench", params=VacuumParams(
        min_dead_tuples=50, dead_tuple_ratio=0.1, concurrency=2, max_tables=5000,
        log_dir=tempfile.mkdtemp(prefix="pgrb-bench-log-"))))
    return time.monotonic() - t0, report.count("vacuumed")


def empty_flow_seconds() -> float:
    """An async Prefect flow that does nothing, from the call to its return: what any flow costs here."""
    from prefect import flow

    @flow(name="bench-empty-flow")
    async def empty() -> None:
        return None

    t0 = time.monotonic()
    asyncio.run(empty())
    return time.monotonic() - t0


def compare(box: Sandbox, label: str, schema: str, dirty: range, every: int, rounds: int) -> None:
    """vacuumdb --jobs 2 --analyze (every table of the database: the reference) against the flow (what needs
    it), alternated on the same workload; checks with pg_stat_user_tables that the flow vacuumed exactly the
    dirty tables. Also vacuumdb given only the dirty tables (-t each): the work itself, so the flow's time
    minus it is what the flow adds (Prefect's flow run, the catalog query, artifacts, log); and an empty async
    flow: the work plus the empty flow is a floor no Prefect flow can go under (its ratio is printed too)."""
    ref_s: list[float] = []
    only_s: list[float] = []
    flow_s: list[float] = []
    empty_s: list[float] = []
    done = wrong = 0
    only = [arg for i in dirty for arg in ("-t", f"{schema}.t{i}")]
    for _ in range(rounds):
        make_dead(box, dirty, schema, every)
        ref_s.append(vacuumdb(box, "--jobs", "2", "--analyze"))
        make_dead(box, dirty, schema, every)
        only_s.append(vacuumdb(box, "--jobs", "2", "--analyze", *only))
        make_dead(box, dirty, schema, every)
        before = vacuum_counts(box, schema)
        seconds, done = run_flow()
        flow_s.append(seconds)
        after = vacuum_counts(box, schema)
        changed = {t for t in after if after[t] != before.get(t)}
        wrong += len(changed ^ {f"t{i}" for i in dirty})
        empty_s.append(empty_flow_seconds())
    ref, flow, work = statistics.median(ref_s), statistics.median(flow_s), statistics.median(only_s)
    empty = statistics.median(empty_s)
    print(f"{label}: vacuumdb --jobs 2 --analyze {ref:.2f} s (every table); vacuum flow {flow:.2f} s "
          f"({done} tables vacuumed; {wrong} table(s) vacuumed or missed against pg_stat_user_tables); "
          f"ratio flow/vacuumdb {flow / ref:.2f}; vacuumdb of only those {len(dirty)} tables {work:.2f} s, "
          f"the flow's own cost {flow - work:+.2f} s (medians of {rounds}: vacuumdb {fmt(ref_s)}, "
          f"only those {fmt(only_s)}, flow {fmt(flow_s)}); floor: an empty async flow {empty:.2f} s + the work "
          f"= {empty + work:.2f} s, ratio {(empty + work) / ref:.2f}; load average {os.getloadavg()[0]:.1f}")


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in sorted(values)) + "]"


def progress_cost(box: Sandbox, dirty: range, rounds: int = 3) -> None:
    """The flow with and without its progress artifact, alternated on the same workload."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for progress in (False, True):
            make_dead(box, dirty, SCHEMA)
            seconds, _ = run_flow(progress=progress)
            times[progress].append(seconds)
    with_s, without_s = statistics.median(times[True]), statistics.median(times[False])
    print(f"progress artifact: {len(dirty)} tables vacuumed, median of {rounds}: with progress {with_s:.2f} s, "
          f"without {without_s:.2f} s, ratio with/without {with_s / without_s:.3f} "
          f"(reference: the same flow without progress; runs {sorted(times[True])} vs {sorted(times[False])})")


def estimate_seconds(box: Sandbox, min_pages: int) -> tuple[float, float, int]:
    """Median wall time of the tier-1 catalog reads (SQL) and of the whole estimate (reads, row models,
    per-relation estimate), and how many tables it covered."""
    from tasks.maintenance.bloat import (
        CATALOG_INFO_SQL,
        INDEX_STATS_SQL,
        TABLE_STATS_SQL,
        CatalogInfo,
        IndexStats,
        TableStats,
    )
    from tasks.maintenance.bloat_report import BloatParams, estimate_index, estimate_table

    sql_times, times, n = [], [], 0
    p = BloatParams(min_pages=min_pages)
    with psycopg.connect(box.conninfo("primary"), autocommit=True, options="-c jit=off") as conn:
        for _ in range(3):
            t0 = time.monotonic()
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            info_row = cur.execute(CATALOG_INFO_SQL).fetchone()
            table_rows = cur.execute(TABLE_STATS_SQL, {"min_pages": min_pages}).fetchall()
            index_rows = cur.execute(INDEX_STATS_SQL, {"min_pages": min_pages}).fetchall()
            sql_times.append(time.monotonic() - t0)
            info = CatalogInfo.model_validate(info_row)
            tables = [TableStats.model_validate(r) for r in table_rows]
            indexes = [IndexStats.model_validate(r) for r in index_rows]
            [estimate_table(t, p, info.block_size) for t in tables]
            [estimate_index(i, p, info) for i in indexes]
            times.append(time.monotonic() - t0)
            n = len(tables)
    return statistics.median(sql_times), statistics.median(times), n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--max-tables", type=int, default=20000, help="largest size for the estimate timing")
    parser.add_argument("--large-tables", type=int, default=40, help="tables of 100,000 rows in the larger variant")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds per comparison (medians)")
    parser.add_argument("--skip-small", action="store_true", help="only the larger variant (and the estimate)")
    args = parser.parse_args()

    box = Sandbox.ephemeral("pgrb-bench-vacuum-")
    from prefect.testing.utilities import prefect_test_harness

    box.start()
    try:
        execute(box, "ALTER SYSTEM SET autovacuum = off")
        execute(box, "SELECT pg_reload_conf()")
        execute(box, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        t0 = time.monotonic()
        create_tables(box, 0, args.tables)
        vacuumdb(box, "--jobs", "2", "--analyze")
        print(f"setup: {args.tables} tables of {ROWS} rows in {time.monotonic() - t0:.1f} s")
        with prefect_test_harness(server_startup_timeout=120):
            sandbox_cluster_block(box, name="bench").save("bench", overwrite=True)
            run_flow()  # warm-up: imports, first flow run
            empty_flow_seconds()
            for label, share in (("10 % need vacuum", 0.1), ("every table needs vacuum", 1.0)):
                if not args.skip_small:
                    compare(box, f"{args.tables} small tables, {label}", SCHEMA, range(0, int(args.tables * share)),
                            2, args.rounds)
            if not args.skip_small:
                progress_cost(box, range(0, args.tables))
            if args.large_tables:
                execute(box, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
                execute(box, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(LARGE_SCHEMA)))
                t0 = time.monotonic()
                create_tables(box, 0, args.large_tables, LARGE_ROWS, LARGE_SCHEMA)
                vacuumdb(box, "--jobs", "2", "--analyze")
                print(f"setup: {args.large_tables} tables of {LARGE_ROWS:,} rows in {time.monotonic() - t0:.1f} s")
                for label, share in (("10 % need vacuum", 0.1), ("every table needs vacuum", 1.0)):
                    compare(box, f"{args.large_tables} tables of {LARGE_ROWS:,} rows, {label}", LARGE_SCHEMA,
                            range(0, max(1, int(args.large_tables * share))), 5, args.rounds)
                execute(box, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(LARGE_SCHEMA)))
                execute(box, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
                create_tables(box, 0, args.tables)
                vacuumdb(box, "--jobs", "2", "--analyze")

        have = args.tables
        for size in (1000, 5000, 20000):
            if size > args.max_tables:
                break
            if size > have:
                t0 = time.monotonic()
                create_tables(box, have, size, rows=20)
                vacuumdb(box, "--jobs", "2", "--analyze-only")
                print(f"  (grew to {size} tables in {time.monotonic() - t0:.1f} s)")
                have = size
            sql_s, seconds, n = estimate_seconds(box, min_pages=1)
            floor_sql_s, floor_s, _ = estimate_seconds(box, min_pages=128)
            print(f"bloat estimate at {n} tables + their btree indexes: every relation: catalog reads "
                  f"{sql_s * 1000:.0f} ms, whole estimate {seconds * 1000:.0f} ms; with the default size floor "
                  f"(128 pages, filtered in SQL): {floor_sql_s * 1000:.0f} / {floor_s * 1000:.0f} ms "
                  "(reference, FACTS: the bare pg_statistic table query 23 / 115 / 437 ms at 1k / 5k / 20k; "
                  "check_postgres flipped to 29 s at 5k)")
    finally:
        box.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
