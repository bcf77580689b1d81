"""Storage (report 1.2): database sizes, largest relations split heap / TOAST / indexes, WAL, temp files.

pg_monitor suffices: pg_read_all_stats allows pg_database_size of every database and
pg_ls_waldir is granted to pg_monitor.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.core.errors import PermissionDenied


class DatabaseSize(BaseModel):
    datname: str
    size_bytes: int
    temp_files: int
    temp_bytes: int
    stats_reset: datetime | None


class RelationSize(BaseModel):
    name: str
    total_bytes: int
    heap_bytes: int
    toast_bytes: int
    index_bytes: int


class StorageSnapshot(BaseModel):
    databases: list[DatabaseSize]
    relations: list[RelationSize]
    wal_bytes: int | None
    wal_files: int | None
    wal_error: str | None = None


# Size of every database that accepts connections, with its temp-file counters.
DATABASE_SIZES_SQL = """
SELECT d.datname::text                              AS datname,
       pg_catalog.pg_database_size(d.oid)           AS size_bytes,
       coalesce(s.temp_files, 0)                    AS temp_files,
       coalesce(s.temp_bytes, 0)                    AS temp_bytes,
       s.stats_reset
  FROM pg_catalog.pg_database AS d
  LEFT JOIN pg_catalog.pg_stat_database AS s ON s.datid = d.oid
 WHERE d.datallowconn
 ORDER BY size_bytes DESC
"""

# The largest tables (and materialized views) of this database, split into heap, TOAST and indexes.
RELATION_SIZES_SQL = """
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS name,
       pg_catalog.pg_total_relation_size(c.oid)                             AS total_bytes,
       pg_catalog.pg_relation_size(c.oid)
       + pg_catalog.pg_relation_size(c.oid, 'fsm')
       + pg_catalog.pg_relation_size(c.oid, 'vm')                           AS heap_bytes,
       coalesce(pg_catalog.pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast_bytes,
       pg_catalog.pg_indexes_size(c.oid)                                    AS index_bytes
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'm', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_toast'
 ORDER BY total_bytes DESC
 LIMIT %(limit)s
"""

# How much WAL sits in pg_wal right now?
WAL_DIR_SQL = """
SELECT coalesce(sum(size), 0)::bigint   AS wal_bytes,
       count(*)::int                    AS wal_files
  FROM pg_catalog.pg_ls_waldir()
"""


class _Wal(BaseModel):
    wal_bytes: int
    wal_files: int


@task(name="read-storage", **DB_TASK)
def read_storage(target: ConnectionTarget, limit: int = 20) -> StorageSnapshot:
    with connect(target, purpose="report-storage") as db:
        databases = db.fetch_all(DATABASE_SIZES_SQL, None, DatabaseSize)
        relations = db.fetch_all(RELATION_SIZES_SQL, {"limit": limit}, RelationSize)
        try:
            wal = db.fetch_all(WAL_DIR_SQL, None, _Wal)[0]
        except PermissionDenied as exc:
            return StorageSnapshot(databases=databases, relations=relations, wal_bytes=None, wal_files=None,
                                   wal_error=f"{exc.detail}: grant pg_monitor (or EXECUTE on pg_ls_waldir)")
    return StorageSnapshot(databases=databases, relations=relations, wal_bytes=wal.wal_bytes, wal_files=wal.wal_files)
