"""The high-load response's report, its 5.2 checklist, audit rows and renderings. Pure functions."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tasks.core.alert_context import AlertContext
from tasks.core.errors import RunbookDBError
from tasks.core.findings import human_seconds, md_cell
from tasks.core.notify import NotificationOutcome
from tasks.core.sessions import Survey
from tasks.emergency.high_load_plan import (
    IDLE_IN_TX,
    ActionResult,
    Excluded,
    HighLoadParams,
    LockChain,
    exclusion_reason,
)
from tasks.emergency.scale import ScaleOutcome

StepStatus = Literal["ok", "failed", "skipped"]


class StepOutcome(BaseModel):
    name: str
    status: StepStatus
    summary: str


class ChecklistItem(BaseModel):
    """One item of the runbook's section 5.2, marked by the flow's own evidence."""

    item: str
    done: bool
    evidence: str


class Remaining(BaseModel):
    """What is still over the thresholds after the response (read again at the end)."""

    long_queries: int = 0
    idle_in_transaction: int = 0
    blocked_sessions: int = 0

    @property
    def persistent(self) -> bool:
        return bool(self.long_queries or self.idle_in_transaction or self.blocked_sessions)


class HighLoadReport(BaseModel):
    cluster: str
    node: str
    dry_run: bool
    flow_run_id: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    status: Literal["ok", "failed"] = "ok"
    summary: str = ""
    params: HighLoadParams
    alert: AlertContext | None = None
    active_sessions: int = 0
    waiting_sessions: int = 0
    steps: list[StepOutcome] = Field(default_factory=list)
    actions: list[ActionResult] = Field(default_factory=list, description="Every planned/acted session: the audit.")
    excluded: list[Excluded] = Field(default_factory=list)
    chains: list[LockChain] = Field(default_factory=list)
    scale: ScaleOutcome | None = None
    remaining: Remaining | None = None
    checklist: list[ChecklistItem] = Field(default_factory=list)
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)
    artifact_key: str | None = None
    audit_artifact_key: str | None = None

    def failed_steps(self) -> list[StepOutcome]:
        return [s for s in self.steps if s.status == "failed"]

    def count(self, result: str) -> int:
        return sum(1 for a in self.actions if a.result == result)


def step_ok(name: str, summary: str) -> StepOutcome:
    return StepOutcome(name=name, status="ok", summary=summary)


def step_skipped(name: str, why: str) -> StepOutcome:
    return StepOutcome(name=name, status="skipped", summary=f"{name} skipped: {why}.")


def step_failed(name: str, exc: BaseException) -> StepOutcome:
    if isinstance(exc, RunbookDBError):
        text = f"{exc.target} {exc.sentence}"
    else:
        text = f"{type(exc).__name__}: {str(exc)[:300]}"
    return StepOutcome(name=name, status="failed", summary=f"{name} FAILED: {text}")


def load_figures(survey: Survey) -> tuple[int, int]:
    """(active client sessions, sessions waiting for a lock) in a survey."""
    clients = [s for s in survey.sessions if s.backend_type == "client backend" and not s.is_self]
    return sum(1 for s in clients if s.state == "active"), sum(1 for s in clients if s.blocked_by)


def remaining_load(survey: Survey, p: HighLoadParams) -> Remaining:
    """Eligible sessions still over the thresholds (excluded sessions are not the response's to fix)."""
    eligible = [s for s in survey.sessions if exclusion_reason(s, p) is None]
    return Remaining(
        long_queries=sum(1 for s in eligible if s.state == "active" and (s.query_seconds or 0) >= p.long_query_seconds),
        idle_in_transaction=sum(1 for s in eligible if s.state in IDLE_IN_TX
                                and (s.state_seconds or 0) >= p.idle_in_transaction_seconds),
        blocked_sessions=sum(1 for s in survey.sessions
                             if s.blocked_by and (s.waiting_seconds or 0) >= p.lock_wait_seconds),
    )


def action_summary(results: list[ActionResult], dry_run: bool) -> str:
    if not results:
        return "no eligible session"
    counts: dict[str, int] = {}
    for r in results:
        counts[r.result] = counts.get(r.result, 0) + 1
    if dry_run:
        return f"{counts.get('planned', 0)} session(s) would be acted on" + (
            f", {counts['skipped']} over the limit" if counts.get("skipped") else "")
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def checklist(report: HighLoadReport) -> list[ChecklistItem]:
    """Runbook 5.2: check active queries, identify bottlenecks, consider scaling, notify if persistent."""
    steps = {s.name: s for s in report.steps}
    survey = steps.get("check-active-queries")
    items = [ChecklistItem(
        item="Check active queries", done=bool(survey and survey.status == "ok"),
        evidence=survey.summary if survey else "not run")]
    chains = steps.get("cancel-conflicting-operations")
    bottleneck = (f"{len(report.chains)} lock chain(s), {report.waiting_sessions} session(s) waiting; "
                  f"{report.active_sessions} active") if chains and chains.status != "failed" else (
                      chains.summary if chains else "not run")
    items.append(ChecklistItem(item="Identify bottlenecks", done=bool(chains and chains.status != "failed"),
                               evidence=bottleneck))
    scale = report.scale
    items.append(ChecklistItem(
        item="Consider scaling", done=bool(scale and scale.status in ("scaled", "requested", "at_max")),
        evidence=scale.summary if scale else (steps["increase-resources"].summary
                                              if "increase-resources" in steps else "not run")))
    if report.remaining is None:
        persistent = "not verified (dry run)" if report.dry_run else "not verified (the final read failed)"
        done = False
    elif report.remaining.persistent:
        r = report.remaining
        done = report.notification.ok and report.notification.attempted
        persistent = (f"load persists: {r.long_queries} long statement(s), {r.idle_in_transaction} idle "
                      f"transaction(s), {r.blocked_sessions} blocked session(s) remain; "
                      + ("the team is notified in this thread" if done else
                         "the Slack notification was not delivered: notify the team by hand"))
    else:
        persistent = "not persistent: nothing eligible is over the thresholds after the response"
        done = True
    items.append(ChecklistItem(item="Notify the team if persistent", done=done, evidence=persistent))
    return items


def finish_report(report: HighLoadReport) -> HighLoadReport:
    """Status (failed if any step failed, never silently green) and the one-sentence summary."""
    failed = report.failed_steps()
    report.status = "failed" if failed else "ok"
    mode = "dry run: " if report.dry_run else ""
    if report.dry_run:
        did = f"{report.count('planned')} session(s) would be cancelled or terminated"
    else:
        did = (f"{report.count('cancelled')} cancelled, {report.count('terminated')} terminated, "
               f"{report.count('gone')} already gone, {report.count('failed')} failed")
    skipped = report.count("skipped")
    limit = f", {skipped} left alone by the limit of {report.params.max_sessions}" if skipped else ""
    chains = f"{len(report.chains)} lock chain(s)"
    tail = f"; FAILED step(s): {', '.join(s.name for s in failed)}" if failed else ""
    report.summary = f"{report.cluster}: {mode}{did}{limit}; {chains}{tail}."
    report.checklist = checklist(report)
    return report


AUDIT_COLUMNS = ("time", "step", "action", "result", "pid", "user", "application", "client", "database",
                 "duration", "query", "reason", "detail")


def audit_rows(report: HighLoadReport) -> list[dict]:
    """One row per session planned or acted on: time, pid, user, application, client, database,
    query shortened, duration, action, result."""
    rows = []
    for a in report.actions:
        rows.append({
            "time": (a.acted_at or report.started_at).isoformat(timespec="milliseconds"),
            "step": a.step,
            "action": a.action,
            "result": a.result,
            "pid": a.pid,
            "user": a.usename or "",
            "application": a.application_name or "",
            "client": a.client_addr or "",
            "database": a.datname or "",
            "duration": human_seconds(a.duration_seconds),
            "query": a.query,
            "reason": a.reason,
            "detail": a.detail,
        })
    return rows


def chain_lines(chain: LockChain) -> list[str]:
    lines = []
    for m in chain.members:
        indent = "  " * m.depth
        wait = (f" waits {human_seconds(m.waiting_seconds)} for {m.waiting_mode} on {m.waits_for}"
                if m.depth else f" holds {', '.join(m.held_locks) or 'locks'}")
        lines.append(f"{indent}pid {m.pid} ({m.usename}, {m.application_name or '-'}, {m.state}){wait}: "
                     f"`{md_cell(m.query)}`")
    return lines


def render_markdown(report: HighLoadReport) -> str:
    title = "Dry run of the high-load response" if report.dry_run else "High-load response"
    lines = [f"# {title} on {md_cell(report.cluster)} ({md_cell(report.node)}): {report.status.upper()}", "",
             md_cell(report.summary), "", "## Steps", "", "| step | status | summary |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {md_cell(s.summary)} |" for s in report.steps]
    if report.alert:
        lines += ["", f"Started by alert `{md_cell(report.alert.rule)}` (value {report.alert.value}, "
                      f"threshold {report.alert.threshold})."]
    lines += ["", "## Response checklist (runbook 5.2)", ""]
    lines += [f"- [{'x' if c.done else ' '}] **{c.item}**: {md_cell(c.evidence)}" for c in report.checklist]
    if report.actions:
        lines += ["", "## Sessions acted on" if not report.dry_run else "## Plan", "",
                  "| " + " | ".join(AUDIT_COLUMNS) + " |", "|" + "---|" * len(AUDIT_COLUMNS)]
        for row in audit_rows(report):
            lines.append("| " + " | ".join(md_cell(row[c]) for c in AUDIT_COLUMNS) + " |")
    if report.chains:
        lines += ["", "## Lock chains", ""]
        for chain in report.chains:
            lines += [f"### Root blocker pid {chain.root_pid}: {md_cell(chain.resolution)}", "", "```"]
            lines += [ln.replace("`", "") for ln in chain_lines(chain)]
            lines += ["```", ""]
    if report.excluded:
        lines += ["", "## Excluded (never touched)", "", "| pid | user | application | why |", "|---|---|---|---|"]
        lines += [f"| {e.pid} | {md_cell(e.usename)} | {md_cell(e.application_name)} | {md_cell(e.reason)} |"
                  for e in report.excluded]
    if report.notification.attempted:
        lines += ["", f"Notification: {md_cell(report.notification.summary)}"]
    return "\n".join(lines)


def slack_found(report: HighLoadReport) -> list[str]:
    lines = [f"*Load*: {report.active_sessions} active session(s), {report.waiting_sessions} waiting for a lock."]
    for chain in report.chains:
        lines.append(f"*Lock chain* rooted at pid {chain.root_pid} ({chain.waiter_count} waiting): {chain.resolution}")
        lines += chain_lines(chain)[:8]
    lines += [f"*Excluded* pid {e.pid} ({e.usename}): {e.reason}" for e in report.excluded[:10]]
    return lines


def slack_done(report: HighLoadReport) -> list[str]:
    verb = "would" if report.dry_run else "did"
    lines = [f"{'Plan' if report.dry_run else 'Done'} ({verb}): {action_summary(report.actions, report.dry_run)}."]
    for a in report.actions[:30]:
        lines.append(f"• {a.result}: {a.action.replace('_', ' ')} pid {a.pid} ({a.usename}, "
                     f"{a.application_name or '-'}, {a.client_addr or 'local'}, {a.datname}) after "
                     f"{human_seconds(a.duration_seconds)}: `{md_cell(a.query)[:120]}`"
                     + (f" — {a.detail}" if a.detail else ""))
    if report.scale:
        lines.append(f"*Scaling*: {report.scale.summary}")
    lines += [f":x: {s.summary}" for s in report.failed_steps()]
    return lines


def slack_checklist(report: HighLoadReport) -> list[str]:
    return [f"{':white_check_mark:' if c.done else ':white_large_square:'} *{c.item}*: {c.evidence}"
            for c in report.checklist]
