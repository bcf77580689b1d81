"""Checkpoints, WAL and archiving (report 1.2): requested vs timed checkpoints, WAL written, archiver failures.

PG17 moved the checkpoint counters from pg_stat_bgwriter to pg_stat_checkpointer; pg_stat_wal is PG14+:
`tasks.core.server_capabilities` decides which.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.core.server_capabilities import capabilities


class _Checkpoints(BaseModel):
    checkpoints_timed: int
    checkpoints_requested: int
    checkpoint_write_ms: float
    buffers_written: int
    stats_reset: datetime | None


class _WalArchiver(BaseModel):
    wal_bytes: int | None
    archived_count: int
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    archive_mode: str
    checkpoint_timeout: str
    max_wal_size: str


class CheckpointSnapshot(_Checkpoints, _WalArchiver):
    """Checkpoint counters and WAL/archiver figures of one moment."""


# Checkpoint counters before PG17 (pg_stat_bgwriter).
CHECKPOINTS_BGWRITER_SQL = """
SELECT checkpoints_timed,
       checkpoints_req              AS checkpoints_requested,
       checkpoint_write_time::float8 AS checkpoint_write_ms,
       buffers_checkpoint           AS buffers_written,
       stats_reset
  FROM pg_catalog.pg_stat_bgwriter
"""

# Checkpoint counters from PG17 on (pg_stat_checkpointer).
CHECKPOINTS_CHECKPOINTER_SQL = """
SELECT num_timed                    AS checkpoints_timed,
       num_requested                AS checkpoints_requested,
       write_time::float8           AS checkpoint_write_ms,
       buffers_written,
       stats_reset
  FROM pg_catalog.pg_stat_checkpointer
"""

# WAL written (PG14+), archiver successes and failures, and the settings that drive checkpoints.
WAL_ARCHIVER_SQL = """
SELECT (SELECT wal_bytes::bigint FROM pg_catalog.pg_stat_wal)   AS wal_bytes,
       a.archived_count,
       a.failed_count,
       a.last_failed_wal,
       a.last_failed_time,
       current_setting('archive_mode')                          AS archive_mode,
       current_setting('checkpoint_timeout')                    AS checkpoint_timeout,
       current_setting('max_wal_size')                          AS max_wal_size
  FROM pg_catalog.pg_stat_archiver AS a
"""

# Archiver and settings before PG14 (no pg_stat_wal).
WAL_ARCHIVER_PRE14_SQL = WAL_ARCHIVER_SQL.replace(
    "(SELECT wal_bytes::bigint FROM pg_catalog.pg_stat_wal)", "NULL::bigint")


@task(name="read-checkpoints", **DB_TASK)
def read_checkpoints(target: ConnectionTarget) -> CheckpointSnapshot:
    with connect(target, purpose="report-checkpoints") as db:
        caps = capabilities(db.server_version_num)
        cp_sql = CHECKPOINTS_CHECKPOINTER_SQL if caps.checkpointer_view else CHECKPOINTS_BGWRITER_SQL
        wal_sql = WAL_ARCHIVER_SQL if caps.wal_stats_view else WAL_ARCHIVER_PRE14_SQL
        counters = db.fetch_all(cp_sql, None, _Checkpoints)[0]
        wal = db.fetch_all(wal_sql, None, _WalArchiver)[0]
    return CheckpointSnapshot(**counters.model_dump(), **wal.model_dump())
