"""Benchmark: scheduled runbooks over a fleet (flows/fleet.py), and the alert monitor over 1,000 clusters.

Clusters are cheap here: N PostgresCluster blocks (fleet-001 ...) all point at ONE sandbox (primary, streaming
replica, pgbouncer), so every "cluster" runs the real queries against the same two servers. This measures the
orchestration (Prefect runs, tasks, artifacts, API calls) and the shared servers' load, not N machines.

The Prefect side is the scale-out configuration of `./run stack up --server-db postgres --workers 2` (brought up
here on free ports in a temporary directory): the server on its own PostgreSQL, two process workers.

- in-process: the fleet run (here, in this process) runs each cluster as a child flow run, `--parallel` at a time;
- deployment: each cluster is a run of the on-demand deployment (`health-check/health-check`) on the workers,
  measured with 1 worker and with 2.

Figures: wall time, per-cluster time against one single-cluster run of the same runbook (reference), and the
Prefect API load (objects the server stored per cluster; requests this process sent).

    ./run bench fleet --sizes 10 100 --deployment-sizes 10 --monitor 1000
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import row


class RequestCounter:
    """Counts the HTTP requests the Prefect clients of this process send (client-side API load)."""

    def __init__(self):
        import httpx

        self.count = 0
        lock = threading.Lock()
        async_send, sync_send = httpx.AsyncClient.send, httpx.Client.send

        async def counted_async(client, request, *args, **kwargs):
            with lock:
                self.count += 1
            return await async_send(client, request, *args, **kwargs)

        def counted_sync(client, request, *args, **kwargs):
            with lock:
                self.count += 1
            return sync_send(client, request, *args, **kwargs)

        httpx.AsyncClient.send, httpx.Client.send = counted_async, counted_sync


def api_objects() -> tuple[int, ...]:
    """Flow runs, task runs and artifacts stored by the server (its REST count endpoints)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return tuple(client.request("POST", f"/{kind}/count", json={}).json()
                     for kind in ("flow_runs", "task_runs", "artifacts"))


def pause_schedules() -> None:
    """The stack's scheduled deployments (the every-minute monitor over the whole fleet) would run beside the
    measurements: pause them."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            if deployment.schedules:
                client.request("POST", f"/deployments/{deployment.id}/pause_deployment")
        time.sleep(5)  # a run already picked up ends


def single_run(runbook: str, cluster: str, repeat: int = 3) -> float:
    from flows.fleet import FLOWS

    def once() -> None:
        result = FLOWS[runbook](cluster_block=cluster)
        if inspect.iscoroutine(result):  # an async runbook flow (vacuum): run it to its end
            asyncio.run(result)

    once()  # warm-up
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        once()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def fleet_figures(title: str, runbook: str, clusters: list[str], single: float, counter: RequestCounter,
                  parallel: int, deployment: str | None = None) -> float:
    from flows.fleet import fleet

    n = len(clusters)
    before, requests = api_objects(), counter.count
    t = time.perf_counter()
    report = fleet(runbook=runbook, cluster_blocks=clusters, max_parallel=parallel, deployment=deployment,
                   cluster_timeout_seconds=1800)
    wall = time.perf_counter() - t
    after, sent = api_objects(), counter.count - requests
    assert len(report.members) == n, report.summary
    flows, tasks, arts = (a - b for a, b in zip(after, before, strict=True))
    goal = runbook == "health-check" and n == 100
    print(f"\n{title}: {report.summary}", flush=True)
    row("figure", "value", "reference", "ratio")
    row("fleet run wall time (s)", f"{wall:.1f}", "120 s goal" if goal else "", f"{wall / 120:.0%}" if goal else "")
    row("wall time per cluster (s)", f"{wall / n:.3f}", f"single run {single:.2f}", f"{wall / n / single:.2f}x")
    row("cluster run, median (s)", f"{statistics.median(m.seconds for m in report.members):.2f}", "", "")
    row("API objects per cluster: flow runs", f"{flows / n:.2f}", "", "")
    row("API objects per cluster: task runs", f"{tasks / n:.1f}", "", "")
    row("API objects per cluster: artifacts", f"{arts / n:.1f}", "", "")
    row("API requests per cluster (this process)", f"{sent / n:.0f}", "", "")
    row("API requests per second (this process)", f"{sent / wall:.0f}", "", "")
    return wall


def monitor_figures(box, n: int, repeat: int) -> None:
    """The alert monitor over n cluster blocks of this stack's sandbox (bench/monitor_fleet.py)."""
    from bench.monitor_fleet import monitor_runs

    monitor_runs(box, n, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100], help="in-process fleet sizes")
    parser.add_argument("--runbooks", nargs="*", default=["health-check", "vacuum"])
    parser.add_argument("--deployment-sizes", type=int, nargs="*", default=[10],
                        help="health check as deployment runs on 1 and 2 workers")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--monitor", type=int, default=1000, help="clusters for the alert monitor (0: skip)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sandbox.cluster import free_port
    from sandbox.stack import LocalStack

    biggest = max(args.sizes + args.deployment_sizes + [1])
    ports = {"primary_port": free_port(), "replica_port": free_port(), "pgbouncer_port": free_port()}
    stack = LocalStack(state_dir=Path(tempfile.mkdtemp(prefix="pgrb-bench-stack-")), port=free_port(),
                       sandbox_dir=Path(tempfile.mkdtemp(prefix="pgrb-bench-stack-sbx-")), sandbox_ports=ports,
                       fleet=biggest, workers=2, server_db="postgres")
    try:
        t = time.perf_counter()
        stack.up()
        print(f"stack up (PostgreSQL-backed server, 2 workers, {biggest} cluster blocks): "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        clusters = [f"fleet-{i:03d}" for i in range(1, biggest + 1)]
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            pause_schedules()
            counter = RequestCounter()
            for runbook in args.runbooks:
                single = single_run(runbook, clusters[0])
                print(f"\nsingle-cluster {runbook} run in process (median of 3): {single:.2f} s", flush=True)
                for n in args.sizes:
                    fleet_figures(f"{runbook} over {n} clusters, in process, {args.parallel} at a time", runbook,
                                  clusters[:n], single, counter, args.parallel)
            if args.deployment_sizes:
                single = single_run("health-check", clusters[0])
                for workers in (1, 2):
                    if workers == 1:
                        stack._stop("worker-2")
                    else:
                        stack.start_worker("worker-2")
                    for n in args.deployment_sizes:
                        fleet_figures(f"health-check over {n} clusters as deployment runs, {workers} worker(s)",
                                      "health-check", clusters[:n], single, counter, args.parallel,
                                      deployment="health-check/health-check")
            if args.monitor:
                monitor_figures(stack.sandbox, args.monitor, args.repeat)
    finally:
        stack.down()
        stack.sandbox.destroy()


if __name__ == "__main__":
    main()
