"""Runbook 2.1: vacuum and analyze what needs it (or the tables an operator names).

Wraparound risk first, then dead tuples, then stale statistics; N tables at a time on N connections
held for the run (as vacuumdb), with lock_timeout and statement_timeout; one task run per connection,
taking batches of tables as it is free; no table starts after the maintenance window; every table's
outcome is logged as its batch ends, and failures alert in Slack. A maintenance log that cannot be
written is in the report and the alert, and the run then ends Failed.

The flow is `async def` for one reason: Prefect 3.9's sync flow engine joins its heartbeat thread at
exit, and that thread sleeps in 1 s steps, so every sync flow run ends on the next whole second after its
work (up to 1 s more: most of a run that vacuums 100 small tables). The async engine keeps the heartbeats
and does not join. Its body still calls sync tasks, inside one sync Prefect client context as a sync
flow has (without it every sync task run opens its own API client); callers outside a running event loop
use `asyncio.run(vacuum(...))`. The lanes take their batches from a shared queue (no large task inputs for
Prefect to walk), and the two artifacts are sent from the flow run itself, without a task run each.
"""

import asyncio
import contextlib
import time
from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime
from prefect.context import SyncClientContext

from blocks.postgres_cluster import PostgresCluster
from tasks.core.bounded import WorkQueue
from tasks.core.exclusion import OnBusy, StopCheck, maintenance_turn
from tasks.core.progress import Progress, track_progress
from tasks.core.publish import artifact_key, notify_slack, publish_report_and_table
from tasks.maintenance import vacuum_plan as plan
from tasks.maintenance.maintenance_log import MaintenanceLogFailed, MaintenanceLogWriter
from tasks.maintenance.vacuum import (
    CandidatesRead,
    VacuumResult,
    VacuumSessions,
    read_vacuum_candidates,
    resolve_tables,
    vacuum_lane,
)
from tasks.maintenance.vacuum_plan import VacuumParams, VacuumReport


@flow(name="vacuum", log_prints=False)
async def vacuum(
    cluster_block: str = "sandbox",
    params: VacuumParams = VacuumParams(),
    database: str | None = None,
    slack_block: str | None = None,
    if_busy: OnBusy = "wait",
    busy_wait_minutes: float = 30,
) -> VacuumReport:
    """Vacuum the named tables, or every table that needs it, within the maintenance window.

    Args:
        cluster_block: Name of the PostgresCluster block to maintain (its primary).
        params: Tables (none: what needs it), thresholds, VACUUM options, concurrency, timeouts, window.
        database: Database to vacuum; empty means the block's database.
        slack_block: Name of a SlackNotifier block for failures; none means no Slack message.
        if_busy: When another maintenance run or a failover / high-load response holds the cluster: wait for it
            (up to busy_wait_minutes) or skip this run. A failover or high-load response that starts later stops
            this run before its next table.
        busy_wait_minutes: How long to wait for the cluster's maintenance lock.
    """
    # The sync API client (its TLS set-up is ~25 ms of CPU) is built in a thread while the block loads.
    client = SyncClientContext.get() or asyncio.create_task(asyncio.to_thread(SyncClientContext))
    cluster = await PostgresCluster.aload(cluster_block)
    with client if isinstance(client, SyncClientContext) else await client:
        return run_vacuum(cluster, params, database, slack_block, if_busy, busy_wait_minutes)


def run_vacuum(cluster: PostgresCluster, params: VacuumParams, database: str | None,
               slack_block: str | None, if_busy: OnBusy, busy_wait_minutes: float) -> VacuumReport:
    """The flow's steps (sync, inside the flow run)."""
    logger = get_run_logger()
    target = cluster.target(cluster.primary_node, database)
    report = VacuumReport(cluster=cluster.cluster_name, started_at=datetime.now(UTC), dry_run=params.dry_run)
    deadline = time.time() + params.window_minutes * 60 if params.window_minutes else None

    refs = resolve_tables(target, params.tables) if params.tables else None  # UnknownObject before anything
    turn = bar = None
    with contextlib.ExitStack() as held:
        # N connections held for the run (as vacuumdb); the first reads the catalog while the lock is taken.
        sessions = held.enter_context(VacuumSessions(target, params.lock_timeout_ms, params.statement_timeout_ms,
                                                      params.synchronous_commit))
        read = CandidatesRead(target, sessions)
        if not params.dry_run:
            turn = held.enter_context(maintenance_turn(report.cluster, "vacuum", if_busy, busy_wait_minutes * 60))
            report.exclusion = turn.sentence
        states, limits = read.result()
        if turn is not None and turn.held and turn.waited_seconds >= 1:  # what it waited for may have vacuumed
            states, limits = read_vacuum_candidates(target, sessions)
        candidates = (plan.requested_candidates(refs, states) if refs is not None
                      else plan.select_candidates(states, params, limits))
        report.planned = [c.table for c in candidates]
        if params.dry_run:
            report.results = [plan.planned_result(c) for c in candidates]
        elif turn.held:
            bar = vacuum_candidates(report, target, candidates, params, deadline, sessions,
                                    StopCheck(report.cluster, turn=turn))
        rows = plan.log_rows(report.results)
        plan.finish_report(report)
        if turn is not None and not turn.held:  # waited in vain or skipped: it did nothing, and says why
            report.status, report.summary = "warning", report.exclusion
        report.finished_at = datetime.now(UTC)
    key = artifact_key("vacuum", report.cluster)
    # The report and its per-table records, sent at the same time (and the progress card's last state).
    report.artifact_key = publish_report_and_table(key, plan.render_markdown(report, candidates), report.summary,
                                                   f"{key}-log", rows)
    if bar is not None:
        bar.join()
    if slack_block and report.status != "ok":
        report.notification = notify_slack(slack_block, f"Vacuum {report.cluster}: {report.status.upper()}",
                                           report.summary, plan.slack_lines(report), runtime.flow_run.ui_url)
    logger.info(report.summary)
    if report.log_error:
        raise MaintenanceLogFailed(report)  # published and notified first; the run ends Failed
    return report


def vacuum_candidates(report: VacuumReport, target, candidates: list, params: VacuumParams,
                      deadline: float | None, sessions: VacuumSessions, stop: StopCheck) -> Progress | None:
    """N batches at a time on the run's held connections, the progress card moving per table, each batch's
    records appended to the maintenance log as it ends; tables the window or a priority run stopped are said.
    Returns the progress card, its last state on its way (join it once the report is published)."""
    log = MaintenanceLogWriter("vacuum", report.cluster, str(runtime.flow_run.id), params.log_dir)
    with track_progress(artifact_key("vacuum-progress", report.cluster), len(candidates),
                        f"Vacuum of {report.cluster}", "tables", first_after=1.0, flow_client=True) as bar:
        queue = WorkQueue(plan.batches(candidates, params.batch_tables, params.concurrency), deadline)
        lanes = [vacuum_lane.submit(target, queue, params.options, sessions, deadline, bar, log, stop=stop)
                 for _ in range(min(params.concurrency, len(queue)))]
        done = sorted((pair for lane in lanes for pair in lane.result()), key=lambda pair: pair[0])
        report.results = [result for _, results in done for result in results]
        skipped = [plan.window_skipped(ref) for batch in queue.not_started() for ref in batch]
        log.append(plan.log_rows(skipped))
        report.results += skipped
        if bar is not None:
            bar.close(plan.progress_outcome(report), wait=False)  # sent while the report is published
    report.log_path, report.log_error = log.log_path, log.error
    return bar


__all__ = ["vacuum", "VacuumParams", "VacuumReport", "VacuumResult"]
