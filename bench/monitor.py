"""Benchmark: the alert monitor over a fleet, and its detection latency.

Fleet: N databases (default 200) on one fresh sandbox, each behind its own PostgresCluster
block, stand in for N clusters. One monitor run samples all of them (one connection each),
evaluates the four default rules and reads/writes the state store. Reference: the monitor's
one-minute schedule interval (the run must fit well inside it), and the same two queries
per cluster run sequentially with plain psycopg.

Runs where clusters have alert state (pending, firing, due) also lock, re-read and write
those clusters; the phases printed per run show it. `--firing` measures that case: a rule above
0 % connection usage for 0s makes every cluster fire at once (lock, FIRING to a fake Slack, write),
then the runs where all of them stay firing, printed beside the quiet fleet's figures.

Detection latency: a rule `connection_limit` with `for: 15s`, the monitor every 5 s on one
cluster; a real connection surge starts at t0; latency = first FIRING message at the fake
Slack - t0. Prometheus semantics bound it to [for, for + interval + one run].
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql

from bench.common import fresh_sandbox, prefect_api, row

LATENCY_RULES = """\
rules:
  - name: connection_limit
    metric: connection_usage_percent
    threshold: {threshold}
    for: 15s
    action: notify_team
"""

FIRING_RULES = """\
rules:
  - name: connection_limit
    metric: connection_usage_percent
    threshold: 0
    for: 0s
    action: notify_team
"""


def make_fleet(box, n: int) -> list[str]:
    """n databases and n PostgresCluster blocks (fleet-000 ...), each pointing at its database."""
    from sandbox.blocks import sandbox_cluster_block

    with box.connect("primary") as conn:
        for i in range(n):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"fleet_{i:03d}")))
    names = []
    for i in range(n):
        block = sandbox_cluster_block(box, name=f"fleet-{i:03d}")
        block.database = f"fleet_{i:03d}"
        block.save(f"fleet-{i:03d}", overwrite=True)
        names.append(f"fleet-{i:03d}")
    return names


def raw_fleet(box, n: int) -> None:
    from tasks.alerts.metrics import CONNECTIONS_SQL
    from tasks.core.replication import RECEIVER_SQL, REPLICATION_SQL

    for i in range(n):  # what the monitor reads: the primary, then each standby (its receiver, its standbys)
        for node, queries in (("primary", (CONNECTIONS_SQL, REPLICATION_SQL)), ("replica", (RECEIVER_SQL,
                                                                                          REPLICATION_SQL))):
            with psycopg.connect(box.conninfo(node, dbname=f"fleet_{i:03d}"), autocommit=True,
                                 options="-c jit=off") as conn:
                for query in queries:
                    conn.execute(query).fetchall()


def fleet_runs(n: int, repeat: int, **kwargs) -> tuple[list[float], list[float], list[float]]:
    """`repeat` monitor runs over the fleet: (wall times, sampling times, per-cluster sample times)."""
    from flows.alert_monitor import alert_monitor

    walls, per_cluster, sampling = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        report = alert_monitor(cluster_blocks=[], cluster_group="fleet-", **kwargs)
        walls.append(time.perf_counter() - t)
        sampling.append(report.sample_seconds)
        per_cluster += [c.seconds for c in report.clusters]
        print(f"run: {walls[-1]:.1f} s; {len(report.firing())} firing; phases {report.phase_seconds}", flush=True)
        assert len(report.clusters) == n, report.summary
    return walls, sampling, sorted(per_cluster)


def fleet_table(title: str, walls: list[float], sampling: list[float], per_cluster: list[float]) -> float:
    wall = statistics.median(walls)
    print(f"\n{title}")
    row("figure", "seconds", "reference", "ratio")
    row("monitor run wall time (median)", f"{wall:.2f}", "60 s interval", f"{wall / 60:.0%}")
    row("monitor run wall time (max)", f"{max(walls):.2f}", "60 s interval", f"{max(walls) / 60:.0%}")
    row("  of which sampling (median)", f"{statistics.median(sampling):.2f}", "", "")
    row("per-cluster sample time, median", f"{statistics.median(per_cluster):.3f}", "", "")
    row("per-cluster sample time, p95", f"{per_cluster[max(int(0.95 * len(per_cluster)) - 1, 0)]:.3f}", "", "")
    row("per-cluster sample time, max", f"{per_cluster[-1]:.3f}", "", "")
    return wall


def fleet_figures(box, n: int, repeat: int, firing: bool) -> None:
    from flows.alert_monitor import alert_monitor

    started = time.perf_counter()
    make_fleet(box, n)
    print(f"fleet of {n} databases/blocks created in {time.perf_counter() - started:.1f} s")
    first = time.perf_counter()
    report = alert_monitor(cluster_blocks=[], cluster_group="fleet-")  # creates the per-cluster locks
    print(f"first run: {time.perf_counter() - first:.1f} s; phases "
          f"{report.phase_seconds}", flush=True)
    quiet = fleet_runs(n, repeat)
    raw_t = time.perf_counter()
    raw_fleet(box, n)
    raw = time.perf_counter() - raw_t
    wall = fleet_table(f"monitor over {n} clusters, quiet fleet, {repeat} runs", *quiet)
    row("raw SQL, sequential, all clusters", f"{raw:.2f}", "", f"monitor/raw {wall / raw:.1f}x")
    if firing:
        firing_figures(n, repeat, wall)


def firing_figures(n: int, repeat: int, quiet_wall: float) -> None:
    """Every cluster fires (connection_limit above 0 % for 0s): one run where all N fire at once (each takes
    its lock, posts FIRING to the fake Slack, writes its state), then runs where all N stay firing."""
    from tasks.alerts.monitor import MonitorParams
    from tests.helpers import save_slack_block
    from tests.slack_server import start_fake_slack

    fake = start_fake_slack()
    save_slack_block(fake, "bench-fleet-slack", "xoxb-ok-fleet")
    rules = Path(tempfile.mkdtemp()) / "firing.yaml"
    rules.write_text(FIRING_RULES)
    kwargs = {"slack_block": "bench-fleet-slack", "params": MonitorParams(rules_file=str(rules))}
    try:
        onset = fleet_runs(n, 1, **kwargs)
        posted = sum(1 for c in fake.calls("chat.postMessage") if "FIRING" in str(c.body))
        steady = fleet_runs(n, repeat, **kwargs)
    finally:
        fake.stop()
    print(f"\nall {n} clusters fire at once (one run, {posted} FIRING messages): {onset[0][0]:.2f} s wall, "
          f"{onset[0][0] / 60:.0%} of the 60 s interval")
    wall = fleet_table(f"monitor over {n} clusters, every cluster firing (rule > 0 % for 0s), {repeat} runs", *steady)
    row("firing fleet vs quiet fleet (median)", f"{wall:.2f}", f"{quiet_wall:.2f} quiet", f"{wall / quiet_wall:.1f}x")


def latency_figures(box, interval: float) -> None:
    from flows.alert_monitor import alert_monitor
    from sandbox.blocks import sandbox_cluster_block
    from tasks.alerts.monitor import MonitorParams
    from tests.helpers import save_slack_block
    from tests.slack_server import start_fake_slack

    fake = start_fake_slack()
    save_slack_block(fake, "bench-slack", "xoxb-ok-bench")
    sandbox_cluster_block(box, name="latency").save("latency", overwrite=True)
    with box.connect("primary") as conn:
        used, top, reserved = conn.execute(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
            "current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
        ).fetchone()
    threshold = round(100.0 * (used + 20) / (top - reserved), 1)
    rules = Path(tempfile.mkdtemp()) / "rules.yaml"
    rules.write_text(LATENCY_RULES.format(threshold=threshold))
    params = MonitorParams(rules_file=str(rules))
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            started = time.monotonic()
            alert_monitor(cluster_blocks=["latency"], slack_block="bench-slack", params=params)
            stop.wait(max(0.0, interval - (time.monotonic() - started)))

    runner = threading.Thread(target=loop, daemon=True)
    runner.start()
    time.sleep(interval * 1.5)
    conns = []
    t0 = time.time()
    try:
        conns = [psycopg.connect(box.conninfo("primary"), autocommit=True) for _ in range(40)]
        deadline = time.time() + 120
        fired_at = None
        while time.time() < deadline and fired_at is None:
            for call in fake.calls("chat.postMessage"):
                if "FIRING: connection_limit" in str(call.body):
                    fired_at = time.time()
            time.sleep(0.1)
    finally:
        stop.set()
        for conn in conns:
            conn.close()
        runner.join(timeout=60)
        fake.stop()
    print(f"\ndetection latency (monitor every {interval:.0f} s, rule for: 15s, real surge of 40 sessions)")
    row("figure", "seconds", "rule duration", "ratio")
    if fired_at is None:
        row("breach start -> Slack FIRING", "not fired", "15", "")
    else:
        latency = fired_at - t0
        row("breach start -> Slack FIRING", f"{latency:.1f}", "15", f"{latency / 15:.2f}x")
        print(f"bound by Prometheus semantics: [15, {15 + interval:.0f} + one run]")


def main() -> None:
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the sandbox's cleanup on kill
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--firing", action="store_true",
                        help="also measure the fleet with every cluster in firing alert state")
    args = parser.parse_args()
    with fresh_sandbox() as box, prefect_api():
        fleet_figures(box, args.clusters, args.repeat, args.firing)
        latency_figures(box, args.interval)


if __name__ == "__main__":
    main()
