"""Deltas between two snapshots of cumulative counters: pure functions, never a negative count.

A counter that went down, or a changed stats_reset timestamp, means the statistics were reset
in between: the delta is then the current value (what accumulated since the reset), flagged.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from tasks.report.cache import CacheSnapshot
from tasks.report.checkpoints import CheckpointSnapshot
from tasks.report.statements import StatementCounters, StatementFigures, StatementsSnapshot
from tasks.report.storage import StorageSnapshot

COUNTERS = ("calls", "total_ms", "rows", "shared_blks_hit", "shared_blks_read", "temp_blks_written", "blk_read_ms")


def ratio(hit: float, read: float) -> float | None:
    """Share of blocks found in shared buffers, or None when nothing was read at all."""
    return None if hit + read <= 0 else hit / (hit + read)


def was_reset(current_reset: datetime | None, previous_reset: datetime | None) -> bool:
    return current_reset is not None and previous_reset is not None and current_reset != previous_reset


def counter_delta(current: float, previous: float | None, reset: bool) -> tuple[float, bool]:
    """(delta, reset seen): the current value after a reset or when the counter went down."""
    if previous is None or reset:
        return current, reset
    if current < previous:
        return current, True
    return current - previous, False


class StatementDelta(StatementFigures):
    """What one statement did since the previous report."""

    reset: bool = Field(default=False, description="This entry was reset or evicted in between.")

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0

    @property
    def hit_ratio(self) -> float | None:
        return ratio(self.shared_blks_hit, self.shared_blks_read)


class StatementsDelta(BaseModel):
    since: str = Field(description="'previous report' or 'statistics reset' (first report or after a reset).")
    reset_detected: bool
    reset_entries: int = Field(default=0, description="Entries whose counters went down (evicted or reset).")
    evicted: int | None = Field(default=None, description="Entries pg_stat_statements evicted in the period "
                                                           "(pg_stat_statements_info.dealloc grew): their calls "
                                                           "are missing from the figures. None: not known (<1.9).")
    statements: list[StatementDelta]

    def top(self, field: str, n: int, min_calls: int = 1) -> list[StatementDelta]:
        rows = [s for s in self.statements if s.calls >= min_calls]
        return sorted(rows, key=lambda s: getattr(s, field), reverse=True)[:n]


def statements_delta(current: StatementsSnapshot, previous: StatementsSnapshot | None) -> StatementsDelta:
    """What every statement did since the previous snapshot; statements with no new call are left out."""
    prev_ok = previous is not None and previous.available
    global_reset = prev_ok and was_reset(current.stats_reset, previous.stats_reset)
    before: dict[str, StatementCounters] = {s.key: s for s in previous.statements} if prev_ok else {}
    rows: list[StatementDelta] = []
    reset_entries = 0
    for s in current.statements:
        old = None if global_reset else before.get(s.key)
        entry_reset = old is not None and (s.calls < old.calls or s.total_ms < old.total_ms)
        values = {}
        for name in COUNTERS:
            now = getattr(s, name)
            values[name] = now if old is None or entry_reset else max(now - getattr(old, name), 0)
        reset_entries += entry_reset
        if values["calls"] > 0:
            rows.append(StatementDelta(key=s.key, datname=s.datname, usename=s.usename, query=s.query,
                                       reset=entry_reset or global_reset, **values))
    return StatementsDelta(since="previous report" if prev_ok and not global_reset else "statistics reset",
                           reset_detected=bool(global_reset or reset_entries), reset_entries=reset_entries,
                           evicted=evicted_since(current, previous if prev_ok and not global_reset else None),
                           statements=rows)


def evicted_since(current: StatementsSnapshot, previous: StatementsSnapshot | None) -> int | None:
    """Entries evicted since the previous snapshot (or since the reset, without one); None when unknown."""
    if current.dealloc is None:
        return None
    if previous is None or previous.dealloc is None:
        return current.dealloc
    delta, _ = counter_delta(current.dealloc, previous.dealloc, False)
    return int(delta)


class RatioRow(BaseModel):
    kind: str
    name: str
    blks_hit: int
    blks_read: int
    hit_ratio: float | None
    reset: bool = False


def cache_deltas(current: CacheSnapshot, previous: CacheSnapshot | None) -> list[RatioRow]:
    """Cache hit ratio per database and per top table/index, over the blocks touched since the previous report."""
    prev_db = {d.datname: d for d in previous.databases} if previous else {}
    prev_rel = {(r.kind, r.name): r for r in previous.relations} if previous else {}
    rows = []
    for d in current.databases:
        old = prev_db.get(d.datname)
        reset = old is not None and was_reset(d.stats_reset, old.stats_reset)
        hit, r1 = counter_delta(d.blks_hit, old.blks_hit if old else None, reset)
        read, r2 = counter_delta(d.blks_read, old.blks_read if old else None, reset)
        if r1 or r2:  # one counter went down: both restarted
            hit, read = d.blks_hit, d.blks_read
        rows.append(RatioRow(kind="database", name=d.datname, blks_hit=int(hit), blks_read=int(read),
                             hit_ratio=ratio(hit, read), reset=r1 or r2))
    for r in current.relations:
        old = prev_rel.get((r.kind, r.name))
        hit, r1 = counter_delta(r.blks_hit, old.blks_hit if old else None, False)
        read, r2 = counter_delta(r.blks_read, old.blks_read if old else None, False)
        if r1 or r2:
            hit, read = r.blks_hit, r.blks_read
        rows.append(RatioRow(kind=r.kind, name=r.name, blks_hit=int(hit), blks_read=int(read),
                             hit_ratio=ratio(hit, read), reset=r1 or r2))
    return rows


class Growth(BaseModel):
    kind: str
    name: str
    size_bytes: int
    growth_bytes: int | None = Field(description="Change since the previous report (None: not in it).")


class TempDelta(BaseModel):
    datname: str
    temp_files: int
    temp_bytes: int
    reset: bool


class StorageDelta(BaseModel):
    growth: list[Growth]
    temp: list[TempDelta]


def storage_delta(current: StorageSnapshot, previous: StorageSnapshot | None) -> StorageDelta:
    """Growth of databases, relations and pg_wal (signed: sizes may shrink), temp files since last report."""
    prev_db = {d.datname: d for d in previous.databases} if previous else {}
    prev_rel = {r.name: r for r in previous.relations} if previous else {}
    growth = [Growth(kind="database", name=d.datname, size_bytes=d.size_bytes,
                     growth_bytes=d.size_bytes - prev_db[d.datname].size_bytes if d.datname in prev_db else None)
              for d in current.databases]
    growth += [Growth(kind="relation", name=r.name, size_bytes=r.total_bytes,
                      growth_bytes=r.total_bytes - prev_rel[r.name].total_bytes if r.name in prev_rel else None)
               for r in current.relations]
    if current.wal_bytes is not None:
        old_wal = previous.wal_bytes if previous else None
        growth.append(Growth(kind="wal", name="pg_wal", size_bytes=current.wal_bytes,
                             growth_bytes=None if old_wal is None else current.wal_bytes - old_wal))
    temp = []
    for d in current.databases:
        old = prev_db.get(d.datname)
        reset = old is not None and was_reset(d.stats_reset, old.stats_reset)
        files, r1 = counter_delta(d.temp_files, old.temp_files if old else None, reset)
        size, r2 = counter_delta(d.temp_bytes, old.temp_bytes if old else None, reset)
        temp.append(TempDelta(datname=d.datname, temp_files=int(files), temp_bytes=int(size), reset=r1 or r2))
    return StorageDelta(growth=growth, temp=temp)


class CheckpointDelta(BaseModel):
    timed: int
    requested: int
    wal_bytes: int | None
    archive_failures: int
    reset: bool

    @property
    def requested_share(self) -> float | None:
        total = self.timed + self.requested
        return None if total == 0 else self.requested / total


def checkpoint_delta(current: CheckpointSnapshot, previous: CheckpointSnapshot | None) -> CheckpointDelta:
    reset = previous is not None and was_reset(current.stats_reset, previous.stats_reset)
    timed, r1 = counter_delta(current.checkpoints_timed, previous.checkpoints_timed if previous else None, reset)
    req, r2 = counter_delta(current.checkpoints_requested, previous.checkpoints_requested if previous else None,
                            reset)
    wal = None
    if current.wal_bytes is not None:
        wal, _ = counter_delta(current.wal_bytes, previous.wal_bytes if previous else None, False)
    failed, r3 = counter_delta(current.failed_count, previous.failed_count if previous else None, False)
    return CheckpointDelta(timed=int(timed), requested=int(req), wal_bytes=None if wal is None else int(wal),
                           archive_failures=int(failed), reset=r1 or r2 or r3)
