"""The whole local stack in one command: sandbox cluster, Prefect server, blocks, limits,
deployments and a worker that polls every second.

    python -m sandbox.stack up      # or ./run stack up
    python -m sandbox.stack up --fleet 20 --workers 2 --server-db postgres   # the scale-out configuration
    python -m sandbox.stack status
    python -m sandbox.stack down

--fleet N saves N more cluster blocks (fleet-001 ... fleet-N) over the same sandbox servers, members of the Fleet
block `fleet` that the scheduled deployments run over (without it the fleet is the sandbox alone). --workers K starts
K process workers. --server-db postgres runs the Prefect server on its own PostgreSQL instance (started by the stack
in the state directory; never one of the monitored clusters) instead of SQLite.

Everything binds to 127.0.0.1; telemetry is off. State (server database, logs, pids) lives
in .state/stack under the repo unless --state-dir says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sandbox.cluster import Sandbox, SandboxError

ROOT = Path(__file__).resolve().parent.parent
WORK_POOL = "pg-runbooks"
HOST = "127.0.0.1"


def global_limits(cluster: str) -> dict[str, int]:
    """The global concurrency limits the runbooks hold for a cluster, created before any run needs them
    (`concurrency()` on a missing limit excludes nothing; the runbooks also create them on first use).

    `cluster` is the cluster_name (the sandbox's blocks use the block name as cluster_name)."""
    from tasks.alerts.state import lock_name
    from tasks.core.exclusion import maintenance_lock_name
    from tasks.core.limits import action_lock_name, failover_lock_name

    return {
        failover_lock_name(cluster): 1,  # one failover per cluster
        maintenance_lock_name(cluster): 1,  # one destructive maintenance run per cluster
        lock_name(cluster): 1,  # the alert monitor's state of the cluster
        action_lock_name(cluster, "scale_connections"): 1,  # one connection remediation per cluster
        action_lock_name(cluster, "cleanup_data"): 1,  # one disk-pressure run per cluster
    }


FLEET_BLOCK = "fleet"
FLEET_PREFIX = "fleet-"


class LocalStack:
    def __init__(self, state_dir: Path | None = None, port: int = 4200, sandbox_dir: Path | None = None,
                 sandbox_ports: dict[str, int] | None = None, block_name: str = "sandbox", fleet: int = 0,
                 workers: int = 1, server_db: str = "sqlite"):
        self.state = Path(state_dir or ROOT / ".state" / "stack").resolve()
        self.port = port
        self.sandbox = Sandbox.open(sandbox_dir, **(sandbox_ports or {}))
        self.block_name = block_name
        self.fleet, self.workers, self.server_db = fleet, max(1, workers), server_db

    @property
    def worker_names(self) -> list[str]:
        return ["worker"] + [f"worker-{i}" for i in range(2, self.workers + 1)]

    def prefect_database(self) -> str:
        """Start the Prefect server's own PostgreSQL (a single server in the state directory, on a free port the
        first time) and return its SQLAlchemy URL. It is never a monitored cluster: no block points at it."""
        from sandbox.cluster import SUPERUSER, free_port

        base = self.state / "prefect-db"
        self.state.chmod(self.state.stat().st_mode | 0o011)  # the server's OS user passes through (mkdtemp: 0700)
        known = base / "sandbox.json"
        db = Sandbox.open(base) if known.exists() else Sandbox.open(base, primary_port=free_port(),
                                                                    replica_port=free_port(),
                                                                    pgbouncer_port=free_port())
        db._prepare_base()
        if not (db.primary_dir / "PG_VERSION").exists():
            db._init_primary()
        db.start_node("primary")
        with db.connect("primary") as conn:
            if not conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'prefect'").fetchone():
                conn.execute("CREATE DATABASE prefect")
        return (f"postgresql+asyncpg://{SUPERUSER}:{db.config.password}@{HOST}:{db.config.primary_port}/prefect")

    def stop_prefect_database(self) -> None:
        base = self.state / "prefect-db"
        if (base / "sandbox.json").exists():
            Sandbox.open(base).stop()

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for every process of the stack: API URL, no telemetry, the venv first on PATH."""
        env = dict(os.environ)
        env.update({
            "PREFECT_API_URL": self.api_url,
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
            "PG_RUNBOOKS_STATE_DIR": str(self.state / "runbooks"),  # failover journal, report snapshots
        })
        env.pop("PG_RUNBOOKS_HOME", None)  # resolved at run time by the worker, not at deploy time
        env.update(extra)
        return env

    # ------------------------------------------------------------------ processes
    def _pidfile(self, name: str) -> Path:
        return self.state / f"{name}.pid"

    def _pid(self, name: str) -> int | None:
        try:
            pid = int(self._pidfile(name).read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> int:
        log = open(self.state / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def _stop(self, name: str, timeout: float = 15) -> None:
        pid = self._pid(name)
        if not pid:
            return
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._pid(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._pid(name):
            os.killpg(pid, signal.SIGKILL)
        self._pidfile(name).unlink(missing_ok=True)

    def server_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _prefect(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", *args]
        proc = subprocess.run(cmd, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise SandboxError(f"prefect {' '.join(args)} failed: {(proc.stdout + proc.stderr)[-3000:]}")
        return proc

    # ------------------------------------------------------------------ lifecycle
    def up(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.sandbox.start()
        if not self.server_healthy():
            home = self.state / "prefect-home"
            home.mkdir(exist_ok=True)
            db = ({"PREFECT_API_DATABASE_CONNECTION_URL": self.prefect_database()}
                  if self.server_db == "postgres" else {})
            self._spawn("server", [str(Path(sys.executable).parent / "prefect"), "server", "start",
                                   "--host", HOST, "--port", str(self.port)],
                        self.env(PREFECT_HOME=str(home), PREFECT_SERVER_API_HOST=HOST, **db))
            deadline = time.monotonic() + 90
            while not self.server_healthy():
                if time.monotonic() > deadline:
                    raise SandboxError(f"Prefect server did not answer; see {self.state / 'server.log'}")
                time.sleep(0.3)
        self.provision()
        for name in self.worker_names:
            self.start_worker(name)

    def start_worker(self, name: str = "worker") -> int:
        """A process worker of the pool (another one with another name: several workers share the runs)."""
        pid = self._pid(name)
        if pid:
            return pid
        return self._spawn(name, [str(Path(sys.executable).parent / "prefect"), "worker", "start",
                                  "--pool", WORK_POOL, "--type", "process", "--name", f"pg-runbooks-{name}"],
                           self.env(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
                                    PG_RUNBOOKS_HOME=str(ROOT)))

    def provision(self) -> None:
        """Blocks, concurrency limits, work pool and deployments (idempotent)."""
        subprocess.run(
            [sys.executable, "-m", "sandbox.stack", "_provision", "--sandbox-dir", str(self.sandbox.base),
             "--block-name", self.block_name, "--fleet", str(self.fleet)],
            cwd=ROOT, env=self.env(), check=True, timeout=300)
        self._prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
        self._prefect("deploy", "--all")

    def status(self) -> dict:
        return {
            "api_url": self.api_url,
            "ui_url": f"http://{HOST}:{self.port}",
            "server": {"pid": self._pid("server"), "healthy": self.server_healthy()},
            "worker": {"pid": self._pid("worker")},
            "workers": {name: self._pid(name) for name in self._worker_pidfiles()},
            "server_db": "postgres" if (self.state / "prefect-db" / "sandbox.json").exists() else "sqlite",
            "sandbox": self.sandbox.status(),
            "state_dir": str(self.state),
        }

    def _worker_pidfiles(self) -> list[str]:
        return sorted(p.stem for p in self.state.glob("worker*.pid"))

    def down(self, keep_sandbox: bool = False) -> None:
        for name in self._worker_pidfiles():  # every worker winds down at once, then each is waited for
            pid = self._pid(name)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
        for name in self._worker_pidfiles():
            self._stop(name)
        self._stop("server")
        self.stop_prefect_database()
        if not keep_sandbox:
            self.sandbox.stop()


def _provision_in_process(sandbox_dir: str, block_name: str, fleet: int = 0) -> None:
    """Runs inside a process whose PREFECT_API_URL points at the stack's server."""
    from blocks import Fleet, MetricsSource, PostgresCluster, SlackNotifier
    from sandbox.blocks import sandbox_cluster_block, save_failover_blocks
    from tasks.core.limits import ensure_limits

    PostgresCluster.register_type_and_schema()
    SlackNotifier.register_type_and_schema()
    Fleet.register_type_and_schema()
    box = Sandbox.open(Path(sandbox_dir))
    save_failover_blocks(box, block_name)
    members = [f"{FLEET_PREFIX}{i:03d}" for i in range(1, fleet + 1)]
    for name in members:  # cheap clusters: more blocks over the same servers (said in the block's tags)
        block = sandbox_cluster_block(box, name=name)
        block.tags = ["sandbox-fleet", "same-servers-as-sandbox"]
        block.save(name, overwrite=True)
        MetricsSource(kind="local", data_path=str(box.primary_dir)).save(f"{name}-host", overwrite=True)
    Fleet(members=[block_name], name_prefix=FLEET_PREFIX if fleet else None).save(FLEET_BLOCK, overwrite=True)

    wanted = {k: v for c in [block_name, *members] for k, v in global_limits(c).items()}
    for limit in sorted(set(wanted.values())):  # ensure_limits pages through every existing limit
        ensure_limits([name for name, value in wanted.items() if value == limit], limit=limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "_provision"])
    parser.add_argument("--state-dir")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PG_RUNBOOKS_PREFECT_PORT", 4200)))
    parser.add_argument("--sandbox-dir")
    parser.add_argument("--block-name", default="sandbox")
    parser.add_argument("--keep-sandbox", action="store_true", help="down: leave the database servers running")
    parser.add_argument("--fleet", type=int, default=0, help="up: N more cluster blocks over the sandbox, in the fleet")
    parser.add_argument("--workers", type=int, default=1, help="up: how many process workers")
    parser.add_argument("--server-db", choices=["sqlite", "postgres"], default="sqlite",
                        help="up: the Prefect server's database (postgres: its own instance, started by the stack)")
    args = parser.parse_args(argv)
    if args.command == "_provision":
        _provision_in_process(args.sandbox_dir, args.block_name, args.fleet)
        return 0
    stack = LocalStack(Path(args.state_dir) if args.state_dir else None, args.port,
                       Path(args.sandbox_dir) if args.sandbox_dir else None, block_name=args.block_name,
                       fleet=args.fleet, workers=args.workers, server_db=args.server_db)
    try:
        if args.command == "up":
            stack.up()
            print(json.dumps(stack.status(), indent=2))
            print(f"\nPrefect UI: http://{HOST}:{args.port}   (export PREFECT_API_URL={stack.api_url})")
        elif args.command == "down":
            stack.down(keep_sandbox=args.keep_sandbox)
            print("stack stopped")
        else:
            print(json.dumps(stack.status(), indent=2))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
