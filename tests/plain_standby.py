"""A standby made the ordinary way, without the sandbox's conventions: plain `pg_basebackup -R` (no slot, no
application_name: it calls itself `walreceiver`), no cluster_name, the upstream's settings otherwise.

Optionally a custom application_name in its primary_conninfo (what other tools do), and from any upstream
(a standby's port makes it a cascading standby).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from sandbox.cluster import HOST, SUPERUSER, Sandbox, free_port
from tests.helpers import wait_for


@dataclass
class PlainStandby:
    box: Sandbox
    name: str
    port: int
    data: Path

    def pg_ctl(self, action: str) -> None:
        args = [self.box.pg("pg_ctl"), action, "-w", "-t", "60", "-D", str(self.data)]
        args += ["-l", str(self.data / "server.log")] if action == "start" else ["-m", "fast"]
        self.box.run_as_server_user(args, check=action == "start")

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self) -> None:
        self.pg_ctl("stop")

    def conninfo(self) -> str:
        return conninfo_at(self.box, self.port)

    def receiver(self) -> tuple[str | None, int | None]:
        """(status, sender port) of its WAL receiver, as the standby itself reports it."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            row = conn.execute("SELECT status, sender_port FROM pg_catalog.pg_stat_wal_receiver").fetchone()
        return (row[0], row[1]) if row else (None, None)

    def wait_streaming(self, upstream_port: int) -> None:
        wait_for(lambda: self.receiver() == ("streaming", upstream_port), timeout=60,
                 what=f"{self.name} streaming from port {upstream_port}")


def conninfo_at(box: Sandbox, port: int) -> str:
    """The sandbox superuser's connection string for a server the sandbox does not name."""
    return psycopg.conninfo.make_conninfo(box.conninfo("primary"), port=port)


def plain_standby(box: Sandbox, name: str, upstream_port: int, application_name: str | None = None
                  ) -> PlainStandby:
    """Base-backup the server on `upstream_port` with plain `pg_basebackup -R`, on a port of its own, started
    and streaming."""
    node = PlainStandby(box, name, free_port(), box.base / name)
    box.run_as_server_user([box.pg("pg_basebackup"), "-h", HOST, "-p", str(upstream_port), "-U", SUPERUSER,
                            "-D", str(node.data), "-X", "stream", "-c", "fast", "-R"])
    box._write(node.data / "node.conf", f"port = {node.port}\n")  # the upstream's copy named a cluster_name
    if application_name:
        auto = node.data / "postgresql.auto.conf"
        text = re.sub(r"^(primary_conninfo = '.*)'$", rf"\1 application_name={application_name}'",
                      auto.read_text(), flags=re.MULTILINE)
        box._write(auto, text)
    node.start()
    node.wait_streaming(upstream_port)
    return node
