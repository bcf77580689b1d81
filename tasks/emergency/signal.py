"""Cancel and terminate backends, safely: each signal re-checks the session's identity in the same statement.

A plan records (pid, backend_start, query_start, state). The signal is sent by one statement
that finds the pid only if it still has that backend_start (so a reused pid is never hit) and is
still in that statement and state; a session that ended or moved on is counted as gone, not as a failure.
Needs the pg_signal_backend role (or superuser) to signal other roles' sessions:
https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-ADMIN-SIGNAL
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, Session, connect
from tasks.core.errors import PermissionDenied, RunbookDBError, is_transient
from tasks.emergency.high_load_plan import ActionResult, PlannedAction

# Cancel the statement of this pid only if it is still the same session, same statement, same state.
CANCEL_SQL = """
SELECT pg_catalog.pg_cancel_backend(a.pid) AS signalled
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.pid = %(pid)s
   AND a.backend_start = %(backend_start)s
   AND a.query_start IS NOT DISTINCT FROM %(query_start)s
   AND a.state = %(state)s
"""

# Terminate this pid only if it is still the same session, same statement, same state; wait for it to exit.
TERMINATE_SQL = """
SELECT pg_catalog.pg_terminate_backend(a.pid, %(timeout_ms)s) AS signalled
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.pid = %(pid)s
   AND a.backend_start = %(backend_start)s
   AND a.query_start IS NOT DISTINCT FROM %(query_start)s
   AND a.state = %(state)s
"""

# Which of these sessions still run the statement that was cancelled?
STILL_RUNNING_SQL = """
SELECT a.pid,
       a.backend_start,
       a.query_start
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.pid = ANY(%(pids)s)
   AND a.state = 'active'
"""


class MissingSignalGrant(PermissionDenied):
    """The runbook role may not signal other roles' backends."""

    problem = "refused to signal a backend"

    def __init__(self, target: str, role: str, count: int, server_detail: str):
        self.role = role
        self.count = count
        self.server_detail = server_detail
        self.action = f"GRANT pg_signal_backend TO {role} (terminating needs pg_signal_backend, not superuser)"
        super().__init__(target, f"role {role} lacks the pg_signal_backend role; {count} session(s) were not "
                                 f"signalled ({server_detail})", "42501")

    def __reduce__(self):
        return (MissingSignalGrant, (self.target, self.role, self.count, self.server_detail))


class SignalStepFailed(RunbookDBError):
    """Some sessions of a step could not be signalled; `results` has what happened to each."""

    problem = "could not signal every planned session"
    action = "see the audit rows of the sessions whose result is 'failed'"

    def __init__(self, target: str, detail: str, results: list[ActionResult], cause: RunbookDBError | None = None):
        self.results = results
        self.cause = cause
        if cause is not None:
            self.action = cause.action
        super().__init__(target, detail, getattr(cause, "sqlstate", None))

    def __reduce__(self):
        return (SignalStepFailed, (self.target, self.detail, self.results, self.cause))


def _guard(a: PlannedAction, **extra) -> dict:
    return {"pid": a.pid, "backend_start": a.backend_start, "query_start": a.query_start, "state": a.state, **extra}


def _result(a: PlannedAction, result: str, detail: str = "") -> ActionResult:
    """One audit row, also logged at once: the run's log keeps what was done even if the worker dies next."""
    row = ActionResult(**a.model_dump(), result=result, detail=detail, acted_at=datetime.now(UTC))
    _audit_logger().log(logging.WARNING if result == "failed" else logging.INFO,
                        "%s: %s pid %s (user %s, application %s, database %s, backend_start %s): %s%s",
                        a.step, result, a.pid, a.usename, a.application_name, a.datname,
                        a.backend_start.isoformat() if a.backend_start else "?", a.reason,
                        f"; {detail}" if detail else "")
    return row


def _audit_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("pg_runbooks.signal")


class _Signalled(BaseModel):
    signalled: bool | None


class _Running(BaseModel):
    pid: int
    backend_start: datetime | None
    query_start: datetime | None


def _signal(db: Session, query: str, params: dict) -> tuple[bool | None, PermissionDenied | None]:
    """True/False as the server answered, None if the session is gone; or the permission error."""
    try:
        row = db.fetch_one(query, params, _Signalled)
    except PermissionDenied as exc:
        return None, exc
    if row is None:
        return None, None
    return bool(row.signalled), None


def _wait_until_stopped(db: Session, pending: dict[int, PlannedAction], grace_seconds: float) -> set[int]:
    """Poll until none of `pending` still runs its statement or the grace period ends; the pids still running."""
    deadline = time.monotonic() + grace_seconds
    while True:
        rows = db.fetch_all(STILL_RUNNING_SQL, {"pids": list(pending)}, _Running)
        running = {r.pid for r in rows
                   if r.pid in pending and r.backend_start == pending[r.pid].backend_start
                   and r.query_start == pending[r.pid].query_start}
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))


@dataclass
class SignalProgress:
    """What one signal step has done so far. It lives outside the retried attempts, so a retry after a transient
    error continues with the sessions not yet handled and never re-reports a session it already signalled."""

    results: dict[int, ActionResult] = field(default_factory=dict)
    pending: dict[int, PlannedAction] = field(default_factory=dict)  # cancelled, awaiting the grace period
    denied: list[PermissionDenied] = field(default_factory=list)
    grace_deadline: float | None = None
    interrupted: set[int] = field(default_factory=set)  # whose signal was in flight when a connection broke
    attempts: int = 0

    def gone(self, a: PlannedAction) -> ActionResult:
        if a.pid in self.interrupted:
            return _result(a, "gone", "session ended or moved on; the attempt whose connection broke may have "
                                      "signalled it")
        return _result(a, "gone", "session ended or moved on before the signal")


def signal_attempt(db: Session, actions: list[PlannedAction], progress: SignalProgress, grace_seconds: float,
                   timeout_ms: int) -> None:
    """One attempt over one connection: signal every action `progress` has no outcome for yet."""
    progress.attempts += 1
    results, pending = progress.results, progress.pending
    for a in actions:
        if a.pid in results or a.pid in pending:
            continue
        query = TERMINATE_SQL if a.action == "terminate" else CANCEL_SQL
        progress.interrupted.add(a.pid)
        signalled, error = _signal(db, query, _guard(a, timeout_ms=timeout_ms))
        if error is not None:
            progress.denied.append(error)
            results[a.pid] = _result(a, "failed", error.detail)
        elif signalled is None:
            results[a.pid] = progress.gone(a)
        elif a.action == "terminate":
            results[a.pid] = _result(a, "terminated" if signalled else "failed",
                                     "" if signalled else f"still running {timeout_ms} ms after the signal")
        elif a.action == "cancel":
            results[a.pid] = _result(a, "cancelled" if signalled else "failed",
                                     "" if signalled else "the cancel signal could not be sent")
        elif signalled:
            pending[a.pid] = a
        else:
            results[a.pid] = _result(a, "failed", "the cancel signal could not be sent")
        progress.interrupted.discard(a.pid)
    waiting = {pid: a for pid, a in pending.items() if pid not in results}
    if not waiting:
        return
    if progress.grace_deadline is None:
        progress.grace_deadline = time.monotonic() + grace_seconds
    running = _wait_until_stopped(db, waiting, max(progress.grace_deadline - time.monotonic(), 0))
    for pid, a in waiting.items():
        if pid not in running:
            results[pid] = _result(a, "cancelled", "statement stopped after pg_cancel_backend")
            continue
        progress.interrupted.add(pid)
        signalled, error = _signal(db, TERMINATE_SQL, _guard(a, timeout_ms=timeout_ms))
        if error is not None:
            progress.denied.append(error)
            results[pid] = _result(a, "failed", f"cancelled but not terminated: {error.detail}")
        elif signalled is None:
            results[pid] = _result(a, "cancelled", "statement stopped just before the terminate")
        else:
            results[pid] = _result(a, "terminated" if signalled else "failed",
                                   f"still running {grace_seconds:g} s after pg_cancel_backend"
                                   if signalled else f"still running {timeout_ms} ms after pg_terminate_backend")
        progress.interrupted.discard(pid)


def run_attempts(attempt: Callable[[], None], retries: int = DB_TASK["retries"],
                 delay_seconds: float = DB_TASK["retry_delay_seconds"]) -> RunbookDBError | None:
    """Run `attempt` until it completes, retrying transient database errors like DB_TASK; the database error
    that ended the attempts (a non-transient one at once, a transient one when the retries ran out), else None."""
    for n in range(retries + 1):
        try:
            attempt()
            return None
        except RunbookDBError as exc:
            last = n == retries or not is_transient(exc)
            _audit_logger().warning("signal step: %s (attempt %d of %d)%s", exc, n + 1, retries + 1,
                                    "" if last else "; retrying the sessions not yet handled")
            if last:
                return exc
            time.sleep(delay_seconds)
    return None


@task(name="signal-sessions", retries=0, cache_policy=NO_CACHE)  # retries happen inside, keeping the results
def signal_sessions(target: ConnectionTarget, actions: list[PlannedAction], grace_seconds: float,
                    terminate_timeout_seconds: float, runbook_role: str, can_signal: bool,
                    purpose: str = "high-load-response/act") -> list[ActionResult]:
    """Cancel / terminate each planned session (cancel first, terminate only those still running
    after the grace period). Raises SignalStepFailed, carrying every result, if any could not be signalled.

    A transient error (connection lost, timeout) retries only the sessions not yet handled, on a new
    connection: what an earlier attempt did to a session stays its audit row."""
    timeout_ms = int(terminate_timeout_seconds * 1000)
    progress = SignalProgress()
    statement_ms = timeout_ms + 10_000

    def attempt() -> None:
        with connect(target, purpose=purpose, statement_timeout_ms=statement_ms) as db:
            signal_attempt(db, actions, progress, grace_seconds, timeout_ms)

    return conclude(target.label, actions, progress, run_attempts(attempt), runbook_role, can_signal)


def conclude(label: str, actions: list[PlannedAction], progress: SignalProgress, lost: RunbookDBError | None,
             runbook_role: str, can_signal: bool) -> list[ActionResult]:
    """The audit rows in plan order, or SignalStepFailed carrying them."""
    results = progress.results
    for a in actions:
        if a.pid not in results:
            done = "cancelled, then not terminated" if a.pid in progress.pending else "not signalled"
            results[a.pid] = _result(a, "failed", f"{done}: {lost.detail if lost else 'no attempt finished'}")
    ordered = [results[a.pid] for a in actions]
    failed = [r for r in ordered if r.result == "failed"]
    if progress.denied:
        cause = (MissingSignalGrant(label, runbook_role, len(failed), progress.denied[0].detail)
                 if not can_signal else progress.denied[0])
        raise SignalStepFailed(label, cause.detail, ordered, cause)
    if lost is not None:
        raise SignalStepFailed(label, f"{len(failed)} of {len(ordered)} session(s) not signalled after "
                                      f"{progress.attempts} attempt(s): {lost.detail}", ordered, lost)
    if failed:
        raise SignalStepFailed(label, f"{len(failed)} of {len(ordered)} session(s) could not be signalled",
                               ordered)
    return ordered
