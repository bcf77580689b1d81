"""Typed errors of the database gateway: each says what an operator must fix.

Driver errors are classified by SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html).
`transient` decides whether a task may retry: connection losses and timeouts yes;
authentication, permissions, missing objects and an operator's cancel never.
Where one SQLSTATE covers several causes the server's message decides: 57014 (query_canceled) is a
statement timeout or a cancel request; 42883 / 42P01 name an extension's function or view when the
extension is not installed; 55000 says a module must be preloaded.
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

    def __init__(self, target: str, detail: str, sqlstate: str | None = None, action: str | None = None):
        self.target = target
        self.detail = detail
        self.sqlstate = sqlstate
        if action:
            self.action = action
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


class QueryCancelled(RunbookDBError):
    """57014 'canceling statement due to user request': pg_cancel_backend or a client cancel. Never retried."""

    problem = "had the statement cancelled"
    action = ("an operator or another session cancelled it (pg_cancel_backend); not retried: "
              "find out who and why before running it again")


class LockTimeout(RunbookDBError):
    problem = "timed out waiting for a lock"
    transient = True
    action = "another session holds a conflicting lock; retry later or find the blocker"


class ReadOnlyServer(RunbookDBError):
    problem = "is read-only"
    action = "the node is a standby or read-only; run this against the primary"


# Functions and views of the extensions the runbooks use, by extension. pg_stat_statements also needs
# shared_preload_libraries (https://www.postgresql.org/docs/current/pgstatstatements.html).
EXTENSION_OBJECTS: dict[str, frozenset[str]] = {
    "pgstattuple": frozenset({"pgstattuple", "pgstattuple_approx", "pgstatindex", "pgstatginindex",
                              "pgstathashindex", "pg_relpages"}),
    "pg_stat_statements": frozenset({"pg_stat_statements", "pg_stat_statements_info",
                                     "pg_stat_statements_reset"}),
    "pg_buffercache": frozenset({"pg_buffercache", "pg_buffercache_pages", "pg_buffercache_summary",
                                 "pg_buffercache_usage_counts"}),
    "pg_visibility": frozenset({"pg_visibility", "pg_visibility_map", "pg_visibility_map_summary",
                                "pg_check_frozen", "pg_check_visible"}),
    "pg_freespacemap": frozenset({"pg_freespace"}),
    "amcheck": frozenset({"bt_index_check", "bt_index_parent_check", "verify_heapam"}),
}
PRELOADED_EXTENSIONS = frozenset({"pg_stat_statements"})

_MISSING_FUNCTION = re.compile(r'function (?:"?[^"(\s]+"?\.)?"?([^".(\s]+)"?\(')
_MISSING_RELATION = re.compile(r'relation "(?:[^"]*\.)?([^".]+)" does not exist')
_NOT_PRELOADED = re.compile(r'^"?([\w.-]+)"? must be loaded via "?shared_preload_libraries"?')


def extension_of(name: str) -> str | None:
    """The extension that provides the function or view `name`, if it is one we know."""
    return next((ext for ext, names in EXTENSION_OBJECTS.items() if name in names), None)


def enable_extension_action(extension: str) -> str:
    """What an operator runs to make `extension` available in this database."""
    create = f"run CREATE EXTENSION {extension}; in this database (as its owner or a superuser)"
    if extension in PRELOADED_EXTENSIONS:
        return (f"add {extension} to shared_preload_libraries in postgresql.conf, restart the server, then "
                + create)
    return create + " (the postgresql-contrib package provides it)"


def _missing_extension(exc: psycopg.Error, detail: str) -> str | None:
    """The extension an undefined-function / undefined-table / not-preloaded error is about, if any."""
    if isinstance(exc, pgerr.UndefinedFunction):
        match = _MISSING_FUNCTION.search(detail)
    elif isinstance(exc, pgerr.UndefinedTable):
        match = _MISSING_RELATION.search(detail)
    elif isinstance(exc, pgerr.ObjectNotInPrerequisiteState):
        match = _NOT_PRELOADED.search(detail)
        return match.group(1) if match else None
    else:
        return None
    return extension_of(match.group(1)) if match else None


def _cancelled(target: str, detail: str, sqlstate: str | None) -> RunbookDBError:
    """57014 by its message: only a statement timeout is a timeout (and retried); a cancel request or any
    other reason (lc_messages in another language included) is not retried."""
    if "statement timeout" in detail:
        return QueryTimeout(target, detail, sqlstate)
    if "lock timeout" in detail:  # lock_timeout reports 55P03; kept for servers that say otherwise
        return LockTimeout(target, detail, sqlstate)
    return QueryCancelled(target, detail, sqlstate)


def classify(exc: psycopg.Error, target: str, connecting: bool = False) -> RunbookDBError:
    """Turn a psycopg error into the matching RunbookDBError."""
    sqlstate = getattr(exc, "sqlstate", None)
    detail = _first_line(exc)
    extension = _missing_extension(exc, detail)
    if extension and isinstance(exc, pgerr.ObjectNotInPrerequisiteState):
        return MissingExtension(target, detail, sqlstate, action=(
            f"add {extension} to shared_preload_libraries in postgresql.conf and restart the server "
            "(the extension is created but its library is not loaded)"))
    if extension:
        return MissingExtension(target, detail, sqlstate, action=enable_extension_action(extension))
    if isinstance(exc, pgerr.InvalidPassword | pgerr.InvalidAuthorizationSpecification):
        return AuthenticationFailed(target, detail, sqlstate)
    if isinstance(exc, pgerr.InvalidCatalogName):
        return DatabaseMissing(target, detail, sqlstate)
    if isinstance(exc, pgerr.InsufficientPrivilege):
        return PermissionDenied(target, detail, sqlstate)
    if isinstance(exc, pgerr.LockNotAvailable):
        return LockTimeout(target, detail, sqlstate)
    if isinstance(exc, pgerr.QueryCanceled):
        return _cancelled(target, detail, sqlstate)
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


def raised_by(state) -> BaseException | None:
    """The exception a failed Prefect task run's state holds, for a `retry_condition_fn` to inspect."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as raised:  # noqa: BLE001 - inspecting, not handling
            exc = raised
    return exc


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only transient database errors."""
    exc = raised_by(state)
    return exc is not None and is_transient(exc)


_LIBPQ_PREFIX = re.compile(r'^(connection failed: )?connection to server at "[^"]*"(, port \d+)? failed: ')


def describe_error(exc: BaseException | None) -> str:
    """A failed read as a phrase following the node name."""
    if isinstance(exc, RunbookDBError):
        return exc.sentence
    return f"failed: {type(exc).__name__}: {exc}"


def cause_of(exc: BaseException | None) -> str:
    """Why a node gave no data, in the words of a page: connection refused, authentication failed, timed out."""
    text = str(exc).lower()
    if isinstance(exc, AuthenticationFailed):
        return "authentication failed"
    if isinstance(exc, QueryTimeout) or "timeout" in text or "timed out" in text:
        return "timed out"
    if "refused" in text:
        return "connection refused"
    if isinstance(exc, NodeUnreachable):
        return "unreachable"
    return f"failed ({type(exc).__name__})"


def _first_line(exc: BaseException) -> str:
    text = _LIBPQ_PREFIX.sub("", str(exc).strip()) or type(exc).__name__
    text = text.replace("FATAL:  ", "")
    # libpq prefixes connection errors with the whole attempt list; keep it short.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[:2])[:500]


class ProviderError(Exception):
    """A managed provider's API (Aurora, Neon) refused or failed a call. The message names the provider, the
    call and what to do; never a key. `transient` decides a retry (throttling, 5xx, a busy resource)."""

    def __init__(self, message: str, transient: bool = False, code: str | None = None):
        super().__init__(message)
        self.transient = transient
        self.code = code


class InvalidScaling(ProviderError):
    """A requested capacity range the provider would refuse (or a stand-in would wrongly accept): nothing sent."""
