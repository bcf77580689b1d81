"""Performance troubleshooting rules (runbook 3.2): pure functions from diagnostics to ranked Recommendations.

Impact is a 0-100 share of the resource a finding is about, so findings of different rules rank
together: statement time, temp blocks written, sequential rows read, index bytes, dead rows.

Statement figures are cumulative since the last statistics reset (the troubleshooter reads the
live view; the daily report keeps the day-over-day deltas).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from tasks.findings import human_bytes, human_seconds
from tasks.health_report import redact_sql
from tasks.recommendations import Recommendation
from tasks.report_deltas import RatioRow, StatementsDelta
from tasks.report_statements import StatementsSnapshot
from tasks.table_stats import UsageSnapshot


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
    analyze_min_changes: int = Field(default=10_000, ge=0, description="Changes since never-analyzed tables count.")


def statement_rules(snap: StatementsSnapshot, totals: StatementsDelta | None,
                    r: PerformanceRules) -> list[Recommendation]:
    if not snap.available or totals is None:
        return [Recommendation(
            id="pg-stat-statements-missing", rule="pg-stat-statements-missing", severity="info", subject="cluster",
            finding="Query statistics are not available, so slow statements cannot be ranked.",
            evidence={"reason": snap.reason}, action=snap.reason or "enable pg_stat_statements")]
    all_ms = sum(s.total_ms for s in totals.statements) or 1.0
    all_temp = sum(s.temp_blks_written for s in totals.statements) or 1
    recs = []
    for s in totals.top("total_ms", len(totals.statements), r.min_calls):
        if s.mean_ms < r.slow_mean_ms or len(recs) >= r.max_statements:
            continue
        share = 100 * s.total_ms / all_ms
        recs.append(Recommendation(
            id=f"slow-statement:{s.key}", rule="slow-statement", severity="warning",
            subject=f"statement in {s.datname}", impact=share,
            finding=f"{redact_sql(s.query, 80)!r} averages {s.mean_ms:.0f} ms over {s.calls} calls "
                    f"({share:.0f} % of all statement time).",
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
            impact=100 * s.temp_blks_written / all_temp,
            finding=f"{redact_sql(s.query, 80)!r} wrote {human_bytes(s.temp_blks_written * 8192)} to temp files "
                    f"in {s.calls} calls.",
            evidence={"query": redact_sql(s.query, 500), "temp_blks_written": s.temp_blks_written, "calls": s.calls},
            action=f"Raise work_mem for its role (ALTER ROLE {s.usename} SET work_mem = ...) or give its sort/hash "
                   "an index; watch temp_bytes in the daily report.",
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
                impact=100 * (1 - row.hit_ratio),
                finding=f"Database {row.name} finds {100 * row.hit_ratio:.1f} % of blocks in shared buffers "
                        f"({row.blks_read} reads from disk or OS cache).",
                evidence=row.model_dump(),
                action="Compare shared_buffers with the working set (largest tables in the daily report); look at "
                       "the statements with the most shared blocks read; raise shared_buffers (restart) if memory "
                       "allows.",
                fix_flow=None))
    return recs


def io_rules(usage: UsageSnapshot) -> list[Recommendation]:
    if usage.io.track_io_timing:
        return []
    return [Recommendation(
        id="track-io-timing-off", rule="track-io-timing-off", severity="info", subject="cluster",
        finding="track_io_timing is off: block read and write times are not measured.",
        evidence={"track_io_timing": False},
        action="ALTER SYSTEM SET track_io_timing = on; SELECT pg_reload_conf(); (check pg_test_timing overhead "
               "first on old hardware).", fix_flow=None)]


def table_rules(usage: UsageSnapshot, r: PerformanceRules) -> list[Recommendation]:
    recs = []
    all_seq = sum(t.seq_tup_read for t in usage.tables) or 1
    for t in usage.tables:
        per_scan = t.seq_tup_read / t.seq_scan if t.seq_scan else 0
        if (t.n_live_tup >= r.seq_scan_min_rows and t.seq_scan >= r.seq_scan_min_count
                and per_scan >= t.n_live_tup / 2 and t.seq_scan > (t.idx_scan or 0)):
            recs.append(Recommendation(
                id=f"seq-scan:{t.name}", rule="seq-scan", severity="warning", subject=f"table {t.name}",
                impact=100 * t.seq_tup_read / all_seq,
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
                impact=100 * dead_share,
                finding=f"{t.name} has {t.n_dead_tup} dead tuples ({100 * dead_share:.0f} % of its rows); "
                        f"last vacuumed {last:%Y-%m-%d %H:%M} UTC." if last else
                        f"{t.name} has {t.n_dead_tup} dead tuples ({100 * dead_share:.0f} % of its rows) and was "
                        "never vacuumed.",
                evidence={"n_dead_tup": t.n_dead_tup, "n_live_tup": t.n_live_tup, "dead_share": round(dead_share, 4),
                          "last_vacuum": str(t.last_vacuum), "last_autovacuum": str(t.last_autovacuum)},
                action=f"VACUUM (ANALYZE) {t.name}; if it recurs, lower autovacuum_vacuum_scale_factor for this "
                       "table and look for long transactions holding the xmin horizon.",
                fix_flow="vacuum"))
        if (t.last_analyze is None and t.last_autoanalyze is None
                and t.n_mod_since_analyze >= r.analyze_min_changes):
            recs.append(Recommendation(
                id=f"never-analyzed:{t.name}", rule="never-analyzed", severity="warning", subject=f"table {t.name}",
                impact=min(100.0, 100 * t.n_mod_since_analyze / max(t.n_live_tup, 1)),
                finding=f"{t.name} was never analyzed and has {t.n_mod_since_analyze} changes: the planner guesses.",
                evidence={"n_mod_since_analyze": t.n_mod_since_analyze, "n_live_tup": t.n_live_tup},
                action=f"ANALYZE {t.name}.", fix_flow="vacuum"))
    return recs


def index_rules(usage: UsageSnapshot, r: PerformanceRules) -> list[Recommendation]:
    recs = []
    all_index = sum(i.size_bytes for i in usage.indexes) or 1
    for i in usage.indexes:
        if not i.is_valid:
            recs.append(Recommendation(
                id=f"invalid-index:{i.name}", rule="invalid-index", severity="warning", subject=f"index {i.name}",
                impact=100,
                finding=f"Index {i.name} on {i.table_name} is INVALID (a failed CREATE/REINDEX CONCURRENTLY): "
                        "it is maintained on every write but never used.",
                evidence=i.model_dump(), action=f"REINDEX INDEX CONCURRENTLY {i.name}, or drop it if it is a leftover "
                                                "*_ccnew index.", fix_flow="index-maintenance"))
        elif i.idx_scan == 0 and not i.is_unique and i.size_bytes >= r.unused_index_min_bytes:
            recs.append(Recommendation(
                id=f"unused-index:{i.name}", rule="unused-index", severity="info", subject=f"index {i.name}",
                impact=100 * i.size_bytes / all_index,
                finding=f"Index {i.name} on {i.table_name} ({human_bytes(i.size_bytes)}) was never scanned since "
                        "the statistics were reset.",
                evidence=i.model_dump(),
                action="Check it is unused on every standby too (statistics are per node) and over a full business "
                       f"cycle, then DROP INDEX CONCURRENTLY {i.name}.", fix_flow="index-maintenance"))
    return recs


def performance_recommendations(statements: StatementsSnapshot | None, totals: StatementsDelta | None,
                                cache: list[RatioRow] | None, usage: UsageSnapshot | None,
                                r: PerformanceRules) -> list[Recommendation]:
    recs = []
    if statements is not None:
        recs += statement_rules(statements, totals, r)
    if cache is not None:
        recs += cache_rules(cache, r)
    if usage is not None:
        recs += io_rules(usage) + table_rules(usage, r) + index_rules(usage, r)
    return recs


def headline(statements: StatementsSnapshot | None, usage: UsageSnapshot | None) -> dict:
    out = {}
    if statements and statements.available:
        out["statements tracked"] = len(statements.statements)
        out["statement time (total)"] = human_seconds(sum(s.total_ms for s in statements.statements) / 1000)
    if usage:
        out["track_io_timing"] = usage.io.track_io_timing
        out["block read time (this database)"] = human_seconds(usage.io.blk_read_ms / 1000)
        out["tables"] = len(usage.tables)
    return out
