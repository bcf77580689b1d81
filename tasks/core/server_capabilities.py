"""What the connected server offers, by version: the one place that branches on server_version_num.

Server catalogs follow server_version_num. pg_stat_statements columns follow the version of the
extension created in the database (pg_extension.extversion), not the server's: a PG17 server whose
extension was never `ALTER EXTENSION pg_stat_statements UPDATE`d still shows the 1.10 columns.
Column changes, as the extension's SQL scripts define them:
1.2 queryid; 1.8 (PG13) total_time -> total_exec_time, plans; 1.9 (PG14) toplevel and
pg_stat_statements_info (dealloc, stats_reset); 1.10 (PG15) temp_blk_*_time, jit_*;
1.11 (PG17) blk_*_time -> shared_blk_*_time, local_blk_*_time, stats_since; 1.12 (PG18) wal_buffers_full,
parallel_workers_to_launch/_launched (no renames; checked live on 14-18 by tests/core/test_versions_live.py).
Server views: pg_stat_io (PG16; PG18 replaced op_bytes by read_bytes/write_bytes/extend_bytes and added WAL
rows), pg_stat_checkpointer and MAINTAIN/pg_maintain (PG17).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

MIN_STATEMENTS_VERSION = (1, 2)  # queryid, which keys every statement


def parse_extversion(extversion: str) -> tuple[int, int] | None:
    """'1.10' -> (1, 10): compared as numbers, never as strings ('1.10' > '1.9'); None if not MAJOR.MINOR."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)?\s*", extversion or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


class StatementsColumns(BaseModel):
    """pg_stat_statements column names for one extension version."""

    model_config = ConfigDict(frozen=True)

    extversion: str = Field(description="pg_extension.extversion, e.g. '1.10'.")
    total_ms: str = Field(description="total_exec_time (1.8+) or total_time.")
    blk_read_ms: str = Field(description="shared_blk_read_time (1.11+) or blk_read_time.")
    toplevel: str | None = Field(description="toplevel (1.9+); None: every row is top level.")
    info_view: bool = Field(description="pg_stat_statements_info with dealloc and stats_reset (1.9+).")


def statements_columns(extversion: str) -> StatementsColumns | None:
    """The columns of pg_stat_statements at this extension version; None before 1.2 (no queryid) or unparsable."""
    v = parse_extversion(extversion)
    if v is None or v < MIN_STATEMENTS_VERSION:
        return None
    return StatementsColumns(
        extversion=extversion,
        total_ms="total_exec_time" if v >= (1, 8) else "total_time",
        blk_read_ms="shared_blk_read_time" if v >= (1, 11) else "blk_read_time",
        toplevel="toplevel" if v >= (1, 9) else None,
        info_view=v >= (1, 9))


class Capabilities(BaseModel):
    """Named version decisions for one server (and its pg_stat_statements, when known)."""

    model_config = ConfigDict(frozen=True)

    server_version_num: int
    checkpointer_view: bool = Field(description="Checkpoint counters in pg_stat_checkpointer (PG17+), "
                                                "else pg_stat_bgwriter.")
    wal_stats_view: bool = Field(description="pg_stat_wal exists (PG14+).")
    database_sessions: bool = Field(description="pg_stat_database.sessions/session_time exist (PG14+).")
    lock_waitstart: bool = Field(description="pg_locks.waitstart exists (PG14+).")
    reserved_connections_setting: bool = Field(description="reserved_connections exists (PG16+).")
    vacuum_skip_locked: bool = Field(description="VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON|OFF) (PG12+).")
    vacuum_index_cleanup_auto: bool = Field(description="VACUUM (INDEX_CLEANUP AUTO) (PG14+).")
    vacuum_parallel: bool = Field(description="VACUUM (PARALLEL n) (PG13+).")
    btree_deduplication: bool = Field(description="btree indexes deduplicate equal keys (PG13+).")
    stats_in_shared_memory: bool = Field(default=True, description="Cumulative statistics in shared memory, "
                                         "visible at once (PG15+); before, a collector process applies them "
                                         "asynchronously (up to ~0.5 s late).")
    vertical_tab_is_space: bool = Field(default=True, description="parse_ident() (the scanner) skips a vertical "
                                        "tab like a space (PG17+); before, it is refused.")
    io_view: bool = Field(default=False, description="pg_stat_io: I/O by backend type (PG16+).")
    io_bytes_columns: bool = Field(default=False, description="pg_stat_io read_bytes/write_bytes/extend_bytes "
                                                              "(PG18+); before, counts x op_bytes.")
    maintain_privilege: bool = Field(default=False, description="The MAINTAIN table privilege and the pg_maintain "
                                                                "role allow VACUUM, ANALYZE and REINDEX (PG17+).")
    rewind_needs_checkpoint: bool = Field(default=True, description="pg_rewind reads the source's timeline from "
                                          "its control file: CHECKPOINT a just-promoted source first (PG15 and "
                                          "older; PG16+ reads the timeline history itself).")
    statements: StatementsColumns | None = Field(
        default=None, description="pg_stat_statements columns; None when not created or older than 1.2.")


def capabilities(server_version_num: int, statements_extversion: str | None = None) -> Capabilities:
    """Every version decision, computed once from server_version_num and pg_stat_statements' extversion."""
    v = server_version_num
    return Capabilities(
        server_version_num=v,
        checkpointer_view=v >= 170000,
        wal_stats_view=v >= 140000,
        database_sessions=v >= 140000,
        lock_waitstart=v >= 140000,
        reserved_connections_setting=v >= 160000,
        vacuum_skip_locked=v >= 120000,
        vacuum_index_cleanup_auto=v >= 140000,
        vacuum_parallel=v >= 130000,
        btree_deduplication=v >= 130000,
        stats_in_shared_memory=v >= 150000,
        vertical_tab_is_space=v >= 170000,
        io_view=v >= 160000,
        io_bytes_columns=v >= 180000,
        maintain_privilege=v >= 170000,
        rewind_needs_checkpoint=v < 160000,
        statements=statements_columns(statements_extversion) if statements_extversion else None)
