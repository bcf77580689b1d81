"""Runbook 2.3: index maintenance that is safe online.

Finds unused (no scan on the primary and every replica over the stats window), duplicate,
redundant, invalid (including _ccnew leftovers) and bloated indexes, each with its DO and UNDO
statement. Acts only when dry_run is off: REINDEX INDEX CONCURRENTLY for bloated and invalid
indexes, DROP INDEX CONCURRENTLY only for indexes the operator lists. A maintenance log that cannot be
written is in the report and the alert, and the run then ends Failed.
"""

from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime

from blocks.postgres_cluster import PostgresCluster
from tasks.core.exclusion import OnBusy, StopCheck, maintenance_turn
from tasks.core.outcomes import gather
from tasks.core.progress import track_progress
from tasks.core.publish import artifact_key, notify_slack, publish_markdown, publish_table
from tasks.core.relations import RelationRef
from tasks.maintenance import bloat_report
from tasks.maintenance import index_report as rules
from tasks.maintenance.bloat import measure_relations, read_catalog_info, read_index_stats, read_largest_btree_indexes
from tasks.maintenance.bloat_report import BloatParams
from tasks.maintenance.index_report import IndexParams, IndexReport
from tasks.maintenance.indexes import (
    check_index_grants,
    read_index_inventory,
    read_index_scans,
    resolve_indexes,
    run_index_actions,
)
from tasks.maintenance.maintenance_log import MaintenanceLogFailed, write_maintenance_log


@flow(name="index-maintenance", log_prints=False)
def index_maintenance(
    cluster_block: str = "sandbox",
    params: IndexParams = IndexParams(),
    database: str | None = None,
    slack_block: str | None = None,
    if_busy: OnBusy = "wait",
    busy_wait_minutes: float = 30,
) -> IndexReport:
    """Report index findings with DO/UNDO statements; rebuild or drop (listed only) when not a dry run.

    Args:
        cluster_block: Name of the PostgresCluster block to maintain (its primary).
        params: Dry run (default), what counts as unused/bloated/duplicate, what may be rebuilt or dropped.
        database: Database to maintain; empty means the block's database.
        slack_block: Name of a SlackNotifier block; none means no Slack message.
        if_busy: When another maintenance run or a failover / high-load response holds the cluster: wait for it
            (up to busy_wait_minutes) or skip (a dry run takes no lock). A failover or high-load response that starts
            later stops this run before its next index action.
        busy_wait_minutes: How long to wait for the cluster's maintenance lock.
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(cluster_block)
    primary = cluster.target(cluster.primary_node, database)
    report = IndexReport(cluster=cluster.cluster_name, started_at=datetime.now(UTC), dry_run=params.dry_run)

    listed = resolve_indexes(primary, params.drop_indexes)  # UnknownObject before anything happens
    indexes = read_index_inventory(primary)
    targets = [cluster.target(n.name, database) for n in cluster.nodes if n.name not in cluster.fenced_nodes]
    scans = list(zip(targets, gather([read_index_scans.submit(t) for t in targets]), strict=True))
    nodes = [res for _, (res, err) in scans if err is None]
    unreachable = [t.node for t, (_, err) in scans if err is not None]

    info = read_catalog_info(primary)
    bp = BloatParams(ratio_threshold=params.bloat_ratio, min_bloat_bytes=params.bloat_min_bytes)
    if info.can_read_pg_statistic:
        stats = read_index_stats(primary, bp.min_pages)
        estimates = [bloat_report.estimate_index(i, bp, info) for i in stats]
    else:  # no estimate for this role: the largest btree indexes go straight to pgstatindex
        stats = (read_largest_btree_indexes(primary, bp.min_pages, bp.top_n)
                 if bloat_report.can_measure_without_estimate(info, bp) else [])
        estimates = [bloat_report.unestimated_index(i, info.block_size) for i in stats]
        report.notes.append(bloat_report.index_estimate_note(info, bp))
    if info.has_pgstattuple:
        top = bloat_report.top_candidates(estimates, bp, "index")
        measured = measure_relations(primary, info.pgstattuple_schema, [], [f.oid for f in top], False)
        bloat_report.apply_measurements(estimates, measured, [], stats, info.block_size)

    unused, notes = rules.unused(indexes, nodes, unreachable, params)
    report.notes += notes
    report.findings = (unused + rules.duplicates(indexes) + rules.redundant(indexes) + rules.invalid(indexes)
                       + rules.bloated(indexes, estimates, params))
    report.actions = rules.plan_actions(report.findings, [r.qualified for r in listed], params)

    turn = None
    if not params.dry_run:
        refs = {ix.qualified: RelationRef(oid=ix.oid, schema_name=ix.schema_name, name=ix.name, kind="i")
                for ix in indexes}
        # MissingIndexGrant (naming the grant) before any index is touched when this role may not act on all.
        planned = [a for a in report.actions if a.status == "planned"]
        check_index_grants(primary, [refs[a.index] for a in planned if a.action != "reindex"],
                           [refs[a.index] for a in planned if a.action == "reindex"])
        with maintenance_turn(report.cluster, "index maintenance", if_busy, busy_wait_minutes * 60) as turn, \
                track_progress(artifact_key("indexes-progress", report.cluster), len(planned) if turn.held else 0,
                               f"Index maintenance of {report.cluster}", "indexes") as bar:
            report.exclusion = turn.sentence  # not held: every planned action is skipped-stopped, saying why
            stop = StopCheck(report.cluster, turn=turn) if turn.held else StopCheck.already(turn.sentence)
            report.actions = run_index_actions(primary, report.actions, refs, params.lock_timeout_ms,
                                               params.statement_timeout_ms, bar, stop)

    rows = rules.log_rows(report)
    if rows and not params.dry_run:
        report.log_path, report.log_error = write_maintenance_log("index-maintenance", report.cluster,
                                                                  str(runtime.flow_run.id), rows, params.log_dir)
    rules.finish_report(report)
    if turn is not None and not turn.held:  # waited in vain or skipped: nothing was done, and it says why
        report.status, report.summary = "warning", report.exclusion
    report.finished_at = datetime.now(UTC)
    key = artifact_key("indexes", report.cluster)
    if rows:
        publish_table(f"{key}-log", rows, report.summary)
    report.artifact_key = publish_markdown(key, rules.render_markdown(report), report.summary)
    if slack_block and report.status == "critical":
        report.notification = notify_slack(
            slack_block, f"Index maintenance {report.cluster}: {report.status.upper()}", report.summary,
            rules.slack_lines(report), runtime.flow_run.ui_url)
    logger.info(report.summary)
    if report.log_error:
        raise MaintenanceLogFailed(report)  # published and notified first; the run ends Failed
    return report
