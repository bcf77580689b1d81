"""Blocks describing the sandbox, so every flow can run against it by block name."""

from __future__ import annotations

from pydantic import SecretStr

from blocks.failover_adapters import EndpointControl, NodeControl
from blocks.postgres_cluster import Endpoint, PostgresCluster, PostgresNode
from blocks.scalers import PgBouncerPoolScaler
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
    MetricsSource(kind="local", data_path=str(box.primary_dir)).save(f"{name}-host", overwrite=True)
    return name


def sandbox_node_control_block(box: Sandbox) -> NodeControl:
    """Local pg_ctl control of the sandbox's two nodes (as the postgres OS user when root)."""
    return NodeControl(
        kind="pg_ctl", bindir=str(box.bindir),
        data_dirs={"primary": str(box.primary_dir), "replica": str(box.replica_dir)},
        os_user=box.config.os_user if box.as_root else None,
        replication_user=SUPERUSER, replication_passfile=str(box.passfile),
    )


def sandbox_endpoint_block(box: Sandbox) -> EndpointControl:
    """The sandbox's pgbouncer: admin console as the superuser, its ini rewritten on repoint."""
    return EndpointControl(
        kind="pgbouncer", admin_host=HOST, admin_port=box.config.pgbouncer_port, admin_user=SUPERUSER,
        admin_password=SecretStr(box.config.password), ini_path=str(box.pgbouncer_ini),
    )


def sandbox_pool_scaler_block(box: Sandbox) -> PgBouncerPoolScaler:
    """The high-load scaler for the sandbox: raise pgbouncer's pool by 10, at most to 60."""
    return PgBouncerPoolScaler(host=HOST, port=box.config.pgbouncer_port, user=SUPERUSER,
                               password=SecretStr(box.config.password), step=10, max_pool_size=60)


def save_failover_blocks(box: Sandbox, name: str = "sandbox") -> str:
    """Save every block the deployments use for the sandbox: cluster, metrics source, node control,
    endpoint and the pgbouncer pool scaler, all named `name`."""
    save_sandbox_blocks(box, name)
    sandbox_node_control_block(box).save(name, overwrite=True)
    sandbox_endpoint_block(box).save(name, overwrite=True)
    sandbox_pool_scaler_block(box).save(name, overwrite=True)
    return name
