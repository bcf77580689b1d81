"""Cache hits (report 1.2, troubleshooter 3.2): cumulative block counters per database, top tables and indexes.

Ratios are computed from deltas in tasks/report/deltas.py; these reads only take counters.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect


class DatabaseBlocks(BaseModel):
    datname: str
    blks_hit: int
    blks_read: int
    stats_reset: datetime | None


class RelationBlocks(BaseModel):
    """Heap or index block counters of one relation of the connected database."""

    kind: str
    name: str
    blks_hit: int
    blks_read: int


class CacheSnapshot(BaseModel):
    databases: list[DatabaseBlocks]
    relations: list[RelationBlocks]


# Shared-buffer hits and reads of every database since its statistics were reset.
DATABASE_BLOCKS_SQL = """
SELECT datname::text          AS datname,
       blks_hit,
       blks_read,
       stats_reset
  FROM pg_catalog.pg_stat_database
 WHERE datname IS NOT NULL
 ORDER BY datname
"""

# The tables and indexes of this database that touch the most blocks (heap and index separately).
RELATION_BLOCKS_SQL = """
(SELECT 'table'                                                                   AS kind,
        pg_catalog.quote_ident(schemaname) || '.' || pg_catalog.quote_ident(relname) AS name,
        coalesce(heap_blks_hit, 0)                                                AS blks_hit,
        coalesce(heap_blks_read, 0)                                               AS blks_read
   FROM pg_catalog.pg_statio_user_tables
  ORDER BY coalesce(heap_blks_hit, 0) + coalesce(heap_blks_read, 0) DESC
  LIMIT %(limit)s)
UNION ALL
(SELECT 'index'                                                                   AS kind,
        pg_catalog.quote_ident(schemaname) || '.' || pg_catalog.quote_ident(indexrelname) AS name,
        coalesce(idx_blks_hit, 0)                                                 AS blks_hit,
        coalesce(idx_blks_read, 0)                                                AS blks_read
   FROM pg_catalog.pg_statio_user_indexes
  ORDER BY coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0) DESC
  LIMIT %(limit)s)
"""


@task(name="read-cache-counters", **DB_TASK)
def read_cache(target: ConnectionTarget, limit: int = 50) -> CacheSnapshot:
    with connect(target, purpose="report-cache") as db:
        return CacheSnapshot(
            databases=db.fetch_all(DATABASE_BLOCKS_SQL, None, DatabaseBlocks),
            relations=db.fetch_all(RELATION_BLOCKS_SQL, {"limit": limit}, RelationBlocks))
