"""Runbook 4.2: manual failover and planned switchover in three phases.

Phase 1 checks the candidate and backs up the critical state (dry_run stops there with the plan).
Phase 2 holds the clients, switches the primary through the backend the NodeControl block configures
(native: fence, LSN gate, promote; Patroni: its REST API, tasks/failover/switch_patroni.py), verifies and
repoints. Phase 3 probes the application path, records the new primary in the cluster block and
notifies. Each phase is one task run with its own failure hook (tasks/failover/phases.py), not a
subflow: a flow run costs up to a second more at its exit. Every step is journaled outside the worker;
a rerun inspects the real state of each node and continues. At most one run per cluster: the journal's
file lock, the cluster's Prefect concurrency slot and an advisory lock on every reachable node.
"""

from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime

from tasks.core.publish import artifact_key, publish_markdown
from tasks.failover import hooks
from tasks.failover.approval import await_approval
from tasks.failover.dblock import database_lock
from tasks.failover.model import DataLoss, FailoverRefused, FailoverReport, FailoverRequest
from tasks.failover.phases import failover_phase, post_failover, pre_failover
from tasks.failover.plan import data_loss, refuse_unconfirmed
from tasks.failover.report import endpoint_actions, endpoint_sentence, render_markdown, write_availability
from tasks.failover.run import RunContext, close_context, close_progress, open_context, post_progress
from tasks.failover.slot import cluster_slot


@flow(name="failover", on_crashed=[hooks.run_crashed], on_cancellation=[hooks.run_crashed])
def failover(request: FailoverRequest = FailoverRequest()) -> FailoverReport:
    """Switch the primary of a cluster to a standby: planned (switchover) or after a loss (failover).

    Args:
        request: The cluster, the mode, the candidate, the guards (lag, approval, fence), the blocks and timeouts.
    """
    logger = get_run_logger()
    run_key = str(runtime.flow_run.id or "local")
    ctx = open_context(request, run_key, runtime.flow_run.ui_url)
    try:
        name = ctx.cluster.cluster_name
        refuse_unconfirmed(request, name)  # before phase 1 and any lock: a mismatch changes nothing
        with ctx.store.exclusive(name, run_key), cluster_slot(name, ctx.store), database_lock(ctx.cluster):
            post_progress(ctx, "phase 1/3 pre-failover", "phase 1: checking nodes, endpoint and lag")
            plan = pre_failover(run_key)
            if request.dry_run:
                return finish(ctx, "dry_run")
            if request.require_approval:
                post_progress(ctx, "WAITING FOR APPROVAL", f"phase 1 done: approve {plan.old_primary} → "
                              f"{plan.candidate} in the Prefect UI within {request.approval_timeout_seconds} s")
                answer = await_approval(plan, request.approval_timeout_seconds)
                ctx.journal.facts["approved_by"] = answer.approver or "unnamed"
            post_progress(ctx, "phase 2/3 failover", f"phase 1 done: {plan.candidate} qualifies; lag "
                          f"{plan.lag_bytes if plan.lag_bytes is not None else 'unknown'} bytes")
            failover_phase(run_key)
            post_progress(ctx, "phase 3/3 post-failover",
                          f"phase 2 done: {plan.candidate} promoted, clients held {ctx.write_pause_ms:.0f} ms")
            post_failover(run_key)
            report = finish(ctx, "completed")
            logger.info(report.summary)
            return report
    except FailoverRefused as exc:
        if ctx.journal is not None and not request.dry_run and not any(s.phase >= 2 for s in ctx.journal.steps):
            ctx.store.archive(ctx.cluster.cluster_name)  # refused before phase 2: the next run starts fresh
        hooks.post_refusal(ctx, exc)
        raise
    finally:
        close_context(run_key)


def finish(ctx: RunContext, status: str) -> FailoverReport:
    """The report, its artifact and the final verdict in Slack."""
    journal, plan = ctx.journal, ctx.journal.plan
    facts = journal.facts
    loss = data_loss(plan.mode, facts.get("old_wal_end"), facts.get("promoted_at") or facts.get("switch_lsn"))
    if facts.get("data_loss"):  # a backend with no promotion (Neon's restart) says what it could lose
        loss = DataLoss(**facts["data_loss"])
    if status == "dry_run" and plan.resumed:
        summary = (f"{plan.cluster}: dry run — would resume run {plan.resumed_from_run} ({plan.mode} "
                   f"{plan.old_primary} → {plan.candidate}) after its step {plan.resume_after}, from step "
                   f"{plan.resume_from or 'none left'}, re-inspecting every node; nothing was changed and its "
                   "journal is kept for the real rerun")
        journal.status = "dry_run"
    elif status == "dry_run":
        summary = (f"{plan.cluster}: dry run — would {plan.mode} {plan.old_primary} → {plan.candidate} in "
                   f"{len(plan.steps)} steps; nothing was changed")
        journal.status = "dry_run"
    else:
        summary = (f"{plan.cluster}: {plan.candidate} is the new primary (timeline {facts.get('new_timeline')}), "
                   f"{facts.get('old_primary_note') or plan.old_primary + ' is fenced'}; {loss.sentence}")
        stuck = sorted(n for n, status in facts.get("followers", {}).items() if status == "failed")
        if endpoint := endpoint_sentence(facts, plan.candidate, ctx.endpoint, ctx.request.incident_at,
                                         journal.started_at):
            summary += "; " + endpoint
        if stuck:
            summary += (f"; WARNING: standby {', '.join(stuck)} does not follow the new primary (see its "
                        "follow-new-primary or await-patroni-rejoin step: rejoin it)")
    report = FailoverReport(
        cluster=plan.cluster, mode=plan.mode, status=status, summary=summary, old_primary=plan.old_primary,
        new_primary=plan.candidate if status == "completed" else None, resumed=plan.resumed, plan=plan,
        steps=list(journal.steps), phase_seconds=ctx.phase_seconds, write_pause_ms=ctx.write_pause_ms,
        **write_availability(facts, ctx.request.incident_at, journal.started_at),
        endpoint_actions=endpoint_actions(journal.steps),
        data_loss=loss if status == "completed" else data_loss(plan.mode, None, None).model_copy(
            update={"sentence": "dry run: nothing promoted"}),
        backup_path=facts.get("backup_path"), journal_path=str(ctx.store.path(plan.cluster)),
        followers=dict(facts.get("followers", {})),
        started_at=ctx.started_at, finished_at=datetime.now(UTC))
    post_progress(ctx, "DONE" if status == "completed" else "DRY RUN", summary)
    close_progress(ctx, f"completed: {summary}", complete=True)
    ctx.save()  # a dry run writes no journal (ctx.save), so it never archives one either
    if status == "completed":
        ctx.store.archive(plan.cluster)
    report.notification = ctx.thread.outcome
    report.artifact_key = publish_markdown(artifact_key("failover", plan.cluster), render_markdown(report), summary)
    return report


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run one switchover or failover and print its report.")
    parser.add_argument("--cluster-block", default="sandbox")
    parser.add_argument("--mode", choices=["switchover", "failover"], default="switchover")
    parser.add_argument("--candidate")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--confirm-cluster", default="", help="the cluster block again (a real run needs it)")
    args = parser.parse_args()
    result = failover(FailoverRequest(cluster_block=args.cluster_block, mode=args.mode, candidate=args.candidate,
                                      dry_run=args.dry_run, confirm_cluster=args.confirm_cluster))
    print(render_markdown(result))
