"""The PostgresCluster block: where a cluster's nodes are and how to log in to them."""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr, model_validator

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class PostgresNode(BaseModel):
    """One PostgreSQL server of the cluster."""

    name: str = Field(description="Short unique name of the node, e.g. 'pg-1'.", min_length=1)
    host: str = Field(description="Host name or IP address.", min_length=1)
    port: int = Field(default=5432, ge=1, le=65535, description="TCP port.")
    upstream: str | None = Field(
        default=None, description="A cascading standby: the node it streams from. Empty: the primary.")
    replication_slot: str | None = Field(
        default=None, description="The slot this standby streams on, if it uses one (how its upstream knows it). "
                                  "Empty: found by what the standby and its upstream report.")
    application_name: str | None = Field(
        default=None, description="The application_name this standby gives its upstream (primary_conninfo; "
                                  "'walreceiver' or cluster_name by default). Empty: found as above.")


class Endpoint(BaseModel):
    """The application endpoint (pgbouncer) clients connect through."""

    host: str = Field(description="pgbouncer host.")
    port: int = Field(default=6432, ge=1, le=65535, description="pgbouncer port.")
    admin_database: str = Field(default="pgbouncer", description="pgbouncer's admin console database.")


class ConnectionTarget(BaseModel):
    """Everything needed to open one connection; passed to tasks instead of a DSN.

    The password stays a SecretStr: its repr, str and JSON form are masked, so a
    target can be logged or stored as a task parameter without leaking it.
    """

    cluster: str
    node: str
    host: str
    port: int
    database: str
    user: str
    password: SecretStr | None = None
    sslmode: SslMode = "prefer"
    connect_timeout: int = 5
    statement_timeout_ms: int = 30_000
    via_pooler: bool = False

    @property
    def label(self) -> str:
        """How operators name this target in messages: node (host:port)."""
        return f"{self.node} ({self.host}:{self.port})"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect. The one place a password is read."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout,
        }
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        return kwargs


class PostgresCluster(Block):
    """A PostgreSQL cluster: its nodes, which one is believed to be the primary, and credentials."""

    _block_type_name = "Postgres Cluster"
    _block_type_slug = "postgres-cluster"
    _description = (
        "Nodes, credentials and application endpoint of a PostgreSQL cluster managed by pg-runbooks."
    )
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks#point-it-at-a-real-cluster"
    _code_example = """
```python
from blocks.postgres_cluster import PostgresCluster

cluster = PostgresCluster.load("BLOCK_NAME")
primary = cluster.primary_target()
```
"""

    cluster_name: str = Field(description="Name of the cluster in reports and Slack.", min_length=1)
    nodes: list[PostgresNode] = Field(description="Every server of the cluster.", min_length=1)
    primary_node: str = Field(description="Name of the node believed to be the primary.")
    database: str = Field(default="postgres", description="Database the runbooks connect to.")
    user: str = Field(default="postgres", description="Role the runbooks log in as (pg_monitor suffices for checks).")
    password: SecretStr | None = Field(default=None, description="Password of that role.")
    sslmode: SslMode = Field(default="prefer", description="libpq sslmode for every connection.")
    connect_timeout: int = Field(default=5, ge=1, le=120, description="Seconds to wait for a connection.")
    statement_timeout_ms: int = Field(
        default=30_000, ge=100, le=3_600_000, description="Default statement_timeout of runbook sessions."
    )
    endpoint: Endpoint | None = Field(default=None, description="pgbouncer in front of the primary, if any.")
    tags: list[str] = Field(
        default_factory=list, description="Labels fleets select clusters by (e.g. 'production', 'tier-1').")
    fenced_nodes: list[str] = Field(
        default_factory=list, description="Nodes fenced by a failover: never used as primary again until rejoined."
    )
    provider_block: str | None = Field(
        default=None, pattern=r"^(aurora-cluster|neon-endpoint)/.+",
        description="A managed cluster's provider block, 'aurora-cluster/<name>' or 'neon-endpoint/<name>': the "
        "health check and the alert monitor read its state first and never wake a paused compute unless asked.")

    @model_validator(mode="after")
    def _primary_is_a_node(self) -> PostgresCluster:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {names}")
        if self.primary_node not in names:
            raise ValueError(f"primary_node {self.primary_node!r} is not one of the nodes {names}")
        return self

    def node(self, name: str) -> PostgresNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"cluster {self.cluster_name!r} has no node {name!r}")

    def _target(self, node: str, host: str, port: int, database: str | None, via_pooler: bool = False
                ) -> ConnectionTarget:
        return ConnectionTarget(
            cluster=self.cluster_name,
            node=node,
            host=host,
            port=port,
            database=database or self.database,
            user=self.user,
            password=self.password,
            sslmode=self.sslmode,
            connect_timeout=self.connect_timeout,
            statement_timeout_ms=self.statement_timeout_ms,
            via_pooler=via_pooler,
        )

    def target(self, node_name: str, database: str | None = None) -> ConnectionTarget:
        """A connection target for one node of the cluster."""
        node = self.node(node_name)
        return self._target(node.name, node.host, node.port, database)

    def targets(self) -> list[ConnectionTarget]:
        """A target for every node, the believed primary first."""
        ordered = sorted(self.nodes, key=lambda n: n.name != self.primary_node)
        return [self.target(n.name) for n in ordered]

    def primary_target(self) -> ConnectionTarget:
        return self.target(self.primary_node)

    def endpoint_target(self, database: str | None = None) -> ConnectionTarget | None:
        """A target for the application endpoint (pgbouncer), if the cluster has one."""
        if self.endpoint is None:
            return None
        return self._target("endpoint", self.endpoint.host, self.endpoint.port, database, via_pooler=True)
