"""Pure decisions of the report and the troubleshooters: deltas, version branch, rules (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.core.recommendations import Recommendation, rank
from tasks.core.table_stats import IndexUsage, IoSettings, TableUsage, UsageSnapshot
from tasks.report.cache import CacheSnapshot, DatabaseBlocks
from tasks.report.checkpoints import CheckpointSnapshot
from tasks.report.deltas import cache_deltas, checkpoint_delta, statements_delta
from tasks.report.performance_rules import (
    PerformanceRules,
    io_bound_statements,
    io_rules,
    performance_recommendations,
    table_cache_rules,
    table_rules,
)
from tasks.report.statements import StatementCounters, StatementsSnapshot

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stmt(key, calls, total_ms, **kw):
    values = dict(rows=calls, shared_blks_hit=10 * calls, shared_blks_read=calls, temp_blks_written=0,
                  blk_read_ms=0.0)
    values.update(kw)
    return StatementCounters(key=key, datname="app", usename="app", query=f"SELECT {key}", calls=calls,
                             total_ms=total_ms, **values)


def snap(reset, *rows):
    return StatementsSnapshot(available=True, stats_reset=reset, statements=list(rows))


def test_delta_subtracts_and_drops_statements_without_new_calls():
    before = snap(T0, stmt("a", 10, 100.0), stmt("b", 5, 50.0))
    after = snap(T0, stmt("a", 17, 170.0), stmt("b", 5, 50.0), stmt("c", 2, 4.0))
    delta = statements_delta(after, before)
    by_key = {s.key: s for s in delta.statements}
    assert set(by_key) == {"a", "c"} and by_key["a"].calls == 7 and by_key["a"].total_ms == 70.0
    assert by_key["c"].calls == 2 and not delta.reset_detected and delta.since == "previous report"


def test_counters_going_down_are_a_reset_never_negative():
    before = snap(T0, stmt("a", 100, 1000.0), stmt("b", 50, 10.0))
    after = snap(T0, stmt("a", 3, 9.0), stmt("b", 60, 12.0))  # a was evicted and came back
    delta = statements_delta(after, before)
    a = next(s for s in delta.statements if s.key == "a")
    assert (a.calls, a.total_ms, a.reset) == (3, 9.0, True)
    assert delta.reset_detected and delta.reset_entries == 1
    for s in delta.statements:
        assert min(s.calls, s.total_ms, s.rows, s.shared_blks_hit, s.shared_blks_read) >= 0


def test_changed_stats_reset_counts_from_the_reset():
    before = snap(T0, stmt("a", 100, 1000.0))
    after = snap(T0 + timedelta(hours=1), stmt("a", 150, 1200.0))  # reset, then 150 calls
    delta = statements_delta(after, before)
    assert delta.since == "statistics reset" and delta.statements[0].calls == 150


def test_database_cache_delta_after_reset_and_counter_drop():
    before = CacheSnapshot(databases=[DatabaseBlocks(datname="a", blks_hit=900, blks_read=100, stats_reset=T0),
                                      DatabaseBlocks(datname="b", blks_hit=500, blks_read=500, stats_reset=None)],
                           relations=[])
    after = CacheSnapshot(databases=[DatabaseBlocks(datname="a", blks_hit=1890, blks_read=110, stats_reset=T0),
                                     DatabaseBlocks(datname="b", blks_hit=30, blks_read=10, stats_reset=None)],
                          relations=[])
    a, b = cache_deltas(after, before)
    assert (a.blks_hit, a.blks_read, a.hit_ratio, a.reset) == (990, 10, 0.99, False)
    assert (b.blks_hit, b.blks_read, b.hit_ratio, b.reset) == (30, 10, 0.75, True)


def test_checkpoint_delta_and_pg17_counters_reset():
    def cp(timed, req, failed, reset=T0):
        return CheckpointSnapshot(checkpoints_timed=timed, checkpoints_requested=req, checkpoint_write_ms=0,
                                  buffers_written=0, stats_reset=reset, wal_bytes=1000, archived_count=0,
                                  failed_count=failed, last_failed_wal=None, last_failed_time=None,
                                  archive_mode="off", checkpoint_timeout="5min", max_wal_size="1GB")
    d = checkpoint_delta(cp(12, 8, 1), cp(10, 2, 0))
    assert (d.timed, d.requested, d.archive_failures, d.requested_share) == (2, 6, 1, 0.75)
    d = checkpoint_delta(cp(1, 0, 0, reset=T0 + timedelta(days=1)), cp(10, 2, 0))
    assert (d.timed, d.requested, d.reset) == (1, 0, True)


def test_track_io_timing_off_is_a_recommendation():
    usage = UsageSnapshot(tables=[], indexes=[], io=IoSettings(track_io_timing=False, blk_read_ms=0,
                                                               blk_write_ms=0, blks_read=0))
    (rec,) = io_rules(usage, None, PerformanceRules())
    assert rec.rule == "track-io-timing-off" and "ALTER SYSTEM SET track_io_timing = on" in rec.action
    assert PerformanceRules().slow_mean_ms == 100


def test_rank_puts_critical_first_then_impact():
    def r(i, sev, impact):
        return Recommendation(id=i, rule=i, severity=sev, subject="x", finding="f", action="a", impact=impact)
    assert [x.id for x in rank([r("a", "info", 9), r("b", "warning", 1), r("c", "critical", 0),
                                r("d", "warning", 5)])] == ["c", "d", "b", "a"]


def test_a_section_missing_from_the_previous_report_has_no_baseline():
    from tasks.report.performance import PerformanceReport, ReportParams, compute_deltas, render_markdown

    now = snap(T0, stmt("a", 10, 100.0))
    previous = PerformanceReport(cluster="c", node="n", started_at=T0, statements=None)
    report = PerformanceReport(cluster="c", node="n", started_at=T0 + timedelta(days=1), statements=now,
                               previous_at=T0)
    compute_deltas(report, previous)
    assert report.no_baseline == ["statements"]
    assert report.statements_delta.since == "statistics reset" and report.statements_delta.statements[0].calls == 10
    assert "no statements figures" in render_markdown(report, ReportParams())


def _wrap_snapshot(xid_age: int, mxid_age: int):
    from tasks.report.wraparound import DatabaseAge, WraparoundSnapshot

    return WraparoundSnapshot(freeze_max_age=200_000_000, multixact_freeze_max_age=400_000_000, tables=[],
                              holders=[], databases=[DatabaseAge(datname="app", xid_age=xid_age, mxid_age=10),
                                                     DatabaseAge(datname="queue", xid_age=100, mxid_age=mxid_age)])


def test_wraparound_grades_multixact_age_too():
    from tasks.report.performance import ReportParams, wraparound_check
    from tasks.report.wraparound import MXID_HARD_LIMIT

    p = ReportParams()
    calm = wraparound_check("primary", _wrap_snapshot(1_000, 1_000), p)
    assert calm.status == "ok"
    # past autovacuum_multixact_freeze_max_age (400M) but a small share of the hard limit: warning
    overdue = wraparound_check("primary", _wrap_snapshot(1_000, 450_000_000), p)
    assert overdue.status == "warning" and overdue.details["mxid_overdue"] == ["queue"]
    assert overdue.details["oldest_mxid_database"] == "queue" and overdue.details["mxid_age"] == 450_000_000
    assert overdue.details["mxid_share_of_freeze_max_age"] == 1.125
    assert ("oldest multixact age 450,000,000 in queue: 112.5 % of autovacuum_multixact_freeze_max_age"
            in overdue.summary)
    # 80 % of the multixact hard limit is critical even though the XIDs are young
    near = wraparound_check("primary", _wrap_snapshot(1_000, int(0.8 * MXID_HARD_LIMIT)), p)
    assert near.status == "critical" and near.details["mxid_share_of_hard_limit"] == 0.8
    assert near.details["share_of_hard_limit"] < 0.001


def test_wraparound_markdown_shows_multixact_shares():
    from tasks.report.performance import PerformanceReport, ReportParams, render_markdown

    report = PerformanceReport(cluster="c", node="primary", started_at=T0, wraparound=_wrap_snapshot(10, 200_000_000))
    text = render_markdown(report, ReportParams())
    assert "% multixact_freeze_max_age" in text and "% mxid hard limit" in text
    assert "| queue | 100 | 0.0 | 0.00 | 200,000,000 | 50.0 | 9.33 |" in text


def table(name, **kw):
    values = dict(seq_scan=0, seq_tup_read=0, idx_scan=0, idx_tup_fetch=0, n_live_tup=1000, n_dead_tup=0,
                  n_mod_since_analyze=0, last_vacuum=None, last_autovacuum=None, last_analyze=T0,
                  last_autoanalyze=None, size_bytes=8192 * 100, heap_blks_hit=0, heap_blks_read=0)
    values.update(kw)
    return TableUsage(name=name, **values)


def usage_of(*tables, indexes=(), blks_read=0, timing=True):
    return UsageSnapshot(tables=list(tables), indexes=list(indexes),
                         io=IoSettings(track_io_timing=timing, blk_read_ms=0, blk_write_ms=0, blks_read=blks_read))


def test_io_bound_statement_needs_both_read_share_and_read_time():
    totals = statements_delta(snap(T0,
                                   stmt("io", 10, 4000.0, blk_read_ms=3000.0, shared_blks_read=60000),
                                   stmt("cpu", 10, 5000.0, blk_read_ms=1500.0, shared_blks_read=100),  # 30 %
                                   stmt("small", 10, 1000.0, blk_read_ms=900.0),  # under 1 s of reads
                                   stmt("few", 2, 9000.0, blk_read_ms=9000.0)), None)  # under min_calls
    (rec,) = io_bound_statements(totals, PerformanceRules())
    assert rec.rule == "io-bound-statement" and rec.id == "io-bound-statement:io" and rec.severity == "warning"
    ev = rec.evidence
    assert (ev["calls"], ev["total_ms"], ev["blk_read_ms"], ev["read_share"]) == (10, 4000.0, 3000.0, 0.75)
    assert ev["shared_blks_read"] == 60000 and ev["ms_per_block_read"] == 0.05
    assert rec.impact == 100 * 3000 / 19000  # its read time, as a share of all statement time
    assert "75 % of its time" in rec.finding and "EXPLAIN (ANALYZE, BUFFERS)" in rec.action
    assert "storage" not in rec.action  # 0.05 ms per block is not slow storage
    slow_disk = statements_delta(snap(T0, stmt("io", 10, 4000.0, blk_read_ms=3000.0, shared_blks_read=600)), None)
    (rec,) = io_bound_statements(slow_disk, PerformanceRules())
    assert rec.evidence["ms_per_block_read"] == 5.0 and "5.00 ms per block" in rec.action
    assert io_bound_statements(totals, PerformanceRules(io_bound_share=0.8)) == []
    untimed = statements_delta(snap(T0, stmt("io", 10, 4000.0)), None)  # track_io_timing off: no read time
    assert io_bound_statements(untimed, PerformanceRules(io_bound_min_read_ms=0)) == []


def test_table_cache_low_with_its_share_of_database_reads():
    hot = table("public.hot", heap_blks_hit=5_000, heap_blks_read=45_000, size_bytes=8192 * 40_000)
    fine = table("public.fine", heap_blks_hit=990_000, heap_blks_read=10_000)
    few = table("public.few", heap_blks_hit=0, heap_blks_read=9_999)
    (rec,) = table_cache_rules(usage_of(hot, fine, few, blks_read=90_000), PerformanceRules())
    assert rec.id == "table-cache-low:public.hot" and rec.impact == 50.0
    ev = rec.evidence
    assert (ev["heap_blks_read"], ev["heap_blks_hit"], ev["heap_hit_ratio"]) == (45_000, 5_000, 0.1)
    assert ev["database_blks_read"] == 90_000 and ev["share_of_database_reads"] == 50.0
    assert "10.0 %" in rec.finding and "pg_prewarm" in rec.action and "shared_buffers" in rec.action
    # without the database's figure, the tables' own reads are the total
    (rec,) = table_cache_rules(usage_of(hot, fine, few, blks_read=0), PerformanceRules())
    assert rec.evidence["database_blks_read"] == 64_999


def test_stale_statistics_after_an_analyze_and_never_analyzed_apart():
    stale = table("public.stale", n_live_tup=20_000, n_mod_since_analyze=15_000, seq_scan=3, idx_scan=1,
                  last_analyze=None, last_autoanalyze=T0)
    fresh = table("public.fresh", n_live_tup=200_000, n_mod_since_analyze=15_000, seq_scan=4)  # 7.5 %
    never = table("public.never", n_live_tup=20_000, n_mod_since_analyze=20_000, last_analyze=None, seq_scan=2)
    recs = table_rules(usage_of(stale, fresh, never), PerformanceRules())
    (rec,) = [r for r in recs if r.rule == "stale-statistics"]
    assert rec.subject == "table public.stale" and rec.fix_flow == "vacuum" and rec.severity == "warning"
    assert (rec.evidence["n_mod_since_analyze"], rec.evidence["n_live_tup"], rec.evidence["modified_ratio"]) == (
        15_000, 20_000, 0.75)
    assert rec.evidence["last_autoanalyze"] == str(T0) and "75 %" in rec.finding
    assert rec.impact == 40.0  # 4 of the 10 table scans
    assert "ANALYZE public.stale" in rec.action
    assert [r.subject for r in recs if r.rule == "never-analyzed"] == ["table public.never"]
    assert table_rules(usage_of(stale), PerformanceRules(stale_analyze_ratio=0.8)) == []


def test_impact_is_one_scale_across_rules():
    """Every rule's impact is a 0-100 share of a database-wide total, so one list ranks them all."""
    rules = PerformanceRules(slow_mean_ms=500, min_calls=1, temp_blocks=1000, seq_scan_min_rows=1, seq_scan_min_count=1,
                             unused_index_min_bytes=0, dead_tuple_min=1, dead_tuple_ratio=0.01, analyze_min_changes=1,
                             io_bound_min_read_ms=1, table_cache_min_reads=1, cache_min_blocks=0)
    statements = snap(T0, stmt("a", 10, 9000.0, blk_read_ms=8000.0, temp_blks_written=500),
                      stmt("b", 10, 1000.0, temp_blks_written=5000))
    usage = usage_of(
        table("public.big", n_live_tup=1000, n_dead_tup=1000, seq_scan=10, seq_tup_read=10_000, idx_tup_fetch=10_000,
              n_mod_since_analyze=1000, heap_blks_read=100, heap_blks_hit=0),
        table("public.other", n_live_tup=8000, idx_scan=30),
        indexes=[IndexUsage(name="public.bad", table_name="public.big", idx_scan=0, size_bytes=100, is_unique=False,
                            is_valid=False),
                 IndexUsage(name="public.unused", table_name="public.big", idx_scan=0, size_bytes=300,
                            is_unique=False, is_valid=True)],
        blks_read=400)
    cache = cache_deltas(CacheSnapshot(databases=[DatabaseBlocks(datname="app", blks_hit=900, blks_read=100,
                                                                 stats_reset=T0)], relations=[]), None)
    recs = performance_recommendations(statements, statements_delta(statements, None), cache, usage, rules)
    impact = {r.rule: r.impact for r in recs}
    assert impact == {
        "slow-statement": 90.0,          # 9 s of the 10 s statement time
        "temp-spill": 10.0,              # b's 1 s of statement time, not its 91 % of the temp blocks
        "io-bound-statement": 80.0,      # 8 s of reads in 10 s of statement time
        "cache-hit-low": 10.0,           # 100 of 1,000 block accesses missed
        "table-cache-low": 25.0,         # 100 of the database's 400 block reads
        "seq-scan": 50.0,                # 10,000 of the 20,000 rows read
        "dead-tuples": 10.0,             # 1,000 of the 10,000 rows
        "stale-statistics": 25.0,        # 10 of the 40 table scans
        "invalid-index": 25.0,           # 100 of the 400 index bytes (was a flat 100)
        "unused-index": 75.0,
    }
    assert all(0 <= r.impact <= 100 for r in recs)
    assert Recommendation(id="x", rule="x", severity="info", subject="s", finding="f", action="a",
                          impact=250).impact == 100


def test_untimed_io_gives_the_setting_note_with_no_impact():
    (rec,) = io_rules(usage_of(timing=False), None, PerformanceRules())
    assert rec.rule == "track-io-timing-off" and rec.impact == 0
