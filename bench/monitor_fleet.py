"""Benchmark: the alert monitor over N quiet clusters that share one sandbox (the issue-16 goal).

N PostgresCluster blocks (`bench-mon-0000` ...) over ONE sandbox (a primary, a streaming replica), the
pg_monitor role, one Fleet block by name prefix: it measures the monitor's own cost per cluster and the
two shared servers, not N machines. The blocks are created concurrently (the setup, not the figure). Then
`--repeat` monitor runs after a first run; each prints its phases. Reference: the monitor's 60 s interval.

    .venv/bin/python bench/monitor_fleet.py --clusters 200 1000 --repeat 2
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import fresh_sandbox, prefect_api
from bench.monitor import fleet_table

PREFIX = "bench-mon-"


def save_blocks(box, n: int) -> float:
    """Save the cluster blocks that do not exist yet, 16 at a time; seconds it took."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate

    from blocks.fleet import Fleet
    from sandbox.blocks import sandbox_cluster_block

    started = time.perf_counter()
    with get_client(sync_client=True) as client:
        try:
            have = {d.name for d in client.read_block_documents_by_type("postgres-cluster", include_secrets=False)}
        except Exception:  # noqa: BLE001 - the type is not registered yet
            have = set()
    names = [f"{PREFIX}{i:04d}" for i in range(n) if f"{PREFIX}{i:04d}" not in have]
    if names:  # the first through Block.save (registers the type and schema); the rest: one API call each
        first = sandbox_cluster_block(box, superuser=False, name=names[0])
        first.save(names[0], overwrite=True)

        def create(name: str) -> None:
            doc = BlockDocumentCreate(**sandbox_cluster_block(box, superuser=False, name=name)._to_block_document(
                name=name, block_schema_id=first._block_schema_id, block_type_id=first._block_type_id,
                include_secrets=True).model_dump(exclude_unset=True, context={"include_secrets": True},
                                                 exclude={"id", "block_schema", "block_type", "block_type_name"}))
            for attempt in range(10):  # the SQLite-backed server answers 503 when its write lock is busy
                try:
                    with get_client(sync_client=True) as client:
                        client.create_block_document(doc, include_secrets=True)
                    return
                except Exception:  # noqa: BLE001
                    if attempt == 9:
                        raise
                    time.sleep(0.2 * (attempt + 1))

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create, names[1:]))
    Fleet(name_prefix=PREFIX).save(f"bench-monitor-fleet-{n}", overwrite=True)
    return time.perf_counter() - started


def monitor_runs(box, n: int, repeat: int) -> None:
    from flows.alert_monitor import alert_monitor

    print(f"\n{n} cluster blocks saved in {save_blocks(box, n):.1f} s", flush=True)
    fleet = f"bench-monitor-fleet-{n}"
    t = time.perf_counter()
    report = alert_monitor(cluster_blocks=[], fleet_block=fleet)
    print(f"first run: {time.perf_counter() - t:.1f} s; phases {report.phase_seconds}", flush=True)
    walls, sampling, per_cluster = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        report = alert_monitor(cluster_blocks=[], fleet_block=fleet)
        walls.append(time.perf_counter() - t)
        sampling.append(report.sample_seconds)
        per_cluster += [c.seconds for c in report.clusters]
        print(f"run: {walls[-1]:.1f} s; {report.summary[:120]}; phases {report.phase_seconds}", flush=True)
    fleet_table(f"alert monitor over {n} quiet clusters sharing one sandbox, {repeat} runs", walls, sampling,
                sorted(per_cluster))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, nargs="*", default=[200, 1000])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with fresh_sandbox() as box, prefect_api():
        for n in sorted(args.clusters):
            monitor_runs(box, n, args.repeat)


if __name__ == "__main__":
    main()
