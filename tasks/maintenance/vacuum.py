"""Vacuum steps (runbook 2.1): read what needs vacuum, vacuum batches of tables on held connections.

As vacuumdb does, the run holds one dedicated autocommit connection per concurrency slot, with
lock_timeout, statement_timeout and jit=off set once; each VACUUM uses SKIP_LOCKED where the server
supports it (PG12+), with synchronous_commit off by default (a VACUUM's commit waits neither for
its WAL flush nor for a standby). One Prefect task run per slot, taking batches of tables as it is free;
inside a batch, one statement per table and the batch's statistics before and after in one query each.
A table that fails is a result, not an exception: one table never stops the others.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.bounded import WorkQueue
from tasks.core.db import DB_TASK, Session, SynchronousCommit, connect
from tasks.core.errors import LockTimeout, RunbookDBError
from tasks.core.progress import Progress
from tasks.core.records import FlatRecord
from tasks.core.relations import NameSpec, RelationRef, resolve
from tasks.core.server_capabilities import capabilities
from tasks.maintenance.maintenance_log import MaintenanceLogWriter


class TableVacuumState(BaseModel):
    """One table's vacuum-relevant statistics."""

    oid: int
    schema_name: str
    table_name: str
    n_live_tup: int = 0
    n_dead_tup: int = 0
    n_mod_since_analyze: int = 0
    xid_age: int = 0
    mxid_age: int = 0
    relpages: int = 0
    size_bytes: int = 0
    vacuum_count: int = 0
    last_vacuum: datetime | None = None


class FreezeLimits(BaseModel):
    autovacuum_freeze_max_age: int
    autovacuum_multixact_freeze_max_age: int


# Vacuum-relevant statistics of every user table (or of the given oids): dead and live tuples,
# modifications since the last analyze, and the age of relfrozenxid / relminmxid (the older of
# the table and its TOAST table, as flexible-freeze does). Catalog only: no relation lock is taken
# (pg_relation_size would wait behind an ACCESS EXCLUSIVE lock).
TABLE_STATE_SQL = """
SELECT c.oid::bigint AS oid,
       n.nspname AS schema_name,
       c.relname AS table_name,
       coalesce(s.n_live_tup, 0) AS n_live_tup,
       coalesce(s.n_dead_tup, 0) AS n_dead_tup,
       coalesce(s.n_mod_since_analyze, 0) AS n_mod_since_analyze,
       greatest(pg_catalog.age(c.relfrozenxid),
                coalesce(pg_catalog.age(t.relfrozenxid), 0)) AS xid_age,
       greatest(pg_catalog.mxid_age(c.relminmxid),
                coalesce(pg_catalog.mxid_age(t.relminmxid), 0)) AS mxid_age,
       c.relpages AS relpages,
       c.relpages::bigint * pg_catalog.current_setting('block_size')::bigint AS size_bytes,
       coalesce(s.vacuum_count, 0) AS vacuum_count,
       s.last_vacuum AS last_vacuum
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_class AS t ON t.oid = c.reltoastrelid
  LEFT JOIN pg_catalog.pg_stat_all_tables AS s ON s.relid = c.oid
 WHERE c.relkind IN ('r', 'm')
   AND n.nspname <> 'information_schema'
   AND n.nspname !~ '^pg_'
   AND (%(oids)s::bigint[] IS NULL OR c.oid = ANY(%(oids)s::bigint[]))
"""

# The same for a batch of tables, straight from the statistics functions (cheap: no view over every
# table): what each was like just before its batch, and after it.
BATCH_STATE_SQL = """
SELECT c.oid::bigint AS oid,
       n.nspname AS schema_name,
       c.relname AS table_name,
       coalesce(pg_catalog.pg_stat_get_live_tuples(c.oid), 0) AS n_live_tup,
       coalesce(pg_catalog.pg_stat_get_dead_tuples(c.oid), 0) AS n_dead_tup,
       coalesce(pg_catalog.pg_stat_get_mod_since_analyze(c.oid), 0) AS n_mod_since_analyze,
       pg_catalog.age(c.relfrozenxid) AS xid_age,
       pg_catalog.mxid_age(c.relminmxid) AS mxid_age,
       c.relpages AS relpages,
       c.relpages::bigint * pg_catalog.current_setting('block_size')::bigint AS size_bytes,
       coalesce(pg_catalog.pg_stat_get_vacuum_count(c.oid), 0) AS vacuum_count,
       pg_catalog.pg_stat_get_last_vacuum_time(c.oid) AS last_vacuum
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.oid = ANY(%(oids)s::bigint[])
"""

# The server's wraparound limits (autovacuum forces a vacuum at these ages).
FREEZE_LIMITS_SQL = """
SELECT pg_catalog.current_setting('autovacuum_freeze_max_age')::bigint AS autovacuum_freeze_max_age,
       pg_catalog.current_setting('autovacuum_multixact_freeze_max_age')::bigint
           AS autovacuum_multixact_freeze_max_age
"""


class VacuumOptions(BaseModel):
    """Options of the VACUUM statement."""

    analyze: bool = Field(default=True, description="VACUUM (ANALYZE): also refresh planner statistics.")
    freeze: bool = Field(default=False, description="VACUUM (FREEZE): freeze every tuple (more I/O).")
    index_cleanup: Literal["auto", "on", "off"] = Field(
        default="auto", description="INDEX_CLEANUP: 'off' skips index vacuuming (wraparound emergencies).")
    parallel: int | None = Field(
        default=None, ge=0, le=64, description="PARALLEL workers for index vacuuming (PG13+); empty = server default.")


class VacuumResult(FlatRecord):
    """One table's vacuum: what it was like before and after, or why it did not run."""

    table: str
    status: Literal["vacuumed", "skipped-locked", "skipped-window", "skipped-stopped", "failed", "planned"]
    reason: str = ""
    started_at: datetime | None = None
    duration_s: float = 0.0
    dead_before: int | None = None
    dead_after: int | None = None
    pages_before: int | None = None
    pages_after: int | None = None
    error: str | None = None
    summary: str = ""

    def log_row(self) -> dict:
        """This table's record in the maintenance log and its table artifact."""
        return {"table": self.table, "status": self.status,
                "started_at": self.started_at.isoformat() if self.started_at else "",
                "duration_s": self.duration_s, "dead_before": self.dead_before, "dead_after": self.dead_after,
                "pages_before": self.pages_before, "pages_after": self.pages_after,
                "error": self.error or self.reason}


def read_table_states(session: Session, oids: list[int] | None = None) -> list[TableVacuumState]:
    return session.fetch_all(TABLE_STATE_SQL, {"oids": oids}, TableVacuumState)


@task(name="read-vacuum-candidates", **DB_TASK)
def read_vacuum_candidates(target: ConnectionTarget, sessions: VacuumSessions | None = None
                           ) -> tuple[list[TableVacuumState], FreezeLimits]:
    """Every user table's vacuum statistics and the server's freeze limits; on one of the run's held
    connections when given (it then serves the first batch: no connection opened just for this read)."""
    with sessions.lease() if sessions is not None else connect(target, purpose="vacuum-plan") as s:
        return read_table_states(s), s.fetch_one(FREEZE_LIMITS_SQL, None, FreezeLimits)


class CandidatesRead:
    """The catalog read started in a thread, without a Prefect task run, so it overlaps the maintenance lock's
    requests and adds no API traffic of its own while the lock is taken. `result()` waits for it; if it failed,
    the read is made again as the `read_vacuum_candidates` task (its retries, its typed error)."""

    def __init__(self, target: ConnectionTarget, sessions: VacuumSessions):
        self.target, self.sessions = target, sessions
        self._future: concurrent.futures.Future = concurrent.futures.Future()
        threading.Thread(target=self._read, name="vacuum-catalog-read", daemon=True).start()

    def _read(self) -> None:
        try:
            self._future.set_result(read_vacuum_candidates.fn(self.target, self.sessions))
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._future.set_exception(exc)

    def result(self) -> tuple[list[TableVacuumState], FreezeLimits]:
        try:
            return self._future.result()
        except Exception:  # noqa: BLE001 - read again with the task's retries; its error is the one raised
            return read_vacuum_candidates(self.target, self.sessions)


@task(name="resolve-tables", **DB_TASK)
def resolve_tables(target: ConnectionTarget, names: list[NameSpec]) -> list[RelationRef]:
    """Each operator-given name resolved to exactly one table; UnknownObject for any that is not."""
    with connect(target, purpose="vacuum-plan") as s:
        return [resolve(s, name) for name in names]


def vacuum_statement(ref: RelationRef, options: VacuumOptions, server_version_num: int) -> sql.Composed:
    """VACUUM (options) schema.table, with only the options this server version supports."""
    return sql.Composed([vacuum_prefix(options, server_version_num), ref.identifier])


def vacuum_prefix(options: VacuumOptions, server_version_num: int) -> sql.Composable:
    """`VACUUM (options) ` without the table: the same for every table of a run."""
    caps = capabilities(server_version_num)
    opts: list[sql.Composable] = []
    if options.analyze:
        opts.append(sql.SQL("ANALYZE"))
    if options.freeze:
        opts.append(sql.SQL("FREEZE"))
    if caps.vacuum_skip_locked:
        opts.append(sql.SQL("SKIP_LOCKED"))
        cleanup = {"auto": "AUTO", "on": "ON", "off": "OFF"}[options.index_cleanup]
        if cleanup != "AUTO" or caps.vacuum_index_cleanup_auto:
            opts.append(sql.SQL("INDEX_CLEANUP {}").format(sql.SQL(cleanup)))
    if options.parallel is not None and caps.vacuum_parallel:
        opts.append(sql.SQL("PARALLEL {}").format(sql.Literal(int(options.parallel))))
    if not opts:
        return sql.SQL("VACUUM ")
    return sql.SQL("VACUUM ({}) ").format(sql.SQL(", ").join(opts))


class VacuumSessions:
    """The run's dedicated autocommit connections, one per concurrency slot, held as vacuumdb holds them.

    A connection is opened on first use with its session settings (application_name, lock_timeout,
    statement_timeout, jit off, synchronous_commit) set once, lent to one batch at a time and kept for the
    next batch: at most `concurrency` batches run at once, so at most that many connections are opened. A
    lost connection is dropped when its batch gives it back; the next lease opens a new one. Thread-safe
    (batches run in the task runner's threads).
    """

    def __init__(self, target: ConnectionTarget, lock_timeout_ms: int, statement_timeout_ms: int,
                 synchronous_commit: SynchronousCommit = "off"):
        self.target = target
        self.lock_timeout_ms = lock_timeout_ms
        self.statement_timeout_ms = statement_timeout_ms
        self.synchronous_commit = synchronous_commit
        self.opened = 0  # connections opened so far (tests and the benchmark read it)
        self._lock = threading.Lock()
        self._idle: list[tuple[Session, contextlib.ExitStack]] = []
        self._closed = False

    def _open(self) -> tuple[Session, contextlib.ExitStack]:
        stack = contextlib.ExitStack()
        session = stack.enter_context(connect(self.target, purpose="vacuum", autocommit=True,
                                              lock_timeout_ms=self.lock_timeout_ms,
                                              statement_timeout_ms=self.statement_timeout_ms,
                                              synchronous_commit=self.synchronous_commit))
        with self._lock:
            self.opened += 1
        return session, stack

    @contextlib.contextmanager
    def lease(self) -> Iterator[Session]:
        """A held connection (or a new one: RunbookDBError when the node cannot be reached) for one batch."""
        with self._lock:
            held = self._idle.pop() if self._idle else None
        if held is None:
            held = self._open()
        session, stack = held
        try:
            yield session
        finally:
            with self._lock:
                keep = not (self._closed or session.conn.broken or session.conn.closed)
                if keep:
                    self._idle.append(held)
            if not keep:
                stack.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for _, stack in idle:
            stack.close()

    def __enter__(self) -> VacuumSessions:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@task(name="vacuum-tables", retries=0, cache_policy=NO_CACHE)
def vacuum_tables(
    target: ConnectionTarget,
    refs: list[RelationRef],
    options: VacuumOptions,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
    deadline_epoch: float | None = None,
    sessions: VacuumSessions | None = None,
    progress: Progress | None = None,
    log: MaintenanceLogWriter | None = None,
    stop: Any = None,
) -> list[VacuumResult]:
    """VACUUM a batch of tables one after the other on a held connection; never raises for a database error.
    One Prefect task run for the batch (the flow runs batches through `vacuum_lane`: one per slot).

    `sessions`: the run's connections per concurrency slot (without it the batch opens and closes its own).
    Each table's outcome moves the run's `progress` bar; the batch's records are appended to `log` (the
    maintenance log) when the batch is done.
    """
    own = sessions is None
    held = sessions or VacuumSessions(target, lock_timeout_ms, statement_timeout_ms)
    try:
        results = vacuum_batch(held, refs, options, deadline_epoch, progress, stop)
    finally:
        if own:
            held.close()
    if log is not None:
        log.append([r.log_row() for r in results])
    return results


@task(name="vacuum-lane", retries=0, cache_policy=NO_CACHE)
def vacuum_lane(
    target: ConnectionTarget,
    queue: WorkQueue[list[RelationRef]],
    options: VacuumOptions,
    sessions: VacuumSessions,
    deadline_epoch: float | None = None,
    progress: Progress | None = None,
    log: MaintenanceLogWriter | None = None,
    stop: Any = None,
) -> list[tuple[int, list[VacuumResult]]]:
    """One concurrency slot's share of a run: batch after batch taken from `queue` when this slot is free (none
    after the window), on a held connection; each batch's records appended to the maintenance log as it ends.
    One Prefect task run per slot: the API's cost per task run stays off the tables. Returns (batch index,
    its results) for each batch it did."""
    done: list[tuple[int, list[VacuumResult]]] = []
    for index, refs in queue:
        results = vacuum_batch(sessions, refs, options, deadline_epoch, progress, stop)
        if log is not None:
            log.append([r.log_row() for r in results])
        done.append((index, results))
    return done


def vacuum_batch(sessions: VacuumSessions, refs: list[RelationRef], options: VacuumOptions,
                 deadline_epoch: float | None = None, progress: Progress | None = None, stop: Any = None
                 ) -> list[VacuumResult]:
    """The batch's tables in order on one leased connection: their statistics read before in one query, one
    VACUUM statement per table, the figures after in one query. A table that fails is a result; a lost
    connection is replaced for the next table; `turn_refused` is checked before every table."""
    results: list[VacuumResult] = []
    befores: dict[int, TableVacuumState] = {}
    done: list[tuple[VacuumResult, RelationRef]] = []
    remaining = list(refs)
    while remaining:
        try:
            with sessions.lease() as s:
                befores.update({t.oid: t for t in s.fetch_all(
                    BATCH_STATE_SQL, {"oids": [r.oid for r in remaining]}, TableVacuumState)})
                # `VACUUM (options) ` rendered once: per table only the identifier is quoted.
                prefix = sql.SQL(vacuum_prefix(options, s.server_version_num).as_string(s.conn))
                for ref, result in vacuum_in_order(s, remaining, befores, prefix, deadline_epoch, stop,
                                                   sessions.lock_timeout_ms):
                    results.append(counted(progress, result))
                    if result.status == "vacuumed":
                        done.append((result, ref))
        except RunbookDBError as exc:  # no connection, or lost while reading the statistics: this table fails
            ref = remaining.pop(0)
            results.append(counted(progress, turn_refused(ref, deadline_epoch, stop) or unreachable(ref, exc)))
    afters: dict[int, TableVacuumState] = {}
    if done:
        with contextlib.suppress(RunbookDBError):
            with sessions.lease() as s:
                afters = read_after(s, {ref.oid: befores[ref.oid] for _, ref in done})
    for result, ref in done:
        describe_vacuumed(result, befores[ref.oid], afters.get(ref.oid))
    return results


def turn_refused(ref: RelationRef, deadline_epoch: float | None, stop: Any = None) -> VacuumResult | None:
    """The check made before each table starts: None to go on, or the result of a table that must not start.
    `stop.reason()` (tasks.core.exclusion.StopCheck) first: a failover or high-load response of the cluster
    started, and has priority (the run stops at its next table); then the maintenance window."""
    if stop is not None and (why := stop.reason()):
        return VacuumResult(table=ref.qualified, status="skipped-stopped", reason=why,
                            summary=f"{ref.qualified} not vacuumed: {why}.")
    if deadline_epoch is not None and time.time() >= deadline_epoch:
        return VacuumResult(table=ref.qualified, status="skipped-window", reason="maintenance window ended",
                            summary=f"{ref.qualified} not vacuumed: the maintenance window had ended.")
    return None


def unreachable(ref: RelationRef, exc: RunbookDBError) -> VacuumResult:
    return VacuumResult(table=ref.qualified, status="failed", started_at=datetime.now(UTC), error=exc.sentence,
                        summary=f"{ref.qualified} failed: {exc.sentence}")


def read_after(s: Session, befores: dict[int, TableVacuumState], timeout_s: float = 3.0) -> dict[int, TableVacuumState]:
    """The vacuumed tables' statistics after their VACUUM, in one query. Before PG15 the statistics collector
    applies the counts asynchronously: read again until every table's vacuum count moved (at most
    `timeout_s`), so dead tuples after are not the old ones."""
    oids = list(befores)
    deadline = time.monotonic() + timeout_s
    wait = not capabilities(s.server_version_num).stats_in_shared_memory
    while True:
        after = {t.oid: t for t in s.fetch_all(BATCH_STATE_SQL, {"oids": oids}, TableVacuumState)}
        moved = all(after[o].vacuum_count > b.vacuum_count for o, b in befores.items() if o in after)
        if not wait or moved or time.monotonic() >= deadline:
            return after
        time.sleep(0.1)


def counted(progress: Progress | None, result: VacuumResult) -> VacuumResult:
    """The table's outcome on the progress bar (a table the window stopped is not done: the bar stays there)."""
    if progress is not None and result.status not in ("skipped-window", "skipped-stopped"):
        progress.advance(1, f"{result.table} {result.status}", result.status)
    return result


def vacuum_in_order(s: Session, remaining: list[RelationRef], befores: dict[int, TableVacuumState],
                    prefix: sql.Composable, deadline_epoch: float | None, stop: Any, lock_timeout_ms: int
                    ) -> Iterator[tuple[RelationRef, VacuumResult]]:
    """The tables of `remaining` in order, each taken off it as it starts, one VACUUM statement at a time; the
    window and a priority run are checked before each. Yields each table's result; stops early when the
    connection is lost (the tables not started stay in `remaining`, for a new connection)."""
    while remaining:
        ref = remaining.pop(0)
        before = befores.get(ref.oid)
        yield ref, (turn_refused(ref, deadline_epoch, stop) or not_planned(ref, before)
                    or vacuum_one(s, ref, before, sql.Composed([prefix, ref.identifier]), lock_timeout_ms))
        if s.conn.broken or s.conn.closed:
            return  # terminated or lost: the next table gets a new connection


def not_planned(ref: RelationRef, before: TableVacuumState | None) -> VacuumResult | None:
    """A table gone or replaced since it was planned fails without a statement (None: it is the one planned)."""
    if before is None or (before.schema_name, before.table_name) != (ref.schema_name, ref.name):
        error = "the table was dropped, renamed or replaced since it was planned"
        return VacuumResult(table=ref.qualified, status="failed", started_at=datetime.now(UTC), error=error,
                            summary=f"{ref.qualified} not vacuumed: {error}.")
    return None


def vacuum_one(s: Session, ref: RelationRef, before: TableVacuumState, statement: sql.Composable,
               lock_timeout_ms: int) -> VacuumResult:
    """`statement` (this table's VACUUM) on `s` (a dedicated autocommit connection with the run's timeouts),
    alone. A failure is the result, not an exception."""
    started, t0 = datetime.now(UTC), time.monotonic()
    notices: list[str] = []
    error: Exception | None = None

    def on_notice(d) -> None:
        notices.append(f"{d.sqlstate or ''} {d.message_primary or ''}")

    s.conn.add_notice_handler(on_notice)
    try:
        s.execute(statement)
    except Exception as exc:  # noqa: BLE001 - one table failing never stops the others
        error = exc
    finally:
        with contextlib.suppress(Exception):
            s.conn.remove_notice_handler(on_notice)
    return judged(ref, before, notices, error, lock_timeout_ms, started, time.monotonic() - t0)


def judged(ref: RelationRef, before: TableVacuumState, notices: list[str], error: Exception | None,
           lock_timeout_ms: int, started: datetime, seconds: float) -> VacuumResult:
    """One table's VACUUM outcome from its error and notices (SKIP_LOCKED and permission refusals are notices,
    not errors). The figures after are filled in by `describe_vacuumed` at the end of the batch."""
    result = VacuumResult(table=ref.qualified, status="failed", started_at=started,
                          dead_before=before.n_dead_tup, pages_before=before.relpages,
                          duration_s=round(seconds, 3))
    locked = [n for n in notices if n.startswith("55P03") or "lock not available" in n]
    # PG15 warns "skipping "t" --- only superuser, table owner, or database owner can vacuum it".
    denied = [n for n in notices if n.startswith("42501") or "permission denied" in n
              or ("skipping" in n and "owner" in n)]
    if isinstance(error, LockTimeout):
        result.status, result.reason, result.error = "skipped-locked", "lock_timeout expired", error.sentence
        result.summary = f"{ref.qualified} skipped: lock not granted within {lock_timeout_ms} ms."
    elif isinstance(error, RunbookDBError):  # statement_timeout, an operator's cancel, a terminated connection...
        result.error = error.sentence
        result.summary = f"{ref.qualified} failed: {error.sentence}"
    elif error is not None:
        result.error = f"{type(error).__name__}: {str(error)[:300]}"
        result.summary = f"{ref.qualified} failed unexpectedly: {result.error}"
    elif denied:
        result.error = (f"permission denied ({denied[0].split(' ', 1)[-1].strip()}): VACUUM needs the table's owner "
                        "or a superuser (PostgreSQL 17+: the MAINTAIN privilege on it, or pg_maintain)")
        result.summary = f"{ref.qualified} not vacuumed: {result.error}."
    elif locked:
        result.status, result.reason = "skipped-locked", "another session holds a conflicting lock (SKIP_LOCKED)"
        result.summary = f"{ref.qualified} skipped: {result.reason}."
    else:
        result.status = "vacuumed"
    return result


def describe_vacuumed(result: VacuumResult, before: TableVacuumState, after: TableVacuumState | None) -> None:
    """A vacuumed table's figures after and its one-sentence summary (after None: they could not be read)."""
    if after is not None:
        result.dead_after, result.pages_after = after.n_dead_tup, after.relpages
    result.summary = (f"{result.table} vacuumed in {result.duration_s:.2f} s: dead tuples "
                      f"{before.n_dead_tup} → {result.dead_after}, pages {before.relpages} → {result.pages_after}.")
    if after is not None and before.n_dead_tup >= 1000 and after.n_dead_tup >= 0.5 * before.n_dead_tup:
        result.reason = ("most dead tuples are still needed: an old snapshot, an idle transaction, a "
                         "replication slot's xmin or hot_standby_feedback holds the xmin horizon")
        result.summary += f" {result.reason[0].upper()}{result.reason[1:]}."
