"""The README's first command ends here: sandbox blocks saved, health check run, report printed."""

from __future__ import annotations

import argparse
import sys

from sandbox.blocks import save_sandbox_blocks
from sandbox.cluster import Sandbox, SandboxError
from sandbox.pgversions import SUPPORTED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run demo", description=__doc__)
    parser.add_argument("--pg", type=int, choices=SUPPORTED, metavar="MAJOR",
                        help="PostgreSQL major version (14-18); default: the OS package's (Debian 12: 15)")
    args = parser.parse_args(argv)
    try:
        box = Sandbox.open(pg_version=args.pg)
        box.start()
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_sandbox_blocks(box)
    from flows.health_check import health_check
    from tasks.health.report import render_markdown

    report = health_check(cluster_block="sandbox")
    print()
    print(render_markdown(report))
    return 0 if report.status in ("ok", "warning") else 2


if __name__ == "__main__":
    sys.exit(main())
