"""Relation I/O by backend type from pg_stat_io (PG16+): reads, writes, extends and fsyncs, and the share of
buffer writes done by client backends themselves rather than the background writer and the checkpointer.

Client backends writing most dirty buffers means shared_buffers or the background writer cannot keep up:
queries then wait on writes. Bytes: `op_bytes` times the count on 16/17, `read_bytes`/`write_bytes`/
`extend_bytes` on 18 (`tasks.core.server_capabilities` decides). Only object 'relation' is counted: PG18
also reports WAL I/O in the view, which 16/17 do not, and the figures stay comparable across versions.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.core.findings import Check, human_bytes
from tasks.core.server_capabilities import capabilities

WRITERS = ("client backend", "background writer", "checkpointer")
MIN_WRITES = 1000  # fewer buffer writes than this since the baseline: no verdict on who wrote them


class IoRow(BaseModel):
    backend_type: str
    reads: int = 0
    writes: int = 0
    extends: int = 0
    fsyncs: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    extend_bytes: int = 0


class IoSnapshot(BaseModel):
    """pg_stat_io's relation I/O per backend type at one moment; `available` False before PG16."""

    available: bool
    reason: str | None = None
    stats_reset: datetime | None = None
    rows: list[IoRow] = Field(default_factory=list)


class IoDelta(BaseModel):
    """Relation I/O per backend type since the previous report (or since the statistics reset)."""

    since: str
    reset_detected: bool = False
    rows: list[IoRow] = Field(default_factory=list)

    def writes(self, backend_type: str) -> int:
        return sum(r.writes for r in self.rows if r.backend_type == backend_type)

    @property
    def client_write_share(self) -> float | None:
        """Buffer writes by client backends / writes by client backends, background writer and checkpointer."""
        total = sum(self.writes(b) for b in WRITERS)
        return self.writes("client backend") / total if total else None


# Relation reads, writes, extends and fsyncs per backend type, with bytes (PG16/17: count x op_bytes).
IO_SQL_16 = """
SELECT backend_type,
       coalesce(sum(reads), 0)::bigint                AS reads,
       coalesce(sum(writes), 0)::bigint               AS writes,
       coalesce(sum(extends), 0)::bigint              AS extends,
       coalesce(sum(fsyncs), 0)::bigint               AS fsyncs,
       coalesce(sum(reads * op_bytes), 0)::bigint     AS read_bytes,
       coalesce(sum(writes * op_bytes), 0)::bigint    AS write_bytes,
       coalesce(sum(extends * op_bytes), 0)::bigint   AS extend_bytes
  FROM pg_catalog.pg_stat_io
 WHERE object = 'relation'
 GROUP BY backend_type
 ORDER BY backend_type
"""

# The same from PG18 on (op_bytes replaced by read_bytes, write_bytes and extend_bytes).
IO_SQL_18 = (IO_SQL_16.replace("sum(reads * op_bytes)", "sum(read_bytes)")
             .replace("sum(writes * op_bytes)", "sum(write_bytes)")
             .replace("sum(extends * op_bytes)", "sum(extend_bytes)"))

# When the I/O statistics were last reset (the same for every row).
IO_RESET_SQL = """
SELECT max(stats_reset) AS value
  FROM pg_catalog.pg_stat_io
"""


class _Reset(BaseModel):
    value: datetime | None


@task(name="read-io", **DB_TASK)
def read_io(target: ConnectionTarget) -> IoSnapshot:
    with connect(target, purpose="report-io") as db:
        caps = capabilities(db.server_version_num)
        if not caps.io_view:
            return IoSnapshot(available=False, reason=f"pg_stat_io needs PostgreSQL 16 or later (this server "
                                                      f"is {db.server_version_num // 10000})")
        rows = db.fetch_all(IO_SQL_18 if caps.io_bytes_columns else IO_SQL_16, None, IoRow)
        reset = db.fetch_one(IO_RESET_SQL, None, _Reset)
    return IoSnapshot(available=True, stats_reset=reset.value if reset else None, rows=rows)


_COUNTERS = ("reads", "writes", "extends", "fsyncs", "read_bytes", "write_bytes", "extend_bytes")


def io_delta(now: IoSnapshot, previous: IoSnapshot | None) -> IoDelta | None:
    """Per backend type, now minus the previous report; totals since the reset when there is no usable
    baseline (none, other reset time, or a counter that went down)."""
    if not now.available:
        return None
    before = {r.backend_type: r for r in previous.rows} if previous and previous.available else {}
    usable = bool(before) and previous.stats_reset == now.stats_reset and all(
        getattr(r, c) >= getattr(before[r.backend_type], c)
        for r in now.rows if r.backend_type in before for c in _COUNTERS)
    if not usable:
        return IoDelta(since="statistics reset", reset_detected=bool(before), rows=now.rows)
    rows = [IoRow(backend_type=r.backend_type,
                  **{c: getattr(r, c) - (getattr(before[r.backend_type], c) if r.backend_type in before else 0)
                     for c in _COUNTERS})
            for r in now.rows]
    return IoDelta(since="previous report", rows=rows)


def io_check(node: str, snap: IoSnapshot, delta: IoDelta | None, warning_share: float = 0.5) -> Check:
    """Warning when client backends wrote more than `warning_share` of the buffers (with enough writes)."""
    if not snap.available or delta is None:
        return Check(name="io", node=node, status="ok", summary=f"I/O by backend type: {snap.reason}.",
                     details={"available": False})
    reads = sum(r.read_bytes for r in delta.rows)
    writes = sum(r.write_bytes for r in delta.rows)
    share = delta.client_write_share
    total_writes = sum(delta.writes(b) for b in WRITERS)
    warn = share is not None and share > warning_share and total_writes >= MIN_WRITES
    who = (f"; client backends did {100 * share:.0f} % of the buffer writes (background writer and "
           f"checkpointer the rest)" if share is not None else "; no buffer writes")
    hint = (" Client backends writing dirty buffers themselves wait on I/O: raise shared_buffers or make the "
            "background writer more aggressive (bgwriter_lru_maxpages, bgwriter_delay)." if warn else "")
    return Check(name="io", node=node, status="warning" if warn else "ok",
                 details={"available": True, "since": delta.since, "client_write_share":
                          None if share is None else round(share, 4), "writes": total_writes,
                          "by_backend": [r.model_dump() for r in delta.rows]},
                 summary=f"{human_bytes(reads)} read and {human_bytes(writes)} written to relations since the "
                         f"{delta.since}{who}.{hint}")


def io_table(delta: IoDelta) -> tuple[list[str], list[list]]:
    """Headers and rows for the report: backend types that did any relation I/O."""
    rows = [[r.backend_type, r.reads, r.writes, r.extends, r.fsyncs, human_bytes(r.read_bytes),
             human_bytes(r.write_bytes)]
            for r in sorted(delta.rows, key=lambda r: -(r.reads + r.writes + r.extends))
            if r.reads or r.writes or r.extends or r.fsyncs]
    return ["backend type", "reads", "writes", "extends", "fsyncs", "read", "written"], rows
