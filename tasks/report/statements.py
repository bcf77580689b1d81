"""pg_stat_statements counters (report 1.2, troubleshooter 3.2), read without ever resetting them.

Column names follow the version of the extension created in the database, not the server's:
`tasks.core.server_capabilities` decides them from pg_extension.extversion. Utility statements are not
normalized before PG16 (ALTER ROLE ... PASSWORD '...' keeps its literal), so texts are redacted as they
are read, before anything stores them. Works with pg_monitor (pg_read_all_stats shows every statement's text).
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.core.errors import RunbookDBError
from tasks.core.redact import redact_sql
from tasks.core.server_capabilities import StatementsColumns, capabilities

ENABLE_HINT = (
    "add pg_stat_statements to shared_preload_libraries (restart needed), then run "
    "CREATE EXTENSION pg_stat_statements; in the database the runbooks connect to"
)


class StatementFigures(BaseModel):
    """The figures of one statement (userid, dbid, toplevel, queryid): cumulative, or a delta."""

    key: str
    datname: str | None
    usename: str | None
    query: str
    calls: int
    total_ms: float
    rows: int
    shared_blks_hit: int
    shared_blks_read: int
    temp_blks_written: int
    blk_read_ms: float


class StatementCounters(StatementFigures):
    """Cumulative counters of one statement, as pg_stat_statements holds them."""

    hidden: bool = Field(default=False, exclude=True, description="queryid and text hidden from this role.")


class StatementsSnapshot(BaseModel):
    available: bool
    reason: str | None = Field(default=None, description="Why the section is empty, and how to enable it.")
    stats_reset: datetime | None = Field(default=None, description="pg_stat_statements_info.stats_reset (PG14+).")
    dealloc: int | None = Field(default=None, description="Entries evicted since the reset (extension 1.9+).")
    extversion: str | None = Field(default=None, description="pg_stat_statements version created in the database.")
    default_version: str | None = Field(default=None, description="The version ALTER EXTENSION ... UPDATE gives.")
    max_entries: int | None = Field(default=None, description="pg_stat_statements.max: entries kept before "
                                                               "the least used are evicted.")
    statements: list[StatementCounters] = Field(default_factory=list)

    hidden: int = Field(default=0, description="Statements of other roles this role may not see "
                                               "(it lacks pg_read_all_stats): left out.")


# Is pg_stat_statements created in this database: which version, in which schema, which version would an
# update give, and how many entries does it keep? (Whether it is preloaded shows when its view is read:
# shared_preload_libraries itself needs pg_read_all_settings.)
EXTENSION_SQL = """
SELECT e.extversion::text                                              AS extversion,
       n.nspname::text                                                 AS schema,
       (SELECT a.default_version::text
          FROM pg_catalog.pg_available_extensions AS a
         WHERE a.name = 'pg_stat_statements')                          AS default_version,
       current_setting('pg_stat_statements.max', true)::int            AS max_entries
  FROM pg_catalog.pg_extension AS e
  JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
 WHERE e.extname = 'pg_stat_statements'
"""
NOT_LOADED_SQLSTATE = "55000"  # object_not_in_prerequisite_state: "must be loaded via shared_preload_libraries"

# Cumulative counters of every statement, with its database and role names (version columns filled in).
STATEMENTS_SQL = """
SELECT concat_ws(':', s.userid, s.dbid, {toplevel}, s.queryid) AS key,
       d.datname::text                                    AS datname,
       r.rolname::text                                    AS usename,
       left(s.query, 1000)                                AS query,
       s.calls,
       s.{total_ms}::float8                               AS total_ms,
       s.rows,
       s.shared_blks_hit,
       s.shared_blks_read,
       s.temp_blks_written,
       s.{blk_read_ms}::float8                            AS blk_read_ms,
       s.queryid IS NULL                                  AS hidden
  FROM {schema}.pg_stat_statements AS s
  LEFT JOIN pg_catalog.pg_database AS d ON d.oid = s.dbid
  LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = s.userid
"""

# When were the statement statistics last reset, and how many entries were evicted (extension 1.9+)?
INFO_SQL = """
SELECT stats_reset,
       dealloc
  FROM {schema}.pg_stat_statements_info
"""


class _Extension(BaseModel):
    extversion: str
    schema_: str = Field(alias="schema")
    default_version: str | None
    max_entries: int | None


class _Info(BaseModel):
    stats_reset: datetime | None
    dealloc: int | None


def statements_query(cols: StatementsColumns, schema: str) -> sql.Composed:
    """The statements query with the column names of this extension version."""
    toplevel = sql.SQL("s.") + sql.Identifier(cols.toplevel) if cols.toplevel else sql.SQL("true")
    return sql.SQL(STATEMENTS_SQL).format(
        toplevel=toplevel, total_ms=sql.Identifier(cols.total_ms),
        blk_read_ms=sql.Identifier(cols.blk_read_ms), schema=sql.Identifier(schema))


@task(name="read-statements", **DB_TASK)
def read_statements(target: ConnectionTarget) -> StatementsSnapshot:
    """Every statement's cumulative counters, or why there are none (extension missing, not loaded, too old)."""
    with connect(target, purpose="report-statements") as db:
        ext = db.fetch_one(EXTENSION_SQL, None, _Extension)
        if ext is None:
            return StatementsSnapshot(
                available=False,
                reason=f"pg_stat_statements is not created in database {target.database}: {ENABLE_HINT}.")
        found = {"extversion": ext.extversion, "default_version": ext.default_version, "max_entries": ext.max_entries}
        cols = capabilities(db.server_version_num, ext.extversion).statements
        if cols is None:
            return StatementsSnapshot(
                available=False, **found,
                reason=f"pg_stat_statements {ext.extversion} is older than 1.2 (no queryid to key statements by): "
                       "run ALTER EXTENSION pg_stat_statements UPDATE; in that database.")
        try:
            rows = db.fetch_all(statements_query(cols, ext.schema_), None, StatementCounters)
        except RunbookDBError as exc:
            if exc.sqlstate != NOT_LOADED_SQLSTATE:
                raise
            return StatementsSnapshot(
                available=False, **found,
                reason=f"pg_stat_statements is created but not in shared_preload_libraries: {ENABLE_HINT}.")
        info = (db.fetch_all(sql.SQL(INFO_SQL).format(schema=sql.Identifier(ext.schema_)), None, _Info)[0]
                if cols.info_view else _Info(stats_reset=None, dealloc=None))
    visible = [r.model_copy(update={"query": redact_sql(r.query, 1000)}) for r in rows if not r.hidden]
    return StatementsSnapshot(available=True, stats_reset=info.stats_reset, dealloc=info.dealloc, **found,
                              statements=visible, hidden=sum(r.hidden for r in rows))
