"""Table and index usage of the connected database (troubleshooter 3.2): sequential scans, unused
indexes, dead tuples, last vacuum/analyze, and whether I/O is timed. pg_monitor suffices.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect


class TableUsage(BaseModel):
    name: str
    seq_scan: int
    seq_tup_read: int
    idx_scan: int | None
    idx_tup_fetch: int = 0
    n_live_tup: int
    n_dead_tup: int
    n_mod_since_analyze: int
    last_vacuum: datetime | None
    last_autovacuum: datetime | None
    last_analyze: datetime | None
    last_autoanalyze: datetime | None
    size_bytes: int
    heap_blks_hit: int
    heap_blks_read: int


class IndexUsage(BaseModel):
    name: str
    table_name: str
    idx_scan: int
    size_bytes: int
    is_unique: bool
    is_valid: bool


class IoSettings(BaseModel):
    track_io_timing: bool
    blk_read_ms: float
    blk_write_ms: float
    blks_read: int


class UsageSnapshot(BaseModel):
    tables: list[TableUsage]
    indexes: list[IndexUsage]
    io: IoSettings


# Scan, tuple and maintenance statistics of the user tables of this database, largest first.
TABLES_SQL = """
SELECT pg_catalog.quote_ident(s.schemaname) || '.' || pg_catalog.quote_ident(s.relname) AS name,
       s.seq_scan,
       s.seq_tup_read,
       s.idx_scan,
       coalesce(s.idx_tup_fetch, 0)             AS idx_tup_fetch,
       s.n_live_tup,
       s.n_dead_tup,
       s.n_mod_since_analyze,
       s.last_vacuum,
       s.last_autovacuum,
       s.last_analyze,
       s.last_autoanalyze,
       pg_catalog.pg_relation_size(s.relid)     AS size_bytes,
       coalesce(io.heap_blks_hit, 0)            AS heap_blks_hit,
       coalesce(io.heap_blks_read, 0)           AS heap_blks_read
  FROM pg_catalog.pg_stat_user_tables AS s
  LEFT JOIN pg_catalog.pg_statio_user_tables AS io ON io.relid = s.relid
 ORDER BY size_bytes DESC, s.n_live_tup DESC
 LIMIT %(limit)s
"""

# Indexes of this database with how often they were scanned and their size.
INDEXES_SQL = """
SELECT pg_catalog.quote_ident(s.schemaname) || '.' || pg_catalog.quote_ident(s.indexrelname) AS name,
       pg_catalog.quote_ident(s.schemaname) || '.' || pg_catalog.quote_ident(s.relname)      AS table_name,
       s.idx_scan,
       pg_catalog.pg_relation_size(s.indexrelid)   AS size_bytes,
       i.indisunique                               AS is_unique,
       i.indisvalid                                AS is_valid
  FROM pg_catalog.pg_stat_user_indexes AS s
  JOIN pg_catalog.pg_index AS i ON i.indexrelid = s.indexrelid
 ORDER BY s.idx_scan, size_bytes DESC
 LIMIT %(limit)s
"""

# Is I/O timed, and how much time did block reads and writes take in this database?
IO_SQL = """
SELECT current_setting('track_io_timing')::bool  AS track_io_timing,
       blk_read_time::float8                     AS blk_read_ms,
       blk_write_time::float8                    AS blk_write_ms,
       blks_read
  FROM pg_catalog.pg_stat_database
 WHERE datname = pg_catalog.current_database()
"""


@task(name="read-table-usage", **DB_TASK)
def read_usage(target: ConnectionTarget, limit: int = 500) -> UsageSnapshot:
    with connect(target, purpose="troubleshoot-performance") as db:
        return UsageSnapshot(
            tables=db.fetch_all(TABLES_SQL, {"limit": limit}, TableUsage),
            indexes=db.fetch_all(INDEXES_SQL, {"limit": limit}, IndexUsage),
            io=db.fetch_all(IO_SQL, None, IoSettings)[0])
