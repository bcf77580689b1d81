"""Runbook 4.1 / 5.2: the high-load emergency response of one cluster's primary.

Steps, in order, each its own retryable task; a failed step is recorded and the next still runs:
  1. check active queries (one survey of pg_stat_activity, pg_locks, pg_blocking_pids)
  2. terminate long queries: cancel, wait, terminate what still runs; terminate old idle transactions
  3. cancel conflicting operations: resolve lock chains by their root blocker
  4. increase resources through the scaler block
  5. verify what load remains, notify the team (Slack thread), publish the report and the audit
With dry_run (the default) it returns the plan and touches nothing. If a step failed, the flow
ends Failed after publishing and notifying.
"""


from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime

from blocks.postgres_cluster import PostgresCluster
from tasks.alerts.sources import this_clusters_block
from tasks.core.alert_context import AlertContext
from tasks.core.exclusion import urgent_marker
from tasks.core.publish import artifact_key, publish_markdown, publish_table
from tasks.core.sessions import survey_sessions
from tasks.emergency import high_load_plan as plan
from tasks.emergency import high_load_report as rules
from tasks.emergency.high_load_notify import notify_high_load
from tasks.emergency.high_load_plan import ActionResult, HighLoadParams, PlannedAction
from tasks.emergency.high_load_report import HighLoadReport
from tasks.emergency.scale import ScaleRequest, scale_up
from tasks.emergency.signal import signal_sessions


class HighLoadStepsFailed(Exception):
    """One or more steps of the high-load response failed; `report` has every step and action."""

    def __init__(self, report: HighLoadReport):
        self.report = report
        super().__init__(report.summary)

    def __reduce__(self):
        return (HighLoadStepsFailed, (self.report,))


@flow(name="high-load-response", log_prints=False)
def high_load_response(
    cluster_block: str = "sandbox",
    params: HighLoadParams = HighLoadParams(),
    scaler_block: str | None = None,
    slack_block: str | None = None,
    alert: AlertContext | None = None,
) -> HighLoadReport:
    """Relieve an overloaded primary: end long queries and idle transactions, unblock lock chains,
    add resources, notify: within exclusions and a blast-radius limit, with an audit of every action.

    Args:
        cluster_block: Name of the PostgresCluster block whose primary is overloaded.
        params: What the response may do: dry run (default), thresholds, exclusions, blast-radius limit.
        scaler_block: Scaler block to ask for more resources ('type-slug/name', e.g. 'webhook-scaler/prod';
            `{cluster}` is replaced by cluster_block, and a cluster without that block has none); none records
            that no scaler is configured.
        slack_block: Name of a SlackNotifier block; none means no Slack message.
        alert: The firing alert that started this run (filled in by the alert monitor).
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(cluster_block)
    target = cluster.primary_target()
    run_id = str(runtime.flow_run.id) if runtime.flow_run.id else None
    report = HighLoadReport(cluster=cluster.cluster_name, node=target.node, dry_run=params.dry_run,
                            flow_run_id=run_id, started_at=datetime.now(UTC), params=params, alert=alert)

    # A marker slot (high-load-<cluster>) unless a dry run: maintenance of this cluster stops before its next table.
    with urgent_marker(cluster.cluster_name, active=not params.dry_run):
        # 1. Check active queries.
        survey, error = _run(survey_sessions, target)
        report.steps.append(rules.step_failed("check-active-queries", error) if error else rules.step_ok(
            "check-active-queries", f"read {len(survey.sessions)} backend(s) on {target.node}."))
        if survey:
            report.active_sessions, report.waiting_sessions = rules.load_figures(survey)

        # 2. Terminate long queries and old idle transactions.
        budget = params.max_sessions
        handled: set[int] = set()
        if not params.terminate_long_queries:
            report.steps.append(rules.step_skipped("terminate-long-queries", "turned off in the parameters"))
        elif survey is None:
            report.steps.append(rules.step_skipped("terminate-long-queries", "no survey of the sessions"))
        else:
            step = plan.plan_long_queries(survey, params, budget)
            budget -= len(step.actions)
            handled |= {a.pid for a in step.actions}
            _act(report, "terminate-long-queries", target, step, params, survey)

        # 3. Cancel conflicting operations (lock chains), on a fresh survey if step 2 ended sessions.
        if not params.resolve_lock_chains:
            report.steps.append(rules.step_skipped("cancel-conflicting-operations", "turned off in the parameters"))
        else:
            if survey is not None and not params.dry_run and handled:
                survey, error = _run(survey_sessions, target)
            if survey is None:
                report.steps.append(rules.step_failed("cancel-conflicting-operations", error) if error else
                                    rules.step_skipped("cancel-conflicting-operations", "no survey of the sessions"))
            else:
                report.chains = plan.find_lock_chains(survey)
                step = plan.plan_lock_chains(report.chains, survey, params, budget, handled)
                _act(report, "cancel-conflicting-operations", target, step, params, survey)

        # 4. Increase resources.
        if not params.scale:
            report.steps.append(rules.step_skipped("increase-resources", "turned off in the parameters"))
        else:
            request = ScaleRequest(cluster=report.cluster, dry_run=params.dry_run, reason=f"high load on {target.node}",
                                   active_sessions=report.active_sessions, waiting_sessions=report.waiting_sessions,
                                   flow_run_id=run_id)
            scaler, _ = this_clusters_block(cluster_block, scaler_block)
            report.scale, error = _run(scale_up, scaler, request)
            report.steps.append(rules.step_failed("increase-resources", error) if error
                                else rules.step_ok("increase-resources", report.scale.summary))

        # 5. Verify, notify, publish.
        if not params.dry_run:
            after, error = _run(survey_sessions, target)
            report.remaining = rules.remaining_load(after, params) if after else None
            report.steps.append(rules.step_failed("verify", error) if error else rules.step_ok(
                "verify", "load persists after the response." if report.remaining.persistent
                else "nothing eligible is over the thresholds any more."))
    rules.finish_report(report)
    report.finished_at = datetime.now(UTC)
    report.notification = notify_high_load(slack_block, report, runtime.flow_run.ui_url)
    report.checklist = rules.checklist(report)
    report.audit_artifact_key = publish_table(artifact_key("high-load-audit", report.cluster),
                                              rules.audit_rows(report), f"Audit: {report.summary}")
    report.artifact_key = publish_markdown(artifact_key("high-load", report.cluster),
                                           rules.render_markdown(report), report.summary)
    logger.info(report.summary)
    if not report.notification.ok:
        logger.warning(report.notification.summary)
    if report.status == "failed":
        raise HighLoadStepsFailed(report)
    return report


def _run(task, *args):
    """(result, None) or (None, the exception) of one submitted task."""
    try:
        return task.submit(*args).result(), None
    except Exception as exc:  # noqa: BLE001 - a failed step is recorded, the next still runs
        return None, exc


def _act(report: HighLoadReport, name: str, target, step: plan.StepPlan, params: HighLoadParams, survey) -> None:
    """Run (or, in a dry run, only record) one step's plan; its audit rows and outcome go into the report."""
    report.excluded += step.excluded
    report.actions += plan.over_limit_results(step, params.max_sessions)
    if params.dry_run:
        results = [ActionResult(**a.model_dump(), result="planned") for a in step.actions]
        report.actions += results
        report.steps.append(rules.step_ok(name, f"dry run: {rules.action_summary(results, True)}."))
        return
    if not step.actions:
        report.steps.append(rules.step_ok(name, "no eligible session."))
        return
    results, error = _run(signal_sessions, target, step.actions, params.cancel_grace_seconds,
                          params.terminate_timeout_seconds, survey.runbook_role, survey.can_signal)
    if error is not None:
        results = getattr(error, "results", None) or [_unknown(a, error) for a in step.actions]
        report.actions += results
        report.steps.append(rules.step_failed(name, error))
        return
    report.actions += results
    report.steps.append(rules.step_ok(name, f"{rules.action_summary(results, False)}."))


def _unknown(a: PlannedAction, error: BaseException) -> ActionResult:
    return ActionResult(**a.model_dump(), result="failed", detail=f"step failed: {type(error).__name__}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the high-load response once (dry run unless --act).")
    parser.add_argument("--cluster-block", default="sandbox")
    parser.add_argument("--act", action="store_true", help="really cancel/terminate (default: dry run)")
    parser.add_argument("--scaler-block")
    parser.add_argument("--slack-block")
    args = parser.parse_args()
    result = high_load_response(cluster_block=args.cluster_block, params=HighLoadParams(dry_run=not args.act),
                                scaler_block=args.scaler_block, slack_block=args.slack_block)
    print(rules.render_markdown(result))
