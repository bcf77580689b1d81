"""Endpoint control: hold, repoint and release clients through the EndpointControl adapter.

pgbouncer: PAUSE waits until every server connection is released (transactions finish) and holds
new queries; the [databases] host/port in the ini are rewritten atomically, RELOAD reads them,
RESUME releases the clients. 'none': nothing to do (libpq multi-host, read-write sessions).

server_login_retry (15 s by default): after one failed login to the dead or stopping primary,
pgbouncer opens no new server connection for that long, and neither RELOAD, RESUME, RECONNECT nor
DISABLE/ENABLE resets that wait (measured on pgbouncer 1.18: writes came back 14 s after RESUME).
Only a successful login clears it. So after the RELOAD the runbook SETs server_login_retry = 0 (the
pool logs in to the new primary at once), and once a write went through it SETs the value back.
A RELOAD also puts back the ini's value, so a run that dies in between is undone by the rerun.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from blocks.failover_adapters import EndpointControl


class EndpointError(RuntimeError):
    """The endpoint (pgbouncer) did not do what was asked; the message says what to do."""


LOGIN_RETRY = "server_login_retry"
# pgbouncer admin console (simple query protocol only): every setting and its current value.
SHOW_CONFIG = "SHOW CONFIG"
# pgbouncer admin console: clients and server connections of every pool.
SHOW_POOLS = "SHOW POOLS"

HOST_RE = re.compile(r"\bhost=\S+")
PORT_RE = re.compile(r"\bport=\d+")


def _admin(control: EndpointControl) -> psycopg.Connection:
    try:
        return psycopg.connect(**control.admin_connect_kwargs())
    except psycopg.Error as exc:
        raise EndpointError(
            f"pgbouncer admin console {control.admin_host}:{control.admin_port} is unreachable "
            f"({type(exc).__name__}): check that pgbouncer runs and the EndpointControl block"
        ) from None


def admin(control: EndpointControl) -> psycopg.Connection:
    """A connection to pgbouncer's admin console, for a caller that holds it across steps (closes with `with`)."""
    return _admin(control)


@contextlib.contextmanager
def _console(control: EndpointControl, held: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
    """The held admin connection (left open), or a new one closed after use."""
    if held is not None and not held.closed:
        yield held
        return
    with _admin(control) as conn:
        yield conn


def show_databases(control: EndpointControl) -> list[dict]:
    """SHOW DATABASES of the admin console (reachability check and where each pool points)."""
    if control.kind == "none":
        return []
    with _admin(control) as conn:
        return _rows(conn, "SHOW DATABASES")


def pause(control: EndpointControl, timeout_s: float) -> str:
    """PAUSE: wait for running transactions, then hold every client. Idempotent.

    A transaction longer than timeout_s keeps PAUSE from returning: then RESUME is sent (which
    abandons the pause) and EndpointError says so; the clients were never held.
    """
    if control.kind == "none":
        return "no endpoint to pause (libpq multi-host)"
    conn = _admin(control)  # its own: a PAUSE that never completes is left to the daemon thread with it
    outcome: dict = {}

    def run() -> None:
        try:
            conn.execute("PAUSE")
            outcome["ok"] = "paused"
        except psycopg.Error as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        resume(control)  # the waiting PAUSE is abandoned; its connection is left to the daemon thread
        raise EndpointError(
            f"pgbouncer PAUSE did not complete in {timeout_s:.0f} s: a long transaction holds a server "
            "connection (with pool_mode = session: any connected client does); clients were resumed, nothing "
            "else changed. End that transaction or raise pause_timeout_seconds"
        )
    conn.close()
    error = outcome.get("error")
    if error is not None:
        if "already" in str(error):
            return "already paused"
        raise EndpointError(f"pgbouncer PAUSE failed: {str(error).strip()[:200]}")
    return "paused"


def resume(control: EndpointControl, held: psycopg.Connection | None = None) -> str:
    """RESUME the clients. Idempotent ('not paused' is fine)."""
    if control.kind == "none":
        return "no endpoint to resume"
    with _console(control, held) as conn:
        try:
            conn.execute("RESUME")
        except psycopg.Error as exc:
            if "not paused" in str(exc):
                return "was not paused"
            raise EndpointError(f"pgbouncer RESUME failed: {str(exc).strip()[:200]}") from None
    return "resumed"


def rewrite_ini(text: str, host: str, port: int) -> str:
    """The ini with every [databases] entry pointing at host:port (other sections untouched)."""
    out, section = [], ""
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped.lower()
        elif section == "[databases]" and "=" in stripped and not stripped.startswith((";", "#")):
            name, _, conn = line.partition("=")
            conn = HOST_RE.sub(f"host={host}", conn) if HOST_RE.search(conn) else f" host={host}" + conn
            conn = PORT_RE.sub(f"port={port}", conn) if PORT_RE.search(conn) else conn.rstrip("\n") + f" port={port}\n"
            line = f"{name}={conn}"
        out.append(line)
    return "".join(out)


def ini_targets(text: str) -> set[tuple[str, int]]:
    """Every (host, port) the [databases] section points at."""
    found, section = set(), ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped.lower()
        elif section == "[databases]" and "=" in stripped and not stripped.startswith((";", "#")):
            host = HOST_RE.search(stripped)
            port = PORT_RE.search(stripped)
            found.add((host.group(0)[5:] if host else "", int(port.group(0)[5:]) if port else 5432))
    return found


def read_ini(control: EndpointControl) -> str | None:
    if control.kind == "none" or not control.ini_path:
        return None
    try:
        return Path(control.ini_path).read_text()
    except OSError as exc:
        raise EndpointError(f"cannot read pgbouncer ini {control.ini_path}: {exc.strerror}") from None


def repoint(control: EndpointControl, host: str, port: int, held: psycopg.Connection | None = None) -> str:
    """Point pgbouncer at host:port: atomic ini rewrite (owner and mode kept), then RELOAD."""
    if control.kind == "none":
        return "no endpoint to repoint (clients follow the writable server)"
    if not control.ini_path:
        raise EndpointError("the EndpointControl block has no ini_path to rewrite")
    path = Path(control.ini_path)
    text = read_ini(control) or ""
    if ini_targets(text) != {(host, port)}:
        new = rewrite_ini(text, host, port)
        st = path.stat()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pgbouncer-ini-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(new)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, st.st_mode & 0o777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        action = f"ini rewritten to {host}:{port}"
    else:
        action = f"ini already points at {host}:{port}"
    with _console(control, held) as conn:
        try:
            conn.execute("RELOAD")
        except psycopg.Error as exc:
            raise EndpointError(f"pgbouncer RELOAD failed: {str(exc).strip()[:200]}") from None
    return f"{action}; RELOAD done"


def _rows(conn: psycopg.Connection, command: str) -> list[dict]:
    cur = conn.execute(command)
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _setting(conn: psycopg.Connection, key: str) -> str | None:
    return next((str(r["value"]) for r in _rows(conn, SHOW_CONFIG) if r["key"] == key), None)


def _set(conn: psycopg.Connection, key: str, value: str) -> None:
    try:
        conn.execute(sql.SQL("SET {} = {}").format(sql.SQL(key), sql.Literal(value)))
    except psycopg.Error as exc:
        raise EndpointError(f"pgbouncer SET {key} failed: {str(exc).strip()[:200]}") from None
    now = _setting(conn, key)
    if now != value:
        raise EndpointError(f"pgbouncer {key} is {now} after SET {key} = {value}: set it by hand")


def lift_login_retry(control: EndpointControl, held: psycopg.Connection | None = None) -> tuple[str | None, str]:
    """After the RELOAD: SET server_login_retry = 0, so pools whose logins to the dead primary failed log in to the
    new primary at once. Returns (the value to restore, i.e. the ini's / default value; what was done)."""
    if control.kind == "none":
        return None, "no endpoint (libpq multi-host): nothing to lift"
    with _console(control, held) as conn:
        original = _setting(conn, LOGIN_RETRY)
        if original is None:
            return None, f"pgbouncer has no {LOGIN_RETRY} setting: nothing lifted"
        if float(original) == 0:
            return None, f"{LOGIN_RETRY} is already 0: nothing lifted"
        _set(conn, LOGIN_RETRY, "0")
    return original, f"{LOGIN_RETRY} {original} -> 0 until a write goes through (then restored)"


def pools_waiting_without_server(control: EndpointControl) -> list[str]:
    """Pools that hold waiting clients but have no server connection yet ('db/user')."""
    with _admin(control) as conn:
        rows = _rows(conn, SHOW_POOLS)
    servers = ("sv_active", "sv_idle", "sv_used", "sv_tested")
    return [f"{r['database']}/{r['user']}" for r in rows
            if r["database"] != "pgbouncer" and int(r.get("cl_waiting") or 0) > 0
            and not any(int(r.get(k) or 0) for k in servers)]


def restore_login_retry(control: EndpointControl, original: str, settle_s: float = 5.0) -> str:
    """SET server_login_retry back to `original` once no pool waits without a server (at most settle_s)."""
    deadline = time.monotonic() + settle_s
    waiting = pools_waiting_without_server(control)
    while waiting and time.monotonic() < deadline:
        time.sleep(0.05)
        waiting = pools_waiting_without_server(control)
    with _admin(control) as conn:
        _set(conn, LOGIN_RETRY, original)
    still = f"; pools still without a server: {', '.join(waiting)}" if waiting else ""
    return f"{LOGIN_RETRY} restored to {original} (SHOW CONFIG confirms){still}"
