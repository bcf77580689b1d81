"""High-load response decisions (runbook 4.1 / 5.2): pure functions over a Survey, no cursor.

Who may be touched (exclusions), which long statements and idle transactions to end,
which lock chains to resolve and how, within a blast-radius limit.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from tasks.core.findings import human_seconds
from tasks.core.redact import redact_sql
from tasks.core.sessions import SessionRow, Survey

Action = Literal["cancel", "terminate", "cancel_then_terminate"]
Step = Literal["long-queries", "idle-in-transaction", "lock-chains", "stale-connections"]
IDLE_IN_TX = ("idle in transaction", "idle in transaction (aborted)")
# Lock requests of DDL / maintenance that queue every later reader and writer behind them.
DDL_LOCK_MODES = ("AccessExclusiveLock", "ExclusiveLock", "ShareRowExclusiveLock", "ShareLock")
_DDL_WORDS = re.compile(r"^\s*(alter|drop|truncate|create|reindex|cluster|vacuum\s+full|lock|refresh)\b", re.I)


class HighLoadParams(BaseModel):
    """What the high-load response may do (rendered as the run form in the Prefect UI)."""

    dry_run: bool = Field(
        default=True, description="Only return the plan: which sessions would be cancelled or terminated, and why.")
    long_query_seconds: float = Field(
        default=1800, ge=1, le=604_800, description="Cancel, then terminate, active statements running longer.")
    idle_in_transaction_seconds: float = Field(
        default=600, ge=1, le=604_800,
        description="Terminate sessions idle in a transaction longer (cancel does nothing to them).")
    lock_wait_seconds: float = Field(
        default=30, ge=0, le=86_400, description="Resolve a lock chain once a session in it waited this long.")
    active_root_blocker: Literal["report", "cancel", "cancel_then_terminate"] = Field(
        default="cancel",
        description="What to do to a root blocker that is running a statement (and no queued DDL can be cancelled).")
    cancel_grace_seconds: float = Field(
        default=5, ge=0, le=300, description="After pg_cancel_backend, wait this long before terminating.")
    terminate_timeout_seconds: float = Field(
        default=5, ge=0.1, le=60, description="pg_terminate_backend waits this long for the backend to exit.")
    max_sessions: int = Field(
        default=25, ge=1, le=1000, description="Blast radius: never act on more sessions than this in one run.")
    exclude_superusers: bool = Field(default=True, description="Never touch sessions of superusers.")
    exclude_roles: list[str] = Field(
        default_factory=lambda: ["runbook_monitor"], description="Never touch sessions of these roles.")
    exclude_application_prefixes: list[str] = Field(
        default_factory=lambda: ["pg-runbooks"],
        description="Never touch sessions whose application_name starts with one of these.")
    exclude_databases: list[str] = Field(default_factory=list, description="Never touch sessions in these databases.")
    exclude_client_addrs: list[str] = Field(
        default_factory=list, description="Never touch sessions from these addresses or networks (CIDR).")
    only_roles: list[str] = Field(
        default_factory=list, description="If set, act only on sessions of these roles (e.g. the reporting role).")
    terminate_long_queries: bool = Field(default=True, description="Step 1: long statements and idle transactions.")
    resolve_lock_chains: bool = Field(default=True, description="Step 2: root blockers and queued DDL.")
    scale: bool = Field(default=True, description="Step 3: ask the scaler block for more resources.")

    @field_validator("exclude_client_addrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from exc
        return value


class PlannedAction(BaseModel):
    """One session the response acts on, identified by (pid, backend_start) against pid reuse."""

    step: Step
    action: Action
    pid: int
    backend_start: datetime | None
    query_start: datetime | None
    usename: str | None
    application_name: str | None
    client_addr: str | None
    datname: str | None
    state: str | None
    duration_seconds: float | None
    query: str
    reason: str


class ActionResult(PlannedAction):
    """What happened to one planned session; one audit row."""

    result: Literal["planned", "cancelled", "terminated", "gone", "failed", "skipped"]
    detail: str = ""
    acted_at: datetime | None = None


class Excluded(BaseModel):
    pid: int
    usename: str | None
    application_name: str | None
    reason: str


class ChainMember(BaseModel):
    pid: int
    depth: int
    blocked_by: list[int]
    usename: str | None
    application_name: str | None
    state: str | None
    waiting_mode: str | None
    waiting_locktype: str | None = None
    waiting_relation: str | None
    waiting_seconds: float | None
    held_locks: list[str]

    @property
    def waits_for(self) -> str:
        """'sm_t' for a table lock, 'a tuple of sm_t' for a row lock, 'a transactionid' for a row's transaction."""
        if self.waiting_locktype in (None, "relation"):
            return self.waiting_relation or "?"
        return f"a {self.waiting_locktype}" + (f" of {self.waiting_relation}" if self.waiting_relation else "")
    query: str


class LockChain(BaseModel):
    """A root blocker (blocks others, waits for nobody) and every session queued behind it."""

    root_pid: int
    members: list[ChainMember] = Field(description="The root first (depth 0), then waiters by depth.")
    max_waiting_seconds: float
    resolution: str = ""

    @property
    def waiter_count(self) -> int:
        return len(self.members) - 1


class StepPlan(BaseModel):
    actions: list[PlannedAction] = Field(default_factory=list)
    over_limit: list[PlannedAction] = Field(default_factory=list)
    excluded: list[Excluded] = Field(default_factory=list)


def exclusion_reason(s: SessionRow, p: HighLoadParams) -> str | None:
    """Why this backend must never be touched, or None if it may be."""
    if s.is_self:
        return "the runbook's own backend"
    if s.backend_type != "client backend":
        return f"not a client backend ({s.backend_type})"
    if s.backend_start is None:
        return "its identity is not visible (grant pg_monitor to the runbook role)"
    if p.exclude_superusers and s.is_superuser:
        return "superuser session"
    if s.usename in p.exclude_roles:
        return f"excluded role {s.usename}"
    app = s.application_name or ""
    for prefix in p.exclude_application_prefixes:
        if prefix and app.startswith(prefix):
            return f"excluded application {app}"
    if s.datname in p.exclude_databases:
        return f"excluded database {s.datname}"
    if s.client_addr and p.exclude_client_addrs:
        addr = ipaddress.ip_address(s.client_addr.split("/")[0])
        for net in p.exclude_client_addrs:
            if addr in ipaddress.ip_network(net, strict=False):
                return f"excluded client address {s.client_addr}"
    if p.only_roles and s.usename not in p.only_roles:
        return f"role {s.usename} is not in only_roles"
    return None


def _action(s: SessionRow, step: Step, action: Action, seconds: float | None, reason: str) -> PlannedAction:
    return PlannedAction(
        step=step, action=action, pid=s.pid, backend_start=s.backend_start, query_start=s.query_start,
        usename=s.usename, application_name=s.application_name, client_addr=s.client_addr, datname=s.datname,
        state=s.state, duration_seconds=seconds, query=redact_sql(s.query, 200), reason=reason)


def _limit(plan: StepPlan, budget: int) -> StepPlan:
    plan.over_limit = plan.actions[max(budget, 0):]
    plan.actions = plan.actions[: max(budget, 0)]
    return plan


def plan_long_queries(survey: Survey, p: HighLoadParams, budget: int) -> StepPlan:
    """Step 1: statements active longer than the threshold (cancel, then terminate), and sessions
    idle in a transaction longer than theirs (terminate). Oldest first, at most `budget`."""
    plan = StepPlan()
    candidates: list[tuple[float, PlannedAction]] = []
    for s in survey.sessions:
        if s.state == "active" and (s.query_seconds or 0) >= p.long_query_seconds:
            item = _action(s, "long-queries", "cancel_then_terminate", s.query_seconds,
                           f"statement active for {human_seconds(s.query_seconds)} "
                           f"(limit {human_seconds(p.long_query_seconds)})")
        elif s.state in IDLE_IN_TX and (s.state_seconds or 0) >= p.idle_in_transaction_seconds:
            # pg_cancel_backend does nothing to an idle transaction: only terminating frees its locks.
            item = _action(s, "idle-in-transaction", "terminate", s.state_seconds,
                           f"{s.state} for {human_seconds(s.state_seconds)} "
                           f"(limit {human_seconds(p.idle_in_transaction_seconds)})")
        else:
            continue
        why = exclusion_reason(s, p)
        if why:
            plan.excluded.append(Excluded(pid=s.pid, usename=s.usename, application_name=s.application_name,
                                          reason=f"{why}; would have been: {item.reason}"))
            continue
        candidates.append((item.duration_seconds or 0, item))
    plan.actions = [a for _, a in sorted(candidates, key=lambda c: -c[0])]
    return _limit(plan, budget)


def find_lock_chains(survey: Survey) -> list[LockChain]:
    """Root blockers (block someone, wait for nobody) and everyone queued behind each, by depth."""
    by_pid = survey.by_pid()
    waiters_of: dict[int, list[int]] = {}
    for s in survey.sessions:
        for blocker in s.blocked_by:
            waiters_of.setdefault(blocker, []).append(s.pid)
    roots = [pid for pid in waiters_of if pid in by_pid and not by_pid[pid].blocked_by]
    chains = []
    for root in sorted(roots):
        depth = {root: 0}
        queue = [root]
        while queue:
            pid = queue.pop(0)
            for waiter in sorted(waiters_of.get(pid, [])):
                if waiter not in depth:
                    depth[waiter] = depth[pid] + 1
                    queue.append(waiter)
        members = []
        for pid, d in sorted(depth.items(), key=lambda kv: (kv[1], kv[0])):
            s = by_pid[pid]
            members.append(ChainMember(
                pid=pid, depth=d, blocked_by=s.blocked_by, usename=s.usename,
                application_name=s.application_name, state=s.state, waiting_mode=s.waiting_mode,
                waiting_locktype=s.waiting_locktype, waiting_relation=s.waiting_relation,
                waiting_seconds=s.waiting_seconds if s.blocked_by else None,
                held_locks=s.held_relation_locks, query=redact_sql(s.query, 120)))
        waits = [m.waiting_seconds or 0 for m in members if m.depth > 0]
        chains.append(LockChain(root_pid=root, members=members, max_waiting_seconds=max(waits, default=0)))
    return chains


def is_queued_ddl(s: SessionRow) -> bool:
    """A waiting DDL/maintenance statement: its lock request queues every later session behind it."""
    # Row-lock waits are 'transactionid' / 'tuple' locks in Share/Exclusive modes too: only relation locks count.
    relation_ddl = s.waiting_locktype == "relation" and s.waiting_mode in DDL_LOCK_MODES
    return bool(s.blocked_by) and (relation_ddl or bool(_DDL_WORDS.match(s.query or "")))


def plan_lock_chains(chains: list[LockChain], survey: Survey, p: HighLoadParams, budget: int,
                     already: set[int]) -> StepPlan:
    """Step 2, per chain that waited long enough:
    an idle-in-transaction root is terminated (cancel would do nothing);
    else queued DDL that others wait behind is cancelled (the long statement ahead keeps running);
    else an active root gets `active_root_blocker`. Sets each chain's `resolution` sentence."""
    by_pid = survey.by_pid()
    plan = StepPlan()
    blocking = {b for s in survey.sessions for b in s.blocked_by}
    for chain in chains:
        root = by_pid[chain.root_pid]
        if chain.max_waiting_seconds < p.lock_wait_seconds:
            chain.resolution = (f"left alone: the longest wait is {human_seconds(chain.max_waiting_seconds)}, "
                                f"under {human_seconds(p.lock_wait_seconds)}")
            continue
        waiting = f"{chain.waiter_count} session(s) waiting up to {human_seconds(chain.max_waiting_seconds)}"
        targets: list[tuple[SessionRow, Action, str]] = []
        if root.state in IDLE_IN_TX:
            targets.append((root, "terminate", f"root blocker {root.state}; {waiting}"))
        else:
            ddl = [by_pid[m.pid] for m in chain.members
                   if m.depth > 0 and m.pid in blocking and is_queued_ddl(by_pid[m.pid])]
            for s in ddl:
                targets.append((s, "cancel", f"queued {s.waiting_mode or 'DDL'} request blocks the sessions behind "
                                             f"it while pid {root.pid} runs; {waiting}"))
            if not ddl and p.active_root_blocker != "report":
                targets.append((root, p.active_root_blocker, f"root blocker ({root.state}); {waiting}"))
        if not targets:
            chain.resolution = f"reported only (active_root_blocker=report); {waiting}"
            continue
        done = []
        for s, action, reason in targets:
            if s.pid in already:
                done.append(f"pid {s.pid} already handled by step 1")
                continue
            why = exclusion_reason(s, p)
            if why:
                plan.excluded.append(Excluded(pid=s.pid, usename=s.usename, application_name=s.application_name,
                                              reason=f"{why}; would have been: {action} ({reason})"))
                done.append(f"pid {s.pid} is excluded ({why}): reported only")
                continue
            seconds = (s.waiting_seconds if s.blocked_by else s.query_seconds if s.state == "active"
                       else s.state_seconds)
            item = _action(s, "lock-chains", action, seconds, reason)
            already.add(s.pid)
            if len(plan.actions) >= budget:
                plan.over_limit.append(item)
                done.append(f"pid {s.pid} left alone: blast-radius limit reached")
                continue
            plan.actions.append(item)
            done.append(f"{action.replace('_', ' ')} pid {s.pid} ({reason.split(';')[0]})")
        chain.resolution = "; ".join(done)
    return plan


def over_limit_results(plan: StepPlan, limit: int) -> list[ActionResult]:
    """Sessions not acted on because the blast-radius limit was reached: audit rows, result 'skipped'."""
    return [ActionResult(**a.model_dump(), result="skipped",
                         detail=f"blast-radius limit of {limit} session(s) per run reached")
            for a in plan.over_limit]
