"""The Neon switch backend: Neon has no standby to promote, so its "failover" restarts the compute endpoint
(POST /projects/{id}/endpoints/{endpoint_id}/restart: a new compute on the same storage); we keep the plan, the
checks, the approval, the journal, Slack and the verification.

The cluster block has one node, the compute (its host is the endpoint's hostname). Phase 1 plans on that node
alone (`decide`: the candidate is the compute itself, which the shared planner refuses as "already a primary") and
reads the endpoint from Neon's API beside our SQL checks; the plan's step and a warning say it is a restart and the
exact request (a dry run stops there). Phase 2: read the compute's start time and WAL position if it answers, POST
the restart, wait for every returned operation to finish, then fresh SQL connections until one reaches a compute
started after the restart, out of recovery; the flow's verify-promotion then commits a write on a fresh connection
(the held one died with the old compute). Neon keeps committed WAL in its safekeepers, not on the compute: the
restarted compute's WAL position must not be behind the one read before, and the report says so. Phase 3: no
follower to repoint.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.neon import NeonEndpoint
from blocks.postgres_cluster import ConnectionTarget
from tasks.core import neon
from tasks.core.db import fetch_one_fresh
from tasks.core.errors import ProviderError
from tasks.failover.model import FailoverPlan, FailoverRefused, FailoverStepFailed, NodeState, PlannedStep
from tasks.failover.plan import lsn_int
from tasks.failover.plan import plan_steps as shared_steps
from tasks.failover.run import run_step
from tasks.failover.run import skip_step as skip

if TYPE_CHECKING:
    from tasks.failover.run import RunContext

STEP = dict(retries=0, cache_policy=NO_CACHE)
KEPT = {"pause-endpoint", "verify-promotion", "repoint-endpoint", "lift-login-retry", "resume-endpoint",
        "probe-application", "restore-login-retry", "notify"}
# When did this compute's postmaster start, is it in recovery, and where is its WAL?
COMPUTE_SQL = """
SELECT pg_catalog.pg_postmaster_start_time()::text AS started,
       pg_catalog.pg_is_in_recovery()              AS in_recovery,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery()
            THEN pg_catalog.pg_current_wal_lsn()::text END AS wal_lsn
"""


class _Compute(BaseModel):
    started: str
    in_recovery: bool
    wal_lsn: str | None


def compute(target: ConnectionTarget) -> _Compute | None:
    """The compute's start time, role and WAL position on a fresh connection; None when it does not answer."""
    return fetch_one_fresh(target, COMPUTE_SQL, _Compute, purpose="failover")


def plan_steps(plan: FailoverPlan, block: NeonEndpoint, request: str) -> list[PlannedStep]:
    """The shared steps that still apply, with the restart in place of fence/gate/promote; no follower."""
    steps: list[PlannedStep] = []
    for s in plan.steps:
        if s.step not in KEPT:
            continue
        steps.append(s)
        if s.step == "pause-endpoint":
            steps.append(PlannedStep(phase=2, step="neon-restart", node=plan.candidate, why=(
                f"restart the compute {block.endpoint_id} (Neon has no standby to promote): {request}; wait for "
                "every returned operation to finish, then fresh connections until one reaches the new compute out "
                "of recovery")))
    steps.insert(len(steps) - 1, PlannedStep(phase=3, step="update-cluster-block", node="cluster", why=(
        f"primary_node stays {plan.candidate} (the same compute endpoint; nothing is fenced)")))
    return steps


@task(name="neon-restart", **STEP)
def neon_restart(block: NeonEndpoint, target: ConnectionTarget) -> dict:
    """POST .../restart, wait for its operations, then until a fresh connection reaches a compute started after
    the restart, out of recovery. {'request', 'operations', 'lsn_before', 'lsn_after', 'detail'}."""
    before = compute(target)
    started = time.monotonic()
    try:
        done = neon.restart(neon.NeonApi(block), dry_run=False)
    except ProviderError as exc:
        raise FailoverStepFailed(str(exc)) from None
    operations_s = time.monotonic() - started
    deadline = started + block.operation_timeout_seconds
    while True:
        after = compute(target)
        if after is not None and not after.in_recovery and (before is None or after.started != before.started):
            break
        if time.monotonic() > deadline:
            seen = "no answer" if after is None else (
                "the same compute (not restarted)" if before and after.started == before.started else "in recovery")
            raise FailoverStepFailed(
                f"Neon finished the restart of {block.endpoint_id}, but a fresh connection to {target.label} found "
                f"{seen} {block.operation_timeout_seconds:g} s later: check the endpoint in the Neon console, "
                "then rerun")
        time.sleep(0.1)
    waited = time.monotonic() - started
    return {**done, "lsn_before": before.wal_lsn if before else None, "lsn_after": after.wal_lsn,
            "compute_started": after.started, "seconds": round(waited, 3),
            "detail": f"{done['request']}: {len(done['operations'])} operation(s) finished after "
                      f"{operations_s:.1f} s; a fresh connection reached the new compute (started {after.started}) "
                      f"out of recovery after {waited:.1f} s"}


def restart_loss(lsn_before: str | None, lsn_after: str | None) -> dict:
    """What the restart could have lost (the report's DataLoss fields): nothing the safekeepers acknowledged,
    checked on the compute's WAL position before and after the restart."""
    base = {"old_wal_end": lsn_before, "promoted_at_lsn": lsn_after}
    if lsn_before is None:
        return {**base, "gap_bytes": None, "sentence": (
            "no WAL on the compute to lose: Neon keeps committed WAL in its safekeepers, not on the compute (the "
            f"compute did not answer before the restart; it starts at {lsn_after})")}
    behind = (lsn_int(lsn_before) or 0) - (lsn_int(lsn_after) or 0)
    if behind > 0:
        return {**base, "gap_bytes": behind, "sentence": (
            f"WARNING: the restarted compute's WAL position {lsn_after} is {behind} bytes behind {lsn_before}, read "
            "before the restart: commits in between may be lost; check the branch in the Neon console")}
    return {**base, "gap_bytes": 0, "sentence": (
        f"0 bytes lost: Neon keeps committed WAL in its safekeepers, not on the compute; the restarted compute "
        f"is at {lsn_after}, not behind {lsn_before} read before the restart")}


class NeonSwitch:
    """Neon restarts its compute; there is no standby and nothing we stop, start or promote ourselves."""

    name = "Neon"

    def __init__(self, block: NeonEndpoint):
        self.block = block

    def decide(self, ctx: RunContext, states: dict[str, NodeState], endpoint_error: str | None) -> FailoverPlan:
        """The plan on the one compute (the shared planner wants a standby), or FailoverRefused with every reason."""
        request, cluster = ctx.request, ctx.cluster
        node = cluster.primary_node
        state = states.get(node)
        reasons = [f"the endpoint is unusable: {endpoint_error}"] if endpoint_error else []
        if request.candidate and request.candidate != node:
            reasons.append(f"candidate {request.candidate!r} is not the compute: Neon has no standby to promote, a "
                           f"failover restarts the compute {node}; leave candidate empty or name {node}")
        if state is not None and state.reachable and state.in_recovery:
            reasons.append(f"{node} is in recovery (a read replica?): the NeonEndpoint block must name the branch's "
                           "read-write compute endpoint")
        if request.mode == "switchover" and (state is None or not state.reachable):
            reasons.append(f"the compute {node} is unreachable ({state.error if state else 'unknown'}): use mode "
                           "'failover' to restart it anyway")
        if reasons:
            raise FailoverRefused(reasons)
        return FailoverPlan(cluster=cluster.cluster_name, mode=request.mode, old_primary=node, candidate=node,
                            lag_bytes=0, original_timeline=None, steps=shared_steps(request.mode, node, node))

    def preflight(self, ctx: RunContext, plan: FailoverPlan, states: dict[str, NodeState]) -> FailoverPlan:
        api = neon.NeonApi(self.block)
        try:
            endpoint = api.endpoint()
        except ProviderError as exc:
            raise FailoverRefused([f"cannot read {self.block.label}: {exc}"]) from None
        ctx.backend_view = {"backend": self.name, "endpoint": endpoint}
        if endpoint.get("type") not in (None, "read_write"):
            raise FailoverRefused([f"{self.block.label} is a {endpoint['type']} endpoint: name the branch's "
                                   "read-write compute in the NeonEndpoint block"])
        request = neon.restart_request(api).render()
        note = (f"Neon has no standby to promote: this {plan.mode} restarts the compute {self.block.endpoint_id} "
                f"({request}; a new compute on the same storage): every client connection is dropped and must "
                "reconnect" + ("; the compute is idle (suspended): the restart starts it"
                               if neon.is_idle(endpoint) else ""))
        warnings = plan.warnings if note in plan.warnings else [*plan.warnings, note]
        get_run_logger().info("Failover plan on Neon: restart the compute %s: %s", self.block.endpoint_id, request)
        return plan.model_copy(update={"steps": plan_steps(plan, self.block, request) if not plan.resumed
                                       else list(plan.steps), "warnings": warnings, "original_timeline": None})

    def before_hold(self, ctx: RunContext, plan: FailoverPlan, promoted: bool) -> None:
        """Nothing: the compute keeps no WAL of its own to carry over."""

    def switch(self, ctx: RunContext, plan: FailoverPlan, candidate: NodeState) -> dict:
        if any(s.step == "neon-restart" and s.status == "done" for s in ctx.journal.steps):
            skip(ctx, 2, "neon-restart", plan.candidate, "the compute was restarted by this run already: resuming "
                 "after the restart, not restarting twice")
        else:
            done = run_step(ctx, 2, "neon-restart", plan.candidate, neon_restart, self.block,
                            ctx.cluster.target(plan.candidate))
            ctx.journal.facts["neon_restart"] = done
        facts = ctx.journal.facts
        restart = facts.get("neon_restart", {})
        facts["data_loss"] = restart_loss(restart.get("lsn_before"), restart.get("lsn_after"))
        facts["old_primary_note"] = (f"the compute {self.block.endpoint_id} was restarted in place (Neon has no "
                                     "standby to promote)")
        return {"state": None, "checkpoint": None, "timeline": None}

    def after_verify(self, ctx: RunContext, plan: FailoverPlan, shutdown: dict) -> None:
        """Nothing: there is no old writer left beside the restarted compute."""

    def settle(self, ctx: RunContext, plan: FailoverPlan) -> None:
        """Nothing: no follower to repoint (Neon's read replicas read the same storage)."""
