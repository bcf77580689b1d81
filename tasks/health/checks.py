"""Health-check reads (runbook 1.1): each task is one query over one explicit node.

All of it works for a role with only pg_monitor.
"""

from __future__ import annotations

import time
from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget, PostgresCluster
from tasks.core.db import DB_TASK, connect
from tasks.core.findings import Check
from tasks.core.provider_state import provider_state


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


@task(name="provider-state", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def provider_check(cluster: PostgresCluster, wake: bool) -> tuple[bool, Check | None]:
    """(paused, the provider's check) for a managed cluster, read from the provider before any SQL connection:
    a paused compute is 'ok, paused' and no node is connected to (a connection would wake it and bill it)."""
    state = provider_state(cluster, wake)
    if state is None:
        return False, None
    status = "warning" if state.state == "unreadable" else "ok"
    return state.paused, Check(name="provider-state", node="cluster", status=status, summary=state.summary + ".",
                               details={"provider": state.provider, "state": state.state, "paused": state.paused})
