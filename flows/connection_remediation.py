"""Runbook 5.2, connection_limit: terminate stale sessions, then the scaler (when it exists).

Dry run by default: lists what it would terminate. One run per cluster at a time (global
concurrency limit `alert-action-<cluster>-scale-connections`); a second run says so and stops.
"""

from datetime import UTC, datetime
from typing import Literal

from prefect import flow, get_run_logger, runtime
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget, PostgresCluster
from tasks.alerts.sources import this_clusters_block
from tasks.core.alert_context import AlertContext
from tasks.core.findings import human_seconds, md_cell
from tasks.core.limits import action_lock_name, exclusive
from tasks.core.notify import NotificationOutcome
from tasks.core.publish import artifact_key, notify_slack, publish_markdown
from tasks.emergency.high_load_plan import ActionResult
from tasks.emergency.remediation import RemediationParams, StaleSession, find_stale_sessions, plan_terminations
from tasks.emergency.scale import ScaleRequest, scale_up
from tasks.emergency.signal import SignalStepFailed, signal_sessions


class RemediationFailed(Exception):
    """Some stale sessions could not be terminated; `report` has the audit of every one."""

    def __init__(self, report: "RemediationReport"):
        self.report = report
        super().__init__(report.summary)

    def __reduce__(self):
        return (RemediationFailed, (self.report,))


class RemediationReport(BaseModel):
    cluster: str
    started_at: datetime
    status: Literal["ok", "dry-run", "acted", "failed", "skipped"] = "ok"
    summary: str = ""
    dry_run: bool = True
    alert: AlertContext | None = None
    stale: list[StaleSession] = Field(default_factory=list)
    terminated: list[int] = Field(default_factory=list)
    gone: list[int] = Field(default_factory=list, description="Listed but no longer stale or no longer there.")
    failed: list[int] = Field(default_factory=list, description="Could not be terminated (see `audit`).")
    error: str = Field(default="", description="Why some sessions could not be terminated, and what to do.")
    audit: list[ActionResult] = Field(default_factory=list, description="What happened to each session.")
    scaler: str = ""
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)
    artifact_key: str | None = None


@flow(name="connection-remediation", log_prints=False)
def connection_remediation(
    cluster_block: str = "sandbox",
    params: RemediationParams = RemediationParams(),
    slack_block: str | None = None,
    alert: AlertContext | None = None,
    scaler_block: str | None = None,
) -> RemediationReport:
    """Terminate idle-in-transaction and listed idle sessions (dry run by default), then scale.

    Args:
        cluster_block: Name of the PostgresCluster block whose connections are running out.
        params: Dry run (default), what counts as stale, protected users and applications, the limit.
        slack_block: Name of a SlackNotifier block; none means no Slack message.
        alert: The firing alert that started this run (filled in by the alert monitor).
        scaler_block: '<type-slug>/<name>' of this cluster's scaler; `{cluster}` is replaced by cluster_block
            (e.g. 'pgbouncer-pool-scaler/{cluster}'; a cluster without that block is not scaled).
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(cluster_block)
    report = RemediationReport(cluster=cluster.cluster_name, started_at=datetime.now(UTC),
                               dry_run=params.dry_run, alert=alert)
    with exclusive(action_lock_name(cluster.cluster_name, "scale_connections")) as mine:
        if not mine:
            report.status = "skipped"
            report.summary = (f"{report.cluster}: another connection remediation is running for this cluster; "
                              "nothing done.")
            logger.warning(report.summary)
            return report
        target = cluster.primary_target()
        report.stale = find_stale_sessions(target, params)
        if not params.dry_run:
            record_terminations(report, terminate_stale(target, report.stale, params))
        report.scaler = request_scaling(scaler_block, report, cluster_block)
    summarize(report, params)
    report.artifact_key = publish_markdown(artifact_key("connection-remediation", report.cluster),
                                           render_markdown(report), report.summary)
    if slack_block and (report.stale or alert):
        report.notification = notify_slack(slack_block, f"Connection remediation {report.cluster}",
                                           report.summary, slack_lines(report), runtime.flow_run.ui_url)
    logger.info(report.summary)
    if report.status == "failed":
        raise RemediationFailed(report)
    return report


def terminate_stale(target: ConnectionTarget, stale: list[StaleSession],
                    params: RemediationParams) -> list[ActionResult] | SignalStepFailed:
    """Terminate the stale sessions through the one guarded, audited signal task; a failure carries its audit."""
    if not stale:
        return []
    try:
        return signal_sessions(target, plan_terminations(stale), grace_seconds=0,
                               terminate_timeout_seconds=max(params.wait_ms, 100) / 1000,
                               runbook_role=target.user, can_signal=False, purpose="connection-remediation")
    except SignalStepFailed as exc:
        return exc


def record_terminations(report: RemediationReport, outcome: list[ActionResult] | SignalStepFailed) -> None:
    if isinstance(outcome, SignalStepFailed):
        report.audit, report.error = outcome.results, f"{outcome.detail}; {outcome.action}"
    else:
        report.audit = outcome
    report.terminated = [r.pid for r in report.audit if r.result == "terminated"]
    report.failed = [r.pid for r in report.audit if r.result == "failed"]
    report.gone = [r.pid for r in report.audit if r.result == "gone"]


def summarize(report: RemediationReport, params: RemediationParams) -> RemediationReport:
    n = len(report.stale)
    if params.dry_run:
        report.status = "dry-run"
        report.summary = (f"{report.cluster}: dry run: {n} stale session(s) would be terminated; "
                          f"nothing was terminated; {report.scaler}.")
    elif n == 0:
        report.summary = f"{report.cluster}: no stale session to terminate; {report.scaler}."
    else:
        report.status = "failed" if report.error else "acted"
        gone = f" ({len(report.gone)} had already ended or changed)" if report.gone else ""
        failed = f"; FAILED to terminate {len(report.failed) or n}: {report.error}" if report.error else ""
        report.summary = (f"{report.cluster}: terminated {len(report.terminated)} of {n} stale session(s)"
                          f"{gone}{failed}; {report.scaler}.")
    return report


def _line(s: StaleSession) -> str:
    return (f"pid {s.pid} ({s.usename}, {s.application_name or 'no application'}, {s.datname}) "
            f"{s.state} for {human_seconds(s.state_seconds)}")


def slack_lines(report: RemediationReport) -> list[str]:
    marks = {**{pid: " — terminated" for pid in report.terminated}, **{pid: " — FAILED" for pid in report.failed}}
    lines = [f"• {_line(s)}{marks.get(s.pid, '')}" for s in report.stale[:30]]
    if report.error:
        lines.insert(0, f"*Could not terminate every session:* {report.error}")
    if report.alert:
        lines.insert(0, f"Started by alert *{report.alert.rule}* on {report.alert.cluster}.")
    return lines or ["No stale session found."]


def render_markdown(report: RemediationReport) -> str:
    lines = [f"# Connection remediation of {md_cell(report.cluster)}: {report.status}", "",
             md_cell(report.summary), ""]
    if report.alert:
        lines += [f"Started by alert `{report.alert.rule}` (value {report.alert.value}, "
                  f"threshold {report.alert.threshold}).", ""]
    lines += ["| pid | user | application | database | state | for | terminated |", "|---|---|---|---|---|---|---|"]
    for s in report.stale:
        done = "yes" if s.pid in report.terminated else "FAILED" if s.pid in report.failed else "no"
        lines.append(f"| {s.pid} | {md_cell(s.usename)} | {md_cell(s.application_name)} | {md_cell(s.datname)} | "
                     f"{s.state} | {human_seconds(s.state_seconds)} | {done} |")
    return "\n".join(lines)


def request_scaling(scaler_block: str | None, report: RemediationReport, cluster_block: str = "") -> str:
    """After the terminations, ask this cluster's scaler (if configured) for more capacity."""
    scaler_block, why = this_clusters_block(cluster_block, scaler_block)
    if scaler_block is None and why.startswith("no block"):
        return f"scaler: none configured for this cluster ({why})"
    if not scaler_block:
        return "scaler: none configured (set scaler_block, e.g. 'pgbouncer-pool-scaler/{cluster}')"
    request = ScaleRequest(cluster=report.cluster, reason="connection_limit alert: connection usage too high",
                           dry_run=report.dry_run, active_sessions=len(report.stale), waiting_sessions=0,
                           flow_run_id=str(runtime.flow_run.id or ""),
                           requested_by="pg-runbooks/connection-remediation")
    try:
        return f"scaler: {scale_up(scaler_block, request).summary}"
    except Exception as exc:  # noqa: BLE001 - the terminations stand; the failure is reported
        return f"scaler failed: {type(exc).__name__}: {str(exc)[:200]}"
