"""Blocks describing the sandbox, so every flow can run against it by block name."""

from __future__ import annotations

from pydantic import SecretStr

from blocks.postgres_cluster import Endpoint, PostgresCluster, PostgresNode
from sandbox.cluster import HOST, MONITOR_ROLE, SUPERUSER, Sandbox


def sandbox_cluster_block(box: Sandbox, superuser: bool = True, name: str = "sandbox") -> PostgresCluster:
    """A PostgresCluster block for the sandbox (superuser, or the pg_monitor-only role)."""
    return PostgresCluster(
        cluster_name=name,
        nodes=[
            PostgresNode(name="primary", host=HOST, port=box.config.primary_port),
            PostgresNode(name="replica", host=HOST, port=box.config.replica_port),
        ],
        primary_node="primary",
        user=SUPERUSER if superuser else MONITOR_ROLE,
        password=SecretStr(box.config.password if superuser else box.config.monitor_password),
        sslmode="disable",
        endpoint=Endpoint(host=HOST, port=box.config.pgbouncer_port),
    )


def save_sandbox_blocks(box: Sandbox, name: str = "sandbox") -> str:
    """Save (or overwrite) the PostgresCluster block `name` for the sandbox, and the host-metrics-source
    block `<name>-host` (local: the sandbox runs on this machine)."""
    from blocks.metrics_source import MetricsSource

    sandbox_cluster_block(box, name=name).save(name, overwrite=True)
    MetricsSource(kind="local").save(f"{name}-host", overwrite=True)
    return name
