"""Index maintenance steps (runbook 2.3): the index inventory, scans per node, and the two actions
(REINDEX INDEX CONCURRENTLY, DROP INDEX CONCURRENTLY), each on its own autocommit connection with
lock_timeout and statement_timeout. An action that fails is a result, not an exception.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, Session, connect
from tasks.core.errors import LockTimeout, PermissionDenied, RunbookDBError
from tasks.core.progress import Progress
from tasks.core.relations import NameSpec, RelationRef, resolve, resolve_ref
from tasks.core.server_capabilities import capabilities


class IndexInfo(BaseModel):
    """One index as the primary's catalog describes it."""

    oid: int
    schema_name: str
    table_name: str
    table_oid: int
    name: str
    am: str
    size_bytes: int
    is_unique: bool
    is_primary: bool
    is_exclusion: bool
    is_replident: bool
    is_valid: bool
    is_ready: bool
    backs_constraint: bool
    key_columns: int
    indkey: list[int]
    indclass: list[int]
    indcollation: list[int]
    indoption: list[int]
    exprs: str | None
    pred: str | None
    definition: str
    idx_scan: int

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.name}"


class NodeScans(BaseModel):
    """Index scans counted on one node, and how long that node's statistics have been accumulating."""

    node: str
    window_days: float
    scans: dict[int, int]


# Every index in user schemas: its table, access method, flags, key definition (columns, operator
# classes, collations, options, expressions, predicate), definition and scans on this node.
# Sizes come from relpages: catalog only, no relation lock.
INDEX_INVENTORY_SQL = """
SELECT i.indexrelid::bigint AS oid,
       n.nspname AS schema_name,
       tc.relname AS table_name,
       tc.oid::bigint AS table_oid,
       ic.relname AS name,
       am.amname AS am,
       ic.relpages::bigint * pg_catalog.current_setting('block_size')::bigint AS size_bytes,
       i.indisunique AS is_unique,
       i.indisprimary AS is_primary,
       i.indisexclusion AS is_exclusion,
       i.indisreplident AS is_replident,
       i.indisvalid AS is_valid,
       i.indisready AS is_ready,
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint AS con WHERE con.conindid = i.indexrelid) AS backs_constraint,
       i.indnkeyatts AS key_columns,
       i.indkey::int2[]::int[] AS indkey,
       i.indclass::oid[]::bigint[] AS indclass,
       i.indcollation::oid[]::bigint[] AS indcollation,
       i.indoption::int2[]::int[] AS indoption,
       pg_catalog.pg_get_expr(i.indexprs, i.indrelid) AS exprs,
       pg_catalog.pg_get_expr(i.indpred, i.indrelid) AS pred,
       pg_catalog.pg_get_indexdef(i.indexrelid) AS definition,
       coalesce(pg_catalog.pg_stat_get_numscans(i.indexrelid), 0) AS idx_scan
  FROM pg_catalog.pg_index AS i
  JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
  JOIN pg_catalog.pg_class AS tc ON tc.oid = i.indrelid
  JOIN pg_catalog.pg_am AS am ON am.oid = ic.relam
  JOIN pg_catalog.pg_namespace AS n ON n.oid = ic.relnamespace
 WHERE n.nspname <> 'information_schema'
   AND n.nspname !~ '^pg_'
"""

# Scans of every user index on this node (a standby counts its own), keyed by oid (the same on
# physical standbys).
INDEX_SCANS_SQL = """
SELECT s.indexrelid::bigint AS oid,
       s.idx_scan AS idx_scan
  FROM pg_catalog.pg_stat_user_indexes AS s
"""

# Days over which this node's statistics have accumulated (since the last reset, or since the server
# started when never reset: the conservative choice).
STATS_WINDOW_SQL = """
SELECT extract(epoch FROM now() - coalesce(d.stats_reset, pg_catalog.pg_postmaster_start_time()))::float8
           / 86400 AS window_days
  FROM pg_catalog.pg_stat_database AS d
 WHERE d.datname = pg_catalog.current_database()
"""


class _Scan(BaseModel):
    oid: int
    idx_scan: int


@task(name="read-index-inventory", **DB_TASK)
def read_index_inventory(target: ConnectionTarget) -> list[IndexInfo]:
    with connect(target, purpose="index-maintenance") as s:
        return s.fetch_all(INDEX_INVENTORY_SQL, None, IndexInfo)


@task(name="read-index-scans", **DB_TASK)
def read_index_scans(target: ConnectionTarget) -> NodeScans:
    with connect(target, purpose="index-maintenance") as s:
        rows = s.fetch_all(INDEX_SCANS_SQL, None, _Scan)
        window = s.scalar(STATS_WINDOW_SQL) or 0.0
    return NodeScans(node=target.node, window_days=float(window), scans={r.oid: r.idx_scan for r in rows})


@task(name="resolve-indexes", **DB_TASK)
def resolve_indexes(target: ConnectionTarget, names: list[NameSpec]) -> list[RelationRef]:
    """Each operator-listed index name resolved; UnknownObject for any that is not an index."""
    with connect(target, purpose="index-maintenance") as s:
        return [resolve(s, name, kinds=("i",)) for name in names]


# Which of these indexes this role may not DROP (and, before PG17, not REINDEX): both need the owner's
# privileges (superuser, the owner, or a member of the owning role); their name and the owning role's name.
NOT_OWNED_SQL = """
SELECT c.oid::bigint AS oid,
       n.nspname AS schema_name,
       c.relname AS name,
       pg_catalog.pg_get_userbyid(c.relowner) AS owner
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.oid = ANY(%(oids)s::oid[])
   AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')
 ORDER BY n.nspname, c.relname
"""

# Which of these indexes this role may not REINDEX on PG17+: neither the owner's privileges nor MAINTAIN on
# the index's table (granted directly or through pg_maintain).
NOT_MAINTAINABLE_SQL = NOT_OWNED_SQL.replace(
    "  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace\n",
    "  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace\n"
    "  JOIN pg_catalog.pg_index AS i ON i.indexrelid = c.oid\n").replace(
    "   AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')\n",
    "   AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')\n"
    "   AND NOT pg_catalog.has_table_privilege(i.indrelid, 'MAINTAIN')\n")


class _NotOwned(BaseModel):
    oid: int
    schema_name: str
    name: str
    owner: str


class MissingIndexGrant(PermissionDenied):
    """The runbook role may not rebuild or drop some planned indexes: nothing was done."""

    problem = "may not rebuild or drop these indexes"

    def __init__(self, target: str, role: str, indexes: list[str], owners: list[str]):
        self.role, self.indexes, self.owners = role, indexes, owners
        self.action = (f"run index maintenance as the owner (or superuser), or GRANT {', '.join(owners)} TO {role}: "
                       "DROP INDEX needs the table owner's privileges, and so does REINDEX before PostgreSQL 17 "
                       "(17+: GRANT MAINTAIN ON the table, or GRANT pg_maintain, allows REINDEX); nothing was changed")
        shown = ", ".join(indexes[:10]) + (f" and {len(indexes) - 10} more" if len(indexes) > 10 else "")
        super().__init__(target, f"role {role} may not act on {shown} (it does not own them"
                                 " and, for a rebuild on 17+, holds no MAINTAIN on their table)", "42501")

    def __reduce__(self):
        return (MissingIndexGrant, (self.target, self.role, self.indexes, self.owners))


@task(name="check-index-grants", **DB_TASK)
def check_index_grants(target: ConnectionTarget, refs: list[RelationRef],
                       rebuilds: list[RelationRef] | None = None) -> None:
    """MissingIndexGrant, before any action starts, when this role may not act on every planned index.

    `refs` are dropped (ownership needed); `rebuilds` are reindexed: ownership, or on PG17+ MAINTAIN on the
    table (directly or through pg_maintain)."""
    rebuilds = rebuilds or []
    if not refs and not rebuilds:
        return
    with connect(target, purpose="index-maintenance") as s:
        maintain = capabilities(s.server_version_num).maintain_privilege
        owned_only = refs if maintain else refs + rebuilds
        denied = s.fetch_all(NOT_OWNED_SQL, {"oids": [r.oid for r in owned_only]}, _NotOwned) if owned_only else []
        if maintain and rebuilds:
            denied += s.fetch_all(NOT_MAINTAINABLE_SQL, {"oids": [r.oid for r in rebuilds]}, _NotOwned)
    if denied:
        names = sorted({f"{d.schema_name}.{d.name}" for d in denied})
        raise MissingIndexGrant(target.label, target.user, names, sorted({d.owner for d in denied}))


class IndexActionResult(BaseModel):
    index: str
    action: Literal["reindex", "drop"]
    status: Literal["done", "skipped-locked", "skipped-stopped", "failed", "planned", "refused"]
    statement: str
    undo: str | None = None
    reason: str = ""
    size_before: int | None = None
    size_after: int | None = None
    duration_s: float = 0.0
    started_at: datetime | None = None
    error: str | None = None
    cleanup: list[str] = Field(default_factory=list,
                               description="What was done with the _ccnew leftovers of an interrupted REINDEX.")
    summary: str = ""


# Size of one index in bytes (takes ACCESS SHARE: run under lock_timeout).
INDEX_SIZE_SQL = """
SELECT pg_catalog.pg_relation_size(%(oid)s::oid::regclass) AS size_bytes
"""


# Invalid indexes on the table of index %(oid)s named like that index (%(name)s, which PostgreSQL may
# truncate to fit NAMEDATALEN) + '_ccnew' + an optional number: what an interrupted
# REINDEX INDEX CONCURRENTLY of it leaves behind.
CCNEW_LEFTOVERS_SQL = """
SELECT c.oid::bigint AS oid,
       n.nspname AS schema_name,
       c.relname AS name
  FROM pg_catalog.pg_index AS i
  JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE i.indrelid = (SELECT x.indrelid FROM pg_catalog.pg_index AS x WHERE x.indexrelid = %(oid)s)
   AND NOT i.indisvalid
   AND c.relname ~ '._ccnew[0-9]*$'
   AND pg_catalog.starts_with(%(name)s, pg_catalog.substring(c.relname, '^(.+)_ccnew[0-9]*$'))
"""


class _Leftover(BaseModel):
    oid: int
    schema_name: str
    name: str


def ccnew_leftovers(s: Session, ref: RelationRef) -> list[_Leftover]:
    return s.fetch_all(CCNEW_LEFTOVERS_SQL, {"oid": ref.oid, "name": ref.name}, _Leftover)


def drop_reindex_leftovers(target: ConnectionTarget, ref: RelationRef, existed_before: set[int],
                           lock_timeout_ms: int, statement_timeout_ms: int) -> list[str]:
    """After an interrupted REINDEX INDEX CONCURRENTLY of `ref`: DROP INDEX CONCURRENTLY every invalid
    `<index>_ccnew*` on its table that did not exist before it started. One sentence per leftover."""
    out: list[str] = []
    try:
        with connect(target, purpose="index-maintenance", autocommit=True, lock_timeout_ms=lock_timeout_ms,
                     statement_timeout_ms=statement_timeout_ms) as s:
            for left in ccnew_leftovers(s, ref):
                if left.oid in existed_before:
                    continue
                name = f"{left.schema_name}.{left.name}"
                try:
                    s.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                        sql.Identifier(left.schema_name, left.name)))
                    out.append(f"dropped the invalid leftover {name} of the interrupted rebuild")
                except RunbookDBError as exc:
                    out.append(f"the invalid leftover {name} was NOT dropped ({exc.sentence}): "
                               "the next run reports it; drop it by listing it")
    except RunbookDBError as exc:
        out.append(f"could not look for _ccnew leftovers of {ref.qualified}: {exc.sentence}")
    return out


def action_statement(action: str, ref: RelationRef) -> sql.Composed:
    if action == "reindex":
        return sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(ref.identifier)
    return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(ref.identifier)


@task(name="index-action", retries=0, cache_policy=NO_CACHE)
def run_index_action(target: ConnectionTarget, planned: IndexActionResult, ref: RelationRef,
                     lock_timeout_ms: int, statement_timeout_ms: int) -> IndexActionResult:
    """REINDEX INDEX CONCURRENTLY or DROP INDEX CONCURRENTLY on a dedicated autocommit connection."""
    result = planned.model_copy(update={"status": "failed", "started_at": datetime.now(UTC)})
    t0 = time.monotonic()
    before: set[int] | None = None  # the _ccnew-named invalid indexes there before a REINDEX started
    try:
        with connect(target, purpose="index-maintenance", autocommit=True, lock_timeout_ms=lock_timeout_ms,
                     statement_timeout_ms=statement_timeout_ms) as s:
            current = resolve_ref(s, ref)
            if current is None or current.oid != ref.oid:
                result.error = "the index was dropped or replaced since it was planned"
                result.summary = f"{ref.qualified}: not touched, {result.error}."
                return result
            result.size_before = s.scalar(INDEX_SIZE_SQL, {"oid": ref.oid})
            if planned.action == "reindex":
                before = {left.oid for left in ccnew_leftovers(s, ref)}
            s.execute(action_statement(planned.action, ref))
            after = resolve_ref(s, ref)  # REINDEX CONCURRENTLY gives the index a new oid
            result.size_after = s.scalar(INDEX_SIZE_SQL, {"oid": after.oid}) if after else 0
        result.status = "done"
        result.duration_s = round(time.monotonic() - t0, 3)
        verb = "rebuilt" if planned.action == "reindex" else "dropped"
        result.summary = (f"{ref.qualified} {verb} in {result.duration_s:.2f} s: "
                          f"{result.size_before:,} → {result.size_after:,} bytes.")
    except LockTimeout as exc:
        result.status, result.error = "skipped-locked", exc.sentence
        result.summary = f"{ref.qualified}: skipped, lock not granted within {lock_timeout_ms} ms."
    except RunbookDBError as exc:
        result.error = exc.sentence
        result.summary = f"{ref.qualified}: {planned.action} failed: {exc.sentence}"
    except Exception as exc:  # noqa: BLE001 - one index failing never stops the others
        result.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        result.summary = f"{ref.qualified}: {planned.action} failed unexpectedly: {result.error}"
    if before is not None and result.status != "done":
        # An interrupted REINDEX CONCURRENTLY may leave an invalid <index>_ccnew: remove what it left.
        result.cleanup = drop_reindex_leftovers(target, ref, before, lock_timeout_ms, statement_timeout_ms)
        if result.cleanup:
            result.error = f"{result.error}; " + "; ".join(result.cleanup)
            result.summary = result.summary.rstrip(".") + "; " + "; ".join(result.cleanup) + "."
    result.duration_s = round(time.monotonic() - t0, 3)
    return result


def run_index_actions(target: ConnectionTarget, actions: list[IndexActionResult], refs: dict[str, RelationRef],
                      lock_timeout_ms: int, statement_timeout_ms: int,
                      progress: Progress | None = None, stop: Any = None) -> list[IndexActionResult]:
    """Each planned action in turn (the others as they are); each outcome moves the run's progress bar.
    `stop.reason()` (tasks.core.exclusion.StopCheck), asked before each action, stops the run when a failover or
    high-load response of the cluster started: the remaining actions are `skipped-stopped`."""
    out = []
    for action in actions:
        if action.status == "planned" and stop is not None and (why := stop.reason()):
            action = action.model_copy(update={"status": "skipped-stopped", "reason": why,
                                               "summary": f"{action.index} {action.action} not started: {why}."})
        elif action.status == "planned":
            action = run_index_action(target, action, refs[action.index], lock_timeout_ms, statement_timeout_ms)
            if progress is not None:
                progress.advance(1, f"{action.index} {action.action}: {action.status}", action.status)
        out.append(action)
    return out
