"""`python -m sandbox start|status|stop|destroy|env|save-blocks`."""

from __future__ import annotations

import argparse
import json
import sys

from sandbox.cluster import MONITOR_ROLE, Sandbox, SandboxError
from sandbox.pgversions import SUPPORTED, installed_version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pg-sandbox", description=__doc__)
    parser.add_argument("command", choices=["start", "status", "stop", "destroy", "env", "save-blocks"])
    parser.add_argument("--dir", help="sandbox directory (default $PG_SANDBOX_DIR or /tmp/pg-runbooks-sandbox-UID)")
    parser.add_argument("--primary-port", type=int)
    parser.add_argument("--replica-port", type=int)
    parser.add_argument("--pgbouncer-port", type=int)
    parser.add_argument("--pg", type=int, choices=SUPPORTED, metavar="MAJOR",
                        help="PostgreSQL major version (14-18) for a new sandbox; default: the OS package's "
                             "(Debian 12: 15); others are fetched once into .cache/postgresql/")
    parser.add_argument("--block-name", default="sandbox", help="name of the blocks save-blocks writes")
    parser.add_argument("--defaults", action="store_true",
                        help="new sandbox only: pgbouncer with its own defaults (server_login_retry 15 s, ...) and "
                        "the replica as pg_basebackup -R made it (docs/sandbox.md)")
    args = parser.parse_args(argv)
    try:
        box = Sandbox.open(
            args.dir,
            pg_version=args.pg,
            primary_port=args.primary_port,
            replica_port=args.replica_port,
            pgbouncer_port=args.pgbouncer_port,
            defaults=args.defaults,
        )
        if args.command == "start":
            box.start()
            print(f"sandbox running in {box.base} (PostgreSQL {installed_version(box.bindir)})")
            _print_conninfo(box)
        elif args.command == "status":
            print(json.dumps(box.status(), indent=2))
        elif args.command == "stop":
            box.stop()
            print("sandbox stopped")
        elif args.command == "destroy":
            box.destroy()
            print(f"sandbox destroyed ({box.base})")
        elif args.command == "env":
            _print_conninfo(box)
        elif args.command == "save-blocks":
            from sandbox.blocks import save_failover_blocks

            name = save_failover_blocks(box, args.block_name)
            print(f"saved blocks postgres-cluster/{name}, host-metrics-source/{name}-host, node-control/{name}, "
                  f"endpoint-control/{name}, pgbouncer-pool-scaler/{name}")
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_conninfo(box: Sandbox) -> None:
    """Connection strings for local use; the sandbox password is local and random."""
    print(f"primary   : {box.conninfo('primary')}")
    print(f"replica   : {box.conninfo('replica')}")
    print(f"pgbouncer : {box.conninfo('pgbouncer')}")
    print(f"monitor   : {box.conninfo('primary', user=MONITOR_ROLE)}  (pg_monitor only)")
