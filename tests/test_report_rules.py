"""Pure decisions of the report and the troubleshooters: deltas, version branch, rules (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.performance_rules import PerformanceRules, io_rules
from tasks.recommendations import Recommendation, rank
from tasks.report_cache import CacheSnapshot, DatabaseBlocks
from tasks.report_checkpoints import CheckpointSnapshot
from tasks.report_deltas import cache_deltas, checkpoint_delta, statements_delta
from tasks.report_statements import StatementCounters, StatementsSnapshot, statement_columns, statements_query
from tasks.table_stats import IoSettings, UsageSnapshot

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stmt(key, calls, total_ms, **kw):
    values = dict(rows=calls, shared_blks_hit=10 * calls, shared_blks_read=calls, temp_blks_written=0,
                  blk_read_ms=0.0)
    values.update(kw)
    return StatementCounters(key=key, datname="app", usename="app", query=f"SELECT {key}", calls=calls,
                             total_ms=total_ms, **values)


def snap(reset, *rows):
    return StatementsSnapshot(available=True, stats_reset=reset, statements=list(rows))


def test_version_branch_is_in_one_place():
    assert statement_columns(120000) == {"total_ms": "total_time", "blk_read_ms": "blk_read_time", "toplevel": ""}
    assert statement_columns(130000)["total_ms"] == "total_exec_time"
    assert statement_columns(140000)["toplevel"] == "toplevel"
    assert statement_columns(170000)["blk_read_ms"] == "shared_blk_read_time"
    assert statement_columns(150000)["blk_read_ms"] == "blk_read_time"
    text = statements_query(170000, "public").as_string(None)
    assert '"shared_blk_read_time"' in text and '"total_exec_time"' in text


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
    (rec,) = io_rules(usage)
    assert rec.rule == "track-io-timing-off" and "ALTER SYSTEM SET track_io_timing = on" in rec.action
    assert PerformanceRules().slow_mean_ms == 100


def test_rank_puts_critical_first_then_impact():
    def r(i, sev, impact):
        return Recommendation(id=i, rule=i, severity=sev, subject="x", finding="f", action="a", impact=impact)
    assert [x.id for x in rank([r("a", "info", 9), r("b", "warning", 1), r("c", "critical", 0),
                                r("d", "warning", 5)])] == ["c", "d", "b", "a"]


def test_a_section_missing_from_the_previous_report_has_no_baseline():
    from tasks.perf_report import PerformanceReport, ReportParams, compute_deltas, render_markdown

    now = snap(T0, stmt("a", 10, 100.0))
    previous = PerformanceReport(cluster="c", node="n", started_at=T0, statements=None)
    report = PerformanceReport(cluster="c", node="n", started_at=T0 + timedelta(days=1), statements=now,
                               previous_at=T0)
    compute_deltas(report, previous)
    assert report.no_baseline == ["statements"]
    assert report.statements_delta.since == "statistics reset" and report.statements_delta.statements[0].calls == 10
    assert "no statements figures" in render_markdown(report, ReportParams())


def _wrap_snapshot(xid_age: int, mxid_age: int):
    from tasks.report_wraparound import DatabaseAge, WraparoundSnapshot

    return WraparoundSnapshot(freeze_max_age=200_000_000, multixact_freeze_max_age=400_000_000, tables=[],
                              holders=[], databases=[DatabaseAge(datname="app", xid_age=xid_age, mxid_age=10),
                                                     DatabaseAge(datname="queue", xid_age=100, mxid_age=mxid_age)])


def test_wraparound_grades_multixact_age_too():
    from tasks.perf_report import ReportParams, wraparound_check
    from tasks.report_wraparound import MXID_HARD_LIMIT

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
    from tasks.perf_report import PerformanceReport, ReportParams, render_markdown

    report = PerformanceReport(cluster="c", node="primary", started_at=T0, wraparound=_wrap_snapshot(10, 200_000_000))
    text = render_markdown(report, ReportParams())
    assert "% multixact_freeze_max_age" in text and "% mxid hard limit" in text
    assert "| queue | 100 | 0.0 | 0.00 | 200,000,000 | 50.0 | 9.33 |" in text
