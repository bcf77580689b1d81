"""A real local PostgreSQL topology: a primary, a streaming replica on a slot, pgbouncer.

The embedded default of pg-runbooks, and the servers the test suite runs against.
Everything listens on 127.0.0.1 only. PostgreSQL and pgbouncer refuse to run as
root, so when this process is root the servers run as an unprivileged OS user
(``postgres`` by default) that owns the sandbox directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg

from sandbox import pgversions

HOST = "127.0.0.1"
SUPERUSER = "postgres"
MONITOR_ROLE = "runbook_monitor"
REPLICA_SLOT = "replica1"
DEFAULT_PORTS = {"primary": 15432, "replica": 15433, "pgbouncer": 16432}


class SandboxError(RuntimeError):
    """The sandbox could not do what was asked; the message says why."""


def find_bindir(pg_version: int | None = None) -> Path:
    """PostgreSQL server binaries: $PG_BINDIR, else of `pg_version` (fetched on demand, see
    sandbox.pgversions), else the newest the OS package installed."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    try:
        return pgversions.bindir_for(pg_version)
    except pgversions.VersionUnavailable as exc:
        found = shutil.which("postgres") if pg_version is None else None
        if found:
            return Path(found).parent
        raise SandboxError(str(exc)) from exc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=timeout):
        return True
    return False


@dataclass
class SandboxConfig:
    base_dir: Path
    primary_port: int = DEFAULT_PORTS["primary"]
    replica_port: int = DEFAULT_PORTS["replica"]
    pgbouncer_port: int = DEFAULT_PORTS["pgbouncer"]
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    monitor_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    os_user: str = "postgres"
    defaults: bool = False  # True: pgbouncer's defaults and the replica as pg_basebackup -R made it (docs/sandbox.md)
    pg_version: int | None = None  # PostgreSQL major; None: the OS package's (sandbox.pgversions)

    def to_json(self) -> str:
        data = asdict(self)
        data["base_dir"] = str(self.base_dir)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> SandboxConfig:
        data = json.loads(text)
        data["base_dir"] = Path(data["base_dir"])
        return cls(**data)


def default_base_dir() -> Path:
    """Where `pg-sandbox` keeps its clusters unless told otherwise.

    Under /tmp (world-traversable) rather than the repo, which may sit under a
    0700 home directory the server's OS user cannot enter.
    """
    if os.environ.get("PG_SANDBOX_DIR"):
        return Path(os.environ["PG_SANDBOX_DIR"])
    return Path(f"/tmp/pg-runbooks-sandbox-{os.getuid()}")


class Sandbox:
    """Start, inspect, stop and destroy the local topology. Every method is idempotent."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.bindir = find_bindir(config.pg_version)
        self.base = Path(config.base_dir)
        self.as_root = os.geteuid() == 0

    # ---------------------------------------------------------------- layout
    @classmethod
    def open(cls, base_dir: Path | None = None, pg_version: int | None = None, **ports: int) -> Sandbox:
        """The sandbox recorded in base_dir, or a new configuration for it (of PostgreSQL `pg_version`:
        None keeps the recorded one, or the OS package's for a new sandbox; ports, and defaults=True for
        pgbouncer's defaults: see ephemeral)."""
        base = Path(base_dir or default_base_dir())
        state = base / "sandbox.json"
        if state.exists():
            config = SandboxConfig.from_json(state.read_text())
            if pg_version and config.pg_version != pg_version:
                recorded = config.pg_version or "the OS package's"
                raise SandboxError(
                    f"the sandbox in {base} runs PostgreSQL {recorded}; "
                    f"`./run sandbox destroy` first to start one of PostgreSQL {pg_version}"
                )
            for key, value in ports.items():
                if value and getattr(config, key) != value:
                    raise SandboxError(
                        f"the sandbox in {base} already uses {key}={getattr(config, key)}; "
                        "destroy it first to change that"
                    )
            return cls(config)
        return cls(SandboxConfig(base_dir=base, pg_version=pg_version,
                                 **{k: v for k, v in ports.items() if v}))

    @classmethod
    def ephemeral(cls, prefix: str = "pgrb-", defaults: bool = False, pg_version: int | None = None) -> Sandbox:
        """A new configuration in a fresh temporary directory on free ports (tests, benchmarks), of PostgreSQL
        `pg_version`, else $PG_RUNBOOKS_PG's, else the OS package's.

        defaults=True: pgbouncer with its own defaults (server_login_retry 15 s, ...) and the replica's
        primary_conninfo as `pg_basebackup -R` wrote it (no application_name, no cluster_name: the
        walreceiver reports 'walreceiver'). docs/sandbox.md lists every difference.
        """
        try:
            version = pg_version or pgversions.requested_version()
        except pgversions.VersionUnavailable as exc:
            raise SandboxError(str(exc)) from exc
        base = Path(tempfile.mkdtemp(prefix=prefix))
        return cls(SandboxConfig(base_dir=base, primary_port=free_port(), replica_port=free_port(),
                                 pgbouncer_port=free_port(), defaults=defaults, pg_version=version))

    @property
    def primary_dir(self) -> Path:
        return self.base / "primary"

    @property
    def replica_dir(self) -> Path:
        return self.base / "replica"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sockets"

    @property
    def pgbouncer_dir(self) -> Path:
        return self.base / "pgbouncer"

    @property
    def passfile(self) -> Path:
        return self.base / "pgpass"

    def node_dir(self, node: str) -> Path:
        return {"primary": self.primary_dir, "replica": self.replica_dir}[node]

    def node_port(self, node: str) -> int:
        return {"primary": self.config.primary_port, "replica": self.config.replica_port}[node]

    # ---------------------------------------------------------------- processes
    def _user(self) -> pwd.struct_passwd:
        if not self.as_root:
            return pwd.getpwuid(os.getuid())
        try:
            return pwd.getpwnam(self.config.os_user)
        except KeyError as exc:
            raise SandboxError(
                f"running as root needs an unprivileged OS user {self.config.os_user!r} "
                "for PostgreSQL (apt-get install postgresql creates 'postgres')"
            ) from exc

    def run_as_server_user(
        self, args: list[str], check: bool = True, env: dict | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run a server binary as the unprivileged OS user (runuser when we are root)."""
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", self.config.os_user, "--", *cmd]
        full_env = {**os.environ, "LC_ALL": "C.UTF-8", "PGPASSFILE": str(self.passfile)}
        full_env.update(env or {})
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd="/"
        )
        if check and proc.returncode != 0:
            raise SandboxError(
                f"{Path(args[0]).name} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    def pg(self, binary: str) -> str:
        return str(self.bindir / binary)

    def _chown(self, path: Path) -> None:
        if self.as_root:
            user = self._user()
            os.chown(path, user.pw_uid, user.pw_gid)

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.write_text(text)
        path.chmod(mode)
        self._chown(path)

    def _mkdir(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        self._chown(path)

    # ---------------------------------------------------------------- connections
    def conninfo(self, node: str = "primary", user: str = SUPERUSER, dbname: str = "postgres") -> str:
        """A libpq connection string (with the sandbox password: for local use only)."""
        port = self.config.pgbouncer_port if node == "pgbouncer" else self.node_port(node)
        password = self.config.monitor_password if user == MONITOR_ROLE else self.config.password
        return psycopg.conninfo.make_conninfo(
            host=HOST, port=port, user=user, dbname=dbname, password=password
        )

    def connect(self, node: str = "primary", **kwargs) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        if node == "pgbouncer":
            kwargs.setdefault("prepare_threshold", None)
        return psycopg.connect(self.conninfo(node), connect_timeout=5, **kwargs)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Create what is missing and start what is not running."""
        self._prepare_base()
        if not (self.primary_dir / "PG_VERSION").exists():
            self._init_primary()
        self.start_node("primary")
        self._bootstrap_primary()
        if not (self.replica_dir / "PG_VERSION").exists():
            self._create_replica()
        self.start_node("replica")
        self.start_pgbouncer()
        self.wait_streaming()

    def _prepare_base(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o711)
        self._chown(self.base)
        self._mkdir(self.socket_dir)
        state = self.base / "sandbox.json"
        if not state.exists():
            state.write_text(self.config.to_json())
            state.chmod(0o600)
        self._write(
            self.passfile,
            f"{HOST}:*:*:{SUPERUSER}:{self.config.password}\n",
        )

    def _init_primary(self) -> None:
        pwfile = self.base / "initdb.pw"
        self._write(pwfile, self.config.password + "\n")
        try:
            self.run_as_server_user(
                [
                    self.pg("initdb"),
                    "-D", str(self.primary_dir),
                    "-U", SUPERUSER,
                    "--pwfile", str(pwfile),
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--data-checksums",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.primary_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# --- pg-runbooks sandbox ---\n"
                f"listen_addresses = '{HOST}'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "shared_preload_libraries = 'pg_stat_statements'\n"
                "track_io_timing = on\n"
                "wal_log_hints = on\n"
                "wal_level = replica\n"
                "max_wal_senders = 10\n"
                "max_replication_slots = 10\n"
                "wal_keep_size = '256MB'\n"
                "hot_standby = on\n"
                "hot_standby_feedback = on\n"
                "wal_receiver_status_interval = '1s'\n"
                "max_connections = 300\n"
                "shared_buffers = '64MB'\n"
                "fsync = on\n"
                "logging_collector = off\n"
                "log_min_messages = warning\n"
                "include_if_exists = 'node.conf'\n"
            )
        hba = self.primary_dir / "pg_hba.conf"
        hba.write_text(
            "# pg-runbooks sandbox: loopback only, passwords required\n"
            "local all all scram-sha-256\n"
            f"host all all {HOST}/32 scram-sha-256\n"
            f"host replication all {HOST}/32 scram-sha-256\n"
        )
        self._chown(hba)
        self._write_node_conf("primary")

    def _write_node_conf(self, node: str) -> None:
        """Per-node settings kept apart from the shared postgresql.conf (no cluster_name with config.defaults)."""
        name = "" if self.config.defaults else f"cluster_name = 'sandbox-{node}'\n"
        self._write(self.node_dir(node) / "node.conf", f"port = {self.node_port(node)}\n{name}")

    def _bootstrap_primary(self) -> None:
        with self.connect("primary") as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (MONITOR_ROLE,)
            ).fetchone()
            if not exists:
                conn.execute(
                    psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor").format(
                        psycopg.sql.Identifier(MONITOR_ROLE),
                        psycopg.sql.Literal(self.config.monitor_password),
                    )
                )
            slot = conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (REPLICA_SLOT,)
            ).fetchone()
            if not slot and not (self.replica_dir / "PG_VERSION").exists():
                conn.execute("SELECT pg_create_physical_replication_slot(%s)", (REPLICA_SLOT,))

    def _create_replica(self) -> None:
        if self.replica_dir.exists():
            shutil.rmtree(self.replica_dir)
        self.run_as_server_user(
            [
                self.pg("pg_basebackup"),
                "-h", HOST,
                "-p", str(self.config.primary_port),
                "-U", SUPERUSER,
                "-D", str(self.replica_dir),
                "-X", "stream",
                "-S", REPLICA_SLOT,
                "-c", "fast",
                "-R",
            ]
        )
        self._write_node_conf("replica")
        if not self.config.defaults:  # else: the primary_conninfo pg_basebackup -R wrote, slot from -S
            self.write_standby_conninfo("replica", self.config.primary_port, REPLICA_SLOT)

    def write_standby_conninfo(self, node: str, upstream_port: int, slot: str) -> None:
        """Make `node` a standby of the server on upstream_port (standby.signal + conninfo)."""
        auto = self.node_dir(node) / "postgresql.auto.conf"
        kept = [
            line
            for line in (auto.read_text().splitlines() if auto.exists() else [])
            if not line.startswith(("primary_conninfo", "primary_slot_name"))
        ]
        conninfo = (
            f"host={HOST} port={upstream_port} user={SUPERUSER} "
            f"passfile={self.passfile} application_name={node}"
        )
        kept += [f"primary_conninfo = '{conninfo}'", f"primary_slot_name = '{slot}'"]
        self._write(auto, "\n".join(kept) + "\n")
        self._write(self.node_dir(node) / "standby.signal", "")

    def node_running(self, node: str) -> bool:
        pid_file = self.node_dir(node) / "postmaster.pid"
        if not pid_file.exists():
            return False
        return self.run_as_server_user(
            [self.pg("pg_ctl"), "status", "-D", str(self.node_dir(node))], check=False
        ).returncode == 0

    def start_node(self, node: str) -> None:
        if self.node_running(node):
            return
        self.run_as_server_user(
            [
                self.pg("pg_ctl"), "start", "-w", "-t", "60",
                "-D", str(self.node_dir(node)),
                "-l", str(self.node_dir(node) / "server.log"),
            ]
        )

    def stop_node(self, node: str, mode: str = "fast") -> None:
        if not self.node_running(node):
            return
        self.run_as_server_user(
            [self.pg("pg_ctl"), "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.node_dir(node))]
        )

    # ---------------------------------------------------------------- pgbouncer
    @property
    def pgbouncer_ini(self) -> Path:
        return self.pgbouncer_dir / "pgbouncer.ini"

    def write_pgbouncer_ini(self, backend_port: int) -> None:
        """pgbouncer in transaction mode in front of the server on backend_port.

        Tuned (the default): a few settings beyond pgbouncer's defaults (docs/sandbox.md says which and why).
        With config.defaults: only what the sandbox needs to run (addresses, files, auth, admin users,
        transaction pooling); every other setting is pgbouncer's default (server_login_retry 15 s, ...).
        """
        tuned = (
            "max_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "server_login_retry = 1\n"
        ) if not self.config.defaults else ""
        self._write(
            self.pgbouncer_ini,
            "[databases]\n"
            f"* = host={HOST} port={backend_port}\n"
            "\n[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {self.config.pgbouncer_port}\n"
            f"unix_socket_dir = {self.socket_dir}\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.pgbouncer_dir / 'userlist.txt'}\n"
            f"admin_users = {SUPERUSER}\n"
            f"stats_users = {MONITOR_ROLE}\n"
            "pool_mode = transaction\n"
            f"{tuned}"
            f"pidfile = {self.pgbouncer_dir / 'pgbouncer.pid'}\n"
            f"logfile = {self.pgbouncer_dir / 'pgbouncer.log'}\n",
        )

    def pgbouncer_pid(self) -> int | None:
        pid_file = self.pgbouncer_dir / "pgbouncer.pid"
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def start_pgbouncer(self) -> None:
        if self.pgbouncer_pid():
            return
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise SandboxError("pgbouncer not found: apt-get install pgbouncer")
        self._mkdir(self.pgbouncer_dir)
        self._write(
            self.pgbouncer_dir / "userlist.txt",
            f'"{SUPERUSER}" "{self.config.password}"\n'
            f'"{MONITOR_ROLE}" "{self.config.monitor_password}"\n',
        )
        if not self.pgbouncer_ini.exists():
            self.write_pgbouncer_ini(self.config.primary_port)
        self.run_as_server_user([binary, "-d", str(self.pgbouncer_ini)])
        deadline = time.monotonic() + 10
        while not port_open(self.config.pgbouncer_port):
            if time.monotonic() > deadline:
                raise SandboxError(f"pgbouncer did not listen on {HOST}:{self.config.pgbouncer_port}")
            time.sleep(0.05)

    def stop_pgbouncer(self) -> None:
        pid = self.pgbouncer_pid()
        if not pid:
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while self.pgbouncer_pid() and time.monotonic() < deadline:
            time.sleep(0.05)

    # ---------------------------------------------------------------- inspection
    def wait_streaming(self, upstream: str = "primary", timeout: float = 30) -> None:
        """Wait until `upstream` (whichever node is primary now) reports a streaming standby."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg.OperationalError), self.connect(upstream) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
                ).fetchone()
                if row and row[0] > 0:
                    return
            if time.monotonic() > deadline:
                raise SandboxError(f"no standby reached state 'streaming' from {upstream} in time")
            time.sleep(0.1)

    def status(self) -> dict:
        nodes = {}
        for node in ("primary", "replica"):
            running = self.node_running(node)
            info: dict = {"port": self.node_port(node), "running": running}
            if running:
                try:
                    with self.connect(node) as conn:
                        info["in_recovery"] = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                except psycopg.Error as exc:
                    info["error"] = type(exc).__name__
            nodes[node] = info
        nodes["pgbouncer"] = {
            "port": self.config.pgbouncer_port,
            "running": self.pgbouncer_pid() is not None,
        }
        return {"base_dir": str(self.base), "nodes": nodes}

    def stop(self) -> None:
        self.stop_pgbouncer()
        for node in ("replica", "primary"):
            if (self.node_dir(node) / "PG_VERSION").exists():
                self.stop_node(node)

    def destroy(self) -> None:
        if self.base.exists():
            self.stop()
            shutil.rmtree(self.base, ignore_errors=True)
