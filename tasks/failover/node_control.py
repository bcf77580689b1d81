"""Node control: stop, start and inspect a PostgreSQL node through the NodeControl adapter.

Local pg_ctl (as the server's OS user when we are root) or the user's shell templates.
Commands are argument lists (no shell); their output never contains a password.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from blocks.failover_adapters import NodeControl

LSN_RE = re.compile(r"([0-9A-F]+/[0-9A-F]+)")
WAL_POSITION_RE = re.compile(r"\b(?:at|after) ([0-9A-F]+/[0-9A-F]+)\b")


class NodeControlError(RuntimeError):
    """A node-control command failed; the message names the node and the command's last output."""


def _argv(control: NodeControl, template: str | None, binary: str, args: list[str], **fields: str) -> list[str]:
    if control.kind == "shell":
        if not template:
            raise NodeControlError(f"the NodeControl block has no template for {binary}")
        return shlex.split(template.format(bindir=control.bindir, **fields))
    argv = [str(Path(control.bindir) / binary), *args]
    if os.geteuid() == 0 and control.os_user:
        argv = ["runuser", "-u", control.os_user, "--", *argv]
    return argv


def run(argv: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one command (no shell), bounded by timeout; never raises on a non-zero exit."""
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", **(env or {})}
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env, cwd="/")
    except subprocess.TimeoutExpired as exc:
        raise NodeControlError(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s") from exc
    except OSError as exc:
        raise NodeControlError(f"could not run {Path(argv[0]).name}: {exc.strerror}") from exc


def data_dir(control: NodeControl, node: str) -> str:
    """The node's data directory; every native command starts here, so a Patroni node is refused here."""
    if control.kind == "patroni":
        raise NodeControlError(f"refusing to run a native command on {node}: the NodeControl block configures the "
                               "Patroni backend, and Patroni alone stops, starts and promotes its nodes (a native "
                               "command would fight it)")
    if control.kind == "aurora":
        raise NodeControlError(f"refusing to run a native command on {node}: the NodeControl block configures the "
                               "Aurora backend; Aurora alone stops, starts and promotes its instances")
    try:
        return control.data_dirs[node]
    except KeyError:
        raise NodeControlError(f"the NodeControl block has no data directory for node {node!r}") from None


def _fields(control: NodeControl, node: str, host: str, **extra: str) -> dict[str, str]:
    return {"node": node, "host": host, "data_dir": data_dir(control, node), **extra}


def node_status(control: NodeControl, node: str, host: str, timeout: float = 30) -> str:
    """'running', 'stopped' or 'unknown' (the adapter could not tell, e.g. host down)."""
    f = _fields(control, node, host)
    proc = run(_argv(control, control.status_command, "pg_ctl", ["status", "-D", f["data_dir"]], **f), timeout)
    return {0: "running", 3: "stopped"}.get(proc.returncode, "unknown")


def stop_node(control: NodeControl, node: str, host: str, mode: str, timeout: int = 60) -> str:
    """Stop the node (fast or immediate); returns the command's last line. Raises when it is not stopped."""
    f = _fields(control, node, host, mode=mode, timeout=str(timeout))
    argv = _argv(control, control.stop_command, "pg_ctl",
                 ["stop", "-w", "-t", str(timeout), "-m", mode, "-D", f["data_dir"]], **f)
    proc = run(argv, timeout + 10)
    if proc.returncode != 0 and node_status(control, node, host) != "stopped":
        raise NodeControlError(f"stopping {node} failed ({proc.returncode}): {_tail(proc)}")
    return _tail(proc) or "stopped"


def start_node(control: NodeControl, node: str, host: str, timeout: int = 60) -> str:
    f = _fields(control, node, host, timeout=str(timeout))
    log = str(Path(f["data_dir"]) / "server.log")
    argv = _argv(control, control.start_command, "pg_ctl",
                 ["start", "-w", "-t", str(timeout), "-D", f["data_dir"], "-l", log], **f)
    proc = run(argv, timeout + 10)
    if proc.returncode != 0:
        raise NodeControlError(f"starting {node} failed ({proc.returncode}): {_tail(proc)}")
    return _tail(proc)


def controldata(control: NodeControl, node: str, host: str, timeout: float = 30) -> dict[str, str]:
    """pg_controldata of the node as a dict ('Latest checkpoint location' -> '0/3000148', ...)."""
    f = _fields(control, node, host)
    proc = run(_argv(control, control.controldata_command, "pg_controldata", [f["data_dir"]], **f), timeout)
    if proc.returncode != 0:
        raise NodeControlError(f"pg_controldata of {node} failed ({proc.returncode}): {_tail(proc)}")
    return parse_controldata(proc.stdout)


def parse_controldata(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def wal_end(control: NodeControl, node: str, host: str, start_lsn: str, timeline: int, timeout: float = 60,
            max_timelines: int = 8) -> str | None:
    """End of the valid WAL in a stopped node's pg_wal (where crash recovery would stop), or None.

    Read from its last checkpoint on the checkpoint's timeline (pg_waldump defaults to timeline 1), then on each
    later timeline the node switched to: a node promoted after its last checkpoint (the end-of-recovery
    checkpoint is spread, and a crash can come first) wrote on, and its WAL on timeline T ends exactly where
    T+1 begins. pg_waldump does not follow timeline switches itself.
    """
    if control.kind == "shell" and not control.waldump_command:
        return None
    end = None
    for tli in range(timeline, timeline + max_timelines):
        found = _wal_end_on(control, node, host, end or start_lsn, tli, timeout)
        if found is None:
            break  # no WAL of this timeline here: the node never switched to it
        end = found
    return end


def _wal_end_on(control: NodeControl, node: str, host: str, start_lsn: str, timeline: int, timeout: float
                ) -> str | None:
    f = _fields(control, node, host, start=start_lsn, timeline=str(timeline))
    wal_dir = str(Path(f["data_dir"]) / "pg_wal")
    argv = _argv(control, control.waldump_command, "pg_waldump",
                 ["-q", "-p", wal_dir, "-t", str(timeline), "-s", start_lsn], **f)
    return parse_wal_end(run(argv, timeout).stderr)


def parse_wal_end(stderr: str) -> str | None:
    """pg_waldump stops at the first invalid record: '... invalid record length at 0/30265F8: ...'.

    Only an LSN after 'at'/'after' counts: a path in a 'could not find file' line is not a WAL position.
    """
    for line in reversed(stderr.splitlines()):
        if "error" in line:
            found = WAL_POSITION_RE.findall(line)
            if found:
                return found[-1]
    return None


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
