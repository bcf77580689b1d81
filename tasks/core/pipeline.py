"""Statements sent ahead on a held autocommit connection (libpq pipeline mode).

Each statement is followed by its own Sync, so it runs in its own implicit transaction exactly as if it
had been sent alone (VACUUM refuses to run inside a transaction block): same timeouts, same errors, one
statement's failure never touches the next. What changes is the wait: the next statement is already on
the server when one ends, so the server starts it with no round trip in between. That gap is most of a
small table's VACUUM when a busy client process answers late (a Prefect flow shares its cores with the
server and its own threads). Results come back in order, each with the notices it raised and when it ended.

Direct connections only: through a pooler in transaction mode the session's timeouts are set per
transaction (tasks.core.db.Session), which a pipeline of bare statements would bypass.
"""

from __future__ import annotations

import collections
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq, sql

from tasks.core.db import Session
from tasks.core.errors import RunbookDBError, classify

ExecStatus = pq.ExecStatus


@dataclass
class Outcome:
    """One statement's end: `error` None means it succeeded. `started_at`/`ended_at` are time.monotonic():
    it started when it was sent or when the statement before it ended, whichever was later. `ran` False: the
    connection was lost before this statement's turn (while an earlier one ran or ended): it did not run, or
    if it did its result is unknown; it may be sent again on a new connection."""

    tag: Any
    started_at: float
    ended_at: float
    notices: list[str] = field(default_factory=list)
    error: RunbookDBError | None = None
    ran: bool = True

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended_at - self.started_at)


def pipeline_usable(session: Session) -> bool:
    """Pipeline mode needs libpq 14+ and a direct connection (see the module's note on poolers)."""
    return psycopg.Pipeline.is_supported() and not session.target.via_pooler


class StatementPipeline:
    """Send statements ahead on `session` and read their outcomes in order.

    Use as a context manager: it enters pipeline mode, and on exit reads whatever is still in flight and
    leaves pipeline mode, so the session is usable as before. A lost connection ends every statement still
    in flight with the connection's error (the session is then broken: the caller replaces it).
    """

    def __init__(self, session: Session):
        self.session = session
        self.pg = session.conn.pgconn
        self._queued: collections.deque[tuple[Any, float]] = collections.deque()
        self._notices: list[str] = []
        self._last_end = 0.0
        self._lost: RunbookDBError | None = None

    def __enter__(self) -> StatementPipeline:
        self.session.conn.add_notice_handler(self._on_notice)
        self.pg.enter_pipeline_mode()
        return self

    def __exit__(self, *exc) -> None:
        try:
            for _ in self.drain():
                pass
            if self._lost is None and self.pg.status == pq.ConnStatus.OK:
                self.pg.exit_pipeline_mode()
            elif not self.session.conn.closed:  # out of step with the server: never lend it again
                self.session.conn.close()
        finally:
            self.session.conn.remove_notice_handler(self._on_notice)

    @property
    def in_flight(self) -> int:
        return len(self._queued)

    @property
    def broken(self) -> bool:
        return self._lost is not None or self.pg.status != pq.ConnStatus.OK

    def send(self, statement: sql.Composable, tag: Any = None) -> None:
        """Queue `statement` and a Sync after it; it starts on the server once the ones before it have ended."""
        query = statement.as_bytes(self.session.conn)
        blamed = False
        if self._lost is None:
            try:
                self.pg.send_query_params(query, None)
                self.pg.pipeline_sync()
                self._flush()
            except psycopg.Error as exc:
                self._lost, blamed = classify(exc, self.session.target.label), True
        self._queued.append((tag, time.monotonic(), blamed))

    def next(self) -> Outcome:
        """The oldest statement's outcome (waits for it)."""
        tag, sent_at, blamed = self._queued.popleft()
        started = max(sent_at, self._last_end)
        if self._lost is not None:
            return Outcome(tag, started, time.monotonic(), self._take_notices(), self._lost, ran=blamed)
        try:
            result = self._result()
        except psycopg.Error as exc:  # lost while it ran: it failed with the connection's error
            self._lost = classify(exc, self.session.target.label)
            return Outcome(tag, started, time.monotonic(), self._take_notices(), self._lost)
        ended = self._last_end = time.monotonic()
        error = None
        if result is None or result.status != ExecStatus.COMMAND_OK:
            error = classify(self._error_of(result), self.session.target.label)
        notices = self._take_notices()
        try:
            self._end_of_statement()
        except psycopg.Error as exc:  # lost after its result (terminated: the error was its result)
            self._lost = classify(exc, self.session.target.label)
        return Outcome(tag, started, ended, notices, error)

    def drain(self) -> Iterator[Outcome]:
        while self._queued:
            yield self.next()

    def _error_of(self, result: pq.abc.PGresult | None) -> psycopg.Error:
        if result is not None and result.status == ExecStatus.FATAL_ERROR:
            return psycopg.errors.error_from_result(result, self.session.conn.info.encoding)
        what = "no result" if result is None else ExecStatus(result.status).name
        return psycopg.OperationalError(f"unexpected pipeline result for a statement: {what}")

    def _end_of_statement(self) -> None:
        """A statement's results end with a NULL, then its Sync."""
        if self._result() is not None:
            raise psycopg.OperationalError("a pipelined statement returned more than one result")
        sync = self._result()
        if sync is None or sync.status != ExecStatus.PIPELINE_SYNC:
            raise psycopg.OperationalError("the pipeline lost its order")

    def _result(self) -> pq.abc.PGresult | None:
        """The next result, waiting for the socket (the GIL released) while the server works."""
        while True:
            self.pg.consume_input()
            if not self.pg.is_busy():
                return self.pg.get_result()
            self._wait(select.POLLIN)

    def _flush(self) -> None:
        while self.pg.flush() != 0:  # the send buffer is full: let the server's results in too
            self._wait(select.POLLIN | select.POLLOUT)
            self.pg.consume_input()

    def _wait(self, events: int) -> None:
        poller = select.poll()
        poller.register(self.pg.socket, events | select.POLLERR | select.POLLHUP)
        poller.poll()

    def _on_notice(self, diag: psycopg.errors.Diagnostic) -> None:
        self._notices.append(f"{diag.sqlstate or ''} {diag.message_primary or ''}")

    def _take_notices(self) -> list[str]:
        notices, self._notices = self._notices, []
        return notices
