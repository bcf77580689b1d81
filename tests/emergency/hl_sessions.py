"""Real client sessions for the high-load tests: each is one connection whose fate we can assert."""

from __future__ import annotations

import contextlib
import threading

import psycopg
from psycopg import errors as pgerr

from sandbox.cluster import HOST, Sandbox


class Client:
    """One connection (pid and backend_start known up front) that may run statements in a thread.

    `outcome` after the statements: 'ok', 'cancelled' (QueryCanceled, connection alive) or
    'terminated' (the server closed the connection).
    """

    def __init__(self, box: Sandbox, user: str, password: str, app: str = "hl-test", dbname: str = "postgres",
                 autocommit: bool = True):
        self.box = box
        self.conn = psycopg.connect(host=HOST, port=box.config.primary_port, user=user, password=password,
                                    dbname=dbname, application_name=app, autocommit=autocommit, connect_timeout=5)
        self.pid, self.backend_start = self.conn.execute(
            "SELECT pg_backend_pid(), backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
        self.outcome: str | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def run(self, *statements: str) -> Client:
        """Run statements one after the other in the background."""
        def work():
            try:
                for stmt in statements:
                    self.conn.execute(stmt)
                self.outcome = "ok"
            except pgerr.QueryCanceled as exc:
                self.outcome, self.error = "cancelled", exc
            except psycopg.OperationalError as exc:
                self.outcome, self.error = "terminated", exc
            except psycopg.Error as exc:
                self.outcome, self.error = f"error:{type(exc).__name__}", exc

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()
        return self

    def now(self, statement: str) -> None:
        """Run one statement in the foreground (e.g. to open a transaction and leave it idle)."""
        self.conn.execute(statement)

    def alive(self) -> bool:
        """The same session (pid and backend_start) is still connected."""
        with self.box.connect("primary") as conn:
            return conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND backend_start = %s",
                                (self.pid, self.backend_start)).fetchone() is not None

    def state(self) -> tuple[str | None, str | None]:
        with self.box.connect("primary") as conn:
            found = conn.execute("SELECT state, wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                 (self.pid,)).fetchone()
        return found if found else (None, None)

    def join(self, timeout: float = 15) -> str | None:
        if self.thread:
            self.thread.join(timeout)
        return self.outcome

    def close(self) -> None:
        """End this session from outside if it still runs, then close (cleanup of the test's own sessions)."""
        if self.thread and self.thread.is_alive():
            with contextlib.suppress(psycopg.Error), self.box.connect("primary") as conn:
                conn.execute("SELECT pg_terminate_backend(%s) FROM pg_stat_activity WHERE pid = %s "
                             "AND backend_start = %s", (self.pid, self.pid, self.backend_start))
            self.thread.join(10)
        with contextlib.suppress(Exception):
            self.conn.close()
