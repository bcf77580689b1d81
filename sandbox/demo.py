"""The README's first command ends here: sandbox blocks saved, health check run, report printed."""

from __future__ import annotations

import sys

from sandbox.blocks import save_sandbox_blocks
from sandbox.cluster import Sandbox


def main() -> int:
    box = Sandbox.open()
    box.start()
    save_sandbox_blocks(box)
    from flows.health_check import health_check
    from tasks.health.report import render_markdown

    report = health_check(cluster_block="sandbox")
    print()
    print(render_markdown(report))
    return 0 if report.status in ("ok", "warning") else 2


if __name__ == "__main__":
    sys.exit(main())
