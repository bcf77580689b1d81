"""Runbook 3.2: performance troubleshooting. Slow and I/O-bound statements, cache per database and table,
I/O timing, I/O by backend type (pg_stat_io, PG16+), index usage and table statistics (dead rows, stale or
missing ANALYZE), ranked by impact on one 0-100 scale; each recommendation names the evidence and the flow
that fixes it.

Read-only: it never resets statistics, vacuums or drops anything.
"""

from datetime import UTC, datetime
from typing import Literal

from prefect import flow, get_run_logger, runtime

from blocks.postgres_cluster import PostgresCluster
from tasks.core import recommendations as recs
from tasks.core.errors import describe_error
from tasks.core.outcomes import gather
from tasks.core.publish import artifact_key, notify_slack, publish_markdown
from tasks.core.recommendations import TroubleshootReport
from tasks.core.table_stats import read_usage
from tasks.report.cache import read_cache
from tasks.report.deltas import cache_deltas, statements_delta
from tasks.report.io_stats import io_delta, read_io
from tasks.report.performance import PerformanceReport
from tasks.report.performance_rules import PerformanceRules, headline, performance_recommendations
from tasks.report.statements import read_statements
from tasks.report.store import load_previous


@flow(name="troubleshoot-performance", log_prints=False)
def troubleshoot_performance(
    cluster_block: str = "sandbox",
    rules: PerformanceRules = PerformanceRules(),
    slack_block: str | None = None,
    baseline: Literal["last_report", "stats_reset"] = "last_report",
    report_state_dir: str = "~/.pg-runbooks/reports",
    report_storage_block: str | None = None,
) -> TroubleshootReport:
    """Diagnose performance problems on the primary and rank what to fix first.

    Args:
        cluster_block: Name of the PostgresCluster block to diagnose.
        rules: Thresholds that turn a statement, cache or table figure into a finding.
        slack_block: Name of a SlackNotifier block; none means no Slack message.
        baseline: Count statement and cache figures since the last stored daily report (what is slow lately),
            or since the statistics were last reset (cumulative). Without a stored report: since the reset.
        report_state_dir: Where the daily report stores its snapshots (its params.state_dir).
        report_storage_block: The daily report's filesystem block (its params.storage_block), if it uses one.
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(cluster_block)
    target = cluster.primary_target()
    report = TroubleshootReport(kind="performance", cluster=cluster.cluster_name, node=target.node,
                                started_at=datetime.now(UTC))
    names = ("statements", "cache", "table and index usage", "I/O by backend type")
    outcomes = dict(zip(names, gather([read_statements.submit(target), read_cache.submit(target),
                                          read_usage.submit(target), read_io.submit(target)]), strict=True))
    for name, (_, error) in outcomes.items():
        if error is not None:
            report.failed_sections[name] = describe_error(error)
    statements, cache, usage, io = (outcomes[n][0] for n in names)
    previous, report.baseline = since_when(baseline, report_state_dir, report_storage_block, report.cluster)
    totals = statements_delta(statements, previous.statements if previous else None) \
        if statements and statements.available else None
    io_since = io_delta(io, previous.io if previous else None) if io else None
    report.recommendations = performance_recommendations(
        statements, totals, cache_deltas(cache, previous.cache if previous else None) if cache else None, usage,
        rules, io=io_since)
    report.figures = headline(statements, usage, io_since)
    recs.finish(report)
    report.finished_at = datetime.now(UTC)
    report.artifact_key = publish_markdown(artifact_key("troubleshoot-performance", report.cluster),
                                           recs.render_markdown(report), report.summary)
    if slack_block:
        report.notification = notify_slack(slack_block, f"Performance {report.cluster}: {report.status.upper()}",
                                           report.summary, recs.slack_lines(report), runtime.flow_run.ui_url)
    logger.info(report.summary)
    return report


def since_when(baseline: str, state_dir: str, storage_block: str | None,
               cluster: str) -> tuple[PerformanceReport | None, str]:
    """The stored daily report to count from (or None: cumulative), and the sentence that says which."""
    if baseline == "stats_reset":
        return None, "since the statistics were last reset (cumulative)"
    previous, why_not = load_previous(state_dir, storage_block, cluster, PerformanceReport)
    if previous is None:
        return None, why_not or "no stored daily report: since the statistics were last reset"
    return previous, f"since the daily report of {previous.started_at:%Y-%m-%d %H:%M} UTC"
