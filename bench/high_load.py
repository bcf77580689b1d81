"""Benchmark: the high-load response flow vs the raw pg_terminate_backend query, on the same 50 sessions.

On a fresh sandbox, 200 concurrent sessions: 50 eligible (role bench_app, a pg_sleep statement older
than the threshold), 75 idle sessions of bench_app, 75 running statements of an excluded role.
Measured from the clients' side: time from the trigger until the last eligible statement has ended
(each client thread notes when its statement returned with an error).
Reference: one raw `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE ...` over the same set.
Prints the median of --repeat rounds of each and the ratio flow/raw. No thresholds: figures only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from sandbox.cluster import HOST, Sandbox  # noqa: E402

ELIGIBLE, IDLE, EXCLUDED = 50, 75, 75
PASSWORD = "bench-pw"

# The reference: what a DBA would type, ending the same 50 statements in one query.
RAW_TERMINATE = """
SELECT pg_catalog.pg_terminate_backend(pid)
  FROM pg_catalog.pg_stat_activity
 WHERE usename = 'bench_app'
   AND state = 'active'
   AND now() - query_start > make_interval(secs => %(seconds)s)
"""


class Sessions:
    """200 client sessions; `ended` maps each eligible pid to when its statement returned."""

    def __init__(self, box: Sandbox):
        self.box = box
        self.conns: list[psycopg.Connection] = []
        self.ended: dict[int, float] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def _connect(self, user: str) -> psycopg.Connection:
        conn = psycopg.connect(host=HOST, port=self.box.config.primary_port, user=user, password=PASSWORD,
                               dbname="postgres", autocommit=True, application_name="bench-client")
        self.conns.append(conn)
        return conn

    def _sleep(self, conn: psycopg.Connection, pid: int | None) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_sleep(600)")
        if pid is not None:
            with self.lock:
                self.ended[pid] = time.perf_counter()

    def start(self) -> list[int]:
        eligible = []
        for _ in range(ELIGIBLE):
            conn = self._connect("bench_app")
            pid = conn.info.backend_pid
            eligible.append(pid)
            self.threads.append(threading.Thread(target=self._sleep, args=(conn, pid), daemon=True))
        for _ in range(IDLE):
            self._connect("bench_app").execute("SELECT 1")
        for _ in range(EXCLUDED):
            conn = self._connect("bench_other")
            self.threads.append(threading.Thread(target=self._sleep, args=(conn, None), daemon=True))
        for t in self.threads:
            t.start()
        return eligible

    def wait_ended(self, pids: list[int], timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(p in self.ended for p in pids):
                    return max(self.ended[p] for p in pids)
            time.sleep(0.005)
        raise RuntimeError("eligible sessions did not end in time")

    def close(self) -> None:
        with self.box.connect("primary") as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'bench-client'")
        for t in self.threads:
            t.join(10)
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.close()


def setup_roles(box: Sandbox) -> None:
    with box.connect("primary") as conn:
        for role in ("bench_app", "bench_other"):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role),
                                                                            sql.Literal(PASSWORD)))


def ready(box: Sandbox, threshold: float) -> None:
    """Wait until the 50 eligible statements are older than the threshold."""
    while True:
        with box.connect("primary") as conn:
            n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'bench_app' AND state = "
                             "'active' AND now() - query_start > make_interval(secs => %s)",
                             (threshold + 0.2,)).fetchone()[0]
        if n == ELIGIBLE:
            return
        time.sleep(0.1)


def one_round(box: Sandbox, trigger) -> float:
    sessions = Sessions(box)
    try:
        eligible = sessions.start()
        ready(box, 1.0)
        t0 = time.perf_counter()
        trigger()
        return sessions.wait_ended(eligible) - t0
    finally:
        sessions.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    from flows.high_load_response import high_load_response
    from sandbox.blocks import save_sandbox_blocks
    from tasks.emergency.high_load_plan import HighLoadParams

    box = Sandbox.ephemeral("pgrb-bench-")
    try:
        box.start()
        setup_roles(box)
        with prefect_test_harness(server_startup_timeout=120):
            save_sandbox_blocks(box, "bench")
            params = HighLoadParams(dry_run=False, long_query_seconds=1, max_sessions=ELIGIBLE,
                                    exclude_roles=["runbook_monitor", "bench_other"], lock_wait_seconds=3600)
            high_load_response(cluster_block="bench", params=params.model_copy(update={"dry_run": True}))  # warm-up
            flow_times, raw_times = [], []
            for _ in range(args.repeat):
                flow_times.append(one_round(box, lambda: high_load_response(cluster_block="bench", params=params)))
                with box.connect("primary") as conn:
                    raw_times.append(one_round(box, lambda c=conn: c.execute(RAW_TERMINATE, {"seconds": 1.0})))
        flow_s, raw_s = statistics.median(flow_times), statistics.median(raw_times)
        print(f"high-load response: {ELIGIBLE + IDLE + EXCLUDED} sessions, {ELIGIBLE} eligible; "
              f"median of {args.repeat} rounds, seconds from trigger to the last eligible statement ended")
        print(f"{'flow (cancel first)':<28}{flow_s:>10.3f}   rounds: {', '.join(f'{t:.3f}' for t in flow_times)}")
        print(f"{'raw pg_terminate_backend':<28}{raw_s:>10.4f}   rounds: {', '.join(f'{t:.4f}' for t in raw_times)}")
        print(f"{'flow/raw':<28}{flow_s / raw_s:>9.1f}x")
        print("flow time includes Prefect's flow start, the survey, one signal per session with its identity "
              "re-check, and the poll after pg_cancel_backend.")
    finally:
        box.destroy()


if __name__ == "__main__":
    main()
