"""Benchmark: scheduled runbooks over a fleet (flows/fleet.py), and the alert monitor over 1,000 clusters.

Clusters are cheap here: N PostgresCluster blocks (bench-fleet-0001 ...) all point at ONE fresh sandbox (primary,
streaming replica, pgbouncer), so every "cluster" runs the real queries against the same two servers. This measures
the orchestration (Prefect runs, tasks, artifacts, API calls) and the shared servers' load, not N machines.

Figures per fleet size and runbook: wall time of the fleet run, per-cluster overhead against one single-cluster run
of the same runbook (reference), and the Prefect API load (objects written: flow runs, task runs, artifacts; and
requests counted on the client side). The server is the in-process test server (SQLite): `--stack` is the
documented way to measure the PostgreSQL-backed server with several workers (deployment mode).

    ./run bench fleet --sizes 10 100 --runbooks health-check vacuum --monitor 1000
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from bench.common import fresh_sandbox, prefect_api, row

PREFIX = "bench-fleet-"


def make_blocks(box, n: int) -> list[str]:
    from blocks.fleet import Fleet
    from sandbox.blocks import sandbox_cluster_block

    names = [f"{PREFIX}{i:04d}" for i in range(n)]
    for name in names:
        sandbox_cluster_block(box, name=name).save(name, overwrite=True)
    Fleet(name_prefix=PREFIX, max_parallel=8).save("bench-fleet", overwrite=True)
    return names


class RequestCounter:
    """Counts the HTTP requests every Prefect client in this process sends (client-side API load)."""

    def __init__(self):
        import httpx

        self.count = 0
        self._lock = threading.Lock()
        self._original = httpx.AsyncClient.send
        counter = self

        async def send(client, request, *args, **kwargs):
            with counter._lock:
                counter.count += 1
            return await counter._original(client, request, *args, **kwargs)

        httpx.AsyncClient.send = send
        self._sync_original = httpx.Client.send

        def sync_send(client, request, *args, **kwargs):
            with counter._lock:
                counter.count += 1
            return counter._sync_original(client, request, *args, **kwargs)

        httpx.Client.send = sync_send


def api_objects() -> tuple[int, int, int]:
    """Flow runs, task runs and artifacts stored by the server (its REST count endpoints)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return tuple(client.request("POST", f"/{kind}/count", json={}).json()
                     for kind in ("flow_runs", "task_runs", "artifacts"))


def single_run(runbook: str, cluster: str, repeat: int = 3) -> float:
    from flows.fleet import FLOWS

    flow = FLOWS[runbook]
    flow(cluster_block=cluster)  # warm-up
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        flow(cluster_block=cluster)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def fleet_figures(runbook: str, n: int, single: float, counter: RequestCounter, parallel: int) -> None:
    from flows.fleet import fleet

    before, requests = api_objects(), counter.count
    t = time.perf_counter()
    report = fleet(runbook=runbook, fleet_block="bench-fleet", max_parallel=parallel,
                   parameters=None)
    wall = time.perf_counter() - t
    after, sent = api_objects(), counter.count - requests
    assert len(report.members) == n, report.summary
    flows, tasks, arts = (a - b for a, b in zip(after, before, strict=True))
    per = wall / n
    print(f"\n{runbook} over {n} clusters, {parallel} at a time: {report.summary}")
    row("figure", "value", "reference", "ratio")
    goal = runbook == "health-check" and n == 100
    row("fleet run wall time (s)", f"{wall:.1f}", "120 s goal" if goal else "", f"{wall / 120:.0%}" if goal else "")
    row("wall time per cluster (s)", f"{per:.3f}", f"single run {single:.2f}", f"{per / single:.2f}x")
    row("serial estimate n x single (s)", f"{n * single:.1f}", "", f"speed-up {n * single / wall:.1f}x")
    row("API objects: flow runs / cluster", f"{flows / n:.2f}", "", "")
    row("API objects: task runs / cluster", f"{tasks / n:.1f}", "", "")
    row("API objects: artifacts / cluster", f"{arts / n:.1f}", "", "")
    row("API requests / cluster (client side)", f"{sent / n:.0f}", "", "")
    row("API requests / second", f"{sent / wall:.0f}", "", "")


def monitor_figures(box, n: int, repeat: int) -> None:
    from blocks.fleet import Fleet
    from flows.alert_monitor import alert_monitor
    from sandbox.blocks import sandbox_cluster_block

    prefix = "bench-mon-"
    t = time.perf_counter()
    for i in range(n):
        sandbox_cluster_block(box, name=f"{prefix}{i:04d}").save(f"{prefix}{i:04d}", overwrite=True)
    Fleet(name_prefix=prefix).save("bench-monitor-fleet", overwrite=True)
    print(f"\n{n} monitor cluster blocks saved in {time.perf_counter() - t:.1f} s")
    alert_monitor(cluster_blocks=[], fleet_block="bench-monitor-fleet")  # first run: locks and state
    walls, sampling = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        report = alert_monitor(cluster_blocks=[], fleet_block="bench-monitor-fleet")
        walls.append(time.perf_counter() - t)
        sampling.append(report.sample_seconds)
        assert len(report.clusters) == n, report.summary
    wall = statistics.median(walls)
    print(f"alert monitor over {n} quiet clusters (fleet block), {repeat} runs")
    row("figure", "seconds", "reference", "ratio")
    row("monitor run wall time (median)", f"{wall:.1f}", "60 s interval", f"{wall / 60:.0%}")
    row("monitor run wall time (max)", f"{max(walls):.1f}", "60 s interval", f"{max(walls) / 60:.0%}")
    row("  of which sampling (median)", f"{statistics.median(sampling):.1f}", "", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100])
    parser.add_argument("--runbooks", nargs="*", default=["health-check", "vacuum"])
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--monitor", type=int, default=1000, help="clusters for the alert monitor (0: skip)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with fresh_sandbox() as box, prefect_api():
        counter = RequestCounter()
        names = make_blocks(box, max(args.sizes))
        from blocks.fleet import Fleet

        for runbook in args.runbooks:
            single = single_run(runbook, names[0])
            print(f"\nsingle-cluster {runbook} run (median of 3): {single:.2f} s")
            for n in args.sizes:
                Fleet(members=names[:n], max_parallel=args.parallel).save("bench-fleet", overwrite=True)
                fleet_figures(runbook, n, single, counter, args.parallel)
        if args.monitor:
            monitor_figures(box, args.monitor, args.repeat)


if __name__ == "__main__":
    main()
