"""Who is connected and who waits for whom: the one read the high-load response decides on.

Needs pg_monitor (pg_read_all_stats) to see other roles' query text and timestamps.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.core.server_capabilities import capabilities


class SessionRow(BaseModel):
    """One backend of pg_stat_activity, with its lock wait and the pids blocking it."""

    pid: int
    backend_start: datetime | None
    query_start: datetime | None
    xact_start: datetime | None
    backend_type: str | None
    usename: str | None
    is_superuser: bool = False
    datname: str | None
    application_name: str | None
    client_addr: str | None
    state: str | None
    wait_event_type: str | None
    query: str = ""
    is_self: bool = False
    query_seconds: float | None = Field(default=None, description="Age of the current (or last) statement.")
    xact_seconds: float | None = Field(default=None, description="Age of the open transaction.")
    state_seconds: float | None = Field(default=None, description="Time in the current state.")
    blocked_by: list[int] = Field(default_factory=list, description="pg_blocking_pids(pid).")
    waiting_mode: str | None = Field(default=None, description="Lock mode it waits for, if any.")
    waiting_locktype: str | None = None
    waiting_relation: str | None = None
    waiting_seconds: float | None = None
    held_relation_locks: list[str] = Field(default_factory=list, description="'<mode> on <relation>', granted.")


class Survey(BaseModel):
    """Everything read in one statement, at one instant (`observed_at`)."""

    observed_at: datetime
    own_pid: int
    can_signal: bool = Field(description="The runbook role has the privileges of pg_signal_backend (or superuser).")
    runbook_role: str
    sessions: list[SessionRow]

    def by_pid(self) -> dict[int, SessionRow]:
        return {s.pid: s for s in self.sessions}


# Every backend: identity, ages, what it runs, which pids block it, what lock it waits for and what it holds.
SURVEY_SQL = """
SELECT a.pid,
       a.backend_start,
       a.query_start,
       a.xact_start,
       a.backend_type,
       a.usename::text                                                AS usename,
       coalesce(r.rolsuper, false)                                    AS is_superuser,
       a.datname::text                                                AS datname,
       a.application_name,
       pg_catalog.host(a.client_addr)                                 AS client_addr,
       a.state,
       a.wait_event_type,
       left(coalesce(a.query, ''), 2000)                              AS query,
       a.pid = pg_catalog.pg_backend_pid()                            AS is_self,
       extract(epoch FROM now() - a.query_start)::float8              AS query_seconds,
       extract(epoch FROM now() - a.xact_start)::float8               AS xact_seconds,
       extract(epoch FROM now() - a.state_change)::float8             AS state_seconds,
       pg_catalog.pg_blocking_pids(a.pid)                             AS blocked_by,
       w.mode                                                         AS waiting_mode,
       w.locktype                                                     AS waiting_locktype,
       w.relation_name                                                AS waiting_relation,
       extract(epoch FROM now() - coalesce({waitstart}, a.state_change))::float8 AS waiting_seconds,
       ARRAY(SELECT DISTINCT h.mode || ' on ' || h.relation::regclass::text
               FROM pg_catalog.pg_locks AS h
              WHERE h.pid = a.pid
                AND h.granted
                AND h.locktype = 'relation'
                AND h.database = d.oid
                AND h.relation >= 16384)                              AS held_relation_locks
  FROM pg_catalog.pg_stat_activity AS a
  LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = a.usesysid
  CROSS JOIN (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) AS d
  LEFT JOIN LATERAL (
        SELECT l.mode,
               l.locktype,
               {waitstart_col} AS waitstart,
               CASE WHEN l.relation IS NULL THEN NULL
                    WHEN l.database = d.oid THEN l.relation::regclass::text
                    ELSE 'relation ' || l.relation::text END       AS relation_name
          FROM pg_catalog.pg_locks AS l
         WHERE l.pid = a.pid
           AND NOT l.granted
         LIMIT 1) AS w ON true
 ORDER BY a.pid
"""

# Who am I, and may I signal other roles' backends?
WHOAMI_SQL = """
SELECT pg_catalog.pg_backend_pid()                                          AS own_pid,
       current_user::text                                                   AS runbook_role,
       now()                                                                AS observed_at,
       pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'USAGE')   AS can_signal
"""


class _WhoAmI(BaseModel):
    own_pid: int
    runbook_role: str
    observed_at: datetime
    can_signal: bool


def survey_sql(server_version_num: int) -> sql.Composed:
    """pg_locks.waitstart exists from PostgreSQL 14; before, the state change approximates it."""
    if capabilities(server_version_num).lock_waitstart:
        return sql.SQL(SURVEY_SQL).format(waitstart=sql.SQL("w.waitstart"), waitstart_col=sql.SQL("l.waitstart"))
    null = sql.SQL("NULL::timestamptz")
    return sql.SQL(SURVEY_SQL).format(waitstart=null, waitstart_col=null)


@task(name="survey-sessions", **DB_TASK)
def survey_sessions(target: ConnectionTarget) -> Survey:
    """Read every backend and every lock wait of the node in one transaction (one snapshot)."""
    with connect(target, purpose="high-load-response/survey", autocommit=False) as db:
        me = db.fetch_one(WHOAMI_SQL, None, _WhoAmI)
        rows = db.fetch_all(survey_sql(db.server_version_num), None, SessionRow)
        db.conn.rollback()
    return Survey(sessions=rows, **me.model_dump())
