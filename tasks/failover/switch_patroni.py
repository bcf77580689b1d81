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

import contextlib
import threading
import time
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.failover_adapters import PatroniApi
from blocks.postgres_cluster import ConnectionTarget
from tasks.core import patroni_api as api
from tasks.core.db import connect
from tasks.core.errors import RunbookDBError
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
from tasks.failover.switch_native import NativeSwitch

if TYPE_CHECKING:
    from tasks.failover.run import RunContext

STEP = dict(retries=0, cache_policy=NO_CACHE)

# Is this server still in recovery (a standby) rather than a writable primary?
IN_RECOVERY_SQL = "SELECT pg_catalog.pg_is_in_recovery()"
NATIVE_ONLY = {"fence", "lsn-gate", "promote", "follow-new-primary"}
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


def holds_lock(patroni: PatroniApi, node: str) -> bool:
    """Does GET /cluster show `node` holding the leader lock (whatever its state says yet)?"""
    try:
        _, answer = api.first_answer(patroni, "/cluster", prefer=[node])
    except api.PatroniUnreachable:
        return False
    view = answer.body if isinstance(answer.body, dict) else {}
    return api.leader_of(view) == node


class _Writable:
    """Is the candidate out of recovery? One session kept open and polled (a new one per poll costs a login)."""

    def __init__(self, target: ConnectionTarget):
        self.target, self.session, self.db = target, None, None

    def __call__(self) -> bool:
        try:
            if self.db is None:
                self.session = connect(self.target, purpose="failover", statement_timeout_ms=5_000)
                self.db = self.session.__enter__()
            return self.db.scalar(IN_RECOVERY_SQL) is False
        except RunbookDBError:
            self.close()
            return False

    def close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                self.session.__exit__(None, None, None)
        self.session = self.db = None


class _Background(threading.Thread):
    """One call run beside the poll (a daemon thread: a POST still waiting never holds the process at exit)."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True, name="patroni-post")
        self.fn, self.args, self.value, self.error = fn, args, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - handed to the poller by result()
            self.error = exc

    def done(self) -> bool:
        return not self.is_alive()

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


def post_switch(patroni: PatroniApi, order: list[str], path: str, body: dict, deadline: float
                ) -> tuple[str, api.Answer]:
    """POST to the first Patroni in `order` that takes the connection. A refused connection means nothing reached
    that Patroni, so the next one is asked; any other failure leaves the outcome unknown (PatroniUnreachable)."""
    refused = []
    for node in order:
        try:
            return node, api.call(patroni, node, "POST", path, body, timeout=max(1.0, deadline - time.monotonic()))
        except api.PatroniUnreachable as exc:
            if not exc.refused:
                raise
            refused.append(str(exc))
    raise api.PatroniUnreachable("; ".join(refused), refused=True)


@task(name="patroni-switch", **STEP)
def patroni_switch(patroni: PatroniApi, mode: str, old: str, cand: ConnectionTarget, timeout_s: float) -> dict:
    """Ask Patroni to make the candidate the leader and wait until it holds the leader lock and writes (SQL: out of
    recovery); {'call', 'status', 'answer', 'detail'}.

    Patroni answers a switchover only at its next whole-second poll after the switch, so the answer is awaited
    beside the candidate: 412 or another refusal as soon as it comes; otherwise done as soon as the candidate
    leads and writes, with or without the answer (a 503, or no answer, only means Patroni stopped waiting)."""
    deadline, candidate = time.monotonic() + timeout_s, cand.node
    # no GET /cluster or SQL check first: phase 2 read the candidate (out of recovery = already switched, skipped)
    # just before the hold, and every ms here is a ms the held clients wait; the POST goes out at once
    if mode == "switchover":  # phase 1 checked that the leader is alive and is the old primary
        # asked of the leader's Patroni: it wakes its HA loop at once (asked of another, the leader acts only at
        # its next loop, up to loop_wait later, while the clients wait); the candidate's when it refuses
        path, body, order = "/switchover", {"leader": old, "candidate": candidate}, [old, candidate]
    else:  # the leader is gone (Patroni may still list it 'running' until its ttl): the candidate's Patroni
        path, body, order = "/failover", {"candidate": candidate}, [candidate]
    call = f"POST {path} {body}"
    posted = _Background(post_switch, patroni, order, path, body, deadline)
    writable = _Writable(cand)
    try:
        status, text = _await_switch(patroni, posted, writable, call, candidate, deadline, timeout_s)
    finally:
        writable.close()
    how = {200: "done", 503: "switch status unknown, then GET /cluster and SQL showed it"}.get(
        status, "Patroni had not answered yet; GET /cluster and SQL showed it")
    return {"call": call, "status": status, "answer": text,
            "detail": f"{call} → {status or 'no answer yet'}{f' {text!r}' if text else ''} ({how}): {candidate} "
                      "leads and writes"}


def _await_switch(patroni: PatroniApi, posted, writable: _Writable, call: str, candidate: str, deadline: float,
                  timeout_s: float) -> tuple[int | None, str | None]:
    """Poll (every 5 ms: the clients wait for it) until the candidate writes and holds the leader lock; Patroni's
    answer as soon as it comes (a refusal raises, naming the leader GET /cluster shows then). (status, text) of the
    answer, (None, None) when it had not come yet."""
    status = text = None

    def leader() -> str:
        return api.leader_of(_cluster(patroni)) or "no node"

    while True:
        if status is None and posted.done():
            try:
                node, answer = posted.result()
            except api.PatroniUnreachable as exc:
                if exc.refused:
                    raise FailoverStepFailed(f"no Patroni REST API took {call} ({exc}): {NOTHING_CHANGED}, "
                                             f"{leader()} still leads; check Patroni and rerun") from None
                status, text = 0, f"no answer ({exc}): outcome unknown"
            else:
                status, text = answer.status, answer.text
                if status == 412:
                    raise PatroniRefusedSwitch(f"Patroni refused {call} (412: {text}): {NOTHING_CHANGED}, "
                                               f"{leader()} still leads; fix what Patroni names and rerun")
                if status not in (200, 503):
                    raise FailoverStepFailed(f"Patroni ({node}) answered {status} to {call}: {text}")
        if writable() and holds_lock(patroni, candidate):
            return status or None, text
        if time.monotonic() > deadline:
            now = api.leader_of(_cluster(patroni))
            raise FailoverStepFailed(f"Patroni answered {status if status is not None else 'nothing'} to {call} "
                                     f"({text}), and {candidate} did not lead and accept writes within "
                                     f"{timeout_s:.0f} s (Patroni's leader now: {now or 'none'}); check patronictl "
                                     "list before rerunning")
        time.sleep(0.005)


def _cluster(patroni: PatroniApi) -> dict:
    try:
        _, answer = api.first_answer(patroni, "/cluster")
    except api.PatroniUnreachable:
        return {}
    return answer.body if isinstance(answer.body, dict) else {}


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
        """Switchover: CHECKPOINT the leader while it still serves, as the native path does. Patroni CHECKPOINTs
        again before it stops it, but that one (inside the clients' hold) then has little left to write. Then warm
        the candidate's REST API (read only)."""
        if any(s.step == "checkpoint" for s in plan.steps):
            NativeSwitch().before_hold(ctx, plan, promoted)
        if not promoted:  # the leader's Patroni asks the candidate's GET /patroni twice inside the hold; the first
            # such request after the candidate's start opens its REST API's database session: open it now
            with contextlib.suppress(api.PatroniUnreachable):
                api.call(self.patroni, plan.candidate, "GET", "/patroni", timeout=1.0)  # a hung one: 1 s at most

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
