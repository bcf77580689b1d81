"""Prefect blocks of pg-runbooks: configuration only (`prefect block register -m blocks`)."""

from blocks.failover_adapters import EndpointControl, NodeControl
from blocks.postgres_cluster import ConnectionTarget, Endpoint, PostgresCluster, PostgresNode
from blocks.slack_notifier import SlackNotifier

__all__ = [
    "ConnectionTarget", "Endpoint", "EndpointControl", "NodeControl", "PostgresCluster", "PostgresNode",
    "SlackNotifier",
]
