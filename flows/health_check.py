"""Runbook 1.1: the health check of one cluster.

Connectivity of every node; replication per standby and the slots on the
primary; each standby's own receiver; long-running sessions everywhere.
A node being down is a finding, not a crash. On a cluster run by Patroni (its REST URLs in the
NodeControl block), Patroni's view per member beside SQL's, and where they disagree.
"""

from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime

from blocks.postgres_cluster import PostgresCluster
from tasks.core.outcomes import gather
from tasks.core.publish import artifact_key, notify_slack, publish_markdown
from tasks.core.replica_match import match_reads
from tasks.core.replication import read_receiver, read_replication, read_slots, upstream_of
from tasks.health import report as rules
from tasks.health.checks import find_long_queries, probe_node, provider_check
from tasks.health.patroni import patroni_checks, patroni_settings, read_patroni_view
from tasks.health.report import HealthReport, HealthThresholds


@flow(name="health-check", log_prints=False)
def health_check(
    cluster_block: str = "sandbox",
    thresholds: HealthThresholds = HealthThresholds(),
    slack_block: str | None = None,
    always_notify: bool = False,
    node_control_block: str | None = None,
    wake_paused: bool = False,
) -> HealthReport:
    """Check every node of the cluster and report ok / warning / critical per check.

    Args:
        cluster_block: Name of the PostgresCluster block to check.
        thresholds: Limits that turn a figure into a warning or a critical finding.
        slack_block: Name of a SlackNotifier block; none means no Slack message.
        always_notify: Post to Slack even when every check is ok.
        node_control_block: NodeControl block whose Patroni REST URLs add Patroni's view. Empty: the one named like
            the cluster block, if any; none, or none with Patroni URLs: no Patroni view.
        wake_paused: A managed cluster whose compute is paused (Aurora 0 ACU, Neon idle) is reported as paused
            without a SQL connection, which would wake it; true connects anyway.
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(cluster_block)
    report = HealthReport(cluster=cluster.cluster_name, started_at=datetime.now(UTC))

    paused, provider = provider_check(cluster, wake_paused)
    report.checks += [provider] if provider else []
    targets = [] if paused else cluster.targets()
    patroni = None if paused else patroni_settings(cluster_block, node_control_block)
    patroni_read = read_patroni_view.submit(patroni, [cluster.primary_node]) if patroni else None
    probes = dict(zip([t.node for t in targets], gather([probe_node.submit(t) for t in targets]), strict=True))
    for t in targets:
        probe, error = probes[t.node]
        report.checks.append(
            rules.connectivity_check(t.node, t.node == cluster.primary_node, probe, error, thresholds))

    up = {t.node: t for t in targets if probes[t.node][0] is not None}
    primaries = [n for n in up if not probes[n][0].in_recovery]
    standbys = [n for n in up if probes[n][0].in_recovery]
    report.primary = cluster.primary_node if cluster.primary_node in primaries else next(iter(primaries), None)

    receivers = dict(zip(standbys, gather([read_receiver.submit(up[n]) for n in standbys]), strict=True))
    addresses = {n.name: (n.host, n.port) for n in cluster.nodes}
    upstreams = {n: upstream_of(row, addresses) for n, (row, err) in receivers.items() if err is None}

    if report.primary:
        target = up[report.primary]
        senders = [report.primary, *standbys]  # a standby's own standbys: cascading replication
        read = gather([read_replication.submit(up[n]) for n in senders] + [read_slots.submit(target)])
        (slots, slot_err), by_sender = read[-1], dict(zip(senders, read[:-1], strict=True))
        down = {n: err for n, (probe, err) in probes.items() if probe is None}
        matching, rep_err = match_reads(cluster, report.primary, by_sender, receivers, down)
        report.checks += (rules.replication_checks(matching, thresholds) if matching is not None
                          else [rules.skipped_check("replication", report.primary, rep_err)])
        report.checks += (rules.slot_checks(report.primary, slots, thresholds)
                          if slot_err is None else [rules.skipped_check("replication-slot", report.primary, slot_err)])
    elif not paused:
        report.checks.append(rules.skipped_check("replication", "cluster", "no reachable primary"))

    for node, (row, err) in receivers.items():
        report.checks.append(rules.receiver_check(node, row, thresholds) if err is None
                             else rules.skipped_check("wal-receiver", node, err))
        source = rules.upstream_check(node, row, report.primary, upstreams.get(node), cluster.fenced_nodes) \
            if err is None else None
        if source is not None:
            report.checks.append(source)

    if patroni_read is not None:
        ((view, view_err),) = gather([patroni_read])
        report.checks += patroni_checks(view, view_err, cluster, {n: p for n, (p, _) in probes.items()},
                                        thresholds.lag_warning_bytes, thresholds.lag_critical_bytes)

    nodes = list(up)
    long_futures = [find_long_queries.submit(up[n], thresholds.long_query_seconds) for n in nodes]
    for node, (rows, err) in zip(nodes, gather(long_futures), strict=True):
        report.checks.append(rules.long_query_check(node, rows, thresholds) if err is None
                             else rules.skipped_check("long-queries", node, err))

    rules.finish_report(report)
    report.finished_at = datetime.now(UTC)
    if slack_block and (always_notify or report.status != "ok"):
        report.notification = notify_slack(
            slack_block, f"Health check {report.cluster}: {report.status.upper()}",
            report.summary, rules.slack_lines(report), runtime.flow_run.ui_url)
    report.artifact_key = publish_markdown(
        artifact_key("health", report.cluster), rules.render_markdown(report), report.summary)
    logger.info(report.summary)
    if not report.notification.ok:
        logger.warning(report.notification.summary)
    return report



if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the health check once and print its report.")
    parser.add_argument("--cluster-block", default="sandbox")
    parser.add_argument("--slack-block")
    args = parser.parse_args()
    result = health_check(cluster_block=args.cluster_block, slack_block=args.slack_block)
    print(rules.render_markdown(result))
