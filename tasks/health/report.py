"""Health-check decisions: thresholds, per-check status, the typed report and its renderings.

Pure functions over what the reads returned: no connection, no cursor.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from tasks.core.errors import describe_error
from tasks.core.findings import Check, Status, human_bytes, human_seconds, md_cell, worst
from tasks.core.notify import STATUS_EMOJI, NotificationOutcome
from tasks.core.redact import redact_sql
from tasks.core.replication import ReceiverRow, ReplicationRow, SlotRow, effective_replay_lag_seconds
from tasks.health.checks import LongQuery, NodeProbe

if TYPE_CHECKING:
    from tasks.core.replica_match import Matching

MiB = 1024 * 1024
GiB = 1024 * MiB


class HealthThresholds(BaseModel):
    """Limits of the health check (the Prefect UI renders these as the run form)."""

    long_query_seconds: float = Field(
        default=300, ge=1, le=86_400, description="A non-idle session running longer is a warning."
    )
    long_query_critical_seconds: float = Field(
        default=1800, ge=1, le=604_800, description="A non-idle session running longer is critical."
    )
    lag_warning_bytes: int = Field(default=16 * MiB, ge=0, description="Replay lag (bytes) for a warning.")
    lag_critical_bytes: int = Field(default=1 * GiB, ge=0, description="Replay lag (bytes) that is critical.")
    lag_warning_seconds: float = Field(default=30, ge=0, description="Replay lag (seconds) for a warning.")
    lag_critical_seconds: float = Field(default=300, ge=0, description="Replay lag (seconds) that is critical.")
    slot_retained_warning_bytes: int = Field(
        default=1 * GiB, ge=0, description="WAL held back by one slot for a warning."
    )
    slot_retained_critical_bytes: int = Field(
        default=10 * GiB, ge=0, description="WAL held back by one slot that is critical."
    )
    latency_warning_ms: float = Field(default=1000, ge=1, description="Connect+probe time for a warning.")


class HealthReport(BaseModel):
    """What the health check found; returned by the flow and published as an artifact."""

    cluster: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Status = "ok"
    summary: str = ""
    primary: str | None = Field(default=None, description="The node actually serving writes, if found.")
    checks: list[Check] = Field(default_factory=list)
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)
    artifact_key: str | None = None

    def not_ok(self) -> list[Check]:
        return [c for c in self.checks if c.status != "ok"]


def _grade(value: float | None, warning: float, critical: float) -> Status:
    if value is None:
        return "ok"
    if value >= critical:
        return "critical"
    if value >= warning:
        return "warning"
    return "ok"


def connectivity_check(node: str, believed_primary: bool, probe: NodeProbe | None,
                       error: BaseException | None, t: HealthThresholds) -> Check:
    """Reachable or not, and whether its role matches what the cluster block believes."""
    if probe is None:
        return Check(name="connectivity", node=node, status="critical",
                     details={"error": type(error).__name__, "sqlstate": getattr(error, "sqlstate", None)},
                     summary=f"{node} {describe_error(error)}")
    role = "standby" if probe.in_recovery else "primary"
    details = probe.model_dump(mode="json")
    if believed_primary and probe.in_recovery:
        return Check(name="connectivity", node=node, status="critical", details=details,
                     summary=f"{node} is believed to be the primary but is in recovery (a standby); "
                             "the cluster block may be stale after a failover.")
    if not believed_primary and not probe.in_recovery:
        return Check(name="connectivity", node=node, status="critical", details=details,
                     summary=f"{node} is listed as a replica but is NOT in recovery: it accepts writes "
                             "(possible second primary).")
    status = "warning" if probe.latency_ms >= t.latency_warning_ms else "ok"
    return Check(name="connectivity", node=node, status=status, details=details,
                 summary=f"{node} is up as {role}, PostgreSQL {probe.server_version}, "
                         f"answered in {probe.latency_ms:.0f} ms.")



def replication_checks(matching: Matching, t: HealthThresholds) -> list[Check]:
    """One check per standby of the block, matched by identity (tasks.core.replica_match, as the alert monitor
    does): its lag, or why its upstream lists no standby that is it; and one per unknown standby."""
    checks: list[Check] = []
    for match in matching.replicas:
        if match.row is None:
            checks.append(Check(name="replication", node=match.node, status="critical",
                                details={"upstream": match.upstream, "problem": match.problem},
                                summary=f"standby {match.node} is missing from {match.upstream}'s "
                                        f"pg_stat_replication: {match.problem}."))
            continue
        checks.append(_lag_check(match.node, match.upstream, match.row, t, match.how))
    for unknown in matching.unknown:
        if unknown.row.state == "backup":
            checks.append(Check(name="replication", node=unknown.sender, status="ok",
                                details=unknown.row.model_dump(mode="json"),
                                summary=f"a base backup ({unknown.row.application_name}) streams from "
                                        f"{unknown.sender}."))
            continue
        check = _lag_check(unknown.label, unknown.sender, unknown.row, t, None)
        check.status = worst([check.status, "warning"])
        check.summary += " Add it to the cluster block (or remove it) so it is watched by name."
        checks.append(check)
    return checks


def _lag_check(name: str, upstream: str, row: ReplicationRow, t: HealthThresholds, how: str | None) -> Check:
    lag_s = effective_replay_lag_seconds(row)
    status = worst([
        _grade(row.replay_lag_bytes, t.lag_warning_bytes, t.lag_critical_bytes),
        _grade(lag_s, t.lag_warning_seconds, t.lag_critical_seconds),
        "ok" if row.state == "streaming" else "warning",
    ])
    lag_text = human_seconds(lag_s) if lag_s is not None else "unknown time"
    known = f" (recognised by {how})" if how else ""
    return Check(name="replication", node=name, status=status, details={**row.model_dump(mode="json"), "how": how},
                 summary=f"standby {name} is {row.state}, {human_bytes(row.replay_lag_bytes)} "
                         f"({lag_text}) behind {upstream} in replay{known}.")


def slot_checks(primary: str, slots: list[SlotRow], t: HealthThresholds) -> list[Check]:
    checks = []
    for slot in slots:
        status = _grade(slot.retained_bytes, t.slot_retained_warning_bytes, t.slot_retained_critical_bytes)
        problems = []
        if slot.wal_status == "lost":
            status, problems = "critical", ["its WAL was removed (wal_status lost)"]
        elif not slot.active:
            status = worst([status, "warning"])
            problems.append("no consumer is connected, so WAL piles up")
        tail = f"; {', '.join(problems)}" if problems else ""
        checks.append(Check(
            name="replication-slot", node=primary, status=status, details=slot.model_dump(mode="json"),
            summary=f"slot {slot.slot_name} ({'active' if slot.active else 'inactive'}) retains "
                    f"{human_bytes(slot.retained_bytes)} of WAL{tail}."))
    return checks


def receiver_check(node: str, row: ReceiverRow, t: HealthThresholds) -> Check:
    """A standby's own view: receiving? replaying? paused?"""
    details = row.model_dump(mode="json")
    if row.receiver_status != "streaming":
        return Check(name="wal-receiver", node=node, status="critical", details=details,
                     summary=f"{node} is not receiving WAL (receiver {row.receiver_status or 'not running'}).")
    if row.replay_paused:
        return Check(name="wal-receiver", node=node, status="warning", details=details,
                     summary=f"{node} receives WAL but replay is PAUSED "
                             f"({human_bytes(row.replay_backlog_bytes)} received, not replayed); "
                             "run pg_wal_replay_resume() when intended.")
    status = _grade(row.replay_backlog_bytes, t.lag_warning_bytes, t.lag_critical_bytes)
    last = ("no commit replayed since it started" if row.seconds_since_last_replay is None
            else f"last replayed commit {human_seconds(row.seconds_since_last_replay)} ago "
                 "(grows while the primary is idle)")
    return Check(name="wal-receiver", node=node, status=status, details=details,
                 summary=f"{node} is streaming from {row.sender_host}:{row.sender_port}, "
                         f"{human_bytes(row.replay_backlog_bytes)} received but not replayed; {last}.")


def upstream_check(node: str, row: ReceiverRow, primary: str | None, upstream: str | None,
                   fenced: list[str]) -> Check | None:
    """A standby that streams from somewhere other than the primary: cascading from another standby (fine,
    said), from a fenced node or a server outside the cluster block (not fine). None when from the primary."""
    if row.receiver_status != "streaming" or upstream == primary:
        return None
    source = f"{row.sender_host}:{row.sender_port}"
    details = {"sender": source, "upstream": upstream, "primary": primary}
    if upstream in fenced:
        return Check(name="upstream", node=node, status="critical", details=details,
                     summary=f"{node} streams from {upstream} ({source}), a FENCED former primary: it follows a "
                             f"server that must not accept writes; point it at {primary or 'the primary'}.")
    if upstream is None:
        return Check(name="upstream", node=node, status="warning", details=details,
                     summary=f"{node} streams from {source}, which is not a node of the cluster block: add that "
                             "node to the block or repoint the standby.")
    return Check(name="upstream", node=node, status="ok", details=details,
                 summary=f"{node} is a cascading standby: it streams from the standby {upstream} ({source}), "
                         f"not from the primary {primary or '(none found)'}.")


def long_query_check(node: str, queries: list[LongQuery], t: HealthThresholds) -> Check:
    if not queries:
        return Check(name="long-queries", node=node, status="ok",
                     summary=f"{node} has no session busy for more than {human_seconds(t.long_query_seconds)}.")
    longest = queries[0]
    status = "critical" if longest.running_seconds >= t.long_query_critical_seconds else "warning"
    sessions = [
        {**q.model_dump(mode="json"), "query": redact_sql(q.query)} for q in queries
    ]
    return Check(name="long-queries", node=node, status=status, details={"sessions": sessions},
                 summary=f"{node} has {len(queries)} session(s) busy for more than "
                         f"{human_seconds(t.long_query_seconds)}; the longest, pid {longest.pid} "
                         f"({longest.usename}, {longest.state}), for {human_seconds(longest.running_seconds)}.")


def skipped_check(name: str, node: str, why: str | BaseException) -> Check:
    reason = why if isinstance(why, str) else f"the read {describe_error(why)}"
    return Check(name=name, node=node, status="unknown", summary=f"{name} on {node} not checked: {reason}")


def finish_report(report: HealthReport) -> HealthReport:
    """Set the overall status and the one-sentence summary from the checks."""
    report.status = worst([c.status for c in report.checks])
    bad = report.not_ok()
    if not bad:
        report.summary = f"{report.cluster}: all {len(report.checks)} checks ok."
    else:
        counts = {s: sum(1 for c in bad if c.status == s) for s in ("critical", "warning", "unknown")}
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        first = max(bad, key=lambda c: ("unknown", "warning", "critical").index(c.status))
        report.summary = f"{report.cluster}: {', '.join(parts)} of {len(report.checks)} checks; {first.summary}"
    return report


def render_markdown(report: HealthReport) -> str:
    lines = [
        f"# Health check of {md_cell(report.cluster)}: {report.status.upper()}",
        "",
        md_cell(report.summary),
        "",
        f"Started {report.started_at:%Y-%m-%d %H:%M:%S %Z}; primary: {report.primary or 'none found'}.",
        "",
        "| status | check | node | summary |",
        "|---|---|---|---|",
    ]
    order = {"critical": 0, "warning": 1, "unknown": 2, "ok": 3}
    for c in sorted(report.checks, key=lambda c: order[c.status]):
        lines.append(f"| {c.status} | {c.name} | {md_cell(c.node)} | {md_cell(c.summary)} |")
    sessions = [s for c in report.checks if c.name == "long-queries" for s in c.details.get("sessions", [])]
    if sessions:
        lines += ["", "## Long-running sessions", "",
                  "| pid | user | database | application | state | running | query |",
                  "|---|---|---|---|---|---|---|"]
        for s in sessions:
            lines.append(
                f"| {s['pid']} | {md_cell(s['usename'])} | {md_cell(s['datname'])} | "
                f"{md_cell(s['application_name'])} | {s['state']} | {human_seconds(s['running_seconds'])} | "
                f"`{md_cell(s['query'])}` |")
    if report.notification.attempted:
        lines += ["", f"Notification: {md_cell(report.notification.summary)}"]
    return "\n".join(lines)


def slack_lines(report: HealthReport) -> list[str]:
    return [f"{STATUS_EMOJI.get(c.status, ':white_circle:')} *{c.name}* ({c.node}): {c.summary}"
            for c in report.checks if c.status != "ok"] or ["All checks ok."]
