"""Shared pieces of the benchmarks: a fresh sandbox, a Prefect API, timing helpers."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from sandbox.cluster import Sandbox  # noqa: E402


@contextlib.contextmanager
def fresh_sandbox():
    """A new primary + replica + pgbouncer on free ports, destroyed afterwards."""
    box = Sandbox.ephemeral("pgrb-bench-")
    box.start()
    try:
        yield box
    finally:
        box.destroy()


@contextlib.contextmanager
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def timed(fn, repeat: int = 5) -> tuple[float, list[float]]:
    """Median wall time in seconds of `repeat` calls (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), samples


def row(label: str, *cols) -> None:
    print(f"{label:<44}" + "".join(f"{c:>16}" for c in cols))
