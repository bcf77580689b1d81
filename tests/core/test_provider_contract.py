"""One contract both managed providers pass (Aurora on moto's server, Neon on the stateful API stand-in), with the
session sandbox as the cluster's SQL side: scale up (dry run first: the exact request, nothing changed) and read
the range back from the provider; fail over (Aurora: FailoverDBCluster; Neon: a restart, its only "failover",
through the failover backend's step, which restarts the sandbox primary as the compute) dry run first, then done
and verified on the provider (Neon: and a write on a fresh connection to the new compute); metrics sampled; a
paused compute is reported paused by the health check and the alert monitor without a SQL connection, and checked
over SQL only when asked to wake it."""

from __future__ import annotations

import itertools

import pytest
from pydantic import SecretStr

from blocks.metrics_source import MetricsSource
from blocks.neon import NeonEndpoint
from flows.health_check import health_check
from sandbox.blocks import sandbox_cluster_block
from tasks.alerts.metrics import sample_within
from tasks.core import aurora, neon
from tasks.core.host_metrics import read_source
from tasks.core.provider_state import load_provider, read_state
from tasks.failover.steps import write_then_read
from tasks.failover.switch_neon import neon_restart
from tests.helpers import ensure_healthy
from tests.neon_server import API_KEY

_ids = itertools.count(1)


class Aurora:
    slug = "aurora-cluster"

    def __init__(self, moto):
        self.moto = moto

    def seed(self, paused: bool = False) -> str:
        self.cid = self.moto.seed_cluster(max_acu=4)
        if paused:
            self.moto.client("rds").modify_db_cluster(
                DBClusterIdentifier=self.cid, ApplyImmediately=True,
                ServerlessV2ScalingConfiguration={"MinCapacity": 0, "MaxCapacity": 4, "SecondsUntilAutoPause": 300})
        self.moto.put_metrics(self.cid, {"ServerlessDatabaseCapacity": 0.0 if paused else 2.0, "CPUUtilization": 21.0})
        name = f"contract-{self.cid}"
        self.moto.aurora_block(self.cid, scale_step_acu=2, max_capacity_ceiling_acu=8).save(name, overwrite=True)
        return name

    def scale(self, block, dry_run):
        return aurora.scale_up(aurora.AuroraApi(block), dry_run)

    def max_capacity(self, block) -> float:
        return float(aurora.AuroraApi(block).cluster()["ServerlessV2ScalingConfiguration"]["MaxCapacity"])

    def fail_over(self, block, dry_run) -> str:
        target = f"{self.cid}-r"
        if dry_run:
            return aurora.failover_request(block, target).render()
        return aurora.fail_over(aurora.AuroraApi(block), target)["request"]

    def failed_over(self, block) -> bool:
        return aurora.writer_of(aurora.AuroraApi(block).cluster()) == f"{self.cid}-r"

    def metrics(self, block, prefect_api):
        return read_source(MetricsSource(kind="cloudwatch", aurora_block=block._block_document_name))


class Neon:
    slug = "neon-endpoint"

    def __init__(self, server, sandbox):
        self.server, self.sandbox = server, sandbox
        self.compute = sandbox_cluster_block(sandbox).target("primary")

    def seed(self, paused: bool = False) -> str:
        self.project, self.eid = f"proj-c{next(_ids)}", f"ep-c{next(_ids)}"
        self.server.add_endpoint(self.project, self.eid, 0.25, 2, "idle" if paused else "active")
        name = f"contract-{self.eid}"
        NeonEndpoint(api_key=SecretStr(API_KEY), project_id=self.project, endpoint_id=self.eid,
                     base_url=self.server.url, poll_seconds=0.01, scale_step_cu=1, max_cu_ceiling=4).save(
            name, overwrite=True)
        return name

    def scale(self, block, dry_run):
        return neon.scale_up(neon.NeonApi(block), dry_run)

    def max_capacity(self, block) -> float:
        return float(neon.NeonApi(block).endpoint()["autoscaling_limit_max_cu"])

    def fail_over(self, block, dry_run) -> str:
        """The failover backend's step (tasks/failover/switch_neon.py): POST .../restart, wait for the operations,
        then for a new compute out of recovery. The stand-in's restart restarts the sandbox primary (the compute)."""
        if dry_run:
            self.restarted = None
            return neon.restart(neon.NeonApi(block), dry_run=True)["request"]
        self.server.on_restart = lambda: (self.sandbox.stop_node("primary"), self.sandbox.start_node("primary"))
        try:
            self.restarted = neon_restart.fn(block, self.compute)
        finally:
            self.server.on_restart = None
            ensure_healthy(self.sandbox)
        return self.restarted["request"]

    def failed_over(self, block) -> bool:
        """Verified like the runbook's phase 2: the operations finished, a new compute, a write commits on a fresh
        connection."""
        if not self.restarted:
            return False
        ops = [o.split()[0] for o in self.restarted["operations"]]
        return ops == ["suspend_compute", "start_compute"] and bool(write_then_read(self.compute, "contract")["xid"])

    def metrics(self, block, prefect_api):
        pytest.skip("Neon's API v2 publishes no CPU or capacity series per endpoint: the report and the monitor "
                    "have no Neon metrics source (docs/providers/neon.md)")


@pytest.fixture(params=["aurora", "neon"])
def provider(request, moto, neon, sandbox, prefect_api):
    return Aurora(moto) if request.param == "aurora" else Neon(neon, sandbox)


def test_scale_up_dry_run_first_and_read_back(provider):
    block = load_provider(f"{provider.slug}/{provider.seed()}")
    before = provider.max_capacity(block)
    planned = provider.scale(block, dry_run=True)
    assert planned.status == "planned" and planned.request and planned.request in planned.summary
    assert provider.max_capacity(block) == before
    done = provider.scale(block, dry_run=False)
    assert done.status == "scaled" and done.request == planned.request
    assert provider.max_capacity(block) == done.after > before


def test_fail_over_dry_run_first_then_verified(provider):
    block = load_provider(f"{provider.slug}/{provider.seed()}")
    planned = provider.fail_over(block, dry_run=True)
    assert not provider.failed_over(block)
    assert provider.fail_over(block, dry_run=False) == planned
    assert provider.failed_over(block)


def test_metrics_sampled(provider, prefect_api):
    block = load_provider(f"{provider.slug}/{provider.seed()}")
    metrics = provider.metrics(block, prefect_api)
    assert metrics.cpu_percent == 21.0 and metrics.capacity_acu == 2.0


def test_paused_is_not_woken(provider, sandbox, prefect_api):
    """The cluster block points at the real sandbox: a SQL probe would succeed, so the absence of connectivity
    checks proves none was made; with wake_paused the same run probes every node."""
    name = f"{provider.slug}/{provider.seed(paused=True)}"
    assert read_state(load_provider(name)).paused
    block = f"contract-sql-{next(_ids)}"
    sandbox_cluster_block(sandbox, name=block).model_copy(update={"provider_block": name}).save(block, overwrite=True)
    report = health_check(cluster_block=block)
    assert [c.name for c in report.checks] == ["provider-state"] and report.status == "ok"
    assert "not woken, no SQL connection opened" in report.checks[0].summary and report.checks[0].details["paused"]
    samples = sample_within(block, None, 10).samples
    assert all(s.value is None and s.unconfigured and s.no_data.startswith("paused: ") for s in samples)
    woken = health_check(cluster_block=block, wake_paused=True)
    assert {c.name for c in woken.checks} >= {"connectivity"} and "provider-state" not in {c.name for c in woken.checks}
    assert any(s.value is not None for s in sample_within(block, None, 10, wake_paused=True).samples)
