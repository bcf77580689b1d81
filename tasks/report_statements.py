"""pg_stat_statements counters (report 1.2, troubleshooter 3.2), read without ever resetting them.

Column names differ by server version; `statement_columns` is the one place that branches on
server_version_num. Utility statements are not normalized before PG16 (ALTER ROLE ... PASSWORD
'...' keeps its literal), so texts are redacted as they are read, before anything stores them.
Works with pg_monitor (pg_read_all_stats shows every statement's text).
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.db import DB_TASK, connect
from tasks.errors import RunbookDBError
from tasks.health_report import redact_sql

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
    dealloc: int | None = Field(default=None, description="Entries evicted since the reset (PG14+).")
    statements: list[StatementCounters] = Field(default_factory=list)

    hidden: int = Field(default=0, description="Statements of other roles this role may not see "
                                               "(it lacks pg_read_all_stats): left out.")


def statement_columns(version_num: int) -> dict[str, str]:
    """The pg_stat_statements column for each of our fields, by server version (the one branch)."""
    return {
        # PG13 renamed total_time to total_exec_time (and added planning time).
        "total_ms": "total_exec_time" if version_num >= 130000 else "total_time",
        # PG17 renamed blk_read_time to shared_blk_read_time (and added local_blk_read_time).
        "blk_read_ms": "shared_blk_read_time" if version_num >= 170000 else "blk_read_time",
        # PG14 added toplevel; before, every row is top level.
        "toplevel": "toplevel" if version_num >= 140000 else "",
    }


# Is pg_stat_statements created in this database? (Whether it is preloaded shows when its view is read:
# shared_preload_libraries itself needs pg_read_all_settings.)
EXTENSION_SQL = """
SELECT exists (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_stat_statements') AS installed
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

# When were the statement statistics last reset, and how many entries were evicted (PG14+)?
INFO_SQL = """
SELECT stats_reset,
       dealloc
  FROM {schema}.pg_stat_statements_info
"""

# Which schema holds the extension's views?
SCHEMA_SQL = """
SELECT n.nspname::text
  FROM pg_catalog.pg_extension AS e
  JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
 WHERE e.extname = 'pg_stat_statements'
"""




class _Info(BaseModel):
    stats_reset: datetime | None
    dealloc: int | None


def statements_query(version_num: int, schema: str) -> sql.Composed:
    cols = statement_columns(version_num)
    toplevel = sql.SQL("s.") + sql.Identifier(cols["toplevel"]) if cols["toplevel"] else sql.SQL("true")
    return sql.SQL(STATEMENTS_SQL).format(
        toplevel=toplevel, total_ms=sql.Identifier(cols["total_ms"]),
        blk_read_ms=sql.Identifier(cols["blk_read_ms"]), schema=sql.Identifier(schema))


@task(name="read-statements", **DB_TASK)
def read_statements(target: ConnectionTarget) -> StatementsSnapshot:
    """Every statement's cumulative counters, or why there are none (extension missing)."""
    with connect(target, purpose="report-statements") as db:
        if not db.scalar(EXTENSION_SQL):
            return StatementsSnapshot(
                available=False,
                reason=f"pg_stat_statements is not created in database {target.database}: {ENABLE_HINT}.")
        schema = db.scalar(SCHEMA_SQL)
        try:
            rows = db.fetch_all(statements_query(db.server_version_num, schema), None, StatementCounters)
        except RunbookDBError as exc:
            if exc.sqlstate != NOT_LOADED_SQLSTATE:
                raise
            return StatementsSnapshot(
                available=False,
                reason=f"pg_stat_statements is created but not in shared_preload_libraries: {ENABLE_HINT}.")
        info = (db.fetch_all(sql.SQL(INFO_SQL).format(schema=sql.Identifier(schema)), None, _Info)[0]
                if db.server_version_num >= 140000 else _Info(stats_reset=None, dealloc=None))
    visible = [r.model_copy(update={"query": redact_sql(r.query, 1000)}) for r in rows if not r.hidden]
    return StatementsSnapshot(available=True, stats_reset=info.stats_reset, dealloc=info.dealloc,
                              statements=visible, hidden=sum(r.hidden for r in rows))
