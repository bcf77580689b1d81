"""The Patroni switch backend: Patroni promotes, we keep the plan, the gate, the journal and the clients held.

Phase 1 reads GET /cluster beside our SQL checks and refuses on maintenance mode (pause), a scheduled
switchover, a candidate lagging beyond the guard, or Patroni and SQL disagreeing about the primary.
Phase 2 (clients held at pgbouncer): POST /switchover {leader, candidate} in switchover mode, POST /failover
{candidate} in failover mode (the leader is gone); 200 = done, 412 = refused and nothing changed, 503 = outcome
unknown: GET /cluster is polled until the candidate leads or the deadline passes. The old primary must stop
accepting writes before the clients go on. Phase 3: the old primary's rejoin is Patroni's job; we wait until
every other member streams from the new leader and report it (or that it did not).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.failover_adapters import PatroniApi
from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import connect
from tasks.core.errors import RunbookDBError
from tasks.failover import patroni_api as api
from tasks.failover.model import (
    FailoverPlan,
    FailoverRefused,
    FailoverRequest,
    FailoverStepFailed,
    NodeState,
    PlannedStep,
)
from tasks.failover.rejoin import unfence
from tasks.failover.run import run_step
from tasks.failover.run import skip_step as skip

if TYPE_CHECKING:
    from tasks.failover.run import RunContext

STEP = dict(retries=0, cache_policy=NO_CACHE)

# Is this server still in recovery (a standby) rather than a writable primary?
IN_RECOVERY_SQL = "SELECT pg_catalog.pg_is_in_recovery()"
NATIVE_ONLY = {"checkpoint", "fence", "lsn-gate", "promote", "follow-new-primary"}
NOTHING_CHANGED = "nothing changed"


class PatroniRefusedSwitch(FailoverStepFailed):
    """Patroni answered 412: it refused the switch and nothing changed."""


def refusals(view: dict, plan: FailoverPlan, states: dict[str, NodeState], request: FailoverRequest) -> list[str]:
    """Why phase 1 refuses to ask Patroni, from its GET /cluster answer and our SQL view (empty: go)."""
    reasons = []
    if view.get("pause"):
        reasons.append("Patroni is in maintenance mode (pause): it would not switch and does not watch the nodes; "
                       "resume it (patronictl resume) first")
    if scheduled := view.get("scheduled_switchover"):
        reasons.append(f"Patroni has a switchover scheduled ({scheduled.get('at', '?')}, from "
                       f"{scheduled.get('from', '?')} to {scheduled.get('to', 'any')}): cancel it (patronictl flush "
                       "<cluster> switchover) or let it run")
    leader = api.leader_of(view)
    if plan.resumed and leader == plan.candidate:  # a rerun after the switch: phases 2 and 3 resume
        return reasons
    writable = sorted(n for n, s in states.items() if s.reachable and s.in_recovery is False)
    if (plan.mode == "switchover" and leader != plan.old_primary) or (writable and writable != [leader]):
        reasons.append(f"Patroni and SQL disagree about the primary: Patroni's leader is {leader or 'none'}, "
                       f"SQL says {', '.join(writable) or 'no node is writable'} (the block records "
                       f"{plan.old_primary}); fix the cluster block or wait for Patroni to settle")
    cand = api.member(view, plan.candidate)
    if cand is None:
        reasons.append(f"candidate {plan.candidate} is not a member of the Patroni cluster "
                       f"({', '.join(m.get('name', '?') for m in view.get('members', []))})")
    elif cand.get("name") != leader:
        lag = cand.get("lag")
        if not isinstance(lag, int):
            reasons.append(f"Patroni cannot tell candidate {plan.candidate}'s lag ({lag!r}, state "
                           f"{cand.get('state')}): it is not streaming")
        elif lag > request.max_lag_bytes and not request.force:
            reasons.append(f"candidate {plan.candidate} lags {lag} bytes in Patroni's view, beyond the guard "
                           f"max_lag_bytes={request.max_lag_bytes} (force to proceed)")
    return reasons


def plan_steps(plan: FailoverPlan, members: list[str]) -> list[PlannedStep]:
    """The native plan's steps with Patroni's switch in place of checkpoint/fence/gate/promote, and a wait for
    Patroni's rejoin of every other member in place of our follow-new-primary."""
    if any(s.step == "patroni-switch" for s in plan.steps):  # a resumed plan has them already
        return list(plan.steps)
    steps: list[PlannedStep] = []
    for s in plan.steps:
        if s.step == "notify":
            steps += [PlannedStep(phase=3, step="await-patroni-rejoin", node=m, why=f"Patroni rejoins it as a replica "
                                  f"of {plan.candidate}; wait until it streams on the new timeline and report it")
                      for m in members if m != plan.candidate]
        if s.step not in NATIVE_ONLY:
            steps.append(s)
        if s.step == "verify-promotion":
            steps.append(PlannedStep(phase=2, step="await-old-demoted", node=plan.old_primary, why=(
                "never two writable primaries: wait until Patroni demoted the old primary (a hung Patroni does "
                "not; then clients stay paused and the run stops)")))
        if s.step == "pause-endpoint":
            steps.append(PlannedStep(phase=2, step="patroni-switch", node=plan.candidate, why=(
                "POST /switchover {leader, candidate} (POST /failover {candidate} when the leader is gone): Patroni "
                "checkpoints, stops the old primary and promotes; 412 = refused, nothing changed; 503 = poll "
                "GET /cluster until the candidate leads")))
    return steps


def leads(view: dict, node: str) -> bool:
    m = api.member(view, node)
    return bool(m and m.get("role") == "leader" and m.get("state") == "running")


def wait_leader(patroni: PatroniApi, candidate: str, deadline: float) -> dict:
    """Poll GET /cluster until the candidate leads (running) or the deadline passes; the last view."""
    view: dict = {}
    while True:
        try:
            _, answer = api.first_answer(patroni, "/cluster", prefer=[candidate])
            view = answer.body if isinstance(answer.body, dict) else {}
        except api.PatroniUnreachable:
            pass
        if leads(view, candidate) or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def wait_writable(target: ConnectionTarget, deadline: float) -> bool:
    """Poll the candidate on SQL until it left recovery: Patroni shows it leading while pg_promote still runs."""
    while True:
        try:
            with connect(target, purpose="failover", statement_timeout_ms=5_000) as db:
                if db.scalar(IN_RECOVERY_SQL) is False:
                    return True
        except RunbookDBError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@task(name="patroni-switch", **STEP)
def patroni_switch(patroni: PatroniApi, mode: str, old: str, cand: ConnectionTarget, timeout_s: float) -> dict:
    """Ask Patroni to make the candidate the leader and wait until it leads and writes (SQL: out of recovery);
    {'call', 'status', 'answer', 'detail'}."""
    deadline, candidate = time.monotonic() + timeout_s, cand.node
    _, answer = api.first_answer(patroni, "/cluster", prefer=[candidate, old])
    view = answer.body if isinstance(answer.body, dict) else {}
    if leads(view, candidate) and wait_writable(cand, deadline):
        return {"call": None, "status": None, "answer": None, "detail": f"{candidate} already leads (Patroni)"}
    leader = api.leader_of(view)
    if mode == "switchover":  # phase 1 checked that the leader is alive and is the old primary
        path, body = "/switchover", {"leader": old, "candidate": candidate}
    else:  # the leader is gone (Patroni's member list may still say 'running' until its ttl): name the candidate
        path, body = "/failover", {"candidate": candidate}
    # asked of the candidate's Patroni: it answers even when the leader's is gone or hung
    answer = api.call(patroni, candidate, "POST", path, body, timeout=max(1.0, deadline - time.monotonic()))
    call = f"POST {path} {body}"
    if answer.status == 412:
        raise PatroniRefusedSwitch(f"Patroni refused {call} (412: {answer.text}): {NOTHING_CHANGED}, "
                                   f"{leader or 'no node'} still leads; fix what Patroni names and rerun")
    if answer.status not in (200, 503):
        raise FailoverStepFailed(f"Patroni answered {answer.status} to {call}: {answer.text}")
    view = wait_leader(patroni, candidate, deadline)
    now = api.leader_of(view)
    if not leads(view, candidate) or not wait_writable(cand, deadline):
        raise FailoverStepFailed(f"Patroni answered {answer.status} to {call} ({answer.text}), and {candidate} did "
                                 f"not lead and accept writes within {timeout_s:.0f} s (Patroni's leader now: "
                                 f"{now or 'none'}); check patronictl list before rerunning")
    how = "done" if answer.status == 200 else "switch status unknown, then GET /cluster showed it"
    return {"call": call, "status": answer.status, "answer": answer.text,
            "detail": f"{call} → {answer.status} ({how}): {candidate} leads"}


@task(name="await-old-demoted", **STEP)
def await_demoted(old: ConnectionTarget, candidate: str, timeout_s: float) -> str:
    """Wait until the old primary no longer accepts writes (in recovery, stopped or unreachable)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with connect(old, purpose="failover", statement_timeout_ms=5_000) as db:
                writable = db.scalar(IN_RECOVERY_SQL) is False
        except RunbookDBError as exc:
            return f"{old.node} accepts no writes (unreachable: {exc.problem})"
        if not writable:
            return f"{old.node} is in recovery (demoted by Patroni)"
        if time.monotonic() > deadline:
            raise FailoverStepFailed(
                f"{old.node} still accepts writes {timeout_s:.0f} s after Patroni made {candidate} the leader (is "
                f"Patroni on {old.node} hung?): clients stay PAUSED at pgbouncer so that no one writes to both; "
                f"stop PostgreSQL on {old.node} by hand, then rerun (it resumes after the switch)")
        time.sleep(0.2)


@task(name="await-patroni-rejoin", **STEP)
def await_rejoin(patroni: PatroniApi, node: str, leader: str, timeout_s: float) -> dict:
    """Wait until Patroni shows `node` streaming from the leader; {'status': 'streaming'|'failed', 'detail'}."""
    deadline, view = time.monotonic() + timeout_s, {}
    while time.monotonic() <= deadline:
        try:
            _, answer = api.first_answer(patroni, "/cluster", prefer=[leader])
            view = answer.body if isinstance(answer.body, dict) else {}
        except api.PatroniUnreachable:
            view = {}
        m = api.member(view, node) or {}
        if m.get("state") == "streaming" and api.leader_of(view) == leader:
            return {"status": "streaming", "detail": f"{node} streams from {leader} (Patroni: role {m.get('role')}, "
                    f"timeline {m.get('timeline')}, lag {m.get('lag')})"}
        time.sleep(0.5)
    m = api.member(view, node) or {}
    return {"status": "failed", "detail": f"{node} did not stream from {leader} within {timeout_s:.0f} s (Patroni: "
            f"state {m.get('state', 'unknown')}, role {m.get('role', 'unknown')}): Patroni rejoins it; check "
            "patronictl list and its log"}


class PatroniSwitch:
    """Patroni switches the primary through its REST API; we never stop, start or promote a node ourselves."""

    name = "Patroni"

    def __init__(self, patroni: PatroniApi):
        self.patroni = patroni

    def preflight(self, ctx: RunContext, plan: FailoverPlan, states: dict[str, NodeState]) -> FailoverPlan:
        try:
            node, answer = api.first_answer(self.patroni, "/cluster", prefer=[plan.old_primary, plan.candidate])
        except api.PatroniUnreachable as exc:
            raise FailoverRefused([f"no Patroni REST API answers: {exc}"]) from None
        view = answer.body if isinstance(answer.body, dict) else {}
        ctx.backend_view = {"backend": self.name, "read_from": node, "cluster": view}
        if reasons := refusals(view, plan, states, ctx.request):
            raise FailoverRefused(reasons)
        members = [m.get("name") for m in view.get("members", []) if m.get("name")]
        return plan.model_copy(update={"steps": plan_steps(plan, members)})

    def before_hold(self, ctx: RunContext, plan: FailoverPlan, promoted: bool) -> None:
        """Nothing: Patroni CHECKPOINTs the old primary itself before it stops it."""

    def switch(self, ctx: RunContext, plan: FailoverPlan, candidate: NodeState) -> dict:
        if candidate.reachable and candidate.in_recovery is False:
            skip(ctx, 2, "patroni-switch", plan.candidate, f"{plan.candidate} is already writable (timeline "
                 f"{candidate.timeline}): resuming after the switch, not switching twice")
        else:
            done = run_step(ctx, 2, "patroni-switch", plan.candidate, patroni_switch, self.patroni, plan.mode,
                            plan.old_primary, ctx.cluster.target(plan.candidate), ctx.request.patroni_timeout_seconds)
            ctx.journal.facts["patroni_switch"] = done
        return {"state": None, "checkpoint": None, "timeline": None}

    def after_verify(self, ctx: RunContext, plan: FailoverPlan, shutdown: dict) -> None:
        """Never two writable primaries: before the clients go anywhere, the old primary must no longer accept
        writes (Patroni demotes it; a hung Patroni on it does not, and we never stop it ourselves)."""
        run_step(ctx, 2, "await-old-demoted", plan.old_primary, await_demoted, ctx.cluster.target(plan.old_primary),
                 plan.candidate, ctx.request.patroni_timeout_seconds)

    def settle(self, ctx: RunContext, plan: FailoverPlan) -> None:
        members = [s.node for s in plan.steps if s.step == "await-patroni-rejoin"]
        for node in members:
            result = run_step(ctx, 3, "await-patroni-rejoin", node, await_rejoin, self.patroni, node, plan.candidate,
                              ctx.request.follow_timeout_seconds)
            ctx.journal.facts.setdefault("followers", {})[node] = result["status"]
            if node == plan.old_primary:
                ctx.journal.facts["old_primary_note"] = (
                    f"{node} rejoined as a Patroni replica" if result["status"] == "streaming" else
                    f"{node} has NOT rejoined yet (Patroni's job: check patronictl list)")
                if result["status"] == "streaming":
                    unfence(ctx.request.cluster_block, node)
