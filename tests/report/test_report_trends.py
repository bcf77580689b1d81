"""Trend charts of the daily report (tasks/report/trends.py, charts.py): the per-day arithmetic, and charts that
are real SVG images embedded as data URIs, small, and absent (with a sentence) when there is no history yet."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from tasks.report.charts import embedded_images
from tasks.report.trends import (
    TrendPoint,
    build_charts,
    cache_hit_percent,
    growth_per_day,
    render_trends,
    top_statements_per_day,
    wal_per_day,
)

T0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
GiB = 1024 ** 3


def point(day: int, *, size: int, wal: int | None = 2 * GiB, hit: int = 990, read: int = 10, xid: int = 1_000_000,
          since: str = "previous report", hours: float = 24, statements=(("q1", "SELECT 1", 3_600_000.0),),
          reset: bool = False) -> TrendPoint:
    at = T0 + timedelta(days=day)
    return TrendPoint.model_validate({
        "started_at": at, "previous_at": at - timedelta(hours=hours) if day else None,
        "connections": {"groups": [{"active": 2 + day % 3, "idle": 5, "idle_in_transaction": day % 2, "other": 0}]},
        "storage": {"databases": [{"datname": "app", "size_bytes": size},
                                  {"datname": "postgres", "size_bytes": 8 << 20}]},
        "cache_delta": [{"kind": "database", "name": "app", "blks_hit": hit, "blks_read": read},
                        {"kind": "table", "name": "app.t", "blks_hit": 1, "blks_read": 1000}],
        "statements_delta": {"since": since, "statements": [
            {"key": k, "query": q, "total_ms": ms} for k, q, ms in statements]},
        "checkpoint_delta": {"wal_bytes": wal, "reset": reset},
        "wraparound": {"freeze_max_age": 200_000_000, "databases": [{"datname": "app", "xid_age": xid * (day + 1)},
                                                                     {"datname": "postgres", "xid_age": 10}]},
    })


def test_per_day_figures_divide_each_delta_by_the_days_since_the_report_before():
    pts = [point(0, size=10 * GiB), point(1, size=11 * GiB), point(3, size=13 * GiB, hours=48)]
    assert growth_per_day(pts) == [None, GiB + 0.0, GiB + 0.0]  # +2 GiB over 2 days is 1 GiB a day
    assert wal_per_day(pts) == [None, 2.0 * GiB, 1.0 * GiB]  # the first has no report before it
    assert cache_hit_percent(pts) == [99.0, 99.0, 99.0]  # databases only, not relations
    q = top_statements_per_day(pts)
    assert list(q.values()) == [[None, 3600.0, 1800.0]]  # 1 h of execution in 1 day, then in 2 days


def test_deltas_from_a_reset_or_over_minutes_are_not_per_day_figures():
    pts = [point(0, size=GiB), point(1, size=GiB, since="statistics reset", reset=True),
           point(2, size=GiB, hours=0.1)]
    assert wal_per_day(pts) == [None, None, None]
    assert all(v is None for s in top_statements_per_day(pts).values() for v in s)
    assert growth_per_day([point(0, size=GiB), point(0, size=2 * GiB)]) == [None, None]  # same moment


def test_every_chart_is_a_small_valid_svg_embedded_as_a_data_uri():
    odd = (("q1", "SELECT a FROM t WHERE a < $1 AND b > $2 -- ]]> &amp;", 3e6), ("q2", "SELECT 1", 1e6))
    pts = [point(d, size=(10 + d) * GiB, statements=odd) for d in range(30)]
    charts = build_charts(pts, cache_warning=0.95)
    assert [c.title for c in charts if not c.svg] == []
    assert len(charts) == 7
    md = "\n".join(render_trends(pts, 90, charts))
    images = embedded_images(md)
    assert [t for t, _, _ in images] == [c.title for c in charts]
    for title, media_type, data in images:
        root = ET.fromstring(data)
        assert media_type == "image/svg+xml" and root.tag == "{http://www.w3.org/2000/svg}svg", title
        assert len(data) < 16_000, (title, len(data))  # a few KB each, even for a month of daily points
        assert "<script" not in data.decode()
    assert "<svg" not in md  # only as images: the UI strips inline SVG


def test_a_first_report_says_there_is_no_trend_yet_instead_of_an_empty_chart():
    md = "\n".join(render_trends([point(0, size=GiB)], 90, []))
    assert "No trend yet: this is the first stored report" in md and not embedded_images(md)
    two = [point(0, size=GiB, wal=None), point(1, size=GiB, wal=None, since="statistics reset")]
    charts = {c.title: c for c in build_charts(two)}
    assert charts["Connections by state"].svg and charts["Database size"].svg
    assert charts["WAL written per day"].svg is None and "PostgreSQL 14+" in charts["WAL written per day"].why_not
    md = "\n".join(render_trends(two, 90, list(charts.values())))
    assert "*WAL written per day: no chart yet (needs pg_stat_wal" in md
