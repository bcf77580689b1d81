"""Runbook 4.2: manual failover and planned switchover in three phases.

Phase 1 checks the candidate and backs up the critical state (dry_run stops there with the plan).
Phase 2 holds the clients, switches the primary through the backend the NodeControl block configures
(native: fence, LSN gate, promote; Patroni: its REST API, tasks/failover/switch_patroni.py), verifies and
repoints. Phase 3 probes the application path, records the new primary in the cluster block and
notifies. Every step is journaled outside the worker; a rerun inspects the real state of each
node and continues. At most one run per cluster: the journal's file lock, the cluster's Prefect
concurrency slot and an advisory lock on every reachable node.
"""

import time
from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime

from tasks.core.publish import artifact_key, publish_markdown
from tasks.failover import hooks
from tasks.failover.approval import await_approval
from tasks.failover.dblock import database_lock
from tasks.failover.model import FailoverPlan, FailoverRefused, FailoverReport, FailoverRequest
from tasks.failover.plan import data_loss, decide, probe_deadline, refuse_unconfirmed
from tasks.failover.report import (
    endpoint_actions,
    endpoint_sentence,
    render_backup,
    render_markdown,
    write_availability,
)
from tasks.failover.run import (
    RunContext,
    close_context,
    close_progress,
    context,
    open_context,
    post_progress,
    reply_phase,
    run_step,
)
from tasks.failover.slot import cluster_slot
from tasks.failover.steps import (
    application_target,
    lift_login_retry,
    pause_endpoint,
    probe_application,
    read_backup,
    read_endpoint,
    read_node_state,
    repoint_endpoint,
    resume_endpoint,
    verify_promotion,
)
from tasks.failover.switch import backend_for
from tasks.failover.wiring import (
    LOGIN_RETRY_FACT,
    note_lifted,
    note_probe,
    restore_endpoint,
    resume_plan,
    save_cluster_block,
    start_journal,
)


@flow(name="failover-pre", on_failure=[hooks.phase_failed])
def pre_failover(run_key: str) -> FailoverPlan:
    """Phase 1: inspect every node and the endpoint, decide (or refuse), back up the critical state."""
    ctx = context(run_key)
    started = time.perf_counter()
    states = {t.node: read_node_state(t) for t in ctx.cluster.targets()}
    try:
        endpoint, endpoint_error = read_endpoint(ctx.endpoint), None
    except Exception as exc:  # noqa: BLE001 - an unusable endpoint is a refusal reason
        endpoint, endpoint_error = {}, str(exc)
    plan = resume_plan(ctx, states, endpoint_error) or decide(ctx.request, ctx.cluster, states, endpoint_error,
                                                              ctx.endpoint.kind)
    plan = backend_for(ctx.node_control).preflight(ctx, plan, states)
    start_journal(ctx, plan)
    backup = {"states": {k: v.model_dump() for k, v in states.items()}, "endpoint": endpoint,
              "switch_backend": ctx.backend_view,
              "nodes": [read_backup(t).model_dump() for t in ctx.cluster.targets() if states[t.node].reachable],
              "plan": plan.model_dump()}
    path = ctx.store.write_backup(ctx.cluster.cluster_name, ctx.run_id, backup)
    ctx.journal.facts["backup_path"] = str(path)
    publish_markdown(artifact_key("failover-backup", ctx.cluster.cluster_name), render_backup(backup),
                     f"Pre-failover backup of {ctx.cluster.cluster_name}")
    ctx.phase_seconds["pre-failover"] = time.perf_counter() - started
    reply_phase(ctx, 1, ctx.phase_seconds["pre-failover"])
    return plan


@flow(name="failover-switch", on_failure=[hooks.phase_failed])
def failover_phase(run_key: str) -> None:
    """Phase 2: hold the clients, switch the primary (the configured backend), verify, repoint, RESUME."""
    ctx = context(run_key)
    started = time.perf_counter()
    plan, c, endpoint = ctx.journal.plan, ctx.cluster, ctx.endpoint
    backend = backend_for(ctx.node_control)
    cand = c.target(plan.candidate)
    cand_state = read_node_state(cand)
    backend.before_hold(ctx, plan, cand_state.reachable and cand_state.in_recovery is False)
    run_step(ctx, 2, "pause-endpoint", "endpoint", pause_endpoint, endpoint, ctx.request.pause_timeout_seconds)
    ctx.paused_at = time.perf_counter()
    shutdown = backend.switch(ctx, plan, cand_state)
    verified = run_step(ctx, 2, "verify-promotion", cand.node, verify_promotion, cand, plan.original_timeline)
    ctx.journal.facts.update(new_timeline=verified["timeline"], switch_lsn=verified["switch_lsn"])
    if verified["switch_lsn"]:  # where the old timeline really ended (timeline history), not the journal's word
        ctx.journal.facts["promoted_at"] = verified["switch_lsn"]
    backend.after_verify(ctx, plan, shutdown)
    cand_host = c.node(plan.candidate).host
    run_step(ctx, 2, "repoint-endpoint", "endpoint", repoint_endpoint, endpoint, cand_host, cand.port)
    note_lifted(ctx, run_step(ctx, 2, "lift-login-retry", "endpoint", lift_login_retry, endpoint))
    run_step(ctx, 2, "resume-endpoint", "endpoint", resume_endpoint, endpoint)
    ctx.write_pause_ms = round((time.perf_counter() - ctx.paused_at) * 1000, 1)
    ctx.paused_at = None
    ctx.phase_seconds["failover"] = time.perf_counter() - started
    reply_phase(ctx, 2, ctx.phase_seconds["failover"])


@flow(name="failover-post", on_failure=[hooks.phase_failed])
def post_failover(run_key: str) -> None:
    """Phase 3: write-then-read through the endpoint (retried until its deadline; not confirmed is a warning, the
    new primary itself was verified in phase 2); pgbouncer's settings restored; the cluster block follows."""
    ctx = context(run_key)
    started = time.perf_counter()
    plan = ctx.journal.plan
    target = application_target(ctx.cluster.target(plan.candidate), ctx.endpoint)
    probe = run_step(ctx, 3, "probe-application", "endpoint", probe_application, target,
                     probe_deadline(ctx.request.endpoint_probe_seconds, ctx.journal.facts.get(LOGIN_RETRY_FACT),
                                    target.connect_timeout))
    note_probe(ctx, probe)
    restore_endpoint(ctx, 3)
    if probe["ok"] and probe["port"] != ctx.cluster.node(plan.candidate).port:
        raise hooks.endpoint_elsewhere(probe["port"], plan.candidate)
    run_step(ctx, 3, "update-cluster-block", "cluster", save_cluster_block, ctx.request.cluster_block,
             plan.candidate, plan.old_primary)
    backend_for(ctx.node_control).settle(ctx, plan)
    ctx.journal.status = "completed"
    ctx.phase_seconds["post-failover"] = time.perf_counter() - started
    reply_phase(ctx, 3, ctx.phase_seconds["post-failover"])


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
