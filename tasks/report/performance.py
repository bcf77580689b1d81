"""Daily performance report (runbook 1.2): the typed report, its per-section verdicts and renderings.

Pure functions over snapshots and deltas: no connection, no cursor.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from blocks.metrics_source import HostMetrics
from tasks.core.errors import describe_error
from tasks.core.findings import Check, Status, human_bytes, human_seconds, md_cell, worst
from tasks.core.notify import STATUS_EMOJI, NotificationOutcome
from tasks.core.redact import redact_sql
from tasks.report.cache import CacheSnapshot
from tasks.report.checkpoints import CheckpointSnapshot
from tasks.report.connections import ConnectionsSnapshot
from tasks.report.deltas import (
    CheckpointDelta,
    RatioRow,
    StatementsDelta,
    StorageDelta,
    cache_deltas,
    checkpoint_delta,
    statements_delta,
    storage_delta,
)
from tasks.report.io_stats import IoDelta, IoSnapshot, io_check, io_delta, io_table
from tasks.report.statements import StatementsSnapshot
from tasks.report.storage import StorageSnapshot
from tasks.report.store import UNREADABLE
from tasks.report.wraparound import HARD_LIMIT, MXID_HARD_LIMIT, WraparoundSnapshot

SECTIONS = ("connections", "statements", "storage", "cache", "wraparound", "checkpoints", "io", "host")


class ReportParams(BaseModel):
    """Settings of the daily performance report (rendered as the run form in the Prefect UI)."""

    top_n: int = Field(default=10, ge=1, le=100, description="Rows per top list.")
    min_calls: int = Field(default=5, ge=1, le=1_000_000, description="Minimum calls to rank by mean time.")
    usage_warning_percent: float = Field(default=80, ge=1, le=100, description="Usable slots in use for a warning.")
    usage_critical_percent: float = Field(default=95, ge=1, le=100, description="Usable slots in use: critical.")
    idle_in_transaction_warning_seconds: float = Field(
        default=300, ge=1, le=604_800, description="A session idle in a transaction this long is a warning.")
    cache_hit_warning: float = Field(default=0.95, ge=0, le=1,
                                     description="Database cache hit ratio (since last report) below this warns.")
    cache_min_blocks: int = Field(default=1000, ge=0, description="Ignore databases that touched fewer blocks.")
    wraparound_warning_share: float = Field(default=0.4, ge=0.01, le=1,
                                            description="XID or multixact age as a share of its hard limit: warning.")
    wraparound_critical_share: float = Field(default=0.75, ge=0.01, le=1,
                                             description="XID or multixact age as a share of its hard limit: critical.")
    disk_warning_percent: float = Field(default=80, ge=1, le=100, description="Data filesystem used: warning.")
    disk_critical_percent: float = Field(default=90, ge=1, le=100, description="Data filesystem used: critical.")
    state_dir: str = Field(default="~/.pg-runbooks/reports",
                           description="Directory keeping the reports between runs (used without storage_block).")
    storage_block: str | None = Field(
        default=None, description="A filesystem block for the reports: a LocalFileSystem name, or "
                                  "'<type-slug>/<name>' such as 'remote-file-system/reports'.")
    metrics_block: str | None = Field(
        default=None, description="A 'host-metrics-source' block for CPU and disk (none: not configured).")
    history_days: int = Field(default=90, ge=0, le=36_500,
                              description="Keep this many days of stored reports per cluster (0: keep them all).")


class PerformanceReport(BaseModel):
    """The daily performance report of one cluster; stored so the next run computes deltas."""

    cluster: str
    node: str
    started_at: datetime
    finished_at: datetime | None = None
    previous_at: datetime | None = Field(default=None, description="When the report the deltas start from ran.")
    baseline_note: str | None = None
    status: Status = "ok"
    summary: str = ""
    checks: list[Check] = Field(default_factory=list)
    # raw snapshots (what the next report subtracts)
    connections: ConnectionsSnapshot | None = None
    statements: StatementsSnapshot | None = None
    storage: StorageSnapshot | None = None
    cache: CacheSnapshot | None = None
    wraparound: WraparoundSnapshot | None = None
    checkpoints: CheckpointSnapshot | None = None
    io: IoSnapshot | None = None
    host: HostMetrics | None = None
    # figures since the previous report
    statements_delta: StatementsDelta | None = None
    storage_delta: StorageDelta | None = None
    cache_delta: list[RatioRow] = Field(default_factory=list)
    checkpoint_delta: CheckpointDelta | None = None
    io_delta: IoDelta | None = None
    no_baseline: list[str] = Field(default_factory=list,
                                   description="Sections the previous report lacks: totals since the stats reset.")
    stored_at: str | None = Field(default=None, description="Path of the stored copy in the report store.")
    store_error: str | None = None
    history: str | None = Field(default=None, description="What pruning the stored history did, or why not.")
    charts: list[str] = Field(default_factory=list, description="Titles of the trend charts drawn in the report.")
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)
    artifact_key: str | None = None

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


def _grade(value: float | None, warning: float, critical: float) -> Status:
    if value is None:
        return "ok"
    return "critical" if value >= critical else "warning" if value >= warning else "ok"


def failed_check(name: str, node: str, error: BaseException) -> Check:
    return Check(name=name, node=node, status="unknown", details={"error": type(error).__name__},
                 summary=f"{name} check failed: {describe_error(error)}")


def connections_check(node: str, snap: ConnectionsSnapshot, p: ReportParams) -> Check:
    usable = snap.limits.usable
    used = snap.client_backends
    percent = 100.0 * used / usable
    old_idle = [s for s in snap.idle_in_transaction if s.xact_seconds >= p.idle_in_transaction_warning_seconds]
    status = worst([_grade(percent, p.usage_warning_percent, p.usage_critical_percent),
                    "warning" if old_idle else "ok"])
    states = snap.by_state()
    tail = (f"; {len(old_idle)} idle in transaction for more than "
            f"{human_seconds(p.idle_in_transaction_warning_seconds)}" if old_idle else "")
    return Check(name="connections", node=node, status=status,
                 details={"usable": usable, "used": used, "percent": round(percent, 1), "by_state": states},
                 summary=f"{used} of {usable} usable connection slots in use ({percent:.0f} %): "
                         f"{states['active']} active, {states['idle']} idle, "
                         f"{states['idle in transaction']} idle in transaction{tail}.")


def evicted_note(snap: StatementsSnapshot, delta: StatementsDelta) -> str:
    """The sentence saying the deltas miss evicted statements, or "" when none were evicted."""
    if not delta.evicted:
        return ""
    limit = f" (pg_stat_statements.max = {snap.max_entries})" if snap.max_entries else ""
    return (f"pg_stat_statements evicted {delta.evicted} statements since the {delta.since}{limit}: their calls "
            "are missing from these figures, so the totals and top lists are incomplete. Raise "
            "pg_stat_statements.max (restart needed) above the number of distinct statements.")


def statements_check(node: str, snap: StatementsSnapshot, delta: StatementsDelta | None) -> Check:
    if not snap.available or delta is None:
        return Check(name="statements", node=node, status="unknown", summary=f"Query statistics unavailable: "
                     f"{snap.reason}", details={"reason": snap.reason, "extversion": snap.extversion})
    calls = sum(s.calls for s in delta.statements)
    total = sum(s.total_ms for s in delta.statements) / 1000
    reset = " Statistics were reset in between: figures count from the reset." if delta.reset_detected else ""
    hidden = (f" The texts of {snap.hidden} statements of other roles are hidden: grant pg_monitor "
              "(or pg_read_all_stats) to the runbook role." if snap.hidden else "")
    evicted = evicted_note(snap, delta)
    return Check(name="statements", node=node, status="warning" if snap.hidden or evicted else "ok",
                 details={"statements": len(delta.statements), "calls": calls, "since": delta.since,
                          "evicted": delta.evicted, "extversion": snap.extversion},
                 summary=f"{len(delta.statements)} statements ran {calls} times for {human_seconds(total)} "
                         f"since the {delta.since}.{reset}{hidden}" + (f" {evicted}" if evicted else ""))


def extension_note(snap: StatementsSnapshot) -> str:
    """Which pg_stat_statements version the figures come from, and whether an update is available."""
    if not snap.extversion:
        return ""
    update = (f" ALTER EXTENSION pg_stat_statements UPDATE would give {snap.default_version}."
              if snap.default_version and snap.default_version != snap.extversion else "")
    return f"From pg_stat_statements {snap.extversion}.{update}"


def storage_check(node: str, snap: StorageSnapshot, delta: StorageDelta) -> Check:
    total = sum(d.size_bytes for d in snap.databases)
    grown = sum(g.growth_bytes or 0 for g in delta.growth if g.kind == "database")
    temp = sum(t.temp_bytes for t in delta.temp)
    wal = f"pg_wal holds {human_bytes(snap.wal_bytes)}" if snap.wal_bytes is not None else f"pg_wal: {snap.wal_error}"
    return Check(name="storage", node=node, status="ok" if snap.wal_error is None else "unknown",
                 details={"total_bytes": total, "growth_bytes": grown, "temp_bytes": temp},
                 summary=f"{len(snap.databases)} databases hold {human_bytes(total)} "
                         f"({'+' if grown >= 0 else '-'}{human_bytes(abs(grown))}); {wal}; "
                         f"{human_bytes(temp)} written to temp files.")


def cache_check(node: str, rows: list[RatioRow], p: ReportParams) -> Check:
    dbs = [r for r in rows if r.kind == "database" and r.blks_hit + r.blks_read >= p.cache_min_blocks]
    low = [r for r in dbs if r.hit_ratio is not None and r.hit_ratio < p.cache_hit_warning]
    if not dbs:
        return Check(name="cache", node=node, status="ok",
                     summary=f"No database touched {p.cache_min_blocks} blocks or more since the last report.")
    worst_db = min(dbs, key=lambda r: r.hit_ratio if r.hit_ratio is not None else 1)
    return Check(name="cache", node=node, status="warning" if low else "ok",
                 details={"low": [r.name for r in low]},
                 summary=f"Lowest cache hit ratio: {worst_db.name} at {100 * (worst_db.hit_ratio or 0):.2f} %"
                         + (f"; {len(low)} database(s) below {100 * p.cache_hit_warning:.0f} %." if low else "."))


def wraparound_check(node: str, snap: WraparoundSnapshot, p: ReportParams) -> Check:
    """Graded by the larger of the oldest XID age and the oldest multixact age, each as a share of its
    own hard limit; a database past either autovacuum freeze limit is at least a warning."""
    oldest = max(snap.databases, key=lambda d: d.xid_age)
    oldest_mx = max(snap.databases, key=lambda d: d.mxid_age)
    share = oldest.xid_age / HARD_LIMIT
    mx_share = oldest_mx.mxid_age / MXID_HARD_LIMIT
    status = _grade(max(share, mx_share), p.wraparound_warning_share, p.wraparound_critical_share)
    overdue = [d.datname for d in snap.databases if d.xid_age > snap.freeze_max_age]
    mx_overdue = [d.datname for d in snap.databases if d.mxid_age > snap.multixact_freeze_max_age]
    if overdue or mx_overdue:
        status = worst([status, "warning"])
    holder = snap.holders[0] if snap.holders else None
    held = (f"; the xmin horizon is held {holder.xmin_age} XIDs back by {holder.kind} {holder.name.strip()}"
            if holder and holder.xmin_age > 0 else "")
    mx_freeze_share = oldest_mx.mxid_age / snap.multixact_freeze_max_age
    return Check(name="wraparound", node=node, status=status,
                 details={"oldest_database": oldest.datname, "xid_age": oldest.xid_age,
                          "share_of_freeze_max_age": round(oldest.xid_age / snap.freeze_max_age, 4),
                          "share_of_hard_limit": round(share, 4), "overdue": overdue,
                          "oldest_mxid_database": oldest_mx.datname, "mxid_age": oldest_mx.mxid_age,
                          "mxid_share_of_freeze_max_age": round(mx_freeze_share, 4),
                          "mxid_share_of_hard_limit": round(mx_share, 4), "mxid_overdue": mx_overdue},
                 summary=f"Oldest XID age {oldest.xid_age:,} in {oldest.datname}: "
                         f"{100 * oldest.xid_age / snap.freeze_max_age:.1f} % of autovacuum_freeze_max_age, "
                         f"{100 * share:.2f} % of the wraparound limit; oldest multixact age "
                         f"{oldest_mx.mxid_age:,} in {oldest_mx.datname}: {100 * mx_freeze_share:.1f} % of "
                         f"autovacuum_multixact_freeze_max_age, {100 * mx_share:.2f} % of its wraparound limit{held}.")


def checkpoints_check(node: str, snap: CheckpointSnapshot, delta: CheckpointDelta) -> Check:
    share = delta.requested_share
    status: Status = "warning" if (share is not None and share > 0.2 and delta.requested >= 5) else "ok"
    if delta.archive_failures:
        status = "warning"
    wal = f", {human_bytes(delta.wal_bytes)} of WAL" if delta.wal_bytes is not None else ""
    arch = (f"; the archiver failed {delta.archive_failures} times (last {snap.last_failed_wal})"
            if delta.archive_failures else "")
    hint = " (raise max_wal_size)" if status == "warning" and share and share > 0.2 else ""
    return Check(name="checkpoints", node=node, status=status, details=delta.model_dump(),
                 summary=f"{delta.timed} timed and {delta.requested} requested checkpoints{hint}{wal}{arch}.")


def host_check(node: str, host: HostMetrics | None, p: ReportParams) -> Check:
    if host is None or host.source == "none":
        return Check(name="host", node=node, status="ok",
                     summary="CPU and disk: no metrics source configured (set metrics_block to a "
                             "host-metrics-source block: local or prometheus).")
    status = worst([_grade(host.disk_used_percent, p.disk_warning_percent, p.disk_critical_percent),
                    _grade(host.cpu_percent, 90, 101)])
    return Check(name="host", node=node, status=status, details=host.model_dump(mode="json"), summary=host.summary)


def compute_deltas(report: PerformanceReport, previous: PerformanceReport | None) -> None:
    """Fill the report's *_delta fields from its snapshots and the previous report's.

    A section that failed in the previous report has no baseline: its figures are totals since the
    statistics were reset, and `no_baseline` says so.
    """
    if previous is not None:
        report.no_baseline = [name for name in ("statements", "storage", "cache", "checkpoints", "io")
                              if getattr(report, name) is not None and getattr(previous, name) is None]
    if report.statements is not None and report.statements.available:
        report.statements_delta = statements_delta(report.statements, previous.statements if previous else None)
    if report.storage is not None:
        report.storage_delta = storage_delta(report.storage, previous.storage if previous else None)
    if report.cache is not None:
        report.cache_delta = cache_deltas(report.cache, previous.cache if previous else None)
    if report.checkpoints is not None:
        report.checkpoint_delta = checkpoint_delta(report.checkpoints, previous.checkpoints if previous else None)
    if report.io is not None:
        report.io_delta = io_delta(report.io, previous.io if previous else None)


def section_checks(report: PerformanceReport, errors: dict[str, BaseException], p: ReportParams) -> list[Check]:
    """One check per section: failed sections from their errors, the others from their figures."""
    node = report.node
    checks = [failed_check(name, node, exc) for name, exc in errors.items()]
    if report.connections:
        checks.append(connections_check(node, report.connections, p))
    if report.statements:
        checks.append(statements_check(node, report.statements, report.statements_delta))
    if report.storage:
        checks.append(storage_check(node, report.storage, report.storage_delta))
    if report.cache:
        checks.append(cache_check(node, report.cache_delta, p))
    if report.wraparound:
        checks.append(wraparound_check(node, report.wraparound, p))
    if report.checkpoints:
        checks.append(checkpoints_check(node, report.checkpoints, report.checkpoint_delta))
    if report.io:
        checks.append(io_check(node, report.io, report.io_delta))
    if "host" not in errors:
        checks.append(host_check(node, report.host, p))
    return checks


def baseline_unreadable(report: PerformanceReport) -> bool:
    """A previous report may exist but could not be read (store unavailable, corrupt file)."""
    return not report.previous_at and (report.baseline_note or "").startswith(UNREADABLE)


def finish_report(report: PerformanceReport) -> PerformanceReport:
    report.checks.sort(key=lambda c: SECTIONS.index(c.name) if c.name in SECTIONS else 99)
    report.status = worst([c.status for c in report.checks])
    bad = [c for c in report.checks if c.status != "ok"]
    since = (f"since {report.previous_at:%Y-%m-%d %H:%M} UTC" if report.previous_at
             else "no deltas: the previous report could not be read" if baseline_unreadable(report)
             else "first report")
    if not bad:
        report.summary = f"{report.cluster}: all {len(report.checks)} sections ok ({since})."
    else:
        first = max(bad, key=lambda c: ("unknown", "warning", "critical").index(c.status))
        report.summary = (f"{report.cluster}: {len(bad)} of {len(report.checks)} sections need attention "
                          f"({since}); {first.summary}")
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def statement_rows(delta: StatementsDelta, field: str, n: int, min_calls: int = 1) -> list[dict]:
    return [{"database": s.datname, "user": s.usename, "calls": s.calls, "total_ms": round(s.total_ms, 1),
             "mean_ms": round(s.mean_ms, 2), "rows": s.rows, "blks_read": s.shared_blks_read,
             "temp_blks": s.temp_blks_written, "hit": _pct(s.hit_ratio), "query": redact_sql(s.query, 200)}
            for s in delta.top(field, n, min_calls) if getattr(s, field) > 0]


def _table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return lines


def render_markdown(report: PerformanceReport, p: ReportParams, trends: list[str] | None = None) -> str:
    """The report; `trends` (the trend section's lines) go right after the section verdicts."""
    out = [f"# Performance report of {md_cell(report.cluster)}: {report.status.upper()}", "",
           md_cell(report.summary), "",
           f"Node {report.node}, started {report.started_at:%Y-%m-%d %H:%M:%S} UTC. "
           + (f"Deltas since the report of {report.previous_at:%Y-%m-%d %H:%M:%S} UTC."
              if report.previous_at else (report.baseline_note or "")), ""]
    if report.no_baseline:
        out += [f"The previous report has no {', '.join(report.no_baseline)} figures (the section failed): "
                "those are totals since the statistics were last reset.", ""]
    out += _table(["status", "section", "summary"], [[c.status, c.name, c.summary] for c in report.checks])
    out += trends or []
    c = report.connections
    if c:
        out += ["", "## Connections", ""]
        out += _table(["by", "name", "sessions"],
                      [[k, n, v] for k in ("datname", "usename", "application_name", "client_addr")
                       for n, v in list(c.by(k).items())[:p.top_n]])
        if c.idle_in_transaction:
            out += ["", "Idle in transaction:", ""]
            out += _table(["pid", "user", "application", "transaction age", "idle for", "query"],
                          [[s.pid, s.usename, s.application_name, human_seconds(s.xact_seconds),
                            human_seconds(s.state_seconds), redact_sql(s.query, 120)]
                           for s in c.idle_in_transaction[:p.top_n]])
    if report.statements is not None:
        out += ["", "## Query performance", ""]
        if note := extension_note(report.statements):
            out += [md_cell(note), ""]
        if report.statements_delta is None:
            out.append(md_cell(report.statements.reason or "not available"))
        else:
            if evicted := evicted_note(report.statements, report.statements_delta):
                out += [f"**Incomplete:** {md_cell(evicted)}", ""]
            for title, field, min_calls in (("by total time", "total_ms", 1), ("by mean time", "mean_ms", p.min_calls),
                                            ("by rows", "rows", 1), ("by shared blocks read", "shared_blks_read", 1),
                                            ("by temp blocks", "temp_blks_written", 1)):
                rows = statement_rows(report.statements_delta, field, p.top_n, min_calls)
                if rows:
                    out += ["", f"### Top statements {title}", ""]
                    out += _table(list(rows[0]), [list(r.values()) for r in rows])
    if report.storage and report.storage_delta:
        out += ["", "## Storage", ""]
        out += _table(["kind", "name", "size", "growth"],
                      [[g.kind, g.name, human_bytes(g.size_bytes),
                        "new" if g.growth_bytes is None else ("+" if g.growth_bytes >= 0 else "-")
                        + human_bytes(abs(g.growth_bytes))] for g in report.storage_delta.growth])
        if report.storage.relations:
            out += ["", "Largest relations:", ""]
            out += _table(["relation", "total", "heap", "toast", "indexes"],
                          [[r.name, human_bytes(r.total_bytes), human_bytes(r.heap_bytes),
                            human_bytes(r.toast_bytes), human_bytes(r.index_bytes)]
                           for r in report.storage.relations[:p.top_n]])
        temp = [t for t in report.storage_delta.temp if t.temp_files]
        if temp:
            out += ["", "Temp files:", ""]
            out += _table(["database", "files", "bytes"], [[t.datname, t.temp_files, human_bytes(t.temp_bytes)]
                                                           for t in temp])
    if report.cache_delta:
        out += ["", "## Cache hit ratio", ""]
        out += _table(["kind", "name", "hit", "read", "ratio"],
                      [[r.kind, r.name, r.blks_hit, r.blks_read, _pct(r.hit_ratio)]
                       for r in report.cache_delta if r.kind == "database" or r.blks_hit + r.blks_read > 0][:40])
    w = report.wraparound
    if w:
        out += ["", "## Wraparound", ""]
        out += _table(["database", "xid age", "% freeze_max_age", "% hard limit",
                       "mxid age", "% multixact_freeze_max_age", "% mxid hard limit"],
                      [[d.datname, f"{d.xid_age:,}", f"{100 * d.xid_age / w.freeze_max_age:.1f}",
                        f"{100 * d.xid_age / HARD_LIMIT:.2f}", f"{d.mxid_age:,}",
                        f"{100 * d.mxid_age / w.multixact_freeze_max_age:.1f}",
                        f"{100 * d.mxid_age / MXID_HARD_LIMIT:.2f}"] for d in w.databases])
        if w.tables:
            out += ["", "Oldest tables:", ""]
            out += _table(["table", "xid age", "% freeze_max_age", "mxid age", "% multixact_freeze_max_age", "size"],
                          [[t.name, f"{t.xid_age:,}", f"{100 * t.xid_age / w.freeze_max_age:.1f}", f"{t.mxid_age:,}",
                            f"{100 * t.mxid_age / w.multixact_freeze_max_age:.1f}", human_bytes(t.size_bytes)]
                           for t in w.tables])
        if w.holders:
            out += ["", "Holding the xmin horizon:", ""]
            out += _table(["kind", "name", "xmin age", "for"],
                          [[h.kind, h.name, h.xmin_age, human_seconds(h.seconds)] for h in w.holders])
    if report.io_delta is not None:
        headers, rows = io_table(report.io_delta)
        out += ["", "## I/O by backend type (pg_stat_io, relations)", ""]
        out += _table(headers, rows) if rows else ["No relation I/O since the " + report.io_delta.since + "."]
    return "\n".join(out)


def slack_lines(report: PerformanceReport, p: ReportParams) -> list[str]:
    """The few lines that matter: every section not ok, then the top statement by total time."""
    lines = [f"{STATUS_EMOJI.get(c.status, ':white_circle:')} *{c.name}*: {c.summary}"
             for c in report.checks if c.status != "ok"]
    if report.statements_delta and report.statements_delta.statements:
        top = report.statements_delta.top("total_ms", 1)[0]
        lines.append(f"Top statement: {human_seconds(top.total_ms / 1000)} in {top.calls} calls: "
                     f"`{redact_sql(top.query, 150)}`")
    if baseline_unreadable(report):
        lines.append(f":warning: {report.baseline_note}")
    return lines or ["All sections ok."]
