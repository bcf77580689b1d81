"""CPU and disk of the database host through a MetricsSource block (none / local / prometheus)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.metrics_source import HostMetrics, MetricsSource, MetricsUnavailable
from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import connect

# Where does this server keep its data (the local source measures that filesystem)?
DATA_DIRECTORY_SQL = "SELECT current_setting('data_directory') AS data_directory"


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
    return source.sample(data_path=data_dir)
