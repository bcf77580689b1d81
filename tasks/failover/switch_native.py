"""The native switch backend: pg_ctl fences the old primary, the LSN gate proves zero loss, pg_promote.

Switchover: CHECKPOINT while it serves, fast stop, read the shutdown checkpoint, wait until the candidate
replayed past it, promote. Failover: immediate stop (or an explicitly accepted unconfirmed fence), wait
until the candidate replayed what it received, promote; the crashed primary's WAL end is read afterwards
to report the LSN gap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger

from tasks.failover import hooks
from tasks.failover.followers import follow_new_primary
from tasks.failover.model import FailoverPlan, FailoverRefused, NodeState
from tasks.failover.patroni_guard import evidence, refusal
from tasks.failover.plan import followers
from tasks.failover.run import run_step
from tasks.failover.run import skip_step as skip
from tasks.failover.steps import (
    checkpoint,
    fence_node,
    lsn_gate,
    promote,
    read_node_state,
    read_shutdown_checkpoint,
    read_wal_end,
    replay_received,
)

if TYPE_CHECKING:
    from tasks.failover.run import RunContext


class NativeSwitch:
    """pg_ctl through the NodeControl block (local or shell templates)."""

    name = "native pg_ctl"

    def preflight(self, ctx: RunContext, plan: FailoverPlan, states: dict[str, NodeState]) -> FailoverPlan:
        """Refuse when Patroni manages any reachable node: a native fence or promotion would fight it."""
        ctx.backend_view = {"backend": self.name}
        for node, state in states.items():
            if state.reachable and (why := evidence(ctx.node_control, ctx.cluster.target(node))):
                ctx.backend_view["patroni"] = why
                raise FailoverRefused([refusal("fence or promote", f"{plan.old_primary} or {plan.candidate}", why)])
        return plan

    def before_hold(self, ctx: RunContext, plan: FailoverPlan, promoted: bool) -> None:
        if plan.mode != "switchover" or promoted:
            return
        old = ctx.cluster.target(plan.old_primary)
        old_state = read_node_state.fn(old)
        if old_state.reachable and old_state.in_recovery is False:
            run_step(ctx, 2, "checkpoint", old.node, checkpoint, old)
        else:
            skip(ctx, 2, "checkpoint", old.node, f"{old.node} serves no writes now ({old_state.error or 'standby'})")

    def switch(self, ctx: RunContext, plan: FailoverPlan, candidate: NodeState) -> dict:
        req, c, ctl = ctx.request, ctx.cluster, ctx.node_control
        old, cand = c.target(plan.old_primary), c.target(plan.candidate)
        old_host = c.node(plan.old_primary).host
        stop_mode = "fast" if plan.mode == "switchover" else "immediate"
        run_step(ctx, 2, "fence", old.node, fence_node, ctl, old.node, old_host, stop_mode, req.stop_timeout_seconds,
                 req.accept_unconfirmed_fence, ctx.endpoint.kind)
        shutdown = run_step(ctx, 2, "read-shutdown-checkpoint", old.node, read_shutdown_checkpoint, ctl, old.node,
                            old_host, required=plan.mode == "switchover")
        if plan.mode == "switchover":
            if shutdown["state"] != "shut down":
                raise hooks.unclean_shutdown(old.node, shutdown["state"])
            ctx.journal.facts["old_wal_end"] = shutdown["checkpoint"]
        if candidate.reachable and candidate.in_recovery is False:
            skip(ctx, 2, "promote", cand.node, f"{cand.node} is already writable (timeline {candidate.timeline}): "
                 "resuming after the promotion, not promoting twice")
            return shutdown
        if plan.mode == "switchover":
            reached = run_step(ctx, 2, "lsn-gate", cand.node, lsn_gate, cand, shutdown["checkpoint"],
                               req.lsn_gate_timeout_seconds, ctx.held.get("candidate"))
        else:
            reached = run_step(ctx, 2, "lsn-gate", cand.node, replay_received, cand, req.lsn_gate_timeout_seconds)
        ctx.journal.facts["promoted_at"] = reached
        run_step(ctx, 2, "promote", cand.node, promote, cand, req.promote_timeout_seconds, ctx.held.get("candidate"))
        return shutdown

    def after_verify(self, ctx: RunContext, plan: FailoverPlan, shutdown: dict) -> None:
        if plan.mode == "failover" and shutdown["checkpoint"]:  # after the promotion: availability first
            ctx.journal.facts["old_wal_end"] = read_wal_end(ctx.node_control, plan.old_primary,
                                                             ctx.cluster.node(plan.old_primary).host,
                                                             shutdown["checkpoint"], shutdown["timeline"])

    def settle(self, ctx: RunContext, plan: FailoverPlan) -> None:
        for node in followers(ctx.cluster, plan.old_primary, plan.candidate):
            run_step(ctx, 3, "follow-new-primary", node, follow, ctx, node, plan.candidate)


def follow(ctx: RunContext, node: str, primary: str) -> str:
    """One other standby follows the new primary; the journal keeps its outcome (a standby that cannot follow
    is a warning with its action, not a failed failover)."""
    result = follow_new_primary(ctx.cluster.target(node), ctx.cluster.target(primary),
                                ctx.request.follow_timeout_seconds, ctx.journal.facts.get("switch_lsn"),
                                ctx.cluster.target(ctx.journal.plan.old_primary))
    ctx.journal.facts.setdefault("followers", {})[node] = result.status
    if result.status == "failed":
        get_run_logger().warning(result.detail)
    return f"{result.status}: {result.detail}"
