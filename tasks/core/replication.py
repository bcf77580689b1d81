"""Replication as PostgreSQL tells it: who streams from this server (pg_stat_replication joined with the
slot each walsender holds), which slots exist, and a standby's own WAL receiver.

Shared by the health check, the alert monitor, replica matching (tasks/core/replica_match.py) and disk
pressure; works for a role with pg_monitor (without pg_read_all_stats the positions are NULL, said as such).
"""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect


class ReplicationRow(BaseModel):
    """One standby as its primary (or, cascading, its upstream standby) sees it in pg_stat_replication."""

    application_name: str
    pid: int | None = None
    client_addr: str | None
    client_port: int | None = None
    slot_name: str | None = Field(default=None, description="The slot this walsender holds (active_pid).")
    state: str | None
    sync_state: str | None
    sent_lsn: str | None
    write_lsn: str | None
    flush_lsn: str | None
    replay_lsn: str | None
    sent_lag_bytes: int | None
    flush_lag_bytes: int | None
    replay_lag_bytes: int | None
    write_lag_seconds: float | None
    flush_lag_seconds: float | None
    replay_lag_seconds: float | None


class SlotRow(BaseModel):
    slot_name: str
    slot_type: str
    active: bool
    wal_status: str | None
    retained_bytes: int | None


class ReceiverRow(BaseModel):
    """A standby's own view of its replication."""

    in_recovery: bool = True
    receiver_status: str | None
    receiver_hidden: bool = Field(default=False, description="A receiver runs but this role may not see its "
                                                             "details (it lacks pg_read_all_stats/pg_monitor).")
    application_name: str | None = Field(default=None, description="The name it gives its upstream: "
                                                                   "application_name, else the fallback.")
    sender_host: str | None
    sender_port: int | None
    slot_name: str | None
    receive_lsn: str | None
    replay_lsn: str | None
    replay_backlog_bytes: int | None
    replay_paused: bool
    seconds_since_last_replay: float | None


# Where each standby of this server stands, in bytes and seconds behind, and who it is (address, slot);
# on a standby (cascading replication) "behind" is measured from the WAL it has received itself.
REPLICATION_SQL = """
WITH here AS (
    SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_receive_lsn()
                ELSE pg_catalog.pg_current_wal_lsn() END AS lsn
)
SELECT r.application_name,
       r.pid,
       pg_catalog.host(r.client_addr)                                AS client_addr,
       r.client_port,
       s.slot_name::text                                             AS slot_name,
       r.state,
       r.sync_state,
       r.sent_lsn::text                                              AS sent_lsn,
       r.write_lsn::text                                             AS write_lsn,
       r.flush_lsn::text                                             AS flush_lsn,
       r.replay_lsn::text                                            AS replay_lsn,
       pg_catalog.pg_wal_lsn_diff(here.lsn, r.sent_lsn)::bigint      AS sent_lag_bytes,
       pg_catalog.pg_wal_lsn_diff(here.lsn, r.flush_lsn)::bigint     AS flush_lag_bytes,
       pg_catalog.pg_wal_lsn_diff(here.lsn, r.replay_lsn)::bigint    AS replay_lag_bytes,
       extract(epoch FROM r.write_lag)::float8                       AS write_lag_seconds,
       extract(epoch FROM r.flush_lag)::float8                       AS flush_lag_seconds,
       extract(epoch FROM r.replay_lag)::float8                      AS replay_lag_seconds
  FROM pg_catalog.pg_stat_replication AS r
 CROSS JOIN here
  LEFT JOIN pg_catalog.pg_replication_slots AS s ON s.active_pid = r.pid
 ORDER BY r.application_name, r.client_addr, r.client_port
"""


@task(name="read-replication", **DB_TASK)
def read_replication(target: ConnectionTarget) -> list[ReplicationRow]:
    with connect(target, purpose="health-check") as db:
        return db.fetch_all(REPLICATION_SQL, None, ReplicationRow)


# Which replication slots exist, are they used, and how much WAL do they hold back?
SLOTS_SQL = """
SELECT slot_name,
       slot_type,
       active,
       wal_status,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes
  FROM pg_catalog.pg_replication_slots
 ORDER BY slot_name
"""


@task(name="read-replication-slots", **DB_TASK)
def read_slots(target: ConnectionTarget) -> list[SlotRow]:
    with connect(target, purpose="health-check") as db:
        return db.fetch_all(SLOTS_SQL, None, SlotRow)


# Is this standby receiving, replaying, and how long since it last replayed a commit?
RECEIVER_SQL = """
SELECT pg_catalog.pg_is_in_recovery()                                 AS in_recovery,
       r.status                                                       AS receiver_status,
       (r.pid IS NOT NULL AND r.status IS NULL)                       AS receiver_hidden,
       coalesce(substring(r.conninfo FROM '(?:^| )application_name=(''[^'']*''|[^ ]+)'),
                substring(r.conninfo FROM 'fallback_application_name=(''[^'']*''|[^ ]+)'))
                                                                      AS application_name,
       r.sender_host,
       r.sender_port,
       r.slot_name,
       pg_catalog.pg_last_wal_receive_lsn()::text                     AS receive_lsn,
       pg_catalog.pg_last_wal_replay_lsn()::text                      AS replay_lsn,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(),
                                  pg_catalog.pg_last_wal_replay_lsn())::bigint AS replay_backlog_bytes,
       pg_catalog.pg_is_wal_replay_paused()                           AS replay_paused,
       extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp())::float8
                                                                      AS seconds_since_last_replay
  FROM (SELECT 1) AS one
  LEFT JOIN pg_catalog.pg_stat_wal_receiver AS r ON true
"""


@task(name="read-wal-receiver", **DB_TASK)
def read_receiver(target: ConnectionTarget) -> ReceiverRow:
    with connect(target, purpose="health-check") as db:
        return db.fetch_all(RECEIVER_SQL, None, ReceiverRow)[0]


def effective_replay_lag_seconds(row: ReplicationRow) -> float | None:
    """The primary's replay_lag is NULL when idle: count it as 0 only when no bytes are behind. Unknown (None)
    when the role may not see the standby's progress (no pg_read_all_stats: every position is NULL)."""
    if row.replay_lsn is None:
        return None
    if row.replay_lag_seconds is not None:
        return row.replay_lag_seconds
    return 0.0 if (row.replay_lag_bytes or 0) == 0 else None


def upstream_of(row: ReceiverRow, nodes: dict[str, tuple[str, int]]) -> str | None:
    """Which node of the cluster this standby streams from: (host, port) as the block has it, else the only
    node on that port (a name given as an address); None when it is not streaming or from elsewhere."""
    if row.receiver_status != "streaming" or row.sender_port is None:
        return None
    exact = [n for n, (host, port) in nodes.items() if (host, port) == (row.sender_host, row.sender_port)]
    same_port = [n for n, (_, port) in nodes.items() if port == row.sender_port]
    return next(iter(exact), None) or (same_port[0] if len(same_port) == 1 else None)
