"""Failover hooks: what a failed phase, a crashed or cancelled run tells the team, and the safe undo.

A hook inspects the real state of each node, undoes its phase's work only where that cannot
create a second writable primary, and posts phase, step, error, cluster state and the next
manual action to the run's Slack thread. Hooks never raise (Prefect swallows it anyway).
"""

from __future__ import annotations

import logging

from blocks.postgres_cluster import PostgresCluster
from tasks.core.notify import SlackThread, load_notifier, section_blocks
from tasks.failover import endpoint as ep
from tasks.failover import node_control as nc
from tasks.failover.journal import Journal, JournalStore
from tasks.failover.model import FailoverRefused, FailoverRequest, FailoverStepFailed, NodeState
from tasks.failover.plan import next_action
from tasks.failover.report import cluster_state_sentence
from tasks.failover.run import PHASES, RunContext, context, post_progress
from tasks.failover.steps import read_node_state
from tasks.failover.wiring import LOGIN_RETRY_FACT, LOGIN_RETRY_RESTORED

log = logging.getLogger("pg_runbooks.failover")
PHASE_OF_TASK = {"failover-pre": 1, "failover-switch": 2, "failover-post": 3}  # tasks/failover/phases.py
CRASH_ALERTED = "crash_alerted"  # journal fact: the run's own hook posted its crash alert


def unclean_shutdown(node: str, state: str | None) -> FailoverStepFailed:
    return FailoverStepFailed(
        f"{node} was not shut down cleanly (pg_controldata: {state}): a switchover cannot prove zero loss; "
        "rerun in failover mode (the LSN gap will be reported)")


def endpoint_elsewhere(port: int, candidate: str) -> FailoverStepFailed:
    return FailoverStepFailed(f"the endpoint's write probe landed on port {port}, not on {candidate}: "
                              "check the pgbouncer ini and RELOAD by hand")


def node_states(ctx: RunContext) -> dict[str, NodeState]:
    return {t.node: read_node_state.fn(t) for t in ctx.cluster.targets()}


def phase_failed(task, task_run, state) -> None:
    """on_failure of each phase task: undo where safe, then tell the thread what to do. The run's context is
    found by the parent flow run's id (the phases' run_key)."""
    try:
        ctx = context(str(task_run.flow_run_id))
        if ctx is None or "FailoverRefused" in (state.message or ""):
            return  # a refusal is posted by the parent flow; nothing changed
        phase = PHASE_OF_TASK.get(task.name, 0)
        if ctx.journal is None:  # failed before any plan: nothing was changed
            line = f"Phase {phase} {PHASES.get(phase, '?')} FAILED before any change: {state.message}"
            ctx.thread.reply(line, section_blocks(f"Phase {phase} failed", [line, "*Next:* " + next_action(
                1, None, False, None, None, "?", "?")]))
            post_progress(ctx, f"FAILED in phase {phase}, nothing changed", line)
            return
        failed = next((s for s in reversed(ctx.journal.steps) if s.status == "failed"), None)
        states = node_states(ctx)
        undo = (undo_phase2(ctx, states) if phase == 2 else []) + restore_lifted(ctx)
        states = node_states(ctx) if undo else states
        plan = ctx.journal.plan
        cand = states.get(plan.candidate)
        promoted = bool(cand and cand.reachable and cand.in_recovery is False)
        old = states.get(plan.old_primary)
        old_running = bool(old and old.reachable and old.in_recovery is False)
        last = next((s for s in reversed(ctx.journal.steps) if s.phase == phase), None)
        step = failed.step if failed else (last.step if last else "start")
        where = f"at step {step}" if failed else f"after step {step}"
        lines = [
            f"*Phase {phase} {PHASES.get(phase, '?')} FAILED* {where}",
            f"*Error:* {(failed.detail if failed else state.message) or 'unknown'}",
            f"*Cluster now:* {cluster_state_sentence(list(states.values()), ctx.clients_paused)}",
            *[f"*Undo:* {u}" for u in undo],
            "*Next:* " + next_action(phase, step, promoted, old_running, ctx.clients_paused, plan.candidate,
                                     plan.old_primary),
        ]
        ctx.journal.facts.setdefault("hook_reports", []).append(lines)
        ctx.save()
        title = f"Phase {phase} failed {where}"
        ctx.thread.reply(title + ": " + lines[1], section_blocks(title, lines))
        post_progress(ctx, f"FAILED in phase {phase} {where}", lines[2])
    except Exception:  # noqa: BLE001 - a hook must never hide the original failure
        log.exception("failover phase hook failed")


def undo_phase2(ctx: RunContext, states: dict[str, NodeState]) -> list[str]:
    """Put the old primary back only when the candidate was never asked to promote."""
    plan, journal = ctx.journal.plan, ctx.journal
    cand = states.get(plan.candidate)
    promoted = bool(cand and cand.reachable and cand.in_recovery is False)
    if promoted or journal.attempted("promote"):
        held = "clients stay PAUSED at pgbouncer" if ctx.clients_paused else "clients were not paused"
        return [f"none: {plan.candidate} was promoted (or pg_promote was requested); nothing is undone so that "
                f"only one primary can exist; {held}"]
    undo = []
    old = states.get(plan.old_primary)
    old_host = ctx.cluster.node(plan.old_primary).host
    if plan.mode == "switchover" and journal.attempted("fence") and not (old and old.reachable):
        try:
            nc.start_node(ctx.node_control, plan.old_primary, old_host)
            undo.append(f"restarted {plan.old_primary} ({plan.candidate} was never promoted, the stop was clean)")
            old = read_node_state.fn(ctx.cluster.target(plan.old_primary))
        except nc.NodeControlError as exc:
            undo.append(f"could not restart {plan.old_primary}: {exc}")
    if ctx.clients_paused or journal.attempted("pause-endpoint"):
        if old and old.reachable and old.in_recovery is False:
            try:
                undo.append(f"RESUME sent to pgbouncer ({ep.resume(ctx.endpoint)}): clients continue on "
                            f"{plan.old_primary}, which still points there")
                ctx.paused_at = None
            except ep.EndpointError as exc:
                undo.append(f"RESUME failed: {exc}")
        else:
            undo.append(f"clients stay PAUSED: {plan.old_primary} is not writable")
    old = old if old and old.reachable else read_node_state.fn(ctx.cluster.target(plan.old_primary))
    if old.reachable and old.in_recovery is False and not ctx.clients_paused:
        journal.status = "rolled_back"  # back where it started: the next run decides afresh
    return undo or ["nothing to undo"]


def restore_lifted(ctx: RunContext) -> list[str]:
    """Put back pgbouncer's server_login_retry if the run lowered it and has not restored it yet."""
    facts = ctx.journal.facts
    original = facts.get(LOGIN_RETRY_FACT)
    if original is None or facts.get(LOGIN_RETRY_RESTORED):
        return []
    try:
        detail = ep.restore_login_retry(ctx.endpoint, original, settle_s=0)
    except Exception as exc:  # noqa: BLE001 - the hook reports it, the rerun's RELOAD restores it
        return [f"could not restore pgbouncer server_login_retry to {original} ({exc}): RELOAD pgbouncer (it reads "
                "the ini's value) or rerun the failover"]
    facts[LOGIN_RETRY_RESTORED] = True
    return [f"pgbouncer {detail}"]


def post_refusal(ctx: RunContext, exc: FailoverRefused) -> None:
    try:
        post_progress(ctx, "REFUSED, nothing was changed", "; ".join(exc.reasons))
    except Exception:  # noqa: BLE001
        log.exception("could not post the refusal")


def run_crashed(flow, flow_run, state) -> None:
    """on_crashed / on_cancellation of the parent flow: alert with the last journaled step, in the run's thread.

    The run's context is usually gone by now (the flow body has exited), so the thread comes from the
    journal's saved `slack_parent_ts`; a run that never posted (or wrote no journal) gets a new message.
    """
    try:
        ctx = context(str(flow_run.id))
        what = "CANCELLED" if state.is_cancelling() or state.is_cancelled() else "CRASHED"
        if ctx is not None:
            ctx.thread.reply(f"Failover {what}", section_blocks(f"Failover {what}", [crash_line(ctx.journal, what)]))
            post_progress(ctx, what, crash_line(ctx.journal, what))
            if ctx.journal is not None:  # the server-side backstop (failover-crash-alert) then stays quiet
                ctx.journal.facts[CRASH_ALERTED] = what
                ctx.save()
            return
        request = (flow_run.parameters or {}).get("request") or {}
        journal = saved_journal(request, str(flow_run.id))
        notifier, _ = load_notifier(request.get("slack_block"))
        thread = SlackThread(notifier)
        line = crash_line(journal, what)
        if journal is not None and journal.slack_parent_ts:
            thread.outcome.parent_ts = journal.slack_parent_ts
            thread.reply(f"Failover {what}", section_blocks(f"Failover {what}", [line]))
        else:
            thread.post(f"Failover of {request.get('cluster_block')} {what}: {line}")
        if journal is not None:
            journal.facts[CRASH_ALERTED] = what
            JournalStore(FailoverRequest.model_validate(request).journal_dir).save(journal)
    except Exception:  # noqa: BLE001
        log.exception("failover crash hook failed")


def crash_line(journal: Journal | None, what: str) -> str:
    last = journal.steps[-1] if journal and journal.steps else None
    if last is None:
        return f"run {what} before any step of phase 2; rerun the failover"
    return (f"run {what} after step `{last.step}` ({last.status}); the journal is kept: rerun the failover to "
            "inspect every node and continue")


def saved_journal(request: dict, run_id: str) -> Journal | None:
    """This run's journal as last saved (None when it wrote none or another run owns it now)."""
    req = FailoverRequest.model_validate(request)
    journal = JournalStore(req.journal_dir).load(PostgresCluster.load(req.cluster_block).cluster_name)
    return journal if journal is not None and journal.run_id == run_id else None
