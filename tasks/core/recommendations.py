"""Recommendations as data: a rule id, a severity, the evidence, the action and the runbook flow that fixes it.

Rules (tasks/report/connection_rules.py, tasks/report/performance_rules.py) produce them; this module ranks
and renders them for markdown and Slack. No prose is glued together anywhere else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from tasks.core.findings import Status, md_cell, worst
from tasks.core.notify import STATUS_EMOJI, NotificationOutcome

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
STATUS_OF = {"info": "ok", "warning": "warning", "critical": "critical"}


class Recommendation(BaseModel):
    """One issue found, why we think so, and what to do about it."""

    id: str = Field(description="Stable rule id plus subject, e.g. 'idle-in-transaction-old'.")
    rule: str = Field(description="The rule that fired.")
    severity: Severity
    subject: str = Field(description="What it is about: a table, an application, a statement, the cluster.")
    finding: str = Field(description="One sentence: what is wrong, with the numbers.")
    evidence: dict[str, Any] = Field(default_factory=dict, description="Numbers and sessions behind the finding.")
    action: str = Field(description="The concrete next step.")
    fix_flow: str | None = Field(default=None, description="The pg-runbooks deployment that carries the fix out.")
    impact: float = Field(
        default=0, description="Ranking weight within a severity, bigger first, on one scale for every rule: the "
                               "estimated percentage (0-100) of the database's workload or resources that the finding "
                               "affects, each rule measuring it against a database-wide total (statement time, block "
                               "reads, rows read, table scans, storage; connection slots for connections). "
                               "0 = not measurable (a setting, a missing extension). Clamped to 0-100.")

    @field_validator("impact")
    @classmethod
    def _clamp_impact(cls, value: float) -> float:
        return min(100.0, max(0.0, value))


class TroubleshootReport(BaseModel):
    """The result of a troubleshooter: ranked recommendations and the sections that could not be read."""

    kind: Literal["connections", "performance"]
    cluster: str
    node: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Status = "ok"
    summary: str = ""
    recommendations: list[Recommendation] = Field(default_factory=list)
    failed_sections: dict[str, str] = Field(default_factory=dict, description="Section -> why it failed.")
    figures: dict[str, Any] = Field(default_factory=dict, description="Headline figures of the diagnostics.")
    baseline: str | None = Field(default=None, description="What statement and cache figures are counted since.")
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)
    artifact_key: str | None = None

    def by_rule(self, rule: str) -> list[Recommendation]:
        return [r for r in self.recommendations if r.rule == rule]


def rank(recs: list[Recommendation]) -> list[Recommendation]:
    """Most severe first, then by impact."""
    return sorted(recs, key=lambda r: (-SEVERITY_RANK[r.severity], -r.impact, r.id))


def finish(report: TroubleshootReport) -> TroubleshootReport:
    report.recommendations = rank(report.recommendations)
    statuses: list[Status] = [STATUS_OF[r.severity] for r in report.recommendations]
    statuses += ["unknown"] * len(report.failed_sections)
    report.status = worst(statuses)
    failed = f" {len(report.failed_sections)} section(s) could not be read." if report.failed_sections else ""
    actionable = [r for r in report.recommendations if r.severity != "info"]
    if not report.recommendations:
        report.summary = f"{report.cluster}: no {report.kind} issue found.{failed}"
    else:
        top = report.recommendations[0]
        report.summary = (f"{report.cluster}: {len(actionable)} {report.kind} issue(s) and "
                          f"{len(report.recommendations) - len(actionable)} note(s); first: {top.finding}{failed}")
    return report


def render_markdown(report: TroubleshootReport) -> str:
    lines = [f"# {report.kind.capitalize()} troubleshooting of {md_cell(report.cluster)}: {report.status.upper()}",
             "", md_cell(report.summary), ""]
    if report.baseline:
        lines += [f"Statement and cache figures: {md_cell(report.baseline)}.", ""]
    if report.figures:
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {md_cell(k)} | {md_cell(v)} |" for k, v in report.figures.items()]
        lines.append("")
    if report.recommendations:
        lines += ["| # | severity | subject | finding | action | fix flow |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(report.recommendations, 1):
            lines.append(f"| {i} | {r.severity} | {md_cell(r.subject)} | {md_cell(r.finding)} | "
                         f"{md_cell(r.action)} | {md_cell(r.fix_flow or '')} |")
        lines += ["", "## Evidence", ""]
        for i, r in enumerate(report.recommendations, 1):
            lines.append(f"{i}. `{r.id}`: {md_cell(r.evidence)}")
    for section, why in report.failed_sections.items():
        lines.append(f"\n**{section} not checked**: {md_cell(why)}")
    if report.notification.attempted:
        lines += ["", f"Notification: {md_cell(report.notification.summary)}"]
    return "\n".join(lines)


def slack_lines(report: TroubleshootReport, limit: int = 8) -> list[str]:
    lines = [f"{STATUS_EMOJI.get(STATUS_OF[r.severity], ':white_circle:')} *{r.subject}*: {r.finding} "
             f"→ {r.action}" + (f" (flow `{r.fix_flow}`)" if r.fix_flow else "")
             for r in report.recommendations[:limit]]
    lines += [f":white_circle: *{s}* not checked: {why}" for s, why in report.failed_sections.items()]
    return lines or ["Nothing to report."]
