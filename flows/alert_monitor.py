"""Runbook 5.1/5.2: the alert monitor, every minute, over a fleet of clusters.

Samples every cluster concurrently (one short connection each, a deadline each), evaluates the
rules with Prometheus `for:` semantics on the stored state, then, for the clusters with something
pending, firing or due, takes their state lock, re-reads their state (compare-and-set on its
revision: if another run moved it on, the evaluation is redone on that state), starts the actions
of alerts that fired, delivers due Slack messages and saves. Quiet clusters cost no lock and no write.
"""

from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.alerts.metrics import host_sources, sample_fleet_task
from tasks.alerts.monitor import (
    MonitorParams,
    MonitorReport,
    Phases,
    answer_rules,
    cluster_turn,
    evaluate_fleet,
    finish,
    load_alert_state,
    quiet_result,
    render_markdown,
    resolve_clusters,
    rules_in_force,
    save_alert_states,
)
from tasks.alerts.sources import block_for, one_block_for_many
from tasks.alerts.state import locked
from tasks.core.notify import load_notifier
from tasks.core.publish import artifact_key, publish_markdown

WORKERS = 32


@flow(name="alert-monitor", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def alert_monitor(
    cluster_blocks: list[str] = ["sandbox"],  # noqa: B006 - rendered as the default in the UI form
    cluster_group: str | None = None,
    fleet_block: str | None = None,
    slack_block: str | None = None,
    metrics_block: str | None = None,
    metrics_blocks: dict[str, str] | None = None,
    scaler_block: str | None = None,
    scaler_blocks: dict[str, str] | None = None,
    params: MonitorParams = MonitorParams(),
    evaluated_at: datetime | None = None,
) -> MonitorReport:
    """Evaluate every alert rule on every cluster; notify and act on what fires.

    Args:
        cluster_blocks: PostgresCluster blocks to watch.
        cluster_group: Also watch every PostgresCluster block whose name starts with this prefix.
        fleet_block: Also watch the members of this Fleet block (listed, by name prefix, by tag).
        slack_block: Name of a SlackNotifier block; none means alerts are only logged and stored.
        metrics_block: Each cluster's host-metrics-source block; `{cluster}` is replaced by the cluster block
            name (e.g. '{cluster}-host'); a plain name is used only when the fleet is one cluster.
        metrics_blocks: Explicit cluster block -> host-metrics-source block (wins over metrics_block).
        scaler_block: Each cluster's pool scaler for connection remediation (e.g. 'pgbouncer-pool-scaler/{cluster}');
            a cluster without one is never scaled.
        scaler_blocks: Explicit cluster block -> scaler block (wins over scaler_block).
        params: The rules file, the per-cluster deadline and the fleet's sampling budget.
        evaluated_at: The evaluation time (replays and tests); default now.
    """
    logger = get_run_logger()
    report = MonitorReport(started_at=datetime.now(UTC))
    rules, report.rules_error = rules_in_force(params.rules_file)
    report.rules_source = params.rules_file or "built-in defaults"
    rules = answer_rules(slack_block, params.rules_file, rules, report.rules_error, report.started_at,
                         runtime.flow_run.ui_url)  # a rejected file pages once per episode; none in force raises
    blocks = resolve_clusters(cluster_blocks, cluster_group, fleet_block)
    for spec, mapping, name in ((metrics_block, metrics_blocks, "metrics_block"),
                                (scaler_block, scaler_blocks, "scaler_block")):
        if warning := one_block_for_many(spec, mapping, blocks, name):
            logger.warning(warning)
    scalers = {b: block_for(b, scaler_block, scaler_blocks, len(blocks), "scaler_block") for b in blocks}

    sampled = sample_fleet_task(blocks, host_sources(blocks, metrics_block, metrics_blocks),
                                params.deadline_seconds, params.fleet_budget_seconds, params.wake_paused)
    report.sample_seconds = report.phase_seconds["sample"] = (datetime.now(UTC) - report.started_at).total_seconds()
    report.evaluated_at = evaluated_at or datetime.now(UTC)

    notifier, notifier_error = load_notifier(slack_block)
    if notifier_error:
        logger.warning(notifier_error)
    clock = Phases(report.phase_seconds)
    states = load_alert_state(blocks)
    evaluations, writers = evaluate_fleet(blocks, sampled, states, rules, report.evaluated_at)
    clock.lap("load state, evaluate")
    with locked(writers, params.lock_timeout_seconds):  # only clusters with something pending, firing or due
        clock.lap("lock")
        stored = load_alert_state(writers) if writers else {}
        to_save = []
        for block in blocks:
            if block not in writers:
                report.clusters.append(quiet_result(block, sampled[block], evaluations[block]))
                continue
            if stored[block].revision != states[block].revision:  # another run moved it on: redo on its state
                evaluations[block] = evaluate_fleet([block], sampled, stored, rules, report.evaluated_at)[0][block]
            result, new = cluster_turn(block, sampled[block], evaluations[block], rules, report.evaluated_at,
                                       notifier, slack_block, params.dispatch_actions, runtime.flow_run.id,
                                       scalers[block])
            report.clusters.append(result)
            to_save.append(new)
        clock.lap("act, notify")
        save_alert_states(to_save)
        clock.lap("save state")

    finish(report)
    report.finished_at = datetime.now(UTC)
    report.artifact_key = publish_markdown(artifact_key("alert-monitor", fleet_block or cluster_group or "fleet"),
                                           render_markdown(report), report.summary[:500])
    for line in (t for c in report.clusters for t in c.transitions):
        logger.info(line)
    if report.rules_error:
        logger.error(report.rules_error)
    logger.info(report.summary)
    return report


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the alert monitor once and print its report.")
    parser.add_argument("--cluster-block", action="append", default=None)
    parser.add_argument("--slack-block")
    parser.add_argument("--rules-file")
    args = parser.parse_args()
    out = alert_monitor(cluster_blocks=args.cluster_block or ["sandbox"], slack_block=args.slack_block,
                        params=MonitorParams(rules_file=args.rules_file))
    print(render_markdown(out))
