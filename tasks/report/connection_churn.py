"""Connection age and churn (troubleshooter 3.1): how fast sessions come and go, how long they live.

New sessions per second come from pg_stat_database.sessions (PG14+) sampled twice; young
backends and average ages from pg_stat_activity. pg_monitor suffices.
"""

from __future__ import annotations

import time

from prefect import task
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.core.server_capabilities import capabilities


class ChurnSample(BaseModel):
    sample_seconds: float
    new_sessions: int | None = Field(description="Sessions opened during the sample (PG14+).")
    sessions_per_second: float | None
    avg_session_seconds: float | None = Field(description="Mean lifetime of ended sessions since the stats reset.")
    young_backends: int = Field(description="Client backends younger than young_seconds right now.")
    young_seconds: float
    avg_backend_age_seconds: float | None
    oldest_backend_age_seconds: float | None


# Sessions opened so far, and their total lifetime, over all databases (PG14+).
SESSIONS_SQL = """
SELECT coalesce(sum(sessions), 0)::bigint   AS sessions,
       coalesce(sum(session_time), 0)::float8 AS session_time_ms
  FROM pg_catalog.pg_stat_database
"""

# How old are the client backends, and how many were opened in the last few seconds?
AGES_SQL = """
SELECT count(*) FILTER (WHERE now() - backend_start < make_interval(secs => %(young)s))::int AS young_backends,
       avg(extract(epoch FROM now() - backend_start))::float8                               AS avg_age,
       max(extract(epoch FROM now() - backend_start))::float8                               AS oldest_age
  FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'client backend'
   AND pid <> pg_catalog.pg_backend_pid()
"""


class _Sessions(BaseModel):
    sessions: int
    session_time_ms: float


class _Ages(BaseModel):
    young_backends: int
    avg_age: float | None
    oldest_age: float | None


@task(name="sample-connection-churn", **DB_TASK)
def sample_churn(target: ConnectionTarget, sample_seconds: float = 2.0, young_seconds: float = 10.0) -> ChurnSample:
    with connect(target, purpose="troubleshoot-connections") as db:
        has_sessions = capabilities(db.server_version_num).database_sessions
        first = db.fetch_all(SESSIONS_SQL, None, _Sessions)[0] if has_sessions else None
        time.sleep(sample_seconds)
        last = db.fetch_all(SESSIONS_SQL, None, _Sessions)[0] if has_sessions else None
        ages = db.fetch_all(AGES_SQL, {"young": young_seconds}, _Ages)[0]
    new = None if first is None or last is None else max(last.sessions - first.sessions, 0)
    avg_session = last.session_time_ms / last.sessions / 1000 if last and last.sessions else None
    return ChurnSample(
        sample_seconds=sample_seconds, new_sessions=new,
        sessions_per_second=None if new is None else round(new / sample_seconds, 2),
        avg_session_seconds=avg_session, young_backends=ages.young_backends, young_seconds=young_seconds,
        avg_backend_age_seconds=ages.avg_age, oldest_backend_age_seconds=ages.oldest_age)
