"""Rendering of the failover report (markdown artifact, Slack verdict) and the phase hooks' words."""

from __future__ import annotations

import json
from datetime import datetime

from blocks.failover_adapters import EndpointControl
from tasks.core.findings import md_cell
from tasks.failover.model import FailoverReport, NodeState, StepRecord


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


def write_availability(facts: dict, incident_at: datetime | None, started_at: datetime | None) -> dict:
    """The report's write-availability fields: when a write through the endpoint committed, and how long after
    the incident (request.incident_at) or the (first) run's start."""
    verified = facts.get("endpoint_verified")
    if verified is None:
        return {}
    fields: dict = {"endpoint_verified": verified}
    back = datetime.fromisoformat(facts["writes_back_at"]) if facts.get("writes_back_at") else None
    origin = incident_at or started_at
    if back is not None and origin is not None:
        fields.update(writes_back_at=back, write_availability_s=round((back - origin).total_seconds(), 2),
                      write_availability_from="incident" if incident_at else "run start")
    return fields


def endpoint_sentence(facts: dict, candidate: str, endpoint: EndpointControl, incident_at: datetime | None,
                      started_at: datetime | None) -> str:
    """One sentence on the path through the endpoint: writes back at T, or not confirmed yet and what to check."""
    fields = write_availability(facts, incident_at, started_at)
    if not fields:
        return ""
    where = "pgbouncer" if endpoint.kind == "pgbouncer" else "the endpoint"
    if fields["endpoint_verified"]:
        if "writes_back_at" not in fields:
            return f"writes through {where} confirmed"
        since = "the incident" if fields["write_availability_from"] == "incident" else "the run's start"
        return (f"writes through {where} back at {fields['writes_back_at']:%H:%M:%S} UTC, "
                f"{fields['write_availability_s']:.1f} s after {since}")
    check = (f"check pgbouncer {endpoint.admin_host}:{endpoint.admin_port}: SHOW POOLS (cl_waiting, sv_login), its "
             "log ('server login has been failing'), and that its [databases] entries point at "
             f"{candidate}" if endpoint.kind == "pgbouncer" else f"check that clients can reach {candidate}")
    return (f"WARNING: writes through {where} NOT confirmed yet ({facts.get('endpoint_error') or 'unknown'}); "
            f"{candidate} itself is up and verified (a write committed on it directly); {check}; "
            f"clients write again as soon as {where} reaches {candidate}")


def endpoint_actions(steps: list[StepRecord]) -> list[str]:
    """What the run did to the endpoint, step by step (pgbouncer: PAUSE, ini, RELOAD, settings, RESUME)."""
    return [f"{s.step}: {s.detail}" for s in steps if s.node == "endpoint" and s.status == "done" and s.detail]


def render_markdown(report: FailoverReport) -> str:
    lines = [f"# Failover of {report.cluster} ({report.mode}): {report.status}", "", report.summary, ""]
    if report.data_loss:
        lines += [f"**Data loss evidence:** {report.data_loss.sentence}", ""]
    if report.write_pause_ms is not None:
        lines += [f"**Clients held at pgbouncer:** {report.write_pause_ms:.0f} ms", ""]
    if report.writes_back_at is not None:
        since = "the incident" if report.write_availability_from == "incident" else "the run's start"
        lines += [f"**Writes back through the endpoint:** {report.writes_back_at:%Y-%m-%d %H:%M:%S} UTC, "
                  f"{report.write_availability_s:.1f} s after {since} (a write-then-read probe committed)", ""]
    elif report.endpoint_verified is False:
        lines += ["**Writes through the endpoint: NOT confirmed yet** (see the summary for what to check)", ""]
    if report.endpoint_actions:
        lines += ["**What the run did to the endpoint:**", ""] + [f"- {md_cell(a)}" for a in report.endpoint_actions]
        lines += [""]
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
