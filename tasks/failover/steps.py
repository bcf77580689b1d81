"""Failover steps over explicit nodes: each task reads or changes one thing and says what it did.

Mutating steps never retry on their own: a resumed run re-inspects state before acting again.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from blocks.failover_adapters import EndpointControl, NodeControl
from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import Session, connect, translate_errors
from tasks.core.errors import ReadOnlyServer, RunbookDBError
from tasks.failover import endpoint as ep
from tasks.failover import node_control as nc
from tasks.failover.model import FailoverStepFailed, NodeState
from tasks.failover.plan import lsn_int

PASSWORD_RE = re.compile(r"password\s*=\s*('[^']*'|\S+)")
STEP = dict(retries=0, cache_policy=NO_CACHE)

# Where does this node stand: role, timeline, WAL positions, replay and receiver state?
NODE_STATE_SQL = """
SELECT pg_catalog.pg_is_in_recovery()                                       AS in_recovery,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery()
            THEN pg_catalog.pg_current_wal_lsn()::text END                  AS current_lsn,
       pg_catalog.pg_last_wal_receive_lsn()::text                           AS receive_lsn,
       pg_catalog.pg_last_wal_replay_lsn()::text                            AS replay_lsn,
       CASE WHEN pg_catalog.pg_is_in_recovery()
            THEN pg_catalog.pg_is_wal_replay_paused() ELSE false END        AS replay_paused,
       CASE WHEN pg_catalog.pg_is_in_recovery()
            THEN greatest((SELECT r.received_tli FROM pg_catalog.pg_stat_wal_receiver AS r),
                          (SELECT nullif(v.min_recovery_end_timeline, 0) FROM pg_catalog.pg_control_recovery() AS v),
                          (SELECT c.timeline_id FROM pg_catalog.pg_control_checkpoint() AS c))
            ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END                                                                  AS timeline,
       (SELECT r.status FROM pg_catalog.pg_stat_wal_receiver AS r)          AS receiver_status,
       (SELECT r.sender_port FROM pg_catalog.pg_stat_wal_receiver AS r)     AS sender_port
"""

# Which standbys stream from this primary, and how far behind?
REPLICATION_SQL = """
SELECT application_name,
       client_addr::text AS client_addr,
       state,
       sync_state,
       sent_lsn::text    AS sent_lsn,
       replay_lsn::text  AS replay_lsn
  FROM pg_catalog.pg_stat_replication
"""

# Which replication slots exist on this node?
SLOTS_SQL = """
SELECT slot_name,
       slot_type,
       active,
       restart_lsn::text AS restart_lsn,
       wal_status
  FROM pg_catalog.pg_replication_slots
"""

# Which settings differ from their built-in default (and where they come from)?
SETTINGS_SQL = """
SELECT name,
       setting,
       unit,
       source
  FROM pg_catalog.pg_settings
 WHERE source NOT IN ('default', 'override', 'client', 'session')
 ORDER BY name
"""

# The timeline history of this server's timeline: where each earlier timeline ended.
HISTORY_SQL = """
SELECT pg_catalog.pg_read_file('pg_wal/' || lpad(upper(to_hex(%(tli)s::int)), 8, '0') || '.history') AS value
"""

# How far has this standby received and replayed WAL?
POSITIONS_SQL = """
SELECT pg_catalog.pg_last_wal_receive_lsn()::text AS received,
       pg_catalog.pg_last_wal_replay_lsn()::text  AS replayed
"""

# Promote this standby without waiting inside the server (we poll: faster than pg_ctl promote -w).
PROMOTE_SQL = "SELECT pg_catalog.pg_promote(wait => false) AS requested"

# Is this server still replaying WAL (a standby)?
IN_RECOVERY_SQL = "SELECT pg_catalog.pg_is_in_recovery() AS in_recovery"

# The probe's transaction is READ WRITE explicitly: refused (25006) on a standby, whatever the defaults say.
PROBE_READ_WRITE_SQL = "SET TRANSACTION READ WRITE"

# The probe's timeouts, local to its transaction (through pgbouncer session settings would leak to others).
PROBE_TIMEOUTS_SQL = """
SELECT pg_catalog.set_config('statement_timeout', %(ms)s, true) AS statement_timeout,
       pg_catalog.set_config('lock_timeout', %(ms)s, true)      AS lock_timeout
"""

# A scratch table of this transaction only: touches no user table, dropped at COMMIT.
PROBE_TABLE_SQL = "CREATE TEMP TABLE pg_runbooks_write_probe (token text NOT NULL) ON COMMIT DROP"

# Write one row carrying the probe's random token; which transaction wrote it?
PROBE_INSERT_SQL = """
INSERT INTO pg_temp.pg_runbooks_write_probe (token)
VALUES (%(token)s)
RETURNING token,
          pg_catalog.pg_current_xact_id()::text AS xid
"""

# Read the row back: the token, which server answered, and whether applications' transactions default to read-only.
PROBE_READ_SQL = """
SELECT p.token,
       pg_catalog.inet_server_port()                              AS port,
       pg_catalog.pg_is_in_recovery()                             AS in_recovery,
       pg_catalog.current_setting('default_transaction_read_only') AS default_read_only
  FROM pg_temp.pg_runbooks_write_probe AS p
 WHERE p.token = %(token)s
"""


class _StateRow(BaseModel):
    in_recovery: bool
    current_lsn: str | None
    receive_lsn: str | None
    replay_lsn: str | None
    replay_paused: bool | None
    timeline: int | None
    receiver_status: str | None
    sender_port: int | None


class _AnyRow(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Text(BaseModel):
    value: str | None


class _Positions(BaseModel):
    received: str | None
    replayed: str | None


class _Written(BaseModel):
    token: str
    xid: str


class _ReadBack(BaseModel):
    token: str
    port: int
    in_recovery: bool
    default_read_only: str


def write_then_read(target: ConnectionTarget, purpose: str, timeout_ms: int = 5_000, db: Session | None = None
                    ) -> dict:
    """In one explicit READ WRITE transaction: create a temp table, insert a random token, read it back, COMMIT.

    Works through pgbouncer in transaction mode (one transaction, no prepared statements). A standby, or a
    server whose transactions default to read-only, raises ReadOnlyServer; a token that does not read back
    raises FailoverStepFailed. `db`: a direct autocommit session to reuse (phase 2 holds one on the candidate);
    else a new connection.
    """
    token = secrets.token_hex(16)
    if db is None:
        with connect(target, purpose=purpose, statement_timeout_ms=timeout_ms, autocommit=False) as fresh:
            written, row = _probe(target, fresh, token, timeout_ms)
            fresh.conn.commit()
    else:
        with translate_errors(target), db.conn.transaction():
            written, row = _probe(target, db, token, timeout_ms)
    if row is None or written is None or row.token != token:
        raise FailoverStepFailed(f"{target.label}: the write probe's row did not read back: check the server by hand")
    if row.in_recovery:
        raise ReadOnlyServer(target.label, "the write probe ran on a server in recovery")
    if row.default_read_only == "on":
        raise ReadOnlyServer(target.label, "default_transaction_read_only is on, so applications' transactions are "
                             "read-only: ALTER SYSTEM RESET default_transaction_read_only (and the role's or "
                             "database's setting), reload, then rerun")
    return {"token": token, "xid": written.xid, "port": row.port}


def _probe(target: ConnectionTarget, db: Session, token: str, timeout_ms: int) -> tuple:
    """The probe's statements, inside the caller's transaction: (the written row, the row read back)."""
    try:
        db.execute(PROBE_READ_WRITE_SQL)
    except RunbookDBError as exc:  # a standby: 0A000 "cannot set transaction read-write mode during recovery"
        if exc.sqlstate in ("0A000", "25006"):
            raise ReadOnlyServer(target.label, exc.detail, exc.sqlstate) from None
        raise
    db.execute(PROBE_TIMEOUTS_SQL, {"ms": str(timeout_ms)})
    db.execute(PROBE_TABLE_SQL)
    written = db.fetch_one(PROBE_INSERT_SQL, {"token": token}, _Written)
    return written, db.fetch_one(PROBE_READ_SQL, {"token": token}, _ReadBack)


@contextlib.contextmanager
def _session(target: ConnectionTarget, held: Session | None, timeout_ms: int) -> Iterator[Session]:
    """The session phase 2 holds on this node (left open), or a new one closed after use."""
    if held is not None and not held.conn.closed:
        yield held
        return
    with connect(target, purpose="failover", statement_timeout_ms=timeout_ms) as db:
        yield db


def _dicts(db, query: str) -> list[dict]:
    return [row.model_dump() for row in db.fetch_all(query, None, _AnyRow)]


class Backup(BaseModel):
    node: str
    replication: list[dict] = []
    slots: list[dict] = []
    settings: list[dict] = []
    error: str | None = None


@task(name="read-node-state", **STEP)
def read_node_state(target: ConnectionTarget) -> NodeState:
    """The node's own view of its role and WAL positions; unreachable is a state, not an error."""
    try:
        with connect(target, purpose="failover", statement_timeout_ms=5_000) as db:
            row = db.fetch_one(NODE_STATE_SQL, None, _StateRow)
    except RunbookDBError as exc:
        return NodeState(node=target.node, reachable=False, error=exc.sentence)
    return NodeState(node=target.node, reachable=True, **row.model_dump())


@task(name="read-backup", **STEP)
def read_backup(target: ConnectionTarget) -> Backup:
    """Replication, slots and non-default settings of one node (the pre-failover backup)."""
    try:
        with connect(target, purpose="failover-backup", statement_timeout_ms=10_000) as db:
            settings = [_redact(row) for row in _dicts(db, SETTINGS_SQL)]
            return Backup(node=target.node, replication=_dicts(db, REPLICATION_SQL), slots=_dicts(db, SLOTS_SQL),
                          settings=settings)
    except RunbookDBError as exc:
        return Backup(node=target.node, error=exc.sentence)


def _redact(row: dict) -> dict:
    """primary_conninfo may carry a password: never copy it into a backup or artifact."""
    if row.get("setting") and "password" in str(row["setting"]):
        row["setting"] = PASSWORD_RE.sub("password=********", str(row["setting"]))
    return row


@task(name="read-endpoint", **STEP)
def read_endpoint(control: EndpointControl) -> dict:
    """pgbouncer's pools and ini (reachability check + backup); raises EndpointError when unreachable."""
    return {"databases": ep.show_databases(control), "ini": ep.read_ini(control)}


@task(name="checkpoint", **STEP)
def checkpoint(target: ConnectionTarget, timeout_ms: int = 300_000) -> str:
    """CHECKPOINT while clients still run, so the fast stop's own checkpoint is short."""
    with connect(target, purpose="failover", statement_timeout_ms=timeout_ms) as db:
        if db.scalar(IN_RECOVERY_SQL):
            raise FailoverStepFailed(f"{target.label} is in recovery: it is not the primary any more")
        db.execute("CHECKPOINT")
    return "CHECKPOINT done"


@task(name="pause-endpoint", **STEP)
def pause_endpoint(control: EndpointControl, timeout_s: float) -> str:
    return ep.pause(control, timeout_s)


@task(name="resume-endpoint", **STEP)
def resume_endpoint(control: EndpointControl, held=None) -> str:
    return ep.resume(control, held)


@task(name="repoint-endpoint", **STEP)
def repoint_endpoint(control: EndpointControl, host: str, port: int, held=None) -> str:
    return ep.repoint(control, host, port, held)


@task(name="fence-node", **STEP)
def fence_node(control: NodeControl, node: str, host: str, mode: str, timeout: int, accept_unconfirmed: bool,
               endpoint_kind: str) -> str:
    """Stop the old primary (fast or immediate) and confirm it is stopped.

    `force` never reaches here: only the explicit accept_unconfirmed_fence passes an unconfirmed stop, and
    never with endpoint kind 'none', where nothing but the fence keeps clients off the old primary.
    """
    try:
        return f"{node} {nc.fence(control, node, host, mode, timeout)}"  # raises unless it can confirm the stop
    except nc.NodeControlError as exc:
        status, error = "unknown", f" ({exc})"
    if accept_unconfirmed and endpoint_kind != "none":
        return (f"fence of {node} UNCONFIRMED (node control says {status}); proceeding because "
                "accept_unconfirmed_fence is set: pgbouncer is repointed away from it, direct clients are not")
    what = f"cannot confirm that {node} is stopped (node control: {status}{error}): stop it, power it off or cut "
    if endpoint_kind == "none":
        raise FailoverStepFailed(what + "its network, then rerun; with endpoint kind 'none' (libpq multi-host) "
                                 "nothing else keeps clients off it, so accept_unconfirmed_fence is refused")
    raise FailoverStepFailed(what + "its network, then rerun; or rerun with accept_unconfirmed_fence once you are "
                             "sure it cannot accept writes (force does not skip the fence)")


@task(name="read-shutdown-checkpoint", **STEP)
def read_shutdown_checkpoint(control: NodeControl, node: str, host: str, required: bool = True) -> dict:
    """pg_controldata of the stopped old primary: state and 'Latest checkpoint location'.

    Not required in failover mode (its host may be gone): then every value is None (gap unknown).
    """
    try:
        data = nc.controldata(control, node, host)
    except nc.NodeControlError:
        if required:
            raise
        data = {}
    tli = data.get("Latest checkpoint's TimeLineID")
    return {"state": data.get("Database cluster state"), "checkpoint": data.get("Latest checkpoint location"),
            "timeline": int(tli) if tli and tli.isdigit() else None}


@task(name="read-wal-end", **STEP)
def read_wal_end(control: NodeControl, node: str, host: str, start_lsn: str, timeline: int | None) -> str | None:
    """End of the crashed old primary's valid WAL (None when its disk cannot be read)."""
    if not timeline:
        return None
    try:
        return nc.wal_end(control, node, host, start_lsn, timeline)
    except nc.NodeControlError:
        return None


@task(name="lsn-gate", **STEP)
def lsn_gate(target: ConnectionTarget, past_lsn: str, timeout_s: float, held: Session | None = None) -> str:
    """Wait until the candidate replayed past `past_lsn` (the old primary's shutdown checkpoint)."""
    goal = lsn_int(past_lsn)
    deadline = time.monotonic() + timeout_s
    with _session(target, held, 5_000) as db:
        while True:
            replay = db.fetch_one(POSITIONS_SQL, None, _Positions).replayed
            if (lsn_int(replay) or 0) > goal:
                return replay
            if time.monotonic() > deadline:
                raise FailoverStepFailed(
                    f"{target.label} replayed only to {replay}, not past the old primary's shutdown checkpoint "
                    f"{past_lsn}, in {timeout_s:.0f} s: not promoting (it would lose writes)")
            time.sleep(0.002)


@task(name="replay-received", **STEP)
def replay_received(target: ConnectionTarget, timeout_s: float) -> str:
    """Failover mode: wait until everything received is replayed; the position reached."""
    deadline = time.monotonic() + timeout_s
    with connect(target, purpose="failover", statement_timeout_ms=5_000) as db:
        while True:
            # How far has this standby received and replayed?
            pos = db.fetch_one(POSITIONS_SQL, None, _Positions)
            received, replayed = pos.received, pos.replayed
            if (lsn_int(replayed) or 0) >= (lsn_int(received) or 0):
                return replayed
            if time.monotonic() > deadline:
                return replayed
            time.sleep(0.01)


@task(name="promote", **STEP)
def promote(target: ConnectionTarget, timeout_s: float, held: Session | None = None) -> str:
    """pg_promote only if still in recovery; poll until it accepts writes."""
    started = time.perf_counter()
    with _session(target, held, 10_000) as db:
        if not db.scalar(IN_RECOVERY_SQL):
            return f"{target.node} was already promoted (not in recovery): not promoting twice"
        db.execute(PROMOTE_SQL)
        deadline = time.monotonic() + timeout_s
        while db.scalar(IN_RECOVERY_SQL):
            if time.monotonic() > deadline:
                raise FailoverStepFailed(f"{target.label} is still in recovery {timeout_s:.0f} s after pg_promote")
            time.sleep(0.005)
    return f"{target.node} promoted in {(time.perf_counter() - started) * 1000:.0f} ms"


@task(name="verify-promotion", **STEP)
def verify_promotion(target: ConnectionTarget, original_timeline: int | None, held: Session | None = None) -> dict:
    """Not in recovery, timeline above the original, and a write-then-read commits (write_then_read).

    On phase 2's held session when given: a session opened while the node was a standby sees the promotion
    (every transaction asks again whether recovery is over), so its write proves the new primary writes. A held
    session the server closed meanwhile (a backend that restarted the node) is replaced by a new connection."""
    try:
        return _verify(target, original_timeline, held)
    except RunbookDBError:
        if held is None or not held.conn.broken:
            raise
    return _verify(target, original_timeline, None)


def _verify(target: ConnectionTarget, original_timeline: int | None, held: Session | None) -> dict:
    with _session(target, held, 5_000) as db:
        state = db.fetch_one(NODE_STATE_SQL, None, _StateRow).model_dump()
        if state["in_recovery"]:
            raise FailoverStepFailed(f"{target.label} is still in recovery")
        if original_timeline and state["timeline"] <= original_timeline:
            raise FailoverStepFailed(
                f"{target.label} is on timeline {state['timeline']}, not above {original_timeline}")
        history = None
        try:
            history = db.fetch_one(HISTORY_SQL, {"tli": state["timeline"]}, _Text).value
        except RunbookDBError:
            pass  # needs superuser or pg_read_server_files; the switch point is then unknown
        probe = write_then_read(target, "failover", db=db)
    return {"timeline": state["timeline"], "xid": probe["xid"], "switch_lsn": switch_point(history)}


def switch_point(history: str | None, timeline: int | None = None) -> str | None:
    """Where `timeline` ended according to a timeline history file ('1\t0/3000148\t...').

    Without `timeline`: the last entry, i.e. where the server's parent timeline ended (its promotion).
    """
    entries = []
    for line in (history or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            entries.append((int(parts[0]), parts[1]))
    if timeline is None:
        return entries[-1][1] if entries else None
    return next((lsn for tli, lsn in entries if tli == timeline), None)


def application_target(candidate: ConnectionTarget, endpoint: EndpointControl) -> ConnectionTarget:
    """Where applications connect: pgbouncer's client port, or (endpoint 'none') the new primary itself."""
    if endpoint.kind != "pgbouncer":
        return candidate
    return candidate.model_copy(update={"node": "endpoint", "host": endpoint.admin_host,
                                        "port": endpoint.admin_port, "via_pooler": True})


@task(name="lift-login-retry", **STEP)
def lift_login_retry(control: EndpointControl, held=None) -> dict:
    """SET server_login_retry = 0 after the RELOAD (tasks/failover/endpoint.py says why); the value to restore."""
    original, detail = ep.lift_login_retry(control, held)
    return {"original": original, "detail": detail}


@task(name="restore-login-retry", **STEP)
def restore_login_retry(control: EndpointControl, original: str) -> str:
    return ep.restore_login_retry(control, original)


@task(name="probe-application", **STEP)
def probe_application(target: ConnectionTarget, deadline_s: float) -> dict:
    """Write then read through the application endpoint, retrying until deadline_s: it must reach a writable server.

    Never raises for an endpoint that is slow to come back: returns ok False with the last error (the new primary
    itself was verified in phase 2; the report says so and what to check).
    """
    started = time.monotonic()
    attempts, last = 0, ""
    while True:
        attempts += 1
        try:
            probe = write_then_read(target, "failover-probe")
        except RunbookDBError as exc:
            last = exc.sentence
        else:
            waited = time.monotonic() - started
            return {**probe, "ok": True, "at": datetime.now(UTC).isoformat(), "attempts": attempts,
                    "detail": f"a write committed and read back through the endpoint on port {probe['port']} "
                              f"(attempt {attempts}, {waited:.1f} s)"}
        if time.monotonic() - started >= deadline_s:
            return {"ok": False, "attempts": attempts, "error": last,
                    "detail": f"NOT confirmed after {attempts} attempts in {deadline_s:.0f} s: {last}"}
        time.sleep(0.2)
