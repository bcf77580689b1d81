"""Connection remediation (runbook 5.2, connection_limit): find and terminate stale client sessions.

Never touched: this session, non-client backends (walsenders, autovacuum, background workers),
superusers, pg-runbooks' own sessions, and protected users/applications. The terminations go
through the one audited mechanism of the high-load runbook (`tasks.emergency.signal.signal_sessions`): each
re-checks pid, backend_start, query_start and state in the same statement, so a pid reused by a new
session, or a session that ran another statement since, is left alone. Needs pg_signal_backend.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.emergency.high_load_plan import PlannedAction


class RemediationParams(BaseModel):
    """What counts as a stale session, and whether to act (the Prefect UI renders this form)."""

    dry_run: bool = Field(default=True, description="Only list what would be terminated (turn off to act).")
    idle_in_transaction_seconds: float = Field(
        default=300, ge=1, le=86_400, description="Terminate sessions idle in a transaction longer than this.")
    idle_applications: list[str] = Field(
        default_factory=list, description="application_name values whose plain idle sessions may be terminated.")
    idle_seconds: float = Field(default=900, ge=1, le=604_800,
                                description="An idle session of those applications older than this is stale.")
    protected_users: list[str] = Field(default_factory=list, description="Roles never terminated.")
    protected_applications: list[str] = Field(default_factory=list, description="Applications never terminated.")
    max_terminations: int = Field(default=50, ge=1, le=1000, description="At most this many per run.")
    wait_ms: int = Field(default=2000, ge=0, le=30_000, description="pg_terminate_backend waits this long per pid.")


class StaleSession(BaseModel):
    pid: int
    backend_start: datetime
    query_start: datetime | None = None
    usename: str | None
    application_name: str | None
    client_addr: str | None
    datname: str | None
    state: str
    state_seconds: float
    reason: str


_STALE_CONDITION = """
       a.backend_type = 'client backend'
   AND a.pid <> pg_catalog.pg_backend_pid()
   AND NOT coalesce(r.rolsuper, false)
   AND a.application_name NOT LIKE 'pg-runbooks/%%'
   AND NOT (a.usename::text = ANY(%(protected_users)s))
   AND NOT (a.application_name = ANY(%(protected_apps)s))
   AND (   (a.state IN ('idle in transaction', 'idle in transaction (aborted)')
            AND now() - a.state_change > make_interval(secs => %(iit_seconds)s))
        OR (a.state = 'idle'
            AND a.application_name = ANY(%(idle_apps)s)
            AND now() - a.state_change > make_interval(secs => %(idle_seconds)s)))
"""

# Which client sessions are stale (idle in a transaction too long, or idle sessions of listed applications)?
STALE_SESSIONS_SQL = sql.SQL("""
SELECT a.pid,
       a.backend_start,
       a.query_start,
       a.usename::text                                       AS usename,
       a.application_name,
       a.client_addr::text                                   AS client_addr,
       a.datname::text                                       AS datname,
       a.state,
       extract(epoch FROM now() - a.state_change)::float8    AS state_seconds,
       CASE WHEN a.state = 'idle' THEN 'idle session of a listed application'
            ELSE 'idle in transaction' END                   AS reason
  FROM pg_catalog.pg_stat_activity AS a
  LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = a.usesysid
 WHERE {stale}
 ORDER BY a.state_change
 LIMIT %(limit)s
""").format(stale=sql.SQL(_STALE_CONDITION))


def _params(p: RemediationParams) -> dict:
    return {"protected_users": p.protected_users, "protected_apps": p.protected_applications,
            "iit_seconds": p.idle_in_transaction_seconds, "idle_apps": p.idle_applications,
            "idle_seconds": p.idle_seconds}


@task(name="find-stale-sessions", **DB_TASK)
def find_stale_sessions(target: ConnectionTarget, params: RemediationParams) -> list[StaleSession]:
    with connect(target, purpose="connection-remediation") as db:
        return db.fetch_all(STALE_SESSIONS_SQL, {**_params(params), "limit": params.max_terminations},
                            StaleSession)


def plan_terminations(sessions: list[StaleSession]) -> list[PlannedAction]:
    """Each stale session as a guarded terminate action (cancel does nothing to an idle session)."""
    return [PlannedAction(step="stale-connections", action="terminate", pid=s.pid, backend_start=s.backend_start,
                          query_start=s.query_start, usename=s.usename, application_name=s.application_name,
                          client_addr=s.client_addr, datname=s.datname, state=s.state,
                          duration_seconds=s.state_seconds, query="", reason=s.reason)
            for s in sessions]
