"""Rejoin steps: turn a fenced old primary into a standby of the new primary (local pg_ctl nodes).

After a clean switchover no rewind is needed; after a crash, pg_rewind (with the new primary
CHECKPOINTed first on PG15 and older, the diverged data directory copied aside, and the node's own *.conf
files restored afterwards, since pg_rewind copies the source's postgresql.conf and postgresql.auto.conf).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel

from blocks.failover_adapters import NodeControl
from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import connect
from tasks.core.server_capabilities import capabilities
from tasks.failover import node_control as nc
from tasks.failover.model import FailoverStepFailed
from tasks.failover.plan import lsn_int
from tasks.failover.steps import HISTORY_SQL, NODE_STATE_SQL, _StateRow, _Text, switch_point

STEP = dict(retries=0, cache_policy=NO_CACHE)
DIVERGED_RE = re.compile(r"servers diverged at WAL location ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)")

# Is there a physical slot of this name already?
SLOT_EXISTS_SQL = "SELECT count(*) AS n FROM pg_catalog.pg_replication_slots WHERE slot_name = %(slot)s"

# Create the physical slot the rejoined standby will stream from (WAL kept until it connects).
CREATE_SLOT_SQL = "SELECT pg_catalog.pg_create_physical_replication_slot(%(slot)s) IS NOT NULL AS created"

# Is the rejoined node streaming from this primary?
STREAMING_SQL = """
SELECT count(*) AS n
  FROM pg_catalog.pg_stat_replication
 WHERE application_name = %(node)s
   AND state = 'streaming'
"""

# Inactive physical slots left on a node from when it was the primary (stale after it became a standby).
STALE_SLOTS_SQL = """
SELECT slot_name AS value
  FROM pg_catalog.pg_replication_slots
 WHERE NOT active
   AND slot_type = 'physical'
   AND NOT (slot_name = ANY(%(keep)s))
"""

# Drop one stale slot.
DROP_SLOT_SQL = "SELECT pg_catalog.pg_drop_replication_slot(%(slot)s) IS NULL AS dropped"


class _Count(BaseModel):
    n: int


class _Ok(BaseModel):
    created: bool | None = None
    dropped: bool | None = None


def slot_name(node: str) -> str:
    """A valid physical slot name for a node ('pg-1' -> 'pg_1')."""
    return re.sub(r"[^a-z0-9_]", "_", node.lower())[:63]


def needs_rewind(state: str | None, checkpoint: str | None, node_tli: int | None, switch: str | None) -> bool:
    """No rewind only when the node stopped cleanly with its last checkpoint before the timeline switch."""
    if state != "shut down" or not checkpoint or not switch or not node_tli:
        return True
    return lsn_int(checkpoint) >= lsn_int(switch)


@task(name="primary-timeline", **STEP)
def primary_timeline(target: ConnectionTarget, node_tli: int | None) -> dict:
    """The new primary's timeline and where `node_tli` ended; on PG15 and older a CHECKPOINT first: pg_rewind
    there reads the source's timeline from its control file, and right after a promotion that still names the
    old timeline ("no rewind required", then the node loops on "timeline forked off"). PG16+ reads the history."""
    with connect(target, purpose="rejoin", statement_timeout_ms=300_000) as db:
        state = db.fetch_one(NODE_STATE_SQL, None, _StateRow)
        if state.in_recovery:
            raise FailoverStepFailed(f"{target.label} is in recovery: it is not the primary to rejoin to")
        checkpointed = capabilities(db.server_version_num).rewind_needs_checkpoint
        if checkpointed:
            db.execute("CHECKPOINT")
        history = db.fetch_one(HISTORY_SQL, {"tli": state.timeline}, _Text).value if state.timeline > 1 else None
    return {"timeline": state.timeline, "switch_lsn": switch_point(history, node_tli), "checkpointed": checkpointed}


@task(name="ensure-stopped", **STEP)
def ensure_stopped(control: NodeControl, node: str, host: str) -> str:
    status = nc.node_status(control, node, host)
    if status == "running":
        nc.stop_node(control, node, host, "fast")
        return f"{node} was running: stopped (fast)"
    return f"{node} is {status}"


@task(name="read-controldata", **STEP)
def read_controldata(control: NodeControl, node: str, host: str) -> dict:
    data = nc.controldata(control, node, host)
    tli = data.get("Latest checkpoint's TimeLineID")
    return {"state": data.get("Database cluster state"), "checkpoint": data.get("Latest checkpoint location"),
            "timeline": int(tli) if tli and tli.isdigit() else None}


def _local(control: NodeControl) -> None:
    if control.kind != "pg_ctl":
        raise FailoverStepFailed("rejoin runs only with a local pg_ctl NodeControl block: on remote nodes run "
                                 "pg_rewind and write standby.signal/primary_conninfo by hand (see README)")


def _owned_like(path: Path, ref: Path) -> None:
    if os.geteuid() == 0:
        st = ref.stat()
        os.chown(path, st.st_uid, st.st_gid)


@task(name="copy-diverged", **STEP)
def copy_diverged(control: NodeControl, node: str) -> str:
    """Keep the diverged data directory: pg_rewind discards the writes only it had."""
    _local(control)
    src = Path(nc.data_dir(control, node))
    dest = src.with_name(f"{src.name}.diverged-{datetime.now(UTC):%Y%m%dT%H%M%S}")
    proc = subprocess.run(["cp", "-a", str(src), str(dest)], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise FailoverStepFailed(f"copying {src} aside failed: {proc.stderr.strip()[:300]}")
    return str(dest)


@task(name="pg-rewind", **STEP)
def pg_rewind(control: NodeControl, node: str, source: ConnectionTarget) -> dict:
    """pg_rewind from the new primary; the node's own *.conf files are restored afterwards."""
    _local(control)
    data = Path(nc.data_dir(control, node))
    own_conf = {p.name: p.read_text() for p in data.glob("*.conf")}
    kwargs = source.connect_kwargs()
    password = kwargs.pop("password", None)
    kwargs.pop("connect_timeout", None)
    argv = [str(Path(control.bindir) / "pg_rewind"), "--target-pgdata", str(data), "--progress",
            "--source-server", make_conninfo(**kwargs)]
    if os.geteuid() == 0 and control.os_user:
        argv = ["runuser", "-u", control.os_user, "--", *argv]
    proc = nc.run(argv, timeout=3600, env={"PGPASSWORD": password} if password else None)
    output = (proc.stdout or "") + (proc.stderr or "")
    for name, text in own_conf.items():
        path = data / name
        path.write_text(text)
        _owned_like(path, data)
    if proc.returncode != 0:
        raise FailoverStepFailed(f"pg_rewind of {node} failed ({proc.returncode}): "
                                 f"{output.strip().splitlines()[-1][:300] if output.strip() else ''}")
    found = DIVERGED_RE.search(output)
    return {"diverged_at": found.group(1) if found else None, "timeline": int(found.group(2)) if found else None,
            "restored_conf": sorted(own_conf), "output": output.strip().splitlines()[-1][:300] if output else ""}


@task(name="configure-standby", **STEP)
def configure_standby(control: NodeControl, node: str, primary_host: str, primary_port: int, slot: str) -> str:
    """standby.signal + primary_conninfo/primary_slot_name in postgresql.auto.conf."""
    _local(control)
    data = Path(nc.data_dir(control, node))
    auto = data / "postgresql.auto.conf"
    kept = [ln for ln in (auto.read_text().splitlines() if auto.exists() else [])
            if not ln.startswith(("primary_conninfo", "primary_slot_name"))]
    info = {"host": primary_host, "port": primary_port, "user": control.replication_user, "application_name": node}
    if control.replication_passfile:
        info["passfile"] = control.replication_passfile
    conninfo = make_conninfo(**info).replace("'", "''")
    kept += [f"primary_conninfo = '{conninfo}'", f"primary_slot_name = '{slot}'"]
    auto.write_text("\n".join(kept) + "\n")
    (data / "standby.signal").write_text("")
    for path in (auto, data / "standby.signal"):
        _owned_like(path, data)
    return f"standby of {primary_host}:{primary_port} on slot {slot}"


@task(name="create-slot", **STEP)
def create_slot(primary: ConnectionTarget, slot: str) -> str:
    with connect(primary, purpose="rejoin") as db:
        if db.fetch_one(SLOT_EXISTS_SQL, {"slot": slot}, _Count).n:
            return f"slot {slot} already exists on {primary.node}"
        db.fetch_one(CREATE_SLOT_SQL, {"slot": slot}, _Ok)
    return f"slot {slot} created on {primary.node}"


@task(name="start-node", **STEP)
def start(control: NodeControl, node: str, host: str) -> str:
    return nc.start_node(control, node, host) or f"{node} started"


@task(name="wait-streaming", **STEP)
def wait_streaming(primary: ConnectionTarget, node: str, timeout_s: float) -> float:
    started = time.monotonic()
    with connect(primary, purpose="rejoin") as db:
        while not db.fetch_one(STREAMING_SQL, {"node": node}, _Count).n:
            if time.monotonic() - started > timeout_s:
                raise FailoverStepFailed(f"{node} is not streaming from {primary.node} after {timeout_s:.0f} s: "
                                         "see its server.log")
            time.sleep(0.05)
    return round(time.monotonic() - started, 3)


@task(name="drop-stale-slots", **STEP)
def drop_stale_slots(standby: ConnectionTarget, keep: list[str] | None = None) -> list[str]:
    """Physical slots the node kept from when it was the primary: inactive, they would only hold WAL.
    Logical slots (a CDC consumer's position) and the `keep` list are never dropped."""
    with connect(standby, purpose="rejoin") as db:
        stale = [r.value for r in db.fetch_all(STALE_SLOTS_SQL, {"keep": list(keep or [])}, _Text)]
        for slot in stale:
            db.fetch_one(DROP_SLOT_SQL, {"slot": slot}, _Ok)
    return stale


@task(name="unfence-in-block", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def unfence(block_name: str, node: str) -> list[str]:
    from blocks.postgres_cluster import PostgresCluster

    cluster = PostgresCluster.load(block_name)
    cluster.fenced_nodes = [n for n in cluster.fenced_nodes if n != node]
    cluster.save(block_name, overwrite=True)
    return cluster.fenced_nodes
