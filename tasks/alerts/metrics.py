"""What the monitor measures on one cluster, with one short-lived connection to its primary.

connection_usage_percent: client backends against the slots ordinary roles can use
  (max_connections - superuser_reserved_connections - reserved_connections on PG16+;
  https://www.postgresql.org/docs/current/runtime-config-connection.html).
replication_lag_seconds: per replica, its upstream's pg_stat_replication.replay_lag, NULL counted
  as 0 only when no byte is behind (tasks.core.replication.effective_replay_lag_seconds); the replica is found
  by identity (slot, the name it gives, its address; tasks.core.replica_match), read on each standby too.
cpu_usage_percent / disk_usage_percent: from the cluster's own host-metrics-source block (issue 4;
  which one: tasks.alerts.sources); with none, or one of kind "none", "no data: metrics source not
  configured" (no alert).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.postgres_cluster import ConnectionTarget, PostgresCluster
from tasks.alerts.evaluate import Sample
from tasks.alerts.sources import BlockChoice, block_for
from tasks.core.db import connect
from tasks.core.errors import cause_of, describe_error
from tasks.core.provider_state import provider_state
from tasks.core.replica_match import Matching, StandbyView, expected_standbys, match_replicas, node_addresses
from tasks.core.replication import (
    RECEIVER_SQL,
    REPLICATION_SQL,
    ReceiverRow,
    ReplicationRow,
    effective_replay_lag_seconds,
)

DB_METRICS = ("connection_usage_percent", "replication_lag_seconds")
HOST_METRICS = ("cpu_usage_percent", "disk_usage_percent")
SOURCE_TYPE = "host-metrics-source"


class ConnectionUsage(BaseModel):
    in_recovery: bool
    server_version_num: int
    client_backends: int
    max_connections: int
    superuser_reserved: int
    reserved: int

    @property
    def usable(self) -> int:
        return max(self.max_connections - self.superuser_reserved - self.reserved, 1)

    @property
    def percent(self) -> float:
        return 100.0 * self.client_backends / self.usable


# How many client connections are open, and how many slots can ordinary roles use?
CONNECTIONS_SQL = """
SELECT pg_catalog.pg_is_in_recovery()                                   AS in_recovery,
       current_setting('server_version_num')::int                       AS server_version_num,
       (SELECT count(*)
          FROM pg_catalog.pg_stat_activity
         WHERE backend_type = 'client backend')::int                    AS client_backends,
       current_setting('max_connections')::int                          AS max_connections,
       current_setting('superuser_reserved_connections')::int           AS superuser_reserved,
       coalesce(current_setting('reserved_connections', true), '0')::int AS reserved
"""


class ClusterSamples(BaseModel):
    """The samples of one cluster and how long reading them took."""

    cluster: str
    samples: list[Sample]
    seconds: float
    error: str | None = None


def no_data(metrics: tuple[str, ...] | list[str], reason: str, labels: dict[str, str] | None = None,
            unconfigured: bool = False, node: str | None = None) -> list[Sample]:
    return [Sample(metric=m, labels=labels or {}, no_data=reason, unconfigured=unconfigured, node=node)
            for m in metrics]


def database_samples(cluster: PostgresCluster, deadline_seconds: float) -> list[Sample]:
    """Connection usage and per-replica lag: the primary (one connection, two queries), then every standby
    directly (its WAL receiver and its own standbys, concurrently), replicas matched by identity
    (tasks.core.replica_match, the health check's matching)."""
    started = time.monotonic()
    target = _bounded(cluster.primary_target(), cluster, deadline_seconds)
    replicas = [n.name for n in expected_standbys(cluster, cluster.primary_node)]
    try:
        with connect(target, purpose="alert-monitor") as db:
            usage = db.fetch_one(CONNECTIONS_SQL, None, ConnectionUsage)
            rows = db.fetch_all(REPLICATION_SQL, None, ReplicationRow) if not usage.in_recovery else []
    except Exception as exc:  # noqa: BLE001 - an unreachable cluster is no data, not a crash
        reason = f"{cause_of(exc)}: {target.node} {describe_error(exc)}"
        return no_data(["connection_usage_percent"], reason, node=target.node) + [
            Sample(metric="replication_lag_seconds", labels={"replica": r}, node=r, no_data=reason) for r in replicas]
    if usage.in_recovery:
        reason = f"{target.node} is in recovery: the cluster block's primary_node is stale"
        return no_data(["connection_usage_percent"], reason, node=target.node) + [
            Sample(metric="replication_lag_seconds", labels={"replica": r}, node=r, no_data=reason) for r in replicas]
    samples = [Sample(metric="connection_usage_percent", value=round(usage.percent, 2), node=target.node)]
    # the standbys get most of what is left of the deadline: the primary's figures must not be lost to them
    remaining = max(0.5, 0.7 * (deadline_seconds - (time.monotonic() - started)))
    views, standby_rows = read_standbys(cluster, replicas, remaining)
    matching = match_replicas(cluster, cluster.primary_node, {cluster.primary_node: rows, **standby_rows}, views,
                              node_addresses(cluster),
                              unread={n: v.error or "not read" for n, v in views.items() if n not in standby_rows})
    return samples + replica_lag_samples(matching)


def _bounded(target: ConnectionTarget, cluster: PostgresCluster, deadline_seconds: float) -> ConnectionTarget:
    return target.model_copy(update={
        "connect_timeout": max(1, min(cluster.connect_timeout, int(deadline_seconds))),
        "statement_timeout_ms": max(100, int(deadline_seconds * 1000))})


def read_standbys(cluster: PostgresCluster, nodes: list[str], deadline_seconds: float
                  ) -> tuple[dict[str, StandbyView], dict[str, list[ReplicationRow]]]:
    """Each standby's own view (its WAL receiver) and its own standbys (cascading), read concurrently; one
    that does not answer within the deadline is unreadable (timed out), the others are kept."""
    import threading

    views = {n: StandbyView(node=n, error=f"timed out: no answer within {deadline_seconds:g} s") for n in nodes}
    rows: dict[str, list[ReplicationRow]] = {}

    def read(node: str) -> None:
        target = _bounded(cluster.target(node), cluster, deadline_seconds)
        try:
            with connect(target, purpose="alert-monitor") as db:
                receiver = db.fetch_all(RECEIVER_SQL, None, ReceiverRow)[0]
                if not receiver.in_recovery:
                    views[node] = StandbyView(node=node, error=f"{node} is not in recovery (it accepts writes)")
                    return
                downstream = db.fetch_all(REPLICATION_SQL, None, ReplicationRow)
        except Exception as exc:  # noqa: BLE001 - an unreadable standby is said in its sample, not a crash
            views[node] = StandbyView(node=node, error=f"{cause_of(exc)}: {node} {describe_error(exc)}")
            return
        views[node], rows[node] = StandbyView(node=node, receiver=receiver), downstream

    workers = [threading.Thread(target=read, args=(n,), name=f"standby-{n}", daemon=True) for n in nodes]
    for worker in workers:
        worker.start()
    until = time.monotonic() + deadline_seconds
    for worker in workers:
        worker.join(max(0.0, until - time.monotonic()))
    done_rows = dict(rows)  # rows first: a standby's view is written before its rows (a late thread may write)
    return dict(views), done_rows


def replica_lag_samples(matching: Matching) -> list[Sample]:
    """One lag sample per standby of the block (no data, with why, when none of its upstream's rows is it),
    plus one per unknown standby (labelled as unknown: its lag is watched, its absence is not an alert)."""
    samples = []
    for match in matching.replicas:
        labels = {"replica": match.node}
        if match.row is None:
            samples.append(Sample(metric="replication_lag_seconds", labels=labels, node=match.node,
                                  no_data=match.problem))
            continue
        samples.append(_lag_sample(match.row, labels, match.node))
    worst: dict[str, Sample] = {}
    for unknown in (u for u in matching.unknown if u.row.state != "backup"):  # a base backup is no replica
        sample = _lag_sample(unknown.row, {"replica": unknown.label}, unknown.sender)
        kept = worst.get(unknown.label)
        if kept is None or (sample.value or 0) > (kept.value or 0):
            worst[unknown.label] = sample
    return samples + list(worst.values())


def _lag_sample(row: ReplicationRow, labels: dict[str, str], node: str) -> Sample:
    lag = effective_replay_lag_seconds(row)
    hidden = row.replay_lsn is None and row.state is None
    return Sample(metric="replication_lag_seconds", labels=labels, value=lag, node=node,
                  no_data=None if lag is not None else
                  "the monitor's role may not see this standby's progress (grant it pg_monitor)" if hidden else
                  f"replay_lag is unknown while {row.replay_lag_bytes} bytes are behind")


def host_sources(blocks: list[str], spec: str | None, overrides: dict[str, str] | None) -> dict[str, BlockChoice]:
    """The host-metrics source of every cluster (tasks.alerts.sources), with one API read of the existing
    source blocks: a templated name with no block, or a block of kind "none", is "not configured"."""
    choices = {b: block_for(b, spec, overrides, len(blocks)) for b in blocks}
    if not any(c.block for c in choices.values()):
        return choices
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            docs = client.read_block_documents_by_type(SOURCE_TYPE, include_secrets=False)
        kinds = {d.name: (d.data or {}).get("kind", "none") for d in docs if d.name}
    except Exception:  # noqa: BLE001 - unknown: each task loads its block and reports what fails
        return choices
    for block, choice in choices.items():
        if choice.block and choice.block not in kinds and choice.optional:
            choices[block] = BlockChoice(note=f"not configured: no {SOURCE_TYPE} block {choice.block!r}")
        elif choice.block and kinds.get(choice.block) == "none":
            choices[block] = BlockChoice(note=f"not configured: {SOURCE_TYPE} block {choice.block!r} is kind none")
    return choices


def _choice(source: BlockChoice | str | None) -> BlockChoice:
    return source if isinstance(source, BlockChoice) else BlockChoice(block=source or None)


def unsampled_host(source: BlockChoice | str | None, reason: str) -> list[Sample]:
    """Host samples of a cluster whose sampling did not finish: no data only if a source is configured."""
    choice = _choice(source)
    if not choice.block:
        return no_data(HOST_METRICS, f"metrics source {choice.note}", unconfigured=True)
    return no_data(HOST_METRICS, reason)


def host_samples(source: BlockChoice | str | None) -> list[Sample]:
    """CPU and disk usage through this cluster's host-metrics-source block, if one is configured."""
    choice = _choice(source)
    if not choice.block:
        return no_data(HOST_METRICS, f"metrics source {choice.note}", unconfigured=True)
    name = choice.block
    try:
        source_block = _load_metrics_source(name)
        if source_block.kind == "none":
            return no_data(HOST_METRICS, f"metrics source not configured: {name!r} is kind none", unconfigured=True)
        from tasks.core.host_metrics import read_source

        reading = read_source(source_block)
    except ImportError:
        return no_data(HOST_METRICS, "metrics source not configured (blocks.metrics_source is not installed)",
                       unconfigured=True)
    except Exception as exc:  # noqa: BLE001 - a failing source is no data, and its own alert
        if choice.optional and "Unable to find block document" in str(exc):
            return no_data(HOST_METRICS, f"metrics source not configured: no {SOURCE_TYPE} block {name!r}",
                           unconfigured=True)
        return no_data(HOST_METRICS, f"metrics source {name!r} failed: {type(exc).__name__}: {exc}"[:300])
    samples = []
    for metric, names in (("cpu_usage_percent", ("cpu_percent", "cpu_usage_percent", "cpu")),
                          ("disk_usage_percent", ("disk_used_percent", "disk_percent", "disk_usage_percent", "disk"))):
        value = next((_get(reading, n) for n in names if _get(reading, n) is not None), None)
        if value is None and metric == "disk_usage_percent" and _get_str(reading, "source") == "cloudwatch":
            samples.append(Sample(metric=metric, no_data="Aurora storage is managed: CloudWatch has no disk-used "
                                  "percentage", unconfigured=True))
            continue
        samples.append(Sample(metric=metric, value=value,
                              no_data=None if value is not None else f"metrics source gave no {metric}"))
    return samples


def _get_str(reading: Any, name: str) -> str | None:
    value = reading.get(name) if isinstance(reading, dict) else getattr(reading, name, None)
    return value if isinstance(value, str) else None


def _load_metrics_source(block_name: str) -> Any:
    """The one place that knows the metrics-source block (issue 4)."""
    from blocks.metrics_source import MetricsSource

    return MetricsSource.load(block_name)


def _get(reading: Any, name: str) -> float | None:
    value = reading.get(name) if isinstance(reading, dict) else getattr(reading, name, None)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Progress:
    """What one cluster's sampling thread has finished so far (read by the task when the deadline passes)."""

    def __init__(self) -> None:
        self.step = "loading its PostgresCluster block"
        self.cluster: str | None = None
        self.db: list[Sample] | None = None
        self.host: list[Sample] | None = None
        self.error: str | None = None


def _sample_into(progress: _Progress, cluster_block: str, source: BlockChoice | str | None,
                 deadline_seconds: float, wake_paused: bool = False, cluster: PostgresCluster | None = None) -> None:
    """Block load (unless given, loaded with the fleet), the provider's state (a managed cluster), then the
    database, then the metrics source; each result recorded as soon as it is known. A paused compute is not
    connected to (that would wake it)."""
    try:
        cluster = cluster or PostgresCluster.load(cluster_block)
    except Exception as exc:  # noqa: BLE001
        progress.error = f"cannot load PostgresCluster block {cluster_block!r}: {type(exc).__name__}"
        progress.db = no_data(DB_METRICS, progress.error)
    else:
        progress.cluster, progress.step = cluster.cluster_name, "the provider's state"
        state = provider_state(cluster, wake_paused)
        if state is not None and state.paused:
            progress.db = no_data(DB_METRICS, f"paused: {state.summary}", unconfigured=True)
            progress.host = no_data(HOST_METRICS, f"paused: {state.summary}", unconfigured=True)
            return
        progress.step = "the database"
        progress.db = database_samples(cluster, deadline_seconds)
    progress.step = "the metrics source"
    progress.host = host_samples(source)


def sample_within(cluster_block: str, source: BlockChoice | str | None, deadline_seconds: float,
                  fleet_until: float | None = None, wake_paused: bool = False,
                  cluster: PostgresCluster | None = None) -> ClusterSamples:
    """Every sample of one cluster, its whole sampling (block load, database, metrics source) bounded by one
    deadline, cut short by the fleet's budget (`fleet_until`, epoch seconds). Never raises, never waits past
    the bound: the work runs in a daemon thread that is abandoned if it hangs (what it finished is kept;
    the rest is no data, timed out)."""
    import contextvars
    import threading
    import time

    started = time.perf_counter()
    limit, bound = deadline_seconds, f"the {deadline_seconds:g} s per-cluster deadline"
    if fleet_until is not None and fleet_until - time.time() < limit:
        limit, bound = max(0.0, fleet_until - time.time()), "the fleet's sampling budget"
    progress = _Progress()
    if limit > 0:
        worker = threading.Thread(target=contextvars.copy_context().run, name=f"sample-{cluster_block}",
                                  args=(_sample_into, progress, cluster_block, source, deadline_seconds, wake_paused,
                                        cluster),
                                  daemon=True)
        worker.start()
        worker.join(limit)
    host, db = progress.host, progress.db  # host first: once it is set, db is too
    if host is not None and db is not None:
        return ClusterSamples(cluster=progress.cluster or cluster_block, samples=db + host,
                              seconds=time.perf_counter() - started, error=progress.error)
    reason = (f"timed out: {progress.step} did not answer within {bound}" if limit > 0 else
              "timed out: not sampled before the fleet's sampling budget was spent")
    db = db if db is not None else no_data(DB_METRICS, reason)
    return ClusterSamples(cluster=progress.cluster or cluster_block, error=reason,
                          samples=db + unsampled_host(source, reason),
                          seconds=time.perf_counter() - started)


def fleet_clusters(blocks: list[str]) -> dict[str, PostgresCluster]:
    """Every PostgresCluster block of the fleet from one API call (not one per cluster). A block missing from
    the answer, or one that does not validate, is left out: its own load then says what is wrong."""
    from prefect.client.orchestration import get_client

    wanted = set(blocks)
    try:
        with get_client(sync_client=True) as client:
            docs = client.read_block_documents_by_type(PostgresCluster.get_block_type_slug(), include_secrets=True)
    except Exception:  # noqa: BLE001 - each cluster then loads its own block and reports what fails
        return {}
    out = {}
    for doc in docs:
        if doc.name in wanted and not doc.is_anonymous:
            try:
                out[doc.name] = PostgresCluster._load_from_block_document(doc)
            except Exception:  # noqa: BLE001 - loaded again alone, which reports it
                continue
    return out


SAMPLERS = 48  # clusters sampled at once (each holds at most one connection per node while it runs)


@task(name="sample-fleet", cache_policy=NO_CACHE)
def sample_fleet_task(blocks: list[str], sources: dict[str, BlockChoice], deadline_seconds: float,
                      budget_seconds: float, wake_paused: bool = False) -> dict[str, ClusterSamples]:
    """Every cluster's samples: the blocks loaded with one API call, then SAMPLERS clusters at a time, each within
    its deadline and all within the budget. A cluster not sampled by then is no data (timed out), for this run
    only; hung work is abandoned (daemon threads), and clusters not started by the end are never started."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import wait as wait_all

    started = time.time()
    until = started + budget_seconds
    clusters = fleet_clusters(blocks)
    pool = ThreadPoolExecutor(max_workers=SAMPLERS, thread_name_prefix="sampler")
    futures = {b: pool.submit(contextvars.copy_context().run, sample_within, b, sources.get(b), deadline_seconds,
                              until, wake_paused, clusters.get(b)) for b in blocks}  # the run's settings too
    wait_all(list(futures.values()), timeout=budget_seconds + 1)
    pool.shutdown(wait=False, cancel_futures=True)
    out = {}
    for block, future in futures.items():
        reason = f"timed out: not sampled within the fleet's {budget_seconds:g} s sampling budget"
        if future.done() and not future.cancelled():
            try:
                out[block] = future.result()
                continue
            except Exception as exc:  # noqa: BLE001 - sampling itself failed: no data
                reason = f"sampling failed: {type(exc).__name__}: {exc}"[:300]
        out[block] = ClusterSamples(cluster=block, samples=no_data(DB_METRICS, reason) +
                                    unsampled_host(sources.get(block), reason), seconds=time.time() - started,
                                    error=reason)
    return out
