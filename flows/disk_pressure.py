"""Runbook 5.2, disk_usage: find what uses the space and recommend; remove only what policy lists.

One run per cluster at a time (global concurrency limit `alert-action-<cluster>-cleanup-data`).
"""

from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime
from pydantic import BaseModel, Field

from blocks.postgres_cluster import PostgresCluster
from tasks.core.alert_context import AlertContext
from tasks.core.findings import human_bytes, md_cell
from tasks.core.limits import action_lock_name, exclusive
from tasks.core.notify import NotificationOutcome
from tasks.core.publish import artifact_key, notify_slack, publish_markdown
from tasks.emergency.disk_pressure import (
    DiskPressureParams,
    SpaceSurvey,
    drop_inactive_slot,
    recommendations,
    survey_space,
)


class DiskPressureReport(BaseModel):
    cluster: str
    started_at: datetime
    status: str = "ok"
    summary: str = ""
    alert: AlertContext | None = None
    survey: SpaceSurvey | None = None
    recommendations: list[str] = Field(default_factory=list)
    dropped_slots: list[str] = Field(default_factory=list)
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)
    artifact_key: str | None = None


@flow(name="disk-pressure", log_prints=False)
def disk_pressure(
    cluster_block: str = "sandbox",
    params: DiskPressureParams = DiskPressureParams(),
    slack_block: str | None = None,
    alert: AlertContext | None = None,
) -> DiskPressureReport:
    """Survey slots, archiver, WAL and temp files, database and relation sizes; recommend.

    Args:
        cluster_block: Name of the PostgresCluster block whose disk is filling.
        params: Dry run (default) and the retention policy: which inactive slots may be dropped.
        slack_block: Name of a SlackNotifier block; none means no Slack message.
        alert: The firing alert that started this run (filled in by the alert monitor).
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(cluster_block)
    report = DiskPressureReport(cluster=cluster.cluster_name, started_at=datetime.now(UTC), alert=alert)
    with exclusive(action_lock_name(cluster.cluster_name, "cleanup_data")) as mine:
        if not mine:
            report.status = "skipped"
            report.summary = f"{report.cluster}: another disk-pressure run is in progress; nothing done."
            return report
        target = cluster.primary_target()
        report.survey = survey_space(target, params.top_relations)
        allowed = [s.slot_name for s in report.survey.slots
                   if not s.active and s.slot_name in params.retention.drop_inactive_slots]
        if not params.dry_run:
            report.dropped_slots = [slot for slot in allowed if drop_inactive_slot(target, slot)]
    report.recommendations = recommendations(report.survey, params.retention)
    report.status = "acted" if report.dropped_slots else "recommendations"
    wal = human_bytes(report.survey.dirs.wal_bytes)
    first = report.recommendations[0] if report.recommendations else "nothing stands out"
    dropped = f"dropped slot(s) {', '.join(report.dropped_slots)}; " if report.dropped_slots else ""
    report.summary = (f"{report.cluster}: {dropped}{len(report.recommendations)} recommendation(s), pg_wal holds "
                      f"{wal}; first: {first}")
    report.artifact_key = publish_markdown(artifact_key("disk-pressure", report.cluster),
                                           render_markdown(report), report.summary[:500])
    if slack_block:
        report.notification = notify_slack(slack_block, f"Disk pressure {report.cluster}", report.summary,
                                           [f"• {r}" for r in report.recommendations] or ["Nothing stands out."],
                                           runtime.flow_run.ui_url)
    logger.info(report.summary)
    return report


def render_markdown(report: DiskPressureReport) -> str:
    s = report.survey
    lines = [f"# Disk pressure of {md_cell(report.cluster)}", "", md_cell(report.summary), "",
             "## Recommendations", ""] + [f"- {md_cell(r)}" for r in report.recommendations]
    if s:
        lines += ["", f"pg_wal: {s.dirs.wal_files} files, {human_bytes(s.dirs.wal_bytes)}; temp: "
                      f"{s.dirs.temp_files} files, {human_bytes(s.dirs.temp_bytes)}; archive_mode "
                      f"{s.archiver.archive_mode}.", "", "| slot | active | retains |", "|---|---|---|"]
        lines += [f"| {md_cell(x.slot_name)} | {x.active} | {human_bytes(x.retained_bytes)} |" for x in s.slots]
        lines += ["", "| relation | total | table | dead rows |", "|---|---|---|---|"]
        lines += [f"| {md_cell(r.relation)} | {human_bytes(r.total_bytes)} | {human_bytes(r.table_bytes)} | "
                  f"{r.dead_rows} |" for r in s.relations]
    return "\n".join(lines)
