"""After a promotion the cluster's other standbys follow the new primary (repmgr's `standby follow`).

A standby left pointing at the old primary stops receiving WAL: the cluster silently loses a copy. PostgreSQL
13+ reloads `primary_conninfo`, so following is SQL only: the standby's slot is created on the new primary,
`ALTER SYSTEM SET primary_conninfo` keeps every connection option but host and port, `pg_reload_conf()`
restarts the WAL receiver, and with `recovery_target_timeline = 'latest'` (the default) it crosses the timeline
switch. A standby that had received WAL past the promotion point cannot follow (its timeline forked earlier):
it is reported, with the rejoin flow (pg_rewind) as the action, and the failover itself still stands.

The conninfo may carry a password: it is never logged, returned or journaled.
"""

from __future__ import annotations

import time

import psycopg
from prefect import task
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import connect
from tasks.core.errors import RunbookDBError
from tasks.failover.plan import lsn_int
from tasks.failover.rejoin import create_slot
from tasks.failover.steps import STEP

# Is this node a standby, where does it stream from, and with which slot?
STANDBY_SOURCE_SQL = """
SELECT pg_catalog.pg_is_in_recovery()                        AS in_recovery,
       pg_catalog.current_setting('primary_conninfo')       AS conninfo,
       pg_catalog.current_setting('primary_slot_name')      AS slot,
       pg_catalog.pg_last_wal_replay_lsn()::text            AS replay_lsn,
       r.status                                              AS receiver_status,
       r.sender_host                                         AS sender_host,
       r.sender_port                                         AS sender_port,
       r.received_tli                                        AS received_tli
  FROM (SELECT 1) AS one
  LEFT JOIN pg_catalog.pg_stat_wal_receiver AS r ON true
"""

# Apply the new primary_conninfo: the WAL receiver restarts with it.
RELOAD_SQL = "SELECT pg_catalog.pg_reload_conf() AS reloaded"

# Which timeline is the new primary on (the follower must reach it)?
PRIMARY_TIMELINE_SQL = """
SELECT ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int AS tli
"""


class _Source(BaseModel):
    in_recovery: bool
    conninfo: str
    slot: str
    replay_lsn: str | None
    receiver_status: str | None
    sender_host: str | None
    sender_port: int | None
    received_tli: int | None


class _Ok(BaseModel):
    reloaded: bool


class _Tli(BaseModel):
    tli: int


class FollowResult(BaseModel):
    node: str
    status: str  # following | already | skipped | failed
    detail: str


def repointed_conninfo(conninfo: str, host: str, port: int) -> str:
    """The standby's own conninfo (user, passfile, sslmode, application_name, ...) aimed at host:port."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    params.pop("hostaddr", None)
    params.update(host=host, port=str(port))
    return psycopg.conninfo.make_conninfo(**params)


def _streams_from(src: _Source, host: str, port: int, timeline: int) -> bool:
    return (src.receiver_status == "streaming" and src.sender_port == port and src.sender_host in (host, None)
            and (src.received_tli or 0) >= timeline)


def _cascades(src: _Source, old_primary: ConnectionTarget | None) -> bool:
    """Streaming, and not from the old primary (which no longer serves WAL after its fence)."""
    if old_primary is None or src.receiver_status != "streaming":
        return False
    return (src.sender_host, src.sender_port) != (old_primary.host, old_primary.port)


@task(name="follow-new-primary", **STEP)
def follow_new_primary(standby: ConnectionTarget, primary: ConnectionTarget, timeout_s: float,
                       fork_lsn: str | None = None, old_primary: ConnectionTarget | None = None) -> FollowResult:
    """Point one standby at the new primary and wait until it streams on the new timeline; never raises for a
    standby that cannot follow (the failover stands): the result says what to do.

    `fork_lsn` is where the old timeline ended on the new primary: a standby that replayed past it holds WAL
    the new primary never had, so it is left untouched and reported for a rejoin (pg_rewind). A cascading
    standby (streaming from another live standby, not from `old_primary`) is left in its place: it follows the
    new timeline through its upstream."""
    node = standby.node
    try:
        with connect(primary, purpose="failover-follow", statement_timeout_ms=10_000) as db:
            timeline = db.fetch_one(PRIMARY_TIMELINE_SQL, None, _Tli).tli
        with connect(standby, purpose="failover-follow", statement_timeout_ms=10_000) as db:
            src = db.fetch_one(STANDBY_SOURCE_SQL, None, _Source)
            if not src.in_recovery:
                return FollowResult(node=node, status="failed", detail=(
                    f"{node} is not in recovery: it accepts writes beside the new primary {primary.node}; "
                    "stop it now (split brain), then rejoin it"))
            if _streams_from(src, primary.host, primary.port, timeline):
                return FollowResult(node=node, status="already", detail=f"{node} already streams from {primary.node}")
            if _cascades(src, old_primary):
                return FollowResult(node=node, status="already", detail=(
                    f"{node} cascades from the standby at {src.sender_host}:{src.sender_port}: it follows the new "
                    "timeline through it (left as it is)"))
            if fork_lsn and (lsn_int(src.replay_lsn) or 0) > (lsn_int(fork_lsn) or 0):
                return FollowResult(node=node, status="failed", detail=(
                    f"{node} replayed to {src.replay_lsn}, past {fork_lsn} where {primary.node} left the old "
                    f"timeline: it holds WAL the new primary never had and cannot follow; left as it is: run "
                    f"the rejoin flow with node {node} (pg_rewind discards that WAL)"))
            if not src.conninfo.strip():
                return FollowResult(node=node, status="skipped", detail=(
                    f"{node} has no primary_conninfo (WAL from an archive only?): not repointed"))
            slot_note = f" ({create_slot.fn(primary, src.slot)})" if src.slot else ""  # rejoin's own slot step
            conninfo = repointed_conninfo(src.conninfo, primary.host, primary.port)
            # A utility statement takes no bind parameters: the value is composed as a quoted literal.
            db.execute(psycopg.sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(psycopg.sql.Literal(conninfo)))
            db.fetch_one(RELOAD_SQL, None, _Ok)
            deadline = time.monotonic() + timeout_s
            while not _streams_from(src, primary.host, primary.port, timeline):
                if time.monotonic() > deadline:
                    return FollowResult(node=node, status="failed", detail=(
                        f"{node} was repointed to {primary.node} but is not streaming on timeline {timeline} after "
                        f"{timeout_s:.0f} s (receiver: {src.receiver_status or 'none'}, timeline "
                        f"{src.received_tli}): it probably received WAL past the promotion point; run the rejoin "
                        f"flow for {node} (pg_rewind), and see its server log"))
                time.sleep(0.1)
                src = db.fetch_one(STANDBY_SOURCE_SQL, None, _Source)
    except RunbookDBError as exc:
        return FollowResult(node=node, status="failed", detail=(
            f"{node} could not be repointed: {exc}; point its primary_conninfo at {primary.node} by hand "
            "(or run the rejoin flow)"))
    return FollowResult(node=node, status="following", detail=(
        f"{node} streams from {primary.node} on timeline {timeline}{slot_note}"))

