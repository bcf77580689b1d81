"""Rejoin: turn the fenced old primary into a streaming standby of the new primary.

Clean switchover: standby.signal + primary_conninfo + a new slot on the new primary, no rewind.
After a crash: CHECKPOINT the new primary, copy the diverged data directory aside, pg_rewind,
restore the node's own settings, then the same. Stale slots on the rejoined node are dropped and
the divergence point is recorded.
"""

from prefect import flow, get_run_logger, runtime

from blocks.failover_adapters import NodeControl
from blocks.postgres_cluster import PostgresCluster
from tasks.core.publish import artifact_key, notify_slack, publish_markdown
from tasks.failover import rejoin as steps
from tasks.failover.model import FailoverStepFailed, RejoinReport, RejoinRequest
from tasks.failover.patroni_guard import refuse_native
from tasks.failover.steps import read_node_state


@flow(name="rejoin")
def rejoin(request: RejoinRequest = RejoinRequest()) -> RejoinReport:
    """Make a fenced node a standby of the current primary (pg_rewind only when it diverged).

    Args:
        request: The cluster, the node to rejoin (default: the fenced one) and the timeouts.
    """
    logger = get_run_logger()
    cluster = PostgresCluster.load(request.cluster_block)
    ctl = NodeControl.load(request.node_control_block)
    node = request.node or next(iter(cluster.fenced_nodes), None)
    if not node or node == cluster.primary_node:
        raise FailoverStepFailed(f"nothing to rejoin: give a node other than the primary {cluster.primary_node} "
                                 f"(fenced: {cluster.fenced_nodes or 'none'})")
    primary_state = read_node_state(cluster.primary_target())
    if not primary_state.reachable or primary_state.in_recovery:
        raise FailoverStepFailed(f"the primary {cluster.primary_node} is not writable: run the failover first")
    refuse_native(ctl, [cluster.target(node), cluster.primary_target()], "rejoin", node)
    host = cluster.node(node).host
    primary, slot = cluster.primary_target(), steps.slot_name(node)
    actions = [steps.ensure_stopped(ctl, node, host)]
    control = steps.read_controldata(ctl, node, host)
    timeline = steps.primary_timeline(primary, control["timeline"])
    rewind = steps.needs_rewind(control["state"], control["checkpoint"], control["timeline"], timeline["switch_lsn"])
    if timeline["checkpointed"]:
        actions.append(f"CHECKPOINT on {cluster.primary_node} (pg_rewind before PostgreSQL 16 reads the new "
                       "timeline from its control file)")
    report = RejoinReport(
        cluster=cluster.cluster_name, node=node, primary=cluster.primary_node, status="dry_run", summary="",
        rewind_needed=rewind, old_timeline=control["timeline"], new_timeline=timeline["timeline"], slot=slot,
        diverged_at=timeline["switch_lsn"])
    if request.dry_run:
        report.summary = (f"{cluster.cluster_name}: would rejoin {node} to {cluster.primary_node} "
                          f"{'with pg_rewind' if rewind else 'without rewind'}; nothing changed")
        return report
    if rewind:
        if request.keep_diverged_copy:
            report.diverged_copy = steps.copy_diverged(ctl, node)
            actions.append(f"diverged data directory kept at {report.diverged_copy}")
        rewound = steps.pg_rewind(ctl, node, primary)
        report.diverged_at = rewound["diverged_at"] or report.diverged_at
        actions.append(f"pg_rewind: {rewound['output']}; restored {', '.join(rewound['restored_conf'])}")
    actions.append(steps.configure_standby(ctl, node, cluster.node(cluster.primary_node).host, primary.port, slot))
    actions.append(steps.create_slot(primary, slot))
    actions.append(steps.start(ctl, node, host))
    seconds = steps.wait_streaming(primary, node, request.streaming_timeout_seconds)
    report.dropped_slots = steps.drop_stale_slots(cluster.target(node), request.keep_slots)
    steps.unfence(request.cluster_block, node)
    report.status, report.actions = "completed", actions
    report.summary = (f"{cluster.cluster_name}: {node} streams from {cluster.primary_node} on slot {slot} "
                      f"(streaming {seconds:.2f} s after start); "
                      + (f"rewound: timelines diverged at {report.diverged_at} (timeline {report.old_timeline} → "
                         f"{report.new_timeline})" if rewind else "no rewind needed (clean switchover)"))
    md = "\n".join([f"# Rejoin of {node} in {cluster.cluster_name}", "", report.summary, "", "## Actions", ""]
                   + [f"- {a}" for a in actions] + [f"- dropped stale slots: {report.dropped_slots or 'none'}"])
    report.artifact_key = publish_markdown(artifact_key("rejoin", cluster.cluster_name), md, report.summary)
    if request.slack_block:
        report.notification = notify_slack(request.slack_block, f"Rejoin {node} in {cluster.cluster_name}",
                                           report.summary, actions, runtime.flow_run.ui_url)
    logger.info(report.summary)
    return report
