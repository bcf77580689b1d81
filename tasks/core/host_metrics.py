"""CPU and disk of the database host through a MetricsSource block (none / local / prometheus / cloudwatch).

`read_source` is the one way every consumer (report, alert monitor) samples a source: the block samples
none/local/prometheus itself; an Aurora cluster's CloudWatch metrics come from tasks/core/aurora.py."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.aurora import AuroraCluster
from blocks.metrics_source import HostMetrics, MetricsSource, MetricsUnavailable
from blocks.postgres_cluster import ConnectionTarget
from tasks.core import aurora
from tasks.core.db import connect
from tasks.core.errors import ProviderError

# Where does this server keep its data (the local source measures that filesystem)?
DATA_DIRECTORY_SQL = "SELECT current_setting('data_directory') AS data_directory"

CLOUDWATCH_CPU_NOTE = ("Aurora Serverless v2: CPUUtilization is measured against the CPU of MaxCapacity ACU, "
                       "not of the capacity in use")


def read_source(source: MetricsSource, data_path: str | None = None) -> HostMetrics:
    """One sample of `source`; MetricsUnavailable with what to fix."""
    if source.kind != "cloudwatch":
        return source.sample(data_path=data_path)
    if not source.aurora_block:
        raise MetricsUnavailable("the cloudwatch source needs aurora_block: the name of an AuroraCluster block")
    try:
        block = AuroraCluster.load(source.aurora_block)
    except ValueError as exc:
        raise MetricsUnavailable(f"cannot load the AuroraCluster block {source.aurora_block!r}: {exc}") from None
    return cloudwatch_metrics(aurora.AuroraApi(block))


def cloudwatch_metrics(api: aurora.AuroraApi) -> HostMetrics:
    """The writer's latest CloudWatch datapoints as HostMetrics (disk: Aurora storage is not a filesystem)."""
    try:
        values = aurora.cloudwatch_sample(api)
    except ProviderError as exc:
        raise MetricsUnavailable(str(exc)) from None
    if all(v is None for v in values.values()):
        raise MetricsUnavailable(f"CloudWatch has no datapoint for {api.block.label} in the last "
                                 f"{api.block.metrics_window_seconds} s (is the cluster identifier right?)")
    return HostMetrics(
        source="cloudwatch", sampled_at=datetime.now(UTC), cpu_percent=_round(values["cpu"]),
        capacity_acu=values["capacity"], acu_utilization_percent=_round(values["acu_utilization"]),
        connections=values["connections"], replica_lag_ms=values["replica_lag"],
        disk_free_bytes=None if values["free_local_storage"] is None else int(values["free_local_storage"]),
        note=CLOUDWATCH_CPU_NOTE)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@task(name="sample-host-metrics", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def sample_host(metrics_block: str | None, target: ConnectionTarget) -> HostMetrics | None:
    """The host's CPU and disk, or None when no source is configured."""
    if not metrics_block:
        return None
    try:
        source = MetricsSource.load(metrics_block)
    except ValueError as exc:
        raise MetricsUnavailable(f"cannot load the MetricsSource block {metrics_block!r}: {exc}") from None
    data_dir = None
    if source.kind == "local" and not source.data_path:
        with connect(target, purpose="report-host") as db:
            data_dir = db.scalar(DATA_DIRECTORY_SQL)
    return read_source(source, data_path=data_dir)
