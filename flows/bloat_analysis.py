"""Runbook 2.2: bloat analysis in tiers.

A catalog estimate for every table and btree index (with reliability guards), then
pgstattuple_approx / pgstatindex on the top candidates when the extension is installed, and
pgstattuple only on request. Each relation: bytes, ratio, method, and what to do about it.
"""

import time
from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime

from blocks.postgres_cluster import PostgresCluster
from tasks.core.findings import human_bytes
from tasks.core.progress import track_progress
from tasks.core.publish import artifact_key, notify_slack, publish_markdown
from tasks.maintenance import bloat_report as rules
from tasks.maintenance.bloat import (
    measure_relations,
    read_catalog_info,
    read_index_stats,
    read_largest_btree_indexes,
    read_table_stats,
)
from tasks.maintenance.bloat_report import BloatParams, BloatReport


@flow(name="bloat-analysis", log_prints=False)
def bloat_analysis(
    cluster_block: str = "sandbox",
    params: BloatParams = BloatParams(),
    database: str | None = None,
    slack_block: str | None = None,
) -> BloatReport:
    """Estimate every table's and btree index's bloat, measure the worst, recommend what to do.

    Args:
        cluster_block: Name of the PostgresCluster block to analyse (its primary).
        params: Which relations to consider, when to measure with pgstattuple, and the report limits.
        database: Database to analyse; empty means the block's database.
        slack_block: Name of a SlackNotifier block; none means no Slack message.
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(cluster_block)
    target = cluster.target(cluster.primary_node, database)
    report = BloatReport(cluster=cluster.cluster_name, database=target.database, started_at=datetime.now(UTC))

    info = read_catalog_info(target)
    t0 = time.monotonic()
    tables = read_table_stats(target, info.can_read_pg_statistic, params.min_pages)
    indexes = read_index_stats(target, params.min_pages) if info.can_read_pg_statistic else []
    report.estimate_seconds = round(time.monotonic() - t0, 3)
    report.tables_estimated, report.indexes_estimated = len(tables), len(indexes)
    report.tiers = rules.tier_notes(info, params)
    findings = [rules.estimate_table(t, params, info.block_size) for t in tables]
    findings += [rules.estimate_index(i, params, info) for i in indexes]
    # No index estimate for this role: the largest btree indexes go straight to pgstatindex.
    largest = (read_largest_btree_indexes(target, params.min_pages, params.top_n)
               if rules.can_measure_without_estimate(info, params) else [])
    findings += [rules.unestimated_index(i, info.block_size) for i in largest]
    report.indexes_measured_unestimated = len(largest)

    if info.has_pgstattuple and params.top_n:
        top_tables = rules.top_candidates(findings, params, "table")
        top_indexes = rules.top_candidates(findings, params, "index")
        tiers = "pgstattuple" if params.exact else \
            f"pgstattuple up to {human_bytes(params.exact_max_bytes)}, pgstattuple_approx above"
        with track_progress(artifact_key("bloat-progress", f"{report.cluster}-{report.database}"),
                            len(top_tables) + len(top_indexes),
                            f"Bloat measurement of {report.cluster}/{report.database} ({tiers})", "relations") as bar:
            measured = measure_relations(
                target, info.pgstattuple_schema, [f.oid for f in top_tables], [f.oid for f in top_indexes],
                params.exact, exact_oids=[f.oid for f in top_tables if f.size_bytes <= params.exact_max_bytes],
                progress=bar)
        rules.apply_measurements(findings, measured, tables, [*indexes, *largest], info.block_size)

    rules.finish_report(report, findings, params)
    report.finished_at = datetime.now(UTC)
    report.artifact_key = publish_markdown(artifact_key("bloat", f"{report.cluster}-{report.database}"),
                                           rules.render_markdown(report, params), report.summary)
    if slack_block and report.status != "ok":
        report.notification = notify_slack(
            slack_block, f"Bloat {report.cluster}/{report.database}: {report.status.upper()}", report.summary,
            [f.summary + " " + f.recommendation for f in report.findings if f.reliable][:20],
            runtime.flow_run.ui_url)
    logger.info(report.summary)
    return report
