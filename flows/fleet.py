"""Any scheduled runbook over a fleet: one deployment per runbook serves every cluster.

Each cluster's run is its own flow run of the runbook (named `<runbook> · <cluster>`), so it keeps its own history,
artifacts and Slack thread; at most `max_parallel` run at once. In-process (default), each is a child flow run of
the fleet run; with `deployment` set, each is a run of that deployment, picked up by any worker of its pool (the
scale-out path: several workers, or a Kubernetes / Docker work pool). The fleet run ends with one summary artifact
and one Slack digest whose thread lists what is not ok.
"""

from typing import Literal

from prefect import flow, get_run_logger, runtime
from prefect.settings import PREFECT_UI_URL

from blocks.fleet import Fleet
from flows.bloat_analysis import bloat_analysis
from flows.health_check import health_check
from flows.index_maintenance import index_maintenance
from flows.performance_report import performance_report
from flows.troubleshoot_connections import troubleshoot_connections
from flows.troubleshoot_performance import troubleshoot_performance
from flows.vacuum import vacuum
from tasks.core import fleet as fleet_run
from tasks.core.publish import artifact_key, publish_markdown

Runbook = Literal["health-check", "performance-report", "troubleshoot-connections", "troubleshoot-performance",
                  "vacuum", "bloat-analysis", "index-maintenance"]
FLOWS = {"health-check": health_check, "performance-report": performance_report,
         "troubleshoot-connections": troubleshoot_connections, "troubleshoot-performance": troubleshoot_performance,
         "vacuum": vacuum, "bloat-analysis": bloat_analysis, "index-maintenance": index_maintenance}


@flow(name="fleet", log_prints=False)
def fleet(
    runbook: Runbook = "health-check",
    fleet_block: str | None = None,
    cluster_blocks: list[str] | None = None,
    parameters: dict | None = None,
    slack_block: str | None = None,
    max_parallel: int | None = None,
    cluster_timeout_seconds: int | None = None,
    deployment: str | None = None,
) -> fleet_run.FleetReport:
    """Run one runbook over every cluster of a fleet; one line per cluster in the summary.

    Args:
        runbook: The runbook each cluster's run is.
        fleet_block: Name of a Fleet block (members, name prefix, tags); its max_parallel and timeout are defaults.
        cluster_blocks: Also these PostgresCluster blocks (a fleet of listed clusters needs no Fleet block).
        parameters: The runbook's own parameters, the same for every cluster (cluster_block is set per cluster).
        slack_block: SlackNotifier block: each cluster's run posts to its own thread, and the fleet posts a digest.
        max_parallel: Clusters run at once (default: the Fleet block's, else 4).
        cluster_timeout_seconds: A cluster's run not done after this long is timed out (default: the Fleet
            block's, else 3600); the others go on.
        deployment: Run each cluster as a run of this deployment ('<flow>/<deployment>', e.g.
            'health-check/health-check') on any worker of its pool; empty: child flow runs in this process.
    """
    logger = get_run_logger()
    spec = Fleet.load(fleet_block) if fleet_block else None
    name = fleet_block or "listed"
    report = fleet_run.started_now(runbook, name)
    clusters = fleet_run.resolve_fleet(spec, cluster_blocks, fleet_name=name)
    parallel = max_parallel or (spec.max_parallel if spec else 4)
    timeout = cluster_timeout_seconds or (spec.cluster_timeout_seconds if spec else 3600)
    params = dict(parameters or {}, **({"slack_block": slack_block} if slack_block else {}))
    FLOWS[runbook].validate_parameters(fleet_run.for_cluster(params, clusters[0]))  # a typo fails once, here
    launch = (fleet_run.deployment_launcher(deployment, runbook, params, timeout, PREFECT_UI_URL.value())
              if deployment else fleet_run.flow_launcher(FLOWS[runbook], runbook, params, timeout,
                                                         PREFECT_UI_URL.value()))
    logger.info("%s over %d cluster(s), %d at a time", runbook, len(clusters), parallel)
    report.members = fleet_run.run_members(clusters, launch, parallel, timeout)
    fleet_run.finish(report)
    report.artifact_key = publish_markdown(artifact_key(f"fleet-{runbook}", name), fleet_run.render_markdown(report),
                                           report.summary[:500])
    report.notification = fleet_run.notify_digest(slack_block, report, runtime.flow_run.ui_url)
    report.finished_at = fleet_run.now()
    logger.info(report.summary)
    return report
