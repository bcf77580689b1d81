"""Prefect blocks of pg-runbooks: configuration only (`prefect block register -m blocks`)."""

from blocks.failover_adapters import EndpointControl, NodeControl
from blocks.fleet import Fleet
from blocks.metrics_source import HostMetrics, MetricsSource
from blocks.postgres_cluster import ConnectionTarget, Endpoint, PostgresCluster, PostgresNode
from blocks.scalers import NoScaler, PgBouncerPoolScaler, WebhookScaler
from blocks.slack_notifier import SlackNotifier

__all__ = [
    "ConnectionTarget", "Endpoint", "EndpointControl", "Fleet", "HostMetrics", "MetricsSource", "NoScaler",
    "NodeControl", "PgBouncerPoolScaler", "PostgresCluster", "PostgresNode", "SlackNotifier", "WebhookScaler",
]
