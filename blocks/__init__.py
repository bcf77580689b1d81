"""Prefect blocks of pg-runbooks: configuration only (`prefect block register -m blocks`)."""

from blocks.metrics_source import HostMetrics, MetricsSource
from blocks.postgres_cluster import ConnectionTarget, Endpoint, PostgresCluster, PostgresNode
from blocks.scalers import NoScaler, PgBouncerPoolScaler, WebhookScaler
from blocks.slack_notifier import SlackNotifier

__all__ = [
    "ConnectionTarget", "Endpoint", "HostMetrics", "MetricsSource", "NoScaler", "PgBouncerPoolScaler",
    "PostgresCluster", "PostgresNode", "SlackNotifier", "WebhookScaler",
]
