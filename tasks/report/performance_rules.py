"""Performance troubleshooting rules (runbook 3.2): pure functions from diagnostics to ranked Recommendations.

Impact is one scale for every rule (see `Recommendation.impact`): the estimated percentage (0-100)
of the database's workload or resources that the finding affects, so findings of different rules
rank together. Each rule states its measure as a share of a database-wide total:

- statement findings (slow, temp spill): the statement's share of all statement time;
- I/O-bound statement: its block read time as a share of all statement time;
- database cache: the share of block accesses that missed shared buffers;
- table cache: the table's heap blocks read as a share of the database's blocks read;
- sequential scans: rows read by them as a share of all rows read from tables (sequential + index);
- dead tuples: the table's dead rows as a share of all rows (live + dead) of the database's tables;
- statistics (never analyzed, stale): the table's share of all table scans (sequential + index);
- unused and invalid indexes: the index's share of all index bytes;
- client backends writing buffers (pg_stat_io, PG16+): their share of the buffer writes of client backends,
  background writer and checkpointer;
- settings and missing extensions: 0 (nothing measured).

Statement figures are cumulative since the last statistics reset (the troubleshooter reads the
live view; the daily report keeps the day-over-day deltas).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from tasks.core.findings import human_bytes, human_seconds
from tasks.core.recommendations import Recommendation
from tasks.core.redact import redact_sql
from tasks.core.table_stats import TableUsage, UsageSnapshot
from tasks.report.deltas import RatioRow, StatementDelta, StatementsDelta, ratio
from tasks.report.io_stats import MIN_WRITES, WRITERS, IoDelta
from tasks.report.statements import StatementsSnapshot


class PerformanceRules(BaseModel):
    """Thresholds of the performance troubleshooter (rendered as the run form in the Prefect UI)."""

    slow_mean_ms: float = Field(default=100, ge=0.01, le=3_600_000, description="Mean time of a slow statement.")
    min_calls: int = Field(default=5, ge=1, description="Calls before a statement's mean counts.")
    max_statements: int = Field(default=10, ge=1, le=100, description="Slow statements to report at most.")
    temp_blocks: int = Field(default=1024, ge=1, description="Temp blocks written by a statement worth a look.")
    cache_hit_warning: float = Field(default=0.95, ge=0, le=1, description="Database cache hit ratio below this.")
    cache_min_blocks: int = Field(default=10_000, ge=0, description="Ignore databases that touched fewer blocks.")
    seq_scan_min_rows: int = Field(default=100_000, ge=0, description="Tables this large should not be seq-scanned.")
    seq_scan_min_count: int = Field(default=50, ge=1, description="Sequential scans before it matters.")
    unused_index_min_bytes: int = Field(default=1_048_576, ge=0, description="Unused indexes smaller are ignored.")
    dead_tuple_min: int = Field(default=10_000, ge=0, description="Dead tuples before a table needs a vacuum.")
    dead_tuple_ratio: float = Field(default=0.2, ge=0, le=1, description="Dead share of all tuples for a vacuum.")
    analyze_min_changes: int = Field(default=10_000, ge=0,
                                     description="Rows modified since the last analyze before statistics count as "
                                                 "stale (or a never-analyzed table counts).")
    stale_analyze_ratio: float = Field(default=0.2, ge=0, le=10,
                                       description="Rows modified since the last analyze / live rows for stale "
                                                   "statistics (autoanalyze's default is 0.1).")
    io_bound_share: float = Field(default=0.5, ge=0, le=1,
                                  description="Share of a statement's time spent reading blocks that makes it "
                                              "I/O-bound (needs track_io_timing).")
    io_bound_min_read_ms: float = Field(default=1000, ge=0,
                                        description="Block read time of a statement before it counts as I/O-bound.")
    slow_block_read_ms: float = Field(default=1.0, ge=0,
                                      description="Mean read time per block that points at slow storage.")
    table_cache_hit_warning: float = Field(default=0.9, ge=0, le=1,
                                           description="Heap blocks of a table found in shared buffers below this.")
    table_cache_min_reads: int = Field(default=10_000, ge=0,
                                       description="Heap blocks read from disk before a table's cache ratio counts.")
    client_write_share: float = Field(default=0.5, ge=0, le=1,
                                      description="Share of buffer writes done by client backends (not the "
                                                  "background writer or checkpointer) that is a finding (PG16+).")


def share(part: float, whole: float) -> float:
    """Percentage of a database-wide total, clamped to 0-100 (the impact scale); 0 when the total is empty."""
    return 0.0 if whole <= 0 else min(100.0, max(0.0, 100 * part / whole))


def statement_rules(snap: StatementsSnapshot, totals: StatementsDelta | None,
                    r: PerformanceRules) -> list[Recommendation]:
    if not snap.available or totals is None:
        return [Recommendation(
            id="pg-stat-statements-missing", rule="pg-stat-statements-missing", severity="info", subject="cluster",
            finding="Query statistics are not available, so slow statements cannot be ranked.",
            evidence={"reason": snap.reason}, action=snap.reason or "enable pg_stat_statements")]
    all_ms = sum(s.total_ms for s in totals.statements)
    recs = []
    for s in totals.top("total_ms", len(totals.statements), r.min_calls):
        if s.mean_ms < r.slow_mean_ms or len(recs) >= r.max_statements:
            continue
        time_share = share(s.total_ms, all_ms)
        recs.append(Recommendation(
            id=f"slow-statement:{s.key}", rule="slow-statement", severity="warning",
            subject=f"statement in {s.datname}", impact=time_share,
            finding=f"{redact_sql(s.query, 80)!r} averages {s.mean_ms:.0f} ms over {s.calls} calls "
                    f"({time_share:.0f} % of all statement time).",
            evidence={"query": redact_sql(s.query, 500), "calls": s.calls, "mean_ms": round(s.mean_ms, 2),
                      "total_ms": round(s.total_ms, 1), "rows": s.rows, "shared_blks_read": s.shared_blks_read,
                      "hit_ratio": s.hit_ratio, "user": s.usename},
            action="Run EXPLAIN (ANALYZE, BUFFERS) on it with typical parameters; add the index its filter needs "
                   "or rewrite it; check that its tables' statistics are fresh.",
            fix_flow=None))
    for s in totals.top("temp_blks_written", r.max_statements, 1):
        if s.temp_blks_written < r.temp_blocks:
            break
        recs.append(Recommendation(
            id=f"temp-spill:{s.key}", rule="temp-spill", severity="warning", subject=f"statement in {s.datname}",
            impact=share(s.total_ms, all_ms),
            finding=f"{redact_sql(s.query, 80)!r} wrote {human_bytes(s.temp_blks_written * 8192)} to temp files "
                    f"in {s.calls} calls.",
            evidence={"query": redact_sql(s.query, 500), "temp_blks_written": s.temp_blks_written, "calls": s.calls},
            action=f"Raise work_mem for its role (ALTER ROLE {s.usename} SET work_mem = ...) or give its sort/hash "
                   "an index; watch temp_bytes in the daily report.",
            fix_flow=None))
    if totals.evicted:
        limit = f" (pg_stat_statements.max = {snap.max_entries})" if snap.max_entries else ""
        recs.append(Recommendation(
            id="statements-evicted", rule="statements-evicted", severity="warning", subject="cluster",
            finding=f"pg_stat_statements evicted {totals.evicted} statements since the {totals.since}{limit}: "
                    "their calls are missing, so these rankings are incomplete.",
            evidence={"evicted": totals.evicted, "max_entries": snap.max_entries, "extversion": snap.extversion},
            action="Raise pg_stat_statements.max (restart needed) above the number of distinct statements.",
            fix_flow=None))
    return recs


def cache_rules(rows: list[RatioRow], r: PerformanceRules) -> list[Recommendation]:
    recs = []
    for row in rows:
        if row.kind != "database" or row.hit_ratio is None or row.blks_hit + row.blks_read < r.cache_min_blocks:
            continue
        if row.hit_ratio < r.cache_hit_warning:
            recs.append(Recommendation(
                id=f"cache-hit-low:{row.name}", rule="cache-hit-low", severity="warning",
                subject=f"database {row.name}",
                impact=share(row.blks_read, row.blks_hit + row.blks_read),
                finding=f"Database {row.name} finds {100 * row.hit_ratio:.1f} % of blocks in shared buffers "
                        f"({row.blks_read} reads from disk or OS cache).",
                evidence=row.model_dump(),
                action="Compare shared_buffers with the working set (largest tables in the daily report); look at "
                       "the statements with the most shared blocks read; raise shared_buffers (restart) if memory "
                       "allows.",
                fix_flow=None))
    return recs


def io_rules(usage: UsageSnapshot | None, totals: StatementsDelta | None,
             r: PerformanceRules) -> list[Recommendation]:
    """I/O findings: track_io_timing off, I/O-bound statements, tables whose heap is read from disk."""
    recs = []
    if usage is not None and not usage.io.track_io_timing:
        recs.append(Recommendation(
            id="track-io-timing-off", rule="track-io-timing-off", severity="info", subject="cluster",
            finding="track_io_timing is off: block read and write times are not measured.",
            evidence={"track_io_timing": False},
            action="ALTER SYSTEM SET track_io_timing = on; SELECT pg_reload_conf(); (check pg_test_timing overhead "
                   "first on old hardware).", fix_flow=None))
    if totals is not None:
        recs += io_bound_statements(totals, r)
    if usage is not None:
        recs += table_cache_rules(usage, r)
    return recs


def io_bound_statements(totals: StatementsDelta, r: PerformanceRules) -> list[Recommendation]:
    """Statements that spend most of their time reading blocks (blk_read_time, shared_blk_read_time on 17+)."""
    all_ms = sum(s.total_ms for s in totals.statements)
    recs = []
    for s in totals.top("blk_read_ms", len(totals.statements), r.min_calls):
        if s.blk_read_ms <= 0 or s.blk_read_ms < r.io_bound_min_read_ms or len(recs) >= r.max_statements:
            break
        read_share = s.blk_read_ms / s.total_ms if s.total_ms > 0 else 0.0
        if read_share < r.io_bound_share:
            continue
        recs.append(_io_bound(s, read_share, share(s.blk_read_ms, all_ms), r))
    return recs


def _io_bound(s: StatementDelta, read_share: float, impact: float, r: PerformanceRules) -> Recommendation:
    ms_per_block = s.blk_read_ms / s.shared_blks_read if s.shared_blks_read else None
    storage = (f" Reads average {ms_per_block:.2f} ms per block: check the storage's latency (iostat await, "
               "the volume's IOPS limit)." if ms_per_block is not None and ms_per_block >= r.slow_block_read_ms
               else "")
    return Recommendation(
        id=f"io-bound-statement:{s.key}", rule="io-bound-statement", severity="warning",
        subject=f"statement in {s.datname}", impact=impact,
        finding=f"{redact_sql(s.query, 80)!r} spent {human_seconds(s.blk_read_ms / 1000)} of its "
                f"{human_seconds(s.total_ms / 1000)} reading {s.shared_blks_read} blocks "
                f"({min(100.0, 100 * read_share):.0f} % of its time, {impact:.0f} % of all statement time).",
        evidence={"query": redact_sql(s.query, 500), "calls": s.calls, "total_ms": round(s.total_ms, 3),
                  "blk_read_ms": round(s.blk_read_ms, 3), "read_share": round(read_share, 4),
                  "shared_blks_read": s.shared_blks_read, "shared_blks_hit": s.shared_blks_hit,
                  "hit_ratio": s.hit_ratio,
                  "ms_per_block_read": None if ms_per_block is None else round(ms_per_block, 4),
                  "user": s.usename},
        action="Run EXPLAIN (ANALYZE, BUFFERS) on it to see which plan node reads the blocks; an index that lets "
               "it read fewer blocks is the usual fix; if its tables are hot and memory allows, raise "
               "shared_buffers (restart)." + storage,
        fix_flow=None)


def table_cache_rules(usage: UsageSnapshot, r: PerformanceRules) -> list[Recommendation]:
    """Tables whose heap blocks mostly come from disk or the OS cache rather than shared buffers."""
    db_reads = usage.io.blks_read or sum(t.heap_blks_read for t in usage.tables)
    recs = []
    for t in usage.tables:
        hit = ratio(t.heap_blks_hit, t.heap_blks_read)
        if hit is None or t.heap_blks_read < max(r.table_cache_min_reads, 1) or hit >= r.table_cache_hit_warning:
            continue
        read_share = share(t.heap_blks_read, db_reads)
        recs.append(Recommendation(
            id=f"table-cache-low:{t.name}", rule="table-cache-low", severity="warning", subject=f"table {t.name}",
            impact=read_share,
            finding=f"{t.name} found {100 * hit:.1f} % of its heap blocks in shared buffers: {t.heap_blks_read} "
                    f"blocks ({human_bytes(t.heap_blks_read * 8192)}) were read from disk or the OS cache, "
                    f"{read_share:.0f} % of this database's block reads.",
            evidence={"heap_blks_read": t.heap_blks_read, "heap_blks_hit": t.heap_blks_hit,
                      "heap_hit_ratio": round(hit, 4), "size_bytes": t.size_bytes, "database_blks_read": db_reads,
                      "share_of_database_reads": round(read_share, 2), "seq_scan": t.seq_scan,
                      "idx_scan": t.idx_scan},
            action=f"Its working set ({human_bytes(t.size_bytes)} of heap) does not stay in shared_buffers: find "
                   "the statements reading it (most shared blocks read, I/O-bound statements) and give them an index "
                   "so they read fewer blocks; if the table is hot and memory allows, raise shared_buffers "
                   "(restart) and warm it after restarts with the pg_prewarm extension.",
            fix_flow=None))
    return recs


def table_rules(usage: UsageSnapshot, r: PerformanceRules) -> list[Recommendation]:
    recs = []
    all_rows_read = sum(t.seq_tup_read + t.idx_tup_fetch for t in usage.tables)
    all_rows = sum(t.n_live_tup + t.n_dead_tup for t in usage.tables)
    all_scans = sum(t.seq_scan + (t.idx_scan or 0) for t in usage.tables)
    for t in usage.tables:
        scans_share = share(t.seq_scan + (t.idx_scan or 0), all_scans)
        per_scan = t.seq_tup_read / t.seq_scan if t.seq_scan else 0
        if (t.n_live_tup >= r.seq_scan_min_rows and t.seq_scan >= r.seq_scan_min_count
                and per_scan >= t.n_live_tup / 2 and t.seq_scan > (t.idx_scan or 0)):
            recs.append(Recommendation(
                id=f"seq-scan:{t.name}", rule="seq-scan", severity="warning", subject=f"table {t.name}",
                impact=share(t.seq_tup_read, all_rows_read),
                finding=f"{t.name} ({t.n_live_tup} rows) was read in full {t.seq_scan} times "
                        f"({t.seq_tup_read} rows read) against {t.idx_scan or 0} index scans.",
                evidence={"seq_scan": t.seq_scan, "seq_tup_read": t.seq_tup_read, "idx_scan": t.idx_scan,
                          "n_live_tup": t.n_live_tup, "size_bytes": t.size_bytes},
                action=f"Find the statements filtering {t.name} (slow statements above) and add the index they "
                       "need with CREATE INDEX CONCURRENTLY.",
                fix_flow=None))
        dead_share = t.n_dead_tup / (t.n_live_tup + t.n_dead_tup) if t.n_dead_tup else 0.0
        if t.n_dead_tup >= r.dead_tuple_min and dead_share >= r.dead_tuple_ratio:
            last = max([d for d in (t.last_vacuum, t.last_autovacuum) if d], default=None)
            recs.append(Recommendation(
                id=f"dead-tuples:{t.name}", rule="dead-tuples", severity="warning", subject=f"table {t.name}",
                impact=share(t.n_dead_tup, all_rows),
                finding=f"{t.name} has {t.n_dead_tup} dead tuples ({100 * dead_share:.0f} % of its rows); "
                        f"last vacuumed {last:%Y-%m-%d %H:%M} UTC." if last else
                        f"{t.name} has {t.n_dead_tup} dead tuples ({100 * dead_share:.0f} % of its rows) and was "
                        "never vacuumed.",
                evidence={"n_dead_tup": t.n_dead_tup, "n_live_tup": t.n_live_tup, "dead_share": round(dead_share, 4),
                          "last_vacuum": str(t.last_vacuum), "last_autovacuum": str(t.last_autovacuum)},
                action=f"VACUUM (ANALYZE) {t.name}; if it recurs, lower autovacuum_vacuum_scale_factor for this "
                       "table and look for long transactions holding the xmin horizon.",
                fix_flow="vacuum"))
        recs += _statistics(t, scans_share, r)
    return recs


def _statistics(t: TableUsage, scans_share: float, r: PerformanceRules) -> list[Recommendation]:
    """Never-analyzed tables, and analyzed ones with many rows modified since (the planner works from old counts)."""
    if t.n_mod_since_analyze < r.analyze_min_changes:
        return []
    analyzed = max([d for d in (t.last_analyze, t.last_autoanalyze) if d], default=None)
    if analyzed is None:
        return [Recommendation(
            id=f"never-analyzed:{t.name}", rule="never-analyzed", severity="warning", subject=f"table {t.name}",
            impact=scans_share,
            finding=f"{t.name} was never analyzed and has {t.n_mod_since_analyze} changes: the planner guesses.",
            evidence={"n_mod_since_analyze": t.n_mod_since_analyze, "n_live_tup": t.n_live_tup,
                      "share_of_table_scans": round(scans_share, 2)},
            action=f"ANALYZE {t.name} (the vacuum flow with this table analyzes it).", fix_flow="vacuum")]
    mod_ratio = t.n_mod_since_analyze / max(t.n_live_tup, 1)
    if mod_ratio < r.stale_analyze_ratio:
        return []
    return [Recommendation(
        id=f"stale-statistics:{t.name}", rule="stale-statistics", severity="warning", subject=f"table {t.name}",
        impact=scans_share,
        finding=f"{t.name} had {t.n_mod_since_analyze} rows modified since it was last analyzed "
                f"({analyzed:%Y-%m-%d %H:%M} UTC), {100 * mod_ratio:.0f} % of its {t.n_live_tup} live rows: "
                "the planner works from old counts.",
        evidence={"n_mod_since_analyze": t.n_mod_since_analyze, "n_live_tup": t.n_live_tup,
                  "modified_ratio": round(mod_ratio, 4), "last_analyze": str(t.last_analyze),
                  "last_autoanalyze": str(t.last_autoanalyze), "share_of_table_scans": round(scans_share, 2)},
        action=f"Run the vacuum flow for {t.name} (VACUUM (ANALYZE), the default options) or ANALYZE {t.name}; if "
               "it recurs, check autovacuum is enabled for it and lower its autovacuum_analyze_scale_factor.",
        fix_flow="vacuum")]


def index_rules(usage: UsageSnapshot, r: PerformanceRules) -> list[Recommendation]:
    recs = []
    all_index = sum(i.size_bytes for i in usage.indexes)
    for i in usage.indexes:
        if not i.is_valid:
            recs.append(Recommendation(
                id=f"invalid-index:{i.name}", rule="invalid-index", severity="warning", subject=f"index {i.name}",
                impact=share(i.size_bytes, all_index),
                finding=f"Index {i.name} on {i.table_name} is INVALID (a failed CREATE/REINDEX CONCURRENTLY): "
                        "it is maintained on every write but never used.",
                evidence=i.model_dump(), action=f"REINDEX INDEX CONCURRENTLY {i.name}, or drop it if it is a leftover "
                                                "*_ccnew index.", fix_flow="index-maintenance"))
        elif i.idx_scan == 0 and not i.is_unique and i.size_bytes >= r.unused_index_min_bytes:
            recs.append(Recommendation(
                id=f"unused-index:{i.name}", rule="unused-index", severity="info", subject=f"index {i.name}",
                impact=share(i.size_bytes, all_index),
                finding=f"Index {i.name} on {i.table_name} ({human_bytes(i.size_bytes)}) was never scanned since "
                        "the statistics were reset.",
                evidence=i.model_dump(),
                action="Check it is unused on every standby too (statistics are per node) and over a full business "
                       f"cycle, then DROP INDEX CONCURRENTLY {i.name}.", fix_flow="index-maintenance"))
    return recs


def backend_write_rules(io: IoDelta | None, r: PerformanceRules) -> list[Recommendation]:
    """Client backends writing dirty buffers themselves (pg_stat_io, PG16+): they wait on those writes."""
    share_ = io.client_write_share if io else None
    writes = sum(io.writes(b) for b in WRITERS) if io else 0
    if share_ is None or share_ <= r.client_write_share or writes < MIN_WRITES:
        return []
    by = {b: io.writes(b) for b in WRITERS}
    return [Recommendation(
        id="client-backend-writes", rule="client-backend-writes", severity="warning", subject="cluster",
        impact=100 * share_,
        finding=f"Client backends wrote {100 * share_:.0f} % of the {writes} buffers written since the {io.since} "
                f"(background writer {by['background writer']}, checkpointer {by['checkpointer']}).",
        evidence={"since": io.since, "client_write_share": round(share_, 4), "writes": by,
                  "by_backend": [row.model_dump() for row in io.rows]},
        action="Queries are writing dirty buffers out themselves: raise shared_buffers (restart) if the working set "
               "does not fit, or make the background writer keep up (bgwriter_lru_maxpages, bgwriter_lru_multiplier, "
               "bgwriter_delay); look at bulk writers in the statements with the most shared blocks written.",
        fix_flow=None)]


def performance_recommendations(statements: StatementsSnapshot | None, totals: StatementsDelta | None,
                                cache: list[RatioRow] | None, usage: UsageSnapshot | None,
                                r: PerformanceRules, io: IoDelta | None = None) -> list[Recommendation]:
    recs = backend_write_rules(io, r)
    if statements is not None:
        recs += statement_rules(statements, totals, r)
    if cache is not None:
        recs += cache_rules(cache, r)
    recs += io_rules(usage, totals if statements is not None and statements.available else None, r)
    if usage is not None:
        recs += table_rules(usage, r) + index_rules(usage, r)
    return recs


def headline(statements: StatementsSnapshot | None, usage: UsageSnapshot | None, io: IoDelta | None = None) -> dict:
    out = {}
    if io is not None:
        share_ = io.client_write_share
        out["buffer writes by client backends (pg_stat_io)"] = "n/a" if share_ is None else f"{100 * share_:.0f} %"
    if statements and statements.available:
        out["statements tracked"] = len(statements.statements)
        out["statement time (total)"] = human_seconds(sum(s.total_ms for s in statements.statements) / 1000)
    if usage:
        out["track_io_timing"] = usage.io.track_io_timing
        out["block read time (this database)"] = human_seconds(usage.io.blk_read_ms / 1000)
        out["tables"] = len(usage.tables)
    return out
