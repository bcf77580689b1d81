"""The one database gateway: every runbook connection and query goes through here.

Each session sets application_name, connect_timeout, statement_timeout,
lock_timeout and jit=off; rows come back as pydantic models; driver errors
become the typed errors of tasks.core.errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar, get_args

import psycopg
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.errors import RunbookDBError, classify, retry_if_transient

APPLICATION_NAME = "pg-runbooks"
DEFAULT_LOCK_TIMEOUT_MS = 5_000

# Options of every @task that reads or writes a database: retry only transient errors
# (connection lost, timeouts, lock timeouts) and never cache (results are live state).
DB_TASK: dict[str, Any] = dict(
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)

M = TypeVar("M", bound=BaseModel)
Query = str | sql.Composable
Params = Sequence[Any] | Mapping[str, Any] | None


SynchronousCommit = Literal["on", "local", "off"]


def _session_options(statement_timeout_ms: int, lock_timeout_ms: int,
                     synchronous_commit: SynchronousCommit | None = None) -> str:
    """libpq `options` carrying the session settings (direct connections only)."""
    options = (
        f"-c statement_timeout={int(statement_timeout_ms)} "
        f"-c lock_timeout={int(lock_timeout_ms)} "
        "-c jit=off"
    )
    if synchronous_commit is not None:
        if synchronous_commit not in get_args(SynchronousCommit):  # only these words reach the server
            raise ValueError(f"synchronous_commit must be one of {get_args(SynchronousCommit)}")
        options += f" -c synchronous_commit={synchronous_commit}"
    return options


class Session:
    """One open connection to one node, with typed fetch helpers."""

    def __init__(self, conn: psycopg.Connection, target: ConnectionTarget, timeout_ms: int, lock_ms: int):
        self.conn = conn
        self.target = target
        self.timeout_ms = timeout_ms
        self.lock_ms = lock_ms

    @property
    def server_version_num(self) -> int:
        """server_version_num of the connected server, e.g. 150018."""
        return self.conn.info.server_version

    def _rows(self, query: Query, params: Params) -> tuple[list[dict[str, Any]], int]:
        with translate_errors(self.target), self.conn.cursor(row_factory=dict_row) as cur:
            if self.target.via_pooler and self.conn.autocommit:
                # Through pgbouncer: timeouts scoped to this one transaction.
                with self.conn.transaction():
                    cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(self.timeout_ms)))
                    cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(self.lock_ms)))
                    cur.execute(query, params)
                    return (cur.fetchall() if cur.description else []), cur.rowcount
            cur.execute(query, params)
            return (cur.fetchall() if cur.description else []), cur.rowcount

    def fetch_all(self, query: Query, params: Params, model: type[M]) -> list[M]:
        """Run one query and return every row as `model`."""
        rows, _ = self._rows(query, params)
        return [model.model_validate(row) for row in rows]

    def fetch_one(self, query: Query, params: Params, model: type[M]) -> M | None:
        rows = self.fetch_all(query, params, model)
        return rows[0] if rows else None

    def scalar(self, query: Query, params: Params = None) -> Any:
        """The first column of the first row, or None."""
        rows, _ = self._rows(query, params)
        return next(iter(rows[0].values())) if rows else None

    def execute(self, query: Query, params: Params = None) -> int:
        """Run a statement; the affected row count."""
        _, rowcount = self._rows(query, params)
        return rowcount


@contextlib.contextmanager
def connect(
    target: ConnectionTarget,
    *,
    purpose: str = "check",
    statement_timeout_ms: int | None = None,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    autocommit: bool = True,
    synchronous_commit: SynchronousCommit | None = None,
) -> Iterator[Session]:
    """Open one session on `target`; errors come out as RunbookDBError subclasses.

    `synchronous_commit`: the session's own (None: the server's; direct connections only). Maintenance
    sessions set it "off" or "local": their commits (VACUUM's and ANALYZE's catalog updates) can be redone,
    and must not wait on a synchronous standby (autovacuum itself commits with "local").

    Through a pooler (pgbouncer in transaction mode) startup `options` are refused
    and session SETs would leak to other clients, so the timeouts are applied with
    SET LOCAL inside each statement's transaction instead.
    """
    timeout_ms = statement_timeout_ms or target.statement_timeout_ms
    kwargs = target.connect_kwargs()
    kwargs["application_name"] = f"{APPLICATION_NAME}/{purpose}"[:63]
    if target.via_pooler:
        kwargs["prepare_threshold"] = None
    else:
        kwargs["options"] = _session_options(timeout_ms, lock_timeout_ms, synchronous_commit)
    try:
        conn = psycopg.connect(autocommit=autocommit, **kwargs)
    except psycopg.Error as exc:
        raise classify(exc, target.label, connecting=True) from None
    try:
        with translate_errors(target):
            yield Session(conn, target, timeout_ms, lock_timeout_ms)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def fetch_one_fresh(target: ConnectionTarget, query: Query, model: type[M], purpose: str,
                    statement_timeout_ms: int = 5_000) -> M | None:
    """One row of `query` as `model` on a connection of its own; None when the node does not answer (a probe
    that must not reuse a session: after a failover, which server a new connection reaches is the question)."""
    try:
        with connect(target, purpose=purpose, statement_timeout_ms=statement_timeout_ms) as db:
            return db.fetch_one(query, None, model)
    except RunbookDBError:
        return None


@contextlib.contextmanager
def translate_errors(target: ConnectionTarget) -> Iterator[None]:
    """Re-raise psycopg errors as typed RunbookDBErrors naming the node."""
    try:
        yield
    except psycopg.Error as exc:
        raise classify(exc, target.label) from None
