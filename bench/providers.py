"""Benchmark: what the provider backends add to one provider call, against the bare call.

Aurora (moto's server on 127.0.0.1): pg-runbooks' scale-up (DescribeDBClusters, validation, ModifyDBCluster, read
back, pending-reboot check per member) vs one bare boto3 ModifyDBCluster. Neon (the suite's stateful stand-in,
operations finish on the first poll): pg-runbooks' scale-up (GET, PATCH, operation poll, GET read back) vs one bare
httpx PATCH. Scale-ups alternate between two ranges so each call changes something. Medians of 9 runs and the
ratio ours/bare: the cost of reading before and after, not of the provider itself (local stand-ins answer in
milliseconds; real APIs take 100s of ms per call, so the ratio is close to the number of calls). No thresholds.
"""

from __future__ import annotations

import itertools

import httpx
from pydantic import SecretStr

from bench.common import row, timed
from blocks.neon import NeonEndpoint
from tasks.core import aurora, neon
from tests.aws_stand_in import MotoStandIn
from tests.neon_server import API_KEY, start_neon_server


def bench_aurora() -> None:
    moto = MotoStandIn()
    try:
        cid = moto.seed_cluster(max_acu=4)
        block = moto.aurora_block(cid, scale_step_acu=2, max_capacity_ceiling_acu=256)
        api = aurora.AuroraApi(block)
        rds = moto.client("rds")
        maxima = itertools.cycle([4.0, 6.0])

        def ours():
            rds.modify_db_cluster(DBClusterIdentifier=cid, ApplyImmediately=True,
                                  ServerlessV2ScalingConfiguration={"MinCapacity": 0.5, "MaxCapacity": 4.0})
            aurora.scale_up(api, dry_run=False)

        def bare():
            rds.modify_db_cluster(DBClusterIdentifier=cid, ApplyImmediately=True,
                                  ServerlessV2ScalingConfiguration={"MinCapacity": 0.5, "MaxCapacity": next(maxima)})

        ours_s, _ = timed(ours, 9)
        bare_s, _ = timed(bare, 9)
        row("Aurora scale-up (moto)", f"{ours_s * 1000:.1f} ms", f"bare {bare_s * 1000:.1f} ms",
            f"ratio {ours_s / bare_s:.1f}x")
        print("  ours includes one reset ModifyDBCluster per run, like the bare call")
    finally:
        moto.stop()


def bench_neon() -> None:
    server = start_neon_server()
    server.polls_to_finish = 1
    try:
        server.add_endpoint("proj-bench", "ep-bench", 0.25, 2)
        block = NeonEndpoint(api_key=SecretStr(API_KEY), project_id="proj-bench", endpoint_id="ep-bench",
                             base_url=server.url, poll_seconds=0.01, scale_step_cu=1, max_cu_ceiling=16)
        api = neon.NeonApi(block)
        http = httpx.Client()
        url = f"{server.url}/projects/proj-bench/endpoints/ep-bench"
        maxima = itertools.cycle([2.0, 3.0])

        def reset():
            server.endpoints[("proj-bench", "ep-bench")]["autoscaling_limit_max_cu"] = 2

        def ours():
            reset()
            neon.scale_up(api, dry_run=False)

        def bare():
            reset()
            http.patch(url, json={"endpoint": {"autoscaling_limit_max_cu": next(maxima)}},
                       headers=block.auth_headers()).raise_for_status()

        ours_s, _ = timed(ours, 9)
        bare_s, _ = timed(bare, 9)
        row("Neon scale-up (stand-in)", f"{ours_s * 1000:.1f} ms", f"bare {bare_s * 1000:.1f} ms",
            f"ratio {ours_s / bare_s:.1f}x")
    finally:
        server.stop()


if __name__ == "__main__":
    row("case", "pg-runbooks", "bare call", "ratio")
    bench_aurora()
    bench_neon()
