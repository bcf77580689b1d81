"""Runbook 3.1: connection troubleshooting. Who holds the slots, who idles in transactions,
how fast sessions churn; each issue comes with evidence and the fix (and the flow that applies it).

Read-only: it never terminates anything (the high-load flow does, with a plan and limits).
"""

from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime

from blocks.postgres_cluster import PostgresCluster
from tasks.core import recommendations as recs
from tasks.core.errors import describe_error
from tasks.core.outcomes import gather
from tasks.core.publish import artifact_key, notify_slack, publish_markdown
from tasks.core.recommendations import TroubleshootReport
from tasks.report.connection_churn import sample_churn
from tasks.report.connection_rules import ConnectionRules, connection_recommendations
from tasks.report.connections import read_connections


@flow(name="troubleshoot-connections", log_prints=False)
def troubleshoot_connections(
    cluster_block: str = "sandbox",
    rules: ConnectionRules = ConnectionRules(),
    slack_block: str | None = None,
) -> TroubleshootReport:
    """Diagnose connection problems on the primary and recommend what to do.

    Args:
        cluster_block: Name of the PostgresCluster block to diagnose.
        rules: Thresholds that turn a connection figure into a finding (usage, idle in transaction, churn).
        slack_block: Name of a SlackNotifier block; none means no Slack message.
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(cluster_block)
    target = cluster.primary_target()
    report = TroubleshootReport(kind="connections", cluster=cluster.cluster_name, node=target.node,
                                started_at=datetime.now(UTC))
    (snap, snap_err), (churn, churn_err) = gather([
        read_connections.submit(target), sample_churn.submit(target, rules.churn_sample_seconds)])
    if churn_err is not None:
        report.failed_sections["churn"] = describe_error(churn_err)
    if snap_err is not None:
        report.failed_sections["connections"] = describe_error(snap_err)
    else:
        report.recommendations = connection_recommendations(snap, churn, cluster.endpoint is not None, rules)
        report.figures = {"client backends": snap.client_backends, "usable slots": snap.limits.usable,
                          **snap.by_state(), "top applications": dict(list(snap.by("application_name").items())[:5])}
        if churn:
            report.figures |= {"new sessions per second": churn.sessions_per_second,
                               f"backends younger than {churn.young_seconds:.0f} s": churn.young_backends,
                               "mean backend age (s)": round(churn.avg_backend_age_seconds or 0, 1)}
    recs.finish(report)
    report.finished_at = datetime.now(UTC)
    report.artifact_key = publish_markdown(artifact_key("troubleshoot-connections", report.cluster),
                                           recs.render_markdown(report), report.summary)
    if slack_block:
        report.notification = notify_slack(slack_block, f"Connections {report.cluster}: {report.status.upper()}",
                                           report.summary, recs.slack_lines(report), runtime.flow_run.ui_url)
    logger.info(report.summary)
    return report
