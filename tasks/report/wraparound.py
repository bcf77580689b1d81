"""Transaction-ID wraparound (report 1.2): XID and multixact age per database and of the oldest tables,
against autovacuum_freeze_max_age and the hard limit, and what holds the xmin horizon back.

Docs: https://www.postgresql.org/docs/current/routine-vacuuming.html#VACUUM-FOR-WRAPAROUND
"""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect

# The server refuses new XIDs 3 million before 2^31; that is the hard limit we compare with.
HARD_LIMIT = 2**31 - 3_000_000
# Multixacts wrap at 2^31 as well, and the server stops assigning them 3 million before (multixact.c).
MXID_HARD_LIMIT = 2**31 - 3_000_000


class DatabaseAge(BaseModel):
    datname: str
    xid_age: int
    mxid_age: int


class TableAge(BaseModel):
    name: str
    xid_age: int
    mxid_age: int
    size_bytes: int


class HorizonHolder(BaseModel):
    """Something that keeps old row versions alive: a session, a prepared xact, a slot or a standby."""

    kind: str
    name: str
    xmin_age: int
    seconds: float | None


class WraparoundSnapshot(BaseModel):
    freeze_max_age: int
    multixact_freeze_max_age: int
    databases: list[DatabaseAge]
    tables: list[TableAge]
    holders: list[HorizonHolder]


# Freeze limits that trigger anti-wraparound autovacuum.
LIMITS_SQL = """
SELECT current_setting('autovacuum_freeze_max_age')::bigint            AS freeze_max_age,
       current_setting('autovacuum_multixact_freeze_max_age')::bigint  AS multixact_freeze_max_age
"""

# How old is the oldest unfrozen XID and multixact of every database?
DATABASE_AGES_SQL = """
SELECT datname::text                      AS datname,
       age(datfrozenxid)::bigint          AS xid_age,
       mxid_age(datminmxid)::bigint       AS mxid_age
  FROM pg_catalog.pg_database
 ORDER BY xid_age DESC
"""

# The tables of this database closest to an anti-wraparound vacuum: the larger of the XID age as a share
# of autovacuum_freeze_max_age and the multixact age as a share of autovacuum_multixact_freeze_max_age.
TABLE_AGES_SQL = """
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS name,
       age(c.relfrozenxid)::bigint                    AS xid_age,
       mxid_age(c.relminmxid)::bigint                 AS mxid_age,
       pg_catalog.pg_total_relation_size(c.oid)       AS size_bytes
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'm', 't')
 ORDER BY greatest(age(c.relfrozenxid)::float8
                  / current_setting('autovacuum_freeze_max_age')::float8,
                  mxid_age(c.relminmxid)::float8
                  / current_setting('autovacuum_multixact_freeze_max_age')::float8) DESC
 LIMIT %(limit)s
"""

# What holds the xmin horizon back: sessions, prepared transactions, replication slots, standby feedback.
HOLDERS_SQL = """
SELECT 'session'                                                       AS kind,
       pid::text || ' ' || coalesce(usename::text, '') || ' ' || coalesce(application_name, '') AS name,
       age(backend_xmin)::bigint                                       AS xmin_age,
       extract(epoch FROM now() - xact_start)::float8                  AS seconds
  FROM pg_catalog.pg_stat_activity
 WHERE backend_xmin IS NOT NULL
   AND pid <> pg_catalog.pg_backend_pid()
UNION ALL
SELECT 'prepared transaction',
       gid,
       age(transaction)::bigint,
       extract(epoch FROM now() - prepared)::float8
  FROM pg_catalog.pg_prepared_xacts
UNION ALL
SELECT 'replication slot',
       slot_name::text,
       greatest(age(xmin), age(catalog_xmin))::bigint,
       NULL::float8
  FROM pg_catalog.pg_replication_slots
 WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL
UNION ALL
SELECT 'standby feedback',
       coalesce(application_name, client_addr::text, pid::text),
       age(backend_xmin)::bigint,
       NULL::float8
  FROM pg_catalog.pg_stat_replication
 WHERE backend_xmin IS NOT NULL
 ORDER BY xmin_age DESC
 LIMIT %(limit)s
"""


class _Limits(BaseModel):
    freeze_max_age: int
    multixact_freeze_max_age: int


@task(name="read-wraparound", **DB_TASK)
def read_wraparound(target: ConnectionTarget, limit: int = 10) -> WraparoundSnapshot:
    with connect(target, purpose="report-wraparound") as db:
        limits = db.fetch_all(LIMITS_SQL, None, _Limits)[0]
        return WraparoundSnapshot(
            **limits.model_dump(),
            databases=db.fetch_all(DATABASE_AGES_SQL, None, DatabaseAge),
            tables=db.fetch_all(TABLE_AGES_SQL, {"limit": limit}, TableAge),
            holders=db.fetch_all(HOLDERS_SQL, {"limit": limit}, HorizonHolder))
