"""Runbook 1.2: the daily performance report of one cluster, with deltas since the previous report.

Each section is its own retryable task, submitted together; a failing one is a failed section,
the others still report. The whole report is stored (JSON in a filesystem block) so the next
run subtracts its counters: the statistics views are never reset. The stored copies of the last
history_days are drawn as trend charts in the report (images in its markdown artifact).
"""

from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime

from blocks.postgres_cluster import PostgresCluster
from tasks.core.host_metrics import sample_host
from tasks.core.outcomes import gather
from tasks.core.publish import artifact_key, artifact_url, notify_slack, publish_markdown, publish_table
from tasks.report import performance as rules
from tasks.report.cache import read_cache
from tasks.report.checkpoints import read_checkpoints
from tasks.report.connections import read_connections
from tasks.report.io_stats import read_io
from tasks.report.performance import PerformanceReport, ReportParams
from tasks.report.statements import read_statements
from tasks.report.storage import read_storage
from tasks.report.store import ReportStoreError, load_history, load_previous, prune_history, store_report
from tasks.report.trends import TrendPoint, trend_section
from tasks.report.wraparound import read_wraparound


@flow(name="performance-report", log_prints=False)
def performance_report(
    cluster_block: str = "sandbox",
    params: ReportParams = ReportParams(),
    slack_block: str | None = None,
) -> PerformanceReport:
    """Connections, query performance, storage, cache, wraparound, checkpoints, I/O (PG16+) and host of the primary.

    Args:
        cluster_block: Name of the PostgresCluster block to report on (its primary).
        params: Report limits and thresholds, where snapshots are stored, and the host-metrics source.
        slack_block: Name of a SlackNotifier block for the daily digest; none means no Slack message.
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(cluster_block)
    target = cluster.primary_target()
    report = PerformanceReport(cluster=cluster.cluster_name, node=target.node, started_at=datetime.now(UTC))
    previous, report.baseline_note = load_previous(params.state_dir, params.storage_block,
                                                   report.cluster, PerformanceReport)
    report.previous_at = previous.started_at if previous else None

    futures = {
        "connections": read_connections.submit(target),
        "statements": read_statements.submit(target),
        "storage": read_storage.submit(target, params.top_n * 2),
        "cache": read_cache.submit(target),
        "wraparound": read_wraparound.submit(target),
        "checkpoints": read_checkpoints.submit(target),
        "io": read_io.submit(target),
        "host": sample_host.submit(params.metrics_block, target),
    }
    errors = {}
    for name, (value, error) in zip(futures, gather(list(futures.values())), strict=True):
        setattr(report, name, value)
        if error is not None:
            errors[name] = error
    rules.compute_deltas(report, previous)

    report.checks = rules.section_checks(report, errors, params)
    rules.finish_report(report)
    report.finished_at = datetime.now(UTC)

    history, history_note = load_history(params.state_dir, params.storage_block, report.cluster,
                                         params.history_days, report.started_at, TrendPoint)
    trends, report.charts = trend_section(history, report, params.history_days, params.cache_hit_warning,
                                          history_note)
    key = artifact_key("performance", report.cluster)
    report.artifact_key = publish_markdown(key, rules.render_markdown(report, params, trends), report.summary)
    if report.statements_delta:
        publish_table(f"{key}-statements", rules.statement_rows(report.statements_delta, "total_ms", params.top_n),
                      "Top statements by total time since the previous report")
    if report.storage:
        publish_table(f"{key}-relations", [r.model_dump() for r in report.storage.relations],
                      "Largest relations: heap, TOAST and indexes")
    if slack_block:
        report.notification = notify_slack(
            slack_block, f"Performance report {report.cluster}: {report.status.upper()}", report.summary,
            rules.slack_lines(report, params), runtime.flow_run.ui_url,
            {"Report with trend charts": artifact_url(runtime.flow_run.ui_url, key)})
    try:
        report.stored_at = store_report(params.state_dir, params.storage_block, report.cluster, report,
                                        report.started_at)
    except (ReportStoreError, OSError, ValueError) as exc:  # the report itself is still returned and published
        report.store_error = f"the report was not stored, so the next run cannot compute deltas: {exc}"
        logger.warning(report.store_error)
    else:
        try:
            report.history = prune_history(params.state_dir, params.storage_block, report.cluster,
                                           params.history_days, report.started_at)
        except Exception as exc:  # noqa: BLE001 - old copies left behind never fail today's report
            report.history = f"history not pruned: {type(exc).__name__}: {exc}"[:300]
            logger.warning(report.history)
    logger.info(report.summary)
    return report


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the performance report once and print it.")
    parser.add_argument("--cluster-block", default="sandbox")
    parser.add_argument("--slack-block")
    args = parser.parse_args()
    result = performance_report(cluster_block=args.cluster_block, slack_block=args.slack_block)
    print(rules.render_markdown(result, ReportParams()))
