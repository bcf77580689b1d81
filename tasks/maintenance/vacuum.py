"""Vacuum steps (runbook 2.1): read what needs vacuum, vacuum one table on its own connection.

Each VACUUM runs on a dedicated autocommit connection with lock_timeout and statement_timeout,
with SKIP_LOCKED where the server supports it (PG12+). A table that fails is a result, not an
exception: one table never stops the others.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, Session, connect
from tasks.core.errors import LockTimeout, RunbookDBError
from tasks.core.progress import Progress
from tasks.core.relations import NameSpec, RelationRef, resolve
from tasks.core.server_capabilities import capabilities


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

# The same for one table, straight from the statistics functions (cheap: no view over every table).
ONE_TABLE_STATE_SQL = """
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
 WHERE c.oid = %(oid)s
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


class VacuumResult(BaseModel):
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


def read_table_states(session: Session, oids: list[int] | None = None) -> list[TableVacuumState]:
    return session.fetch_all(TABLE_STATE_SQL, {"oids": oids}, TableVacuumState)


@task(name="read-vacuum-candidates", **DB_TASK)
def read_vacuum_candidates(target: ConnectionTarget) -> tuple[list[TableVacuumState], FreezeLimits]:
    """Every user table's vacuum statistics and the server's freeze limits."""
    with connect(target, purpose="vacuum-plan") as s:
        return read_table_states(s), s.fetch_one(FREEZE_LIMITS_SQL, None, FreezeLimits)


def _wait_for_collector(s: Session, ref: RelationRef, before: TableVacuumState,
                        after: TableVacuumState, timeout_s: float = 3.0) -> TableVacuumState:
    """Before PG15 the statistics collector applies this VACUUM's counts asynchronously: read the table's
    state again until its vacuum count moved (at most `timeout_s`), so dead tuples after are not the old ones."""
    deadline = time.monotonic() + timeout_s
    while after is not None and after.vacuum_count <= before.vacuum_count and time.monotonic() < deadline:
        time.sleep(0.1)
        after = s.fetch_one(ONE_TABLE_STATE_SQL, {"oid": ref.oid}, TableVacuumState) or after
    return after


@task(name="resolve-tables", **DB_TASK)
def resolve_tables(target: ConnectionTarget, names: list[NameSpec]) -> list[RelationRef]:
    """Each operator-given name resolved to exactly one table; UnknownObject for any that is not."""
    with connect(target, purpose="vacuum-plan") as s:
        return [resolve(s, name) for name in names]


def vacuum_statement(ref: RelationRef, options: VacuumOptions, server_version_num: int) -> sql.Composed:
    """VACUUM (options) schema.table, with only the options this server version supports."""
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
        return sql.SQL("VACUUM {}").format(ref.identifier)
    return sql.SQL("VACUUM ({}) {}").format(sql.SQL(", ").join(opts), ref.identifier)


@task(name="vacuum-tables", retries=0, cache_policy=NO_CACHE)
def vacuum_tables(
    target: ConnectionTarget,
    refs: list[RelationRef],
    options: VacuumOptions,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
    deadline_epoch: float | None = None,
    one_connection: bool = False,
    progress: Progress | None = None,
    stop: Any = None,
) -> list[VacuumResult]:
    """VACUUM a batch of tables one after the other; never raises for a database error. Batches keep
    Prefect's per-task cost off thousands of small tables.

    Each table gets its own autocommit connection, or with `one_connection` the batch shares one
    dedicated autocommit connection (a new one after a connection is lost): opening a connection
    (SCRAM) costs more than vacuuming a small table. Each table's outcome moves the run's `progress` bar.
    """
    if not one_connection:
        return [counted(progress, vacuum_one(target, ref, options, lock_timeout_ms, statement_timeout_ms,
                                             deadline_epoch, stop=stop)) for ref in refs]
    results: list[VacuumResult] = []
    with contextlib.ExitStack() as stack:
        session: Session | None = None
        for ref in refs:
            if session is None or session.conn.broken or session.conn.closed:
                stack.close()
                try:
                    session = stack.enter_context(connect(
                        target, purpose="vacuum", autocommit=True, lock_timeout_ms=lock_timeout_ms,
                        statement_timeout_ms=statement_timeout_ms))
                except RunbookDBError:
                    session = None  # vacuum_one reconnects and reports the error for this table
            results.append(counted(progress, vacuum_one(target, ref, options, lock_timeout_ms, statement_timeout_ms,
                                                        deadline_epoch, session=session, stop=stop)))
    return results


def counted(progress: Progress | None, result: VacuumResult) -> VacuumResult:
    """The table's outcome on the progress bar (a table the window stopped is not done: the bar stays there)."""
    if progress is not None and result.status not in ("skipped-window", "skipped-stopped"):
        progress.advance(1, f"{result.table} {result.status}", result.status)
    return result


def vacuum_one(
    target: ConnectionTarget,
    ref: RelationRef,
    options: VacuumOptions,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
    deadline_epoch: float | None = None,
    session: Session | None = None,
    stop: Any = None,
) -> VacuumResult:
    """VACUUM one table on its own autocommit connection (or on `session`, a dedicated autocommit one);
    a failure is the result, not an exception. `stop.reason()` (tasks.core.exclusion.StopCheck), asked first,
    stops the run before this table when a failover or high-load response of the cluster started."""
    if stop is not None and (why := stop.reason()):
        return VacuumResult(table=ref.qualified, status="skipped-stopped", reason=why,
                            summary=f"{ref.qualified} not vacuumed: {why}.")
    if deadline_epoch is not None and time.time() >= deadline_epoch:
        return VacuumResult(table=ref.qualified, status="skipped-window", reason="maintenance window ended",
                            summary=f"{ref.qualified} not vacuumed: the maintenance window had ended.")
    started, t0 = datetime.now(UTC), time.monotonic()
    result = VacuumResult(table=ref.qualified, status="failed", started_at=started)
    notices: list[str] = []
    try:
        opened = contextlib.nullcontext(session) if session is not None else connect(
            target, purpose="vacuum", autocommit=True, lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms)
        with opened as s:
            before = s.fetch_one(ONE_TABLE_STATE_SQL, {"oid": ref.oid}, TableVacuumState)
            if before is None or (before.schema_name, before.table_name) != (ref.schema_name, ref.name):
                result.error = "the table was dropped, renamed or replaced since it was planned"
                result.summary = f"{ref.qualified} not vacuumed: {result.error}."
                return result
            def on_notice(d) -> None:
                notices.append(f"{d.sqlstate or ''} {d.message_primary or ''}")

            s.conn.add_notice_handler(on_notice)
            try:
                s.execute(vacuum_statement(ref, options, s.server_version_num))
            finally:
                s.conn.remove_notice_handler(on_notice)
            after = s.fetch_one(ONE_TABLE_STATE_SQL, {"oid": ref.oid}, TableVacuumState)
            if not capabilities(s.server_version_num).stats_in_shared_memory and not notices:
                after = _wait_for_collector(s, ref, before, after)
        result.dead_before, result.dead_after = before.n_dead_tup, after.n_dead_tup
        result.pages_before, result.pages_after = before.relpages, after.relpages
        result.duration_s = round(time.monotonic() - t0, 3)
        locked = [n for n in notices if n.startswith("55P03") or "lock not available" in n]
        # PG15 warns "skipping "t" --- only superuser, table owner, or database owner can vacuum it".
        denied = [n for n in notices if n.startswith("42501") or "permission denied" in n
                  or ("skipping" in n and "owner" in n)]
        if denied:
            result.status, result.error = "failed", (
                f"permission denied ({denied[0].split(' ', 1)[-1].strip()}): VACUUM needs the table's owner or a "
                "superuser (PostgreSQL 17+: the MAINTAIN privilege on it, or pg_maintain)")
            result.summary = f"{ref.qualified} not vacuumed: {result.error}."
        elif locked:
            result.status, result.reason = "skipped-locked", "another session holds a conflicting lock (SKIP_LOCKED)"
            result.summary = f"{ref.qualified} skipped: {result.reason}."
        else:
            result.status = "vacuumed"
            result.summary = (f"{ref.qualified} vacuumed in {result.duration_s:.2f} s: dead tuples "
                              f"{before.n_dead_tup} → {after.n_dead_tup}, pages {before.relpages} → {after.relpages}.")
            if before.n_dead_tup >= 1000 and after.n_dead_tup >= 0.5 * before.n_dead_tup:
                result.reason = ("most dead tuples are still needed: an old snapshot, an idle transaction, a "
                                 "replication slot's xmin or hot_standby_feedback holds the xmin horizon")
                result.summary += f" {result.reason[0].upper()}{result.reason[1:]}."
    except LockTimeout as exc:
        result.status, result.reason, result.error = "skipped-locked", "lock_timeout expired", exc.sentence
        result.summary = f"{ref.qualified} skipped: lock not granted within {lock_timeout_ms} ms."
    except RunbookDBError as exc:
        result.error = exc.sentence
        result.summary = f"{ref.qualified} failed: {exc.sentence}"
    except Exception as exc:  # noqa: BLE001 - one table failing never stops the others
        result.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        result.summary = f"{ref.qualified} failed unexpectedly: {result.error}"
    result.duration_s = round(time.monotonic() - t0, 3)
    return result
