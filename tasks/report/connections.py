"""Connections (report 1.2, troubleshooter 3.1): client backends by state, by who, against usable slots.

Works with pg_monitor only (pg_read_all_stats shows every session).
"""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.core.redact import redact_sql
from tasks.core.server_capabilities import capabilities


class SlotLimits(BaseModel):
    max_connections: int
    reserved: int = Field(description="superuser_reserved_connections plus reserved_connections (PG16+).")

    @property
    def usable(self) -> int:
        return max(self.max_connections - self.reserved, 1)


class ConnectionGroup(BaseModel):
    """Client backends of one (database, user, application, client address)."""

    datname: str | None
    usename: str | None
    application_name: str
    client_addr: str | None
    total: int
    active: int
    idle: int
    idle_in_transaction: int
    other: int
    oldest_backend_seconds: float | None
    oldest_xact_seconds: float | None


class IdleInTransaction(BaseModel):
    pid: int
    datname: str | None
    usename: str | None
    application_name: str
    client_addr: str | None
    xact_seconds: float
    state_seconds: float
    query: str


class ConnectionsSnapshot(BaseModel):
    limits: SlotLimits
    groups: list[ConnectionGroup]
    idle_in_transaction: list[IdleInTransaction]
    sessions_total: int | None = Field(default=None, description="pg_stat_database.sessions summed (PG14+).")
    session_time_ms: float | None = None

    @property
    def client_backends(self) -> int:
        return sum(g.total for g in self.groups)

    def by_state(self) -> dict[str, int]:
        return {
            "active": sum(g.active for g in self.groups),
            "idle": sum(g.idle for g in self.groups),
            "idle in transaction": sum(g.idle_in_transaction for g in self.groups),
            "other": sum(g.other for g in self.groups),
        }

    def by(self, field: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for g in self.groups:
            key = str(getattr(g, field) or "(none)")
            counts[key] = counts.get(key, 0) + g.total
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# How many connection slots exist and how many are reserved for superusers and pg_use_reserved_connections (PG16+)?
LIMITS_SQL = """
SELECT current_setting('max_connections')::int                               AS max_connections,
       current_setting('superuser_reserved_connections')::int
       + current_setting('reserved_connections')::int                         AS reserved
"""

# How many connection slots exist and how many are reserved for superusers (before PG16)?
LIMITS_PRE16_SQL = """
SELECT current_setting('max_connections')::int                               AS max_connections,
       current_setting('superuser_reserved_connections')::int                AS reserved
"""

# Client backends grouped by database, user, application and address, with counts per state and ages.
GROUPS_SQL = """
SELECT datname::text                                                        AS datname,
       usename::text                                                        AS usename,
       coalesce(application_name, '')                                       AS application_name,
       client_addr::text                                                    AS client_addr,
       count(*)::int                                                        AS total,
       count(*) FILTER (WHERE state = 'active')::int                        AS active,
       count(*) FILTER (WHERE state = 'idle')::int                          AS idle,
       count(*) FILTER (WHERE state LIKE 'idle in transaction%%')::int      AS idle_in_transaction,
       count(*) FILTER (WHERE state IS NULL
                           OR state NOT IN ('active', 'idle')
                          AND state NOT LIKE 'idle in transaction%%')::int  AS other,
       extract(epoch FROM now() - min(backend_start))::float8               AS oldest_backend_seconds,
       extract(epoch FROM now() - min(xact_start))::float8                  AS oldest_xact_seconds
  FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'client backend'
   AND pid <> pg_catalog.pg_backend_pid()
 GROUP BY 1, 2, 3, 4
 ORDER BY total DESC
"""

# Which sessions sit idle inside an open transaction, and for how long?
IDLE_IN_TRANSACTION_SQL = """
SELECT pid,
       datname::text                                      AS datname,
       usename::text                                      AS usename,
       coalesce(application_name, '')                    AS application_name,
       client_addr::text                                  AS client_addr,
       extract(epoch FROM now() - xact_start)::float8     AS xact_seconds,
       extract(epoch FROM now() - state_change)::float8   AS state_seconds,
       left(query, 500)                                   AS query
  FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'client backend'
   AND state LIKE 'idle in transaction%%'
 ORDER BY xact_start
 LIMIT %(limit)s
"""

# How many sessions were opened, and how long they lasted, since the statistics were reset (PG14+)?
SESSIONS_SQL = """
SELECT sum(sessions)::bigint        AS sessions_total,
       sum(session_time)::float8    AS session_time_ms
  FROM pg_catalog.pg_stat_database
"""


class _Sessions(BaseModel):
    sessions_total: int | None
    session_time_ms: float | None


@task(name="read-connections", **DB_TASK)
def read_connections(target: ConnectionTarget, limit: int = 100) -> ConnectionsSnapshot:
    """Every client backend of the node, grouped, plus the idle-in-transaction sessions."""
    with connect(target, purpose="report-connections") as db:
        caps = capabilities(db.server_version_num)
        limits = db.fetch_all(LIMITS_SQL if caps.reserved_connections_setting else LIMITS_PRE16_SQL,
                              None, SlotLimits)[0]
        groups = db.fetch_all(GROUPS_SQL, None, ConnectionGroup)
        idle_tx = [s.model_copy(update={"query": redact_sql(s.query, 500)})
                   for s in db.fetch_all(IDLE_IN_TRANSACTION_SQL, {"limit": limit}, IdleInTransaction)]
        sessions = (db.fetch_all(SESSIONS_SQL, None, _Sessions)[0]
                    if caps.database_sessions else _Sessions(sessions_total=None, session_time_ms=None))
    return ConnectionsSnapshot(limits=limits, groups=groups, idle_in_transaction=idle_tx,
                               sessions_total=sessions.sessions_total, session_time_ms=sessions.session_time_ms)
