"""Trend charts of the daily report, drawn from the stored history (history_days) plus today's report.

A stored report is read through a slim model (only what a chart needs). Per-day figures divide a delta by the
days between a report and the one before it; a delta counted from a statistics reset (first report, reset) or
over less than an hour is not a per-day figure and is left out. Pure functions: no connection, no cursor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from pydantic import BaseModel, Field

from tasks.core.findings import human_bytes, human_seconds, md_cell
from tasks.core.redact import redact_sql
from tasks.report.charts import image_markdown, line_chart

MIN_RATE_SECONDS = 3600  # a delta over less than this is not shown as a per-day figure
TOP_STATEMENTS = 5
TOP_DATABASES = 5


class _Group(BaseModel):
    active: int = 0
    idle: int = 0
    idle_in_transaction: int = 0
    other: int = 0


class _Connections(BaseModel):
    groups: list[_Group] = Field(default_factory=list)


class _DatabaseSize(BaseModel):
    datname: str
    size_bytes: int


class _Storage(BaseModel):
    databases: list[_DatabaseSize] = Field(default_factory=list)


class _Ratio(BaseModel):
    kind: str
    name: str
    blks_hit: int
    blks_read: int


class _Statement(BaseModel):
    key: str
    query: str
    total_ms: float
    reset: bool = False


class _Statements(BaseModel):
    since: str
    statements: list[_Statement] = Field(default_factory=list)


class _Checkpoints(BaseModel):
    wal_bytes: int | None = None
    reset: bool = False


class _DatabaseAge(BaseModel):
    datname: str
    xid_age: int


class _Wraparound(BaseModel):
    freeze_max_age: int
    databases: list[_DatabaseAge] = Field(default_factory=list)


class TrendPoint(BaseModel):
    """What the charts read of one stored daily report (the rest of the JSON is ignored)."""

    started_at: datetime
    previous_at: datetime | None = None
    connections: _Connections | None = None
    storage: _Storage | None = None
    cache_delta: list[_Ratio] = Field(default_factory=list)
    statements_delta: _Statements | None = None
    checkpoint_delta: _Checkpoints | None = None
    wraparound: _Wraparound | None = None

    def days_since_previous(self) -> float | None:
        """Days the deltas cover, when they are per-day figures (a previous report at least an hour before)."""
        if self.previous_at is None:
            return None
        seconds = (self.started_at - self.previous_at).total_seconds()
        return seconds / 86400 if seconds >= MIN_RATE_SECONDS else None


class Chart(BaseModel):
    title: str
    svg: str | None = None
    why_not: str | None = Field(default=None, description="Why the chart is not drawn (no data yet).")


def _per_day(p: TrendPoint, amount: float | None) -> float | None:
    days = p.days_since_previous()
    return None if amount is None or days is None else amount / days


def connections_by_state(points: Sequence[TrendPoint]) -> dict[str, list[float | None]]:
    states = {"active": "active", "idle": "idle", "idle in transaction": "idle_in_transaction", "other": "other"}
    return {label: [sum(getattr(g, field) for g in p.connections.groups) if p.connections else None
                    for p in points] for label, field in states.items()}


def database_sizes(points: Sequence[TrendPoint]) -> dict[str, list[float | None]]:
    """The largest databases (by their latest size), bytes per report."""
    latest: dict[str, int] = {}
    for p in points:
        for d in p.storage.databases if p.storage else []:
            latest[d.datname] = d.size_bytes
    top = sorted(latest, key=lambda n: -latest[n])[:TOP_DATABASES]
    sizes = [{d.datname: d.size_bytes for d in p.storage.databases} if p.storage else {} for p in points]
    return {name: [s.get(name) for s in sizes] for name in top}


def growth_per_day(points: Sequence[TrendPoint]) -> list[float | None]:
    """All databases' size change per day since the report before (databases in both only)."""
    out: list[float | None] = [None]
    for before, after in zip(points, points[1:], strict=False):
        seconds = (after.started_at - before.started_at).total_seconds()
        if not (before.storage and after.storage) or seconds < MIN_RATE_SECONDS:
            out.append(None)
            continue
        old = {d.datname: d.size_bytes for d in before.storage.databases}
        change = sum(d.size_bytes - old[d.datname] for d in after.storage.databases if d.datname in old)
        out.append(change / (seconds / 86400))
    return out


def cache_hit_percent(points: Sequence[TrendPoint]) -> list[float | None]:
    """Every database's blocks found in shared buffers since the report before, in percent."""
    out: list[float | None] = []
    for p in points:
        rows = [r for r in p.cache_delta if r.kind == "database"]
        hit, read = sum(r.blks_hit for r in rows), sum(r.blks_read for r in rows)
        out.append(100 * hit / (hit + read) if hit + read else None)
    return out


def top_statements_per_day(points: Sequence[TrendPoint]) -> dict[str, list[float | None]]:
    """The statements with the most total time over the period: seconds of execution per day, per report."""
    per_point: list[dict[str, float]] = []
    total: dict[str, float] = {}
    label: dict[str, str] = {}
    for p in points:
        days = p.days_since_previous()
        if p.statements_delta is None or days is None or p.statements_delta.since != "previous report":
            per_point.append({})
            continue
        seen = {s.key: s.total_ms / 1000 / days for s in p.statements_delta.statements if not s.reset}
        for s in p.statements_delta.statements:
            label[s.key] = redact_sql(s.query, 48)
        for key, value in seen.items():
            total[key] = total.get(key, 0.0) + value
        per_point.append(seen)
    top = sorted(total, key=lambda k: -total[k])[:TOP_STATEMENTS]
    return {f"{i + 1}. {label[k]}": [seen.get(k) if seen else None for seen in per_point]
            for i, k in enumerate(top)}


def wal_per_day(points: Sequence[TrendPoint]) -> list[float | None]:
    return [_per_day(p, p.checkpoint_delta.wal_bytes) if p.checkpoint_delta and not p.checkpoint_delta.reset
            else None for p in points]


def oldest_xid_age(points: Sequence[TrendPoint]) -> tuple[list[float | None], int | None]:
    """The oldest database's datfrozenxid age per report, and the freeze limit (autovacuum_freeze_max_age)."""
    ages = [max((d.xid_age for d in p.wraparound.databases), default=None) if p.wraparound else None
            for p in points]
    limit = next((p.wraparound.freeze_max_age for p in reversed(points) if p.wraparound), None)
    return ages, limit


def _count(v: float) -> str:
    return f"{v:g}"


def _millions(v: float) -> str:
    return f"{v / 1e6:g} M"


def _chart(title: str, x: list[datetime], series: dict[str, list[float | None]], fmt: Callable[[float], str],
           why_not: str, limit: tuple[str, float] | None = None, bars: bool = False, legend: bool = False) -> Chart:
    """A chart when some series has a value (two for lines), else why not."""
    values = [v for s in series.values() for v in s if v is not None]
    if not values or (not bars and max(sum(v is not None for v in s) for s in series.values()) < 2):
        return Chart(title=title, why_not=why_not)
    return Chart(title=title, svg=line_chart(title, x, series, fmt, limit, bars, legend))


def build_charts(points: Sequence[TrendPoint], cache_warning: float | None = None) -> list[Chart]:
    """Every trend chart of the daily report over these points (oldest first, today last)."""
    x = [p.started_at for p in points]
    statements = top_statements_per_day(points)
    ages, freeze_limit = oldest_xid_age(points)
    return [
        _chart("Connections by state", x, connections_by_state(points), _count,
               "the connections section failed in the stored reports"),
        _chart("Database size", x, database_sizes(points), lambda v: human_bytes(v),
               "the storage section failed in the stored reports"),
        _chart("Database growth per day (all databases)", x, {"growth per day": growth_per_day(points)},
               lambda v: human_bytes(v), "needs two reports at least an hour apart with storage figures", bars=True),
        _chart("Cache hit ratio (since the report before)", x, {"cache hit %": cache_hit_percent(points)},
               lambda v: f"{v:.0f} %", "no database touched a block in these reports",
               limit=("warning below", 100 * cache_warning) if cache_warning else None),
        _chart("Top statements: execution time per day", x, statements, lambda v: human_seconds(v),
               "needs pg_stat_statements and two reports at least an hour apart",
               bars=not any(sum(v is not None for v in s) >= 2 for s in statements.values()), legend=True),
        _chart("WAL written per day", x, {"WAL per day": wal_per_day(points)}, lambda v: human_bytes(v),
               "needs pg_stat_wal (PostgreSQL 14+) and two reports at least an hour apart", bars=True),
        _chart("Oldest XID age (datfrozenxid)", x, {"oldest database": ages}, _millions,
               "the wraparound section failed in the stored reports",
               limit=("autovacuum_freeze_max_age", freeze_limit) if freeze_limit else None),
    ]


def render_trends(points: Sequence[TrendPoint], history_days: int, charts: Sequence[Chart],
                  note: str | None = None) -> list[str]:
    """The report's trend section: the charts as data-URI images, or why there is no trend yet."""
    period = f"the last {history_days} days" if history_days else "all stored reports"
    out = ["", f"## Trends over {period}", ""]
    if note:
        out += [md_cell(note), ""]
    if len(points) < 2:
        return out + ["No trend yet: this is the first stored report of this cluster (or the history could not be "
                      "read). The charts start with the next daily report; reports are kept "
                      f"{f'{history_days} days' if history_days else 'until pruned'}."]
    out += [f"{len(points)} reports from {points[0].started_at:%Y-%m-%d} to {points[-1].started_at:%Y-%m-%d} "
            "(UTC); per-day figures divide each report's delta by the time since the report before.", ""]
    for chart in charts:
        out += [image_markdown(chart.title, chart.svg) if chart.svg else
                f"*{md_cell(chart.title)}: no chart yet ({md_cell(chart.why_not)}).*", ""]
    return out


def trend_section(history: Sequence[TrendPoint], today: BaseModel, history_days: int,
                  cache_warning: float | None = None, note: str | None = None) -> tuple[list[str], list[str]]:
    """(the markdown lines of the trend section, the titles of the charts drawn) for the stored history plus
    today's report. A chart that cannot be drawn is a sentence in the section, never a failed report."""
    points = [*history, TrendPoint.model_validate(today.model_dump())]
    try:
        charts = build_charts(points, cache_warning) if len(points) >= 2 else []
    except Exception as exc:  # noqa: BLE001 - the report's tables matter more than its pictures
        charts = []
        note = "; ".join(filter(None, [note, f"charts not drawn: {type(exc).__name__}: {exc}"[:300]]))
    return render_trends(points, history_days, charts, note), [c.title for c in charts if c.svg]
