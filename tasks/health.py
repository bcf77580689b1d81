"""Health-check reads (runbook 1.1): each task is one query over one explicit node.

All of it works for a role with only pg_monitor.
"""

from __future__ import annotations

import time
from datetime import datetime

from prefect import task
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.db import DB_TASK, connect


class ServerInfo(BaseModel):
    server_version: str
    server_version_num: int
    in_recovery: bool
    started_at: datetime


class NodeProbe(BaseModel):
    node: str
    host: str
    port: int
    latency_ms: float
    server_version: str
    server_version_num: int
    in_recovery: bool
    started_at: datetime


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


class LongQuery(BaseModel):
    pid: int
    usename: str | None
    datname: str | None
    application_name: str | None
    client_addr: str | None
    state: str
    wait_event_type: str | None
    running_seconds: float
    query: str


# What server is this, and is it a standby?
PROBE_SQL = """
SELECT current_setting('server_version')         AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       pg_catalog.pg_is_in_recovery()             AS in_recovery,
       pg_catalog.pg_postmaster_start_time()      AS started_at
"""


@task(name="probe-node", **DB_TASK)
def probe_node(target: ConnectionTarget) -> NodeProbe:
    """Connect to one node and time it; raises NodeUnreachable etc. when it cannot."""
    started = time.perf_counter()
    with connect(target, purpose="health-check") as db:
        info = db.fetch_one(PROBE_SQL, None, ServerInfo)
    latency_ms = (time.perf_counter() - started) * 1000
    return NodeProbe(
        node=target.node, host=target.host, port=target.port, latency_ms=latency_ms, **info.model_dump()
    )


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


# Which client sessions (not idle, not this one) have been running longer than the threshold?
LONG_QUERIES_SQL = """
SELECT pid,
       usename::text                                   AS usename,
       datname::text                                   AS datname,
       application_name,
       client_addr::text                               AS client_addr,
       state,
       wait_event_type,
       extract(epoch FROM now() - CASE WHEN state = 'active' THEN query_start
                                       ELSE xact_start END)::float8 AS running_seconds,
       left(query, 2000)                               AS query
  FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'client backend'
   AND pid <> pg_catalog.pg_backend_pid()
   AND state IS NOT NULL
   AND state <> 'idle'
   AND now() - CASE WHEN state = 'active' THEN query_start ELSE xact_start END
       > make_interval(secs => %(min_seconds)s)
 ORDER BY running_seconds DESC
 LIMIT %(limit)s
"""


@task(name="find-long-running-queries", **DB_TASK)
def find_long_queries(target: ConnectionTarget, min_seconds: float, limit: int = 50) -> list[LongQuery]:
    with connect(target, purpose="health-check") as db:
        return db.fetch_all(LONG_QUERIES_SQL, {"min_seconds": min_seconds, "limit": limit}, LongQuery)
