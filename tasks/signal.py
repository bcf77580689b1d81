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
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget
from tasks.db import DB_TASK, Session, connect
from tasks.errors import PermissionDenied, RunbookDBError
from tasks.high_load_plan import ActionResult, PlannedAction

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


@task(name="signal-sessions", **DB_TASK)
def signal_sessions(target: ConnectionTarget, actions: list[PlannedAction], grace_seconds: float,
                    terminate_timeout_seconds: float, runbook_role: str, can_signal: bool,
                    purpose: str = "high-load-response/act") -> list[ActionResult]:
    """Cancel / terminate each planned session (cancel first, terminate only those still running
    after the grace period). Raises SignalStepFailed, carrying every result, if any could not be signalled."""
    timeout_ms = int(terminate_timeout_seconds * 1000)
    results: dict[int, ActionResult] = {}
    denied: list[PermissionDenied] = []
    pending: dict[int, PlannedAction] = {}
    statement_ms = timeout_ms + 10_000
    with connect(target, purpose=purpose, statement_timeout_ms=statement_ms) as db:
        for a in actions:
            query = TERMINATE_SQL if a.action == "terminate" else CANCEL_SQL
            signalled, error = _signal(db, query, _guard(a, timeout_ms=timeout_ms))
            if error is not None:
                denied.append(error)
                results[a.pid] = _result(a, "failed", error.detail)
            elif signalled is None:
                results[a.pid] = _result(a, "gone", "session ended or moved on before the signal")
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
        running = _wait_until_stopped(db, pending, grace_seconds) if pending else set()
        for pid, a in pending.items():
            if pid not in running:
                results[pid] = _result(a, "cancelled", "statement stopped after pg_cancel_backend")
                continue
            signalled, error = _signal(db, TERMINATE_SQL, _guard(a, timeout_ms=timeout_ms))
            if error is not None:
                denied.append(error)
                results[pid] = _result(a, "failed", f"cancelled but not terminated: {error.detail}")
            elif signalled is None:
                results[pid] = _result(a, "cancelled", "statement stopped just before the terminate")
            else:
                results[pid] = _result(a, "terminated" if signalled else "failed",
                                       f"still running {grace_seconds:g} s after pg_cancel_backend"
                                       if signalled else f"still running {timeout_ms} ms after pg_terminate_backend")
    ordered = [results[a.pid] for a in actions]
    failed = [r for r in ordered if r.result == "failed"]
    if denied:
        cause = (MissingSignalGrant(target.label, runbook_role, len(failed), denied[0].detail)
                 if not can_signal else denied[0])
        raise SignalStepFailed(target.label, cause.detail, ordered, cause)
    if failed:
        raise SignalStepFailed(target.label, f"{len(failed)} of {len(ordered)} session(s) could not be signalled",
                               ordered)
    return ordered
