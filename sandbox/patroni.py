"""A real local Patroni cluster: one etcd (Debian's etcd-server) and two Patroni nodes of the machine's PostgreSQL.

For the tests and the benchmark of the failover runbook's Patroni backend. Everything listens on 127.0.0.1 on
free ports and runs by hand (no system service), as the unprivileged `postgres` OS user when we are root. Short
`loop_wait` / `ttl` for speed. Patroni runs under `tini -s` when tini is there: this kind of machine reaps
orphaned processes ~1.5 s late, and Patroni waits for its postmaster's PID to vanish (FACTS.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import psycopg
import yaml
from pydantic import SecretStr

from blocks.failover_adapters import EndpointControl, NodeControl, PatroniApi
from blocks.postgres_cluster import Endpoint, PostgresCluster, PostgresNode
from sandbox.cluster import HOST, SandboxError, find_bindir, free_port, port_open
from sandbox.patroni_runtime import python_for

SUPERUSER = "postgres"
REPLICATION_USER = "replicator"


class PatroniSandbox:
    """etcd + N Patroni nodes named pg1, pg2, ... Start, inspect, stop one node, destroy."""

    def __init__(self, nodes: int = 2, scope: str | None = None, prefix: str = "pgrb-patroni-"):
        self.bindir = find_bindir()
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.scope = scope or f"pgrb{secrets.token_hex(3)}"
        self.password = secrets.token_urlsafe(18)
        self.user = "postgres" if os.geteuid() == 0 else None
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.names = [f"pg{i + 1}" for i in range(nodes)]
        self.pg_ports = {n: free_port() for n in self.names}
        self.rest_ports = {n: free_port() for n in self.names}
        self.procs: dict[str, subprocess.Popen] = {}
        self.pgbouncer_port: int | None = None

    # ---------------------------------------------------------------- layout
    def rest_url(self, node: str) -> str:
        return f"http://{HOST}:{self.rest_ports[node]}"

    def data_dir(self, node: str) -> Path:
        return self.base / node / "data"

    def conninfo(self, node: str, dbname: str = "postgres") -> str:
        port = self.pgbouncer_port if node == "pgbouncer" else self.pg_ports[node]
        return psycopg.conninfo.make_conninfo(host=HOST, port=port, user=SUPERUSER, password=self.password,
                                              dbname=dbname)

    def connect(self, node: str, **kwargs) -> psycopg.Connection:
        """A connection to a node, or through pgbouncer (node 'pgbouncer')."""
        kwargs.setdefault("autocommit", True)
        if node == "pgbouncer":
            kwargs.setdefault("prepare_threshold", None)
        return psycopg.connect(self.conninfo(node), connect_timeout=5, **kwargs)

    def _own(self, path: Path) -> None:
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _mkdir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        self._own(path)

    def _spawn(self, key: str, argv: list[str], env: dict | None = None) -> None:
        log = open(self.base / f"{key}.log", "ab")  # noqa: SIM115 - the child keeps it
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        self.procs[key] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.base),
                                           env={**os.environ, "LC_ALL": "C.UTF-8", **(env or {})},
                                           start_new_session=True)

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 120) -> None:
        self.base.chmod(0o755)
        self._own(self.base)
        self._start_etcd()
        for node in self.names:
            self.start_node(node)
        self.wait_members(timeout)

    def _start_etcd(self) -> None:
        etcd = shutil.which("etcd")
        if not etcd:
            raise SandboxError("etcd not found: apt-get install etcd-server (./run install does it)")
        self._mkdir(self.base / "etcd")
        self._spawn("etcd", [etcd, "--name", "etcd0", "--data-dir", str(self.base / "etcd"),
                             "--listen-client-urls", f"http://{HOST}:{self.etcd_port}",
                             "--advertise-client-urls", f"http://{HOST}:{self.etcd_port}",
                             "--listen-peer-urls", f"http://{HOST}:{self.etcd_peer_port}",
                             "--initial-advertise-peer-urls", f"http://{HOST}:{self.etcd_peer_port}",
                             "--initial-cluster", f"etcd0=http://{HOST}:{self.etcd_peer_port}"],
                    env={"ETCD_UNSUPPORTED_ARCH": "arm64"} if os.uname().machine == "aarch64" else None)
        deadline = time.monotonic() + 30
        while not port_open(self.etcd_port):
            if time.monotonic() > deadline or self.procs["etcd"].poll() is not None:
                raise SandboxError(f"etcd did not listen on {HOST}:{self.etcd_port}: see {self.base / 'etcd.log'}")
            time.sleep(0.1)

    def _config(self, node: str) -> dict:
        auth = {"username": SUPERUSER, "password": self.password}
        slow = self._slow_flag(node)
        return {
            "scope": self.scope, "name": node,
            "restapi": {"listen": f"{HOST}:{self.rest_ports[node]}",
                        "connect_address": f"{HOST}:{self.rest_ports[node]}"},
            "etcd3": {"hosts": f"{HOST}:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {"ttl": 20, "loop_wait": 1, "retry_timeout": 5, "maximum_lag_on_failover": 16 * 1024 * 1024,
                        "postgresql": {"use_pg_rewind": True, "use_slots": True,
                                       "parameters": {"wal_level": "replica", "hot_standby": "on",
                                                      "wal_log_hints": "on", "max_wal_senders": 10,
                                                      "max_replication_slots": 10}}},
                "initdb": [{"encoding": "UTF8"}, {"auth": "scram-sha-256"}],
            },
            "postgresql": {
                "listen": f"{HOST}:{self.pg_ports[node]}", "connect_address": f"{HOST}:{self.pg_ports[node]}",
                "data_dir": str(self.data_dir(node)), "bin_dir": str(self.bindir),
                "pgpass": str(self.base / node / "pgpass"),
                "authentication": {"superuser": auth, "rewind": auth,
                                   "replication": {"username": REPLICATION_USER, "password": self.password}},
                "parameters": {"unix_socket_directories": str(self.base / node)},
                # Patroni runs before_stop synchronously before it stops PostgreSQL: a slow one (slow_stop) makes a
                # switchover outlast Patroni's own wait for it, which answers 503 "switchover status unknown"
                "before_stop": f"/bin/sh -c 'test ! -e {slow} || sleep $(cat {slow})'",
                "pg_hba": ["local all all trust", f"host replication {REPLICATION_USER} {HOST}/32 scram-sha-256",
                           f"host all all {HOST}/32 scram-sha-256"],
            },
            "tags": {},
        }

    def _slow_flag(self, node: str) -> Path:
        return self.base / node / "slow-stop-seconds"

    def slow_stop(self, node: str, seconds: float | None) -> None:
        """Make the node's before_stop script sleep this long before Patroni stops its PostgreSQL (None: not)."""
        flag = self._slow_flag(node)
        if seconds is None:
            flag.unlink(missing_ok=True)
        else:
            flag.write_text(f"{seconds:g}\n")
            flag.chmod(0o644)

    def start_node(self, node: str) -> None:
        """Start the node's Patroni (which starts, bootstraps or clones its PostgreSQL)."""
        if node in self.procs and self.procs[node].poll() is None:
            return
        self._mkdir(self.base / node)
        cfg = self.base / node / "patroni.yml"
        cfg.write_text(yaml.safe_dump(self._config(node)))
        cfg.chmod(0o600)
        self._own(cfg)
        python, env = python_for(self.user)
        tini = shutil.which("tini")
        argv = [*python, "-m", "patroni", str(cfg)]
        self._spawn(node, [tini, "-s", "--", *argv] if tini else argv, dict(env))

    def kill_node(self, node: str) -> None:
        """SIGKILL the node's Patroni and its PostgreSQL (a lost host)."""
        pid = self.postmaster_pid(node)
        proc = self.procs.pop(node, None)
        if proc is not None:  # the whole tree: tini puts Patroni in a process group of its own
            with contextlib.suppress(psutil.NoSuchProcess):
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                for p in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()
            proc.wait(timeout=30)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def postmaster_pid(self, node: str) -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int((self.data_dir(node) / "postmaster.pid").read_text().splitlines()[0])
        return None

    def stop(self) -> None:
        for key, proc in list(self.procs.items()):
            if key == "etcd":
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT if key == "pgbouncer" else signal.SIGTERM)
        for key, proc in list(self.procs.items()):
            if key == "etcd":
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_node(key)
        for node in self.names:
            if pid := self.postmaster_pid(node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
        if etcd := self.procs.pop("etcd", None):
            etcd.terminate()
            etcd.wait(timeout=30)
        self.procs.clear()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # ---------------------------------------------------------------- inspection
    def get(self, node: str, path: str, timeout: float = 5) -> tuple[int, dict]:
        """One GET on the node's REST API: (status, JSON body)."""
        try:
            with urllib.request.urlopen(self.rest_url(node) + path, timeout=timeout) as resp:  # noqa: S310 - loopback
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def request(self, node: str, method: str, path: str, body: dict | None = None, timeout: float = 30
                ) -> tuple[int, str]:
        """One REST call with a JSON body (PATCH /config, POST /reload, ...): (status, text)."""
        req = urllib.request.Request(self.rest_url(node) + path, method=method,  # noqa: S310 - loopback
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def set_pause(self, paused: bool, timeout: float = 30) -> None:
        """Maintenance mode on or off (PATCH /config), then wait until GET /cluster shows it."""
        self.request(self.names[0], "PATCH", "/config", {"pause": paused})
        deadline = time.monotonic() + timeout
        while bool(self.cluster().get("pause")) != paused:
            if time.monotonic() > deadline:
                raise SandboxError(f"Patroni did not show pause={paused}")
            time.sleep(0.2)

    def set_tags(self, node: str, tags: dict, timeout: float = 30) -> None:
        """Rewrite the node's tags in its patroni.yml, reload it (POST /reload), wait until GET /cluster shows them."""
        cfg = self.base / node / "patroni.yml"
        data = yaml.safe_load(cfg.read_text())
        data["tags"] = tags
        cfg.write_text(yaml.safe_dump(data))
        self.request(node, "POST", "/reload")
        deadline = time.monotonic() + timeout
        while True:
            member = next((m for m in self.cluster().get("members", []) if m.get("name") == node), {})
            if all(member.get("tags", {}).get(k) == v for k, v in tags.items()) and (
                    tags or not member.get("tags")):
                return
            if time.monotonic() > deadline:
                raise SandboxError(f"Patroni did not show the tags {tags} of {node}")
            time.sleep(0.2)

    def cluster(self) -> dict:
        for node in self.names:
            with contextlib.suppress(OSError):
                return self.get(node, "/cluster")[1]
        raise SandboxError("no Patroni REST API answers")

    def leader(self) -> str | None:
        with contextlib.suppress(SandboxError):
            for m in self.cluster().get("members", []):
                if m.get("role") == "leader" and m.get("state") == "running":
                    return m["name"]
        return None

    def wait_members(self, timeout: float = 120, count: int | None = None) -> dict:
        """Wait until there is a running leader and every other node streams from it."""
        want = count or len(self.names)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(SandboxError, OSError):
                members = self.cluster().get("members", [])
                leaders = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
                streaming = [m for m in members if m.get("role") in ("replica", "sync_standby")
                             and m.get("state") == "streaming"]
                if len(leaders) == 1 and len(streaming) == want - 1:
                    return self.cluster()
            if time.monotonic() > deadline:
                logs = "; ".join(f"{p.name}: {p.read_text()[-600:]}" for p in self.base.glob("*.log"))
                raise SandboxError(f"Patroni cluster {self.scope} not ready in {timeout:.0f} s: {logs}")
            time.sleep(0.2)

    # ---------------------------------------------------------------- pgbouncer
    def start_pgbouncer(self) -> None:
        """pgbouncer (transaction pooling, its own defaults otherwise) in front of the current leader."""
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        leader = self.leader() or self.names[0]
        self.pgbouncer_port = free_port()
        folder = self.base / "pgbouncer"
        self._mkdir(folder)
        files = {"userlist.txt": f'"{SUPERUSER}" "{self.password}"\n', "pgbouncer.ini": (
            f"[databases]\n* = host={HOST} port={self.pg_ports[leader]}\n\n[pgbouncer]\n"
            f"listen_addr = {HOST}\nlisten_port = {self.pgbouncer_port}\nunix_socket_dir = {folder}\n"
            f"auth_type = scram-sha-256\nauth_file = {folder / 'userlist.txt'}\nadmin_users = {SUPERUSER}\n"
            f"pool_mode = transaction\nmax_client_conn = 200\nignore_startup_parameters = extra_float_digits\n"
            f"logfile = {folder / 'pgbouncer.log'}\n")}
        for file, text in files.items():
            (folder / file).write_text(text)
            (folder / file).chmod(0o600)
            self._own(folder / file)
        self._spawn("pgbouncer", [binary, str(folder / "pgbouncer.ini")])
        deadline = time.monotonic() + 10
        while not port_open(self.pgbouncer_port):
            if time.monotonic() > deadline or self.procs["pgbouncer"].poll() is not None:
                raise SandboxError(f"pgbouncer did not listen on {HOST}:{self.pgbouncer_port}")
            time.sleep(0.05)

    def endpoint_block(self) -> EndpointControl:
        return EndpointControl(kind="pgbouncer", admin_host=HOST, admin_port=self.pgbouncer_port,
                               admin_user=SUPERUSER, admin_password=SecretStr(self.password),
                               ini_path=str(self.base / "pgbouncer" / "pgbouncer.ini"))

    # ---------------------------------------------------------------- blocks
    def cluster_block(self, name: str) -> PostgresCluster:
        """A PostgresCluster block for the Patroni nodes, the current leader recorded as primary."""
        leader = self.leader() or self.names[0]
        return PostgresCluster(
            cluster_name=name, nodes=[PostgresNode(name=n, host=HOST, port=self.pg_ports[n]) for n in self.names],
            primary_node=leader, user=SUPERUSER, password=SecretStr(self.password), sslmode="disable",
            endpoint=Endpoint(host=HOST, port=self.pgbouncer_port) if self.pgbouncer_port else None)

    def patroni_api(self) -> PatroniApi:
        return PatroniApi(urls={n: self.rest_url(n) for n in self.names})

    def node_control_block(self, kind: str = "patroni", with_api: bool = True) -> NodeControl:
        """kind 'patroni' (the Patroni backend), or kind 'pg_ctl' as an operator who missed Patroni would set it."""
        if kind == "patroni":
            return NodeControl(kind="patroni", patroni=self.patroni_api())
        return NodeControl(kind="pg_ctl", bindir=str(self.bindir), os_user=self.user,
                           data_dirs={n: str(self.data_dir(n)) for n in self.names},
                           patroni=self.patroni_api() if with_api else None)

