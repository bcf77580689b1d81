"""Rendering of the failover report (markdown artifact, Slack verdict) and the phase hooks' words."""

from __future__ import annotations

import json

from tasks.core.findings import md_cell
from tasks.failover.model import FailoverReport, NodeState


def cluster_state_sentence(states: list[NodeState], clients_paused: bool | None) -> str:
    """Who is writable, who is a standby, who is down, and whether clients are held."""
    writable = [s.node for s in states if s.reachable and s.in_recovery is False]
    standby = [s.node for s in states if s.reachable and s.in_recovery]
    down = [s.node for s in states if not s.reachable]
    parts = [f"writable: {', '.join(writable) or 'NONE'}"]
    if standby:
        parts.append(f"standby: {', '.join(standby)}")
    if down:
        parts.append(f"down: {', '.join(down)}")
    if clients_paused is not None:
        parts.append("clients PAUSED at pgbouncer" if clients_paused else "clients not paused")
    if len(writable) > 1:
        parts.append("SPLIT BRAIN: more than one writable node")
    return "; ".join(parts)


def render_markdown(report: FailoverReport) -> str:
    lines = [f"# Failover of {report.cluster} ({report.mode}): {report.status}", "", report.summary, ""]
    if report.data_loss:
        lines += [f"**Data loss evidence:** {report.data_loss.sentence}", ""]
    if report.write_pause_ms is not None:
        lines += [f"**Clients held at pgbouncer:** {report.write_pause_ms:.0f} ms", ""]
    if report.plan and report.plan.resumed:
        lines += [f"**Resumes run** {report.plan.resumed_from_run} after its step {report.plan.resume_after}, from "
                  f"step {report.plan.resume_from or 'none left'} (every node is inspected again first)", ""]
    if report.plan:
        lines += ["## Plan", "", "| phase | step | node | why |", "|---|---|---|---|"]
        lines += [f"| {s.phase} | {s.step} | {md_cell(s.node)} | {md_cell(s.why)} |" for s in report.plan.steps]
        lines += [""] + [f"- warning: {md_cell(w)}" for w in report.plan.warnings]
    if report.steps:
        lines += ["## Steps", "", "| phase | step | node | status | ms | detail |", "|---|---|---|---|---|---|"]
        lines += [f"| {s.phase} | {s.step} | {md_cell(s.node)} | {s.status} | "
                  f"{'' if s.duration_ms is None else f'{s.duration_ms:.0f}'} | {md_cell(s.detail)} |"
                  for s in report.steps if s.status != "started"]
    if report.phase_seconds:
        lines += ["", "## Phase timings", ""] + [f"- {k}: {v:.2f} s" for k, v in report.phase_seconds.items()]
    if report.backup_path:
        lines += ["", f"Backup of the critical state: `{report.backup_path}`"]
    if report.journal_path:
        lines += [f"Step journal: `{report.journal_path}`"]
    return "\n".join(lines)


def render_backup(backup: dict) -> str:
    return "# Pre-failover backup\n\n```json\n" + json.dumps(backup, indent=2, default=str)[:200_000] + "\n```\n"
