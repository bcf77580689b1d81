"""Node control: stop, start and inspect a PostgreSQL node through the NodeControl adapter.

Local pg_ctl (as the server's OS user when we are root: the child process switches user itself, without
runuser's PAM session) or the user's shell templates. Commands are argument lists (no shell); their output
never contains a password.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
import time
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
    return [str(Path(control.bindir) / binary), *args]


def _server_user(control: NodeControl) -> str | None:
    """The OS user local commands run as: the servers' owner when we are root (PostgreSQL refuses root)."""
    if control.kind == "shell" or os.geteuid() != 0 or not control.os_user:
        return None
    return control.os_user


def _run(control: NodeControl, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return run(argv, timeout, user=_server_user(control))


def run(argv: list[str], timeout: float, env: dict | None = None, user: str | None = None
        ) -> subprocess.CompletedProcess:
    """Run one command (no shell), bounded by timeout, as `user` when given; never raises on a non-zero exit."""
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", **(env or {})}
    as_user: dict = {}
    if user:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise NodeControlError(f"OS user {user!r} (the NodeControl block's os_user) does not exist") from None
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        full_env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env, cwd="/",
                              **as_user)
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
    if control.kind == "neon":
        raise NodeControlError(f"refusing to run a native command on {node}: the NodeControl block configures the "
                               "Neon backend; Neon alone starts and stops its compute (a restart through its API)")
    try:
        return control.data_dirs[node]
    except KeyError:
        raise NodeControlError(f"the NodeControl block has no data directory for node {node!r}") from None


def _fields(control: NodeControl, node: str, host: str, **extra: str) -> dict[str, str]:
    return {"node": node, "host": host, "data_dir": data_dir(control, node), **extra}


def node_status(control: NodeControl, node: str, host: str, timeout: float = 30) -> str:
    """'running', 'stopped' or 'unknown' (the adapter could not tell, e.g. host down)."""
    f = _fields(control, node, host)
    proc = _run(control, _argv(control, control.status_command, "pg_ctl", ["status", "-D", f["data_dir"]], **f),
                timeout)
    return {0: "running", 3: "stopped"}.get(proc.returncode, "unknown")


def stop_node(control: NodeControl, node: str, host: str, mode: str, timeout: int = 60) -> str:
    """Stop the node (fast or immediate); returns the command's last line. Raises when it is not stopped."""
    f = _fields(control, node, host, mode=mode, timeout=str(timeout))
    argv = _argv(control, control.stop_command, "pg_ctl",
                 ["stop", "-w", "-t", str(timeout), "-m", mode, "-D", f["data_dir"]], **f)
    proc = _run(control, argv, timeout + 10)
    if proc.returncode != 0 and node_status(control, node, host) != "stopped":
        raise NodeControlError(f"stopping {node} failed ({proc.returncode}): {_tail(proc)}")
    return _tail(proc) or "stopped"


def fence(control: NodeControl, node: str, host: str, mode: str, timeout: int = 60) -> str:
    """Stop the node and confirm it is stopped: 'stopped (fast)' or 'was already stopped'; NodeControlError when
    it cannot be confirmed.

    Local pg_ctl: `pg_ctl stop -W` sends the signal, then we watch postmaster.pid every 2 ms (the postmaster
    removes it last, after every child exited: what `pg_ctl stop -w` waits for, in 100 ms steps). Elsewhere (shell
    templates, or a data directory we cannot read): the stop command, then the status command if it failed.
    """
    pid_file = _pid_file(control, node)
    if pid_file is None:
        f = _fields(control, node, host, mode=mode, timeout=str(timeout))
        argv = _argv(control, control.stop_command, "pg_ctl",
                     ["stop", "-w", "-t", str(timeout), "-m", mode, "-D", f["data_dir"]], **f)
        proc = _run(control, argv, timeout + 10)
        if proc.returncode == 0:
            return f"stopped ({mode})"
        if node_status(control, node, host) == "stopped":
            return f"stopped ({mode}; the stop command said: {_tail(proc) or proc.returncode})"
        raise NodeControlError(f"stopping {node} failed ({proc.returncode}): {_tail(proc)}")
    if not pid_file.exists():
        return "was already stopped (no postmaster.pid)"
    f = _fields(control, node, host)
    proc = _run(control, _argv(control, None, "pg_ctl", ["stop", "-W", "-m", mode, "-D", f["data_dir"]]), 30)
    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while pid_file.exists():
        now = time.monotonic()
        if proc.returncode != 0 or now > deadline or now - checked > 1:  # signal refused, too slow, or a stale file
            checked = now
            if node_status(control, node, host) == "stopped":
                break
            if proc.returncode != 0 or now > deadline:
                raise NodeControlError(f"stopping {node} failed ({proc.returncode}): {_tail(proc) or 'still running'}")
        time.sleep(0.002)
    return f"stopped ({mode})"


def _pid_file(control: NodeControl, node: str) -> Path | None:
    """postmaster.pid of a local node whose data directory we can read (else None: ask pg_ctl)."""
    if control.kind != "pg_ctl":
        return None
    directory = Path(data_dir(control, node))
    try:
        os.stat(directory / "PG_VERSION")  # readable: the pid file's absence then means what it says
    except OSError:
        return None
    return directory / "postmaster.pid"


def start_node(control: NodeControl, node: str, host: str, timeout: int = 60) -> str:
    f = _fields(control, node, host, timeout=str(timeout))
    log = str(Path(f["data_dir"]) / "server.log")
    argv = _argv(control, control.start_command, "pg_ctl",
                 ["start", "-w", "-t", str(timeout), "-D", f["data_dir"], "-l", log], **f)
    proc = _run(control, argv, timeout + 10)
    if proc.returncode != 0:
        raise NodeControlError(f"starting {node} failed ({proc.returncode}): {_tail(proc)}")
    return _tail(proc)


def controldata(control: NodeControl, node: str, host: str, timeout: float = 30) -> dict[str, str]:
    """pg_controldata of the node as a dict ('Latest checkpoint location' -> '0/3000148', ...)."""
    f = _fields(control, node, host)
    argv = _argv(control, control.controldata_command, "pg_controldata", [f["data_dir"]], **f)
    # It only reads global/pg_control, and (unlike pg_ctl) accepts root: no user switch, 1 ms instead of 5.
    proc = run(argv, timeout) if control.kind == "pg_ctl" else _run(control, argv, timeout)
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
    return parse_wal_end(_run(control, argv, timeout).stderr)


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
