"""Typed errors of the database gateway: each says what an operator must fix.

Driver errors are classified by SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html).
`transient` decides whether a task may retry: connection losses and timeouts yes;
authentication, permissions, missing objects never.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import errors as pgerr


class RunbookDBError(Exception):
    """A database step failed. `target` is 'node (host:port)'; never a DSN or password."""

    transient = False
    action = "see the PostgreSQL server log of that node"

    problem = "failed"

    def __init__(self, target: str, detail: str, sqlstate: str | None = None):
        self.target = target
        self.detail = detail
        self.sqlstate = sqlstate
        super().__init__(f"{target}: {detail} — {self.action}")

    @property
    def sentence(self) -> str:
        """'<problem>: <detail> — <what to do>', for reports that already name the node."""
        return f"{self.problem}: {self.detail} — {self.action}"


class NodeUnreachable(RunbookDBError):
    problem = "is unreachable"
    transient = True
    action = "check that the server is running and the host/port in the PostgresCluster block"


class ConnectionLost(RunbookDBError):
    problem = "lost its connection"
    transient = True
    action = "the server closed the session (restart, failover or terminate); retry"


class AuthenticationFailed(RunbookDBError):
    problem = "refused the login"
    action = "check the user and password in the PostgresCluster block and pg_hba.conf"


class DatabaseMissing(RunbookDBError):
    problem = "has no such database"
    action = "check the database name in the PostgresCluster block"


class PermissionDenied(RunbookDBError):
    problem = "denied permission"
    action = "grant the role what it needs (pg_monitor for checks; see README 'Least privilege')"


class MissingExtension(RunbookDBError):
    problem = "lacks an extension"
    action = "install the extension (see README) or skip this check"


class UnknownObject(RunbookDBError):
    problem = "has no such object"
    action = "check the schema-qualified name; nothing was changed"


class QueryTimeout(RunbookDBError):
    problem = "timed out"
    transient = True
    action = "the statement hit statement_timeout; retry later or raise the timeout"


class LockTimeout(RunbookDBError):
    problem = "timed out waiting for a lock"
    transient = True
    action = "another session holds a conflicting lock; retry later or find the blocker"


class ReadOnlyServer(RunbookDBError):
    problem = "is read-only"
    action = "the node is a standby or read-only; run this against the primary"


def classify(exc: psycopg.Error, target: str, connecting: bool = False) -> RunbookDBError:
    """Turn a psycopg error into the matching RunbookDBError."""
    sqlstate = getattr(exc, "sqlstate", None)
    detail = _first_line(exc)
    if isinstance(exc, pgerr.InvalidPassword | pgerr.InvalidAuthorizationSpecification):
        return AuthenticationFailed(target, detail, sqlstate)
    if isinstance(exc, pgerr.InvalidCatalogName):
        return DatabaseMissing(target, detail, sqlstate)
    if isinstance(exc, pgerr.InsufficientPrivilege):
        return PermissionDenied(target, detail, sqlstate)
    if isinstance(exc, pgerr.LockNotAvailable):
        return LockTimeout(target, detail, sqlstate)
    if isinstance(exc, pgerr.QueryCanceled):
        return QueryTimeout(target, detail, sqlstate)
    if isinstance(exc, pgerr.ReadOnlySqlTransaction):
        return ReadOnlyServer(target, detail, sqlstate)
    if isinstance(exc, pgerr.UndefinedTable | pgerr.UndefinedObject | pgerr.InvalidSchemaName):
        return UnknownObject(target, detail, sqlstate)
    if isinstance(exc, pgerr.UndefinedFile | pgerr.FeatureNotSupported):
        return MissingExtension(target, detail, sqlstate)
    if isinstance(
        exc, pgerr.AdminShutdown | pgerr.CrashShutdown | pgerr.CannotConnectNow
    ) or (sqlstate or "").startswith("08"):
        return NodeUnreachable(target, detail, sqlstate) if connecting else ConnectionLost(
            target, detail, sqlstate
        )
    if isinstance(exc, psycopg.OperationalError) and sqlstate is None:
        if "password authentication failed" in detail or "no password supplied" in detail:
            return AuthenticationFailed(target, detail, sqlstate)
        if 'database "' in detail and "does not exist" in detail:
            return DatabaseMissing(target, detail, sqlstate)
        return NodeUnreachable(target, detail, sqlstate) if connecting else ConnectionLost(
            target, detail, sqlstate
        )
    return RunbookDBError(target, detail, sqlstate)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, RunbookDBError) and exc.transient


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only transient database errors."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as raised:  # noqa: BLE001 - inspecting, not handling
            exc = raised
    return exc is not None and is_transient(exc)


_LIBPQ_PREFIX = re.compile(r'^(connection failed: )?connection to server at "[^"]*"(, port \d+)? failed: ')


def _first_line(exc: BaseException) -> str:
    text = _LIBPQ_PREFIX.sub("", str(exc).strip()) or type(exc).__name__
    text = text.replace("FATAL:  ", "")
    # libpq prefixes connection errors with the whole attempt list; keep it short.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[:2])[:500]
