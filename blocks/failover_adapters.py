"""Failover adapters as blocks (configuration only; the logic lives in tasks/failover/node_control.py,
tasks/core/patroni_api.py and tasks/failover/endpoint.py): how to stop/start a node or who switches the
primary (Patroni), and how clients reach the primary."""

from __future__ import annotations

import base64
import ssl
from typing import Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr, model_validator


class PatroniApi(BaseModel):
    """Patroni's REST API: one base URL per node (e.g. https://db1:8008), optional basic auth, TLS options."""

    urls: dict[str, str] = Field(description="Base URL of the Patroni REST API per node name.")
    username: str | None = Field(default=None, description="restapi.authentication username (for POST calls).")
    password: SecretStr | None = Field(default=None, description="restapi.authentication password.")
    ca_file: str | None = Field(default=None, description="CA bundle that signed the REST API's certificate.")
    verify: bool = Field(default=True, description="Verify the REST API's TLS certificate (https URLs).")
    timeout_seconds: float = Field(default=5, gt=0, le=120, description="Seconds to wait for one REST answer.")

    @model_validator(mode="after")
    def _has_urls(self) -> PatroniApi:
        bad = [n for n, u in self.urls.items() if not u.startswith(("http://", "https://"))]
        if not self.urls or bad:
            raise ValueError("urls needs an http:// or https:// base URL for every node"
                             + (f" (not: {', '.join(bad)})" if bad else ""))
        return self

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for basic auth. The one place the password is read."""
        if not self.username or self.password is None:
            return {}
        token = f"{self.username}:{self.password.get_secret_value()}".encode()
        return {"Authorization": "Basic " + base64.b64encode(token).decode()}

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class NodeControl(Block):
    """How the failover runbook stops, starts and inspects a PostgreSQL node.

    kind 'pg_ctl': the servers run on this host; commands are pg_ctl / pg_controldata / pg_waldump
    from `bindir`, as `os_user` when we are root. kind 'shell': user-supplied command templates
    (e.g. over ssh) with the placeholders {node}, {host}, {data_dir}, {bindir}, {mode}, {timeout}.
    kind 'patroni': Patroni manages the nodes; the runbook never stops, starts or promotes them itself and
    switches the primary through Patroni's REST API (`patroni`). kind 'aurora': Aurora fails over its own
    instances (FailoverDBCluster); node names are the DB instance identifiers (docs/providers/aurora.md).
    kind 'neon': Neon has no standby; a failover restarts the compute endpoint (docs/providers/neon.md).
    """

    _block_type_name = "Node Control"
    _block_type_slug = "node-control"
    _description = "How pg-runbooks' failover fences (stops), starts and inspects a PostgreSQL node."
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks#failover-and-switchover"

    kind: Literal["pg_ctl", "shell", "patroni", "aurora", "neon"] = Field(
        default="pg_ctl", description="Local pg_ctl, shell templates, Patroni (through its REST API), Aurora "
        "(FailoverDBCluster through the AuroraCluster block named in aurora_block), or Neon (a restart of the "
        "compute through the NeonEndpoint block named in neon_block: Neon has no standby to promote).")
    aurora_block: str | None = Field(
        default=None, description="kind 'aurora': the AuroraCluster block; node names are the instance identifiers.")
    neon_block: str | None = Field(
        default=None, description="kind 'neon': the NeonEndpoint block; the cluster block's one node is the compute.")
    patroni: PatroniApi | None = Field(
        default=None, description="Patroni's REST API (kind 'patroni'; with another kind, used to detect Patroni).")
    bindir: str = Field(default="/usr/lib/postgresql/15/bin", description="PostgreSQL binaries on the node.")
    data_dirs: dict[str, str] = Field(default_factory=dict, description="Data directory per node name.")
    os_user: str | None = Field(
        default="postgres", description="OS user owning the servers (commands run as it when we are root)."
    )
    stop_command: str = Field(
        default="ssh {host} sudo -u postgres {bindir}/pg_ctl stop -w -t {timeout} -m {mode} -D {data_dir}",
        description="kind 'shell': command that stops the node; exit 0 only when it is stopped.",
    )
    start_command: str = Field(
        default="ssh {host} sudo -u postgres {bindir}/pg_ctl start -w -t {timeout} -D {data_dir} "
        "-l {data_dir}/server.log",
        description="kind 'shell': command that starts the node.",
    )
    status_command: str = Field(
        default="ssh {host} sudo -u postgres {bindir}/pg_ctl status -D {data_dir}",
        description="kind 'shell': exit 0 = running, 3 = stopped (pg_ctl status convention), else unknown.",
    )
    controldata_command: str = Field(
        default="ssh {host} sudo -u postgres {bindir}/pg_controldata {data_dir}",
        description="kind 'shell': prints pg_controldata of the node.",
    )
    waldump_command: str | None = Field(
        default=None,
        description="kind 'shell', optional: pg_waldump -q -p {data_dir}/pg_wal -t {timeline} -s {start} "
        "(to measure a crash's LSN gap).",
    )
    replication_user: str = Field(default="postgres", description="Role a rejoined standby streams as.")
    replication_passfile: str | None = Field(
        default=None, description="Path of a libpq passfile on the node, used in primary_conninfo of a rejoined node."
    )

    @model_validator(mode="after")
    def _has_dirs(self) -> NodeControl:
        if self.kind == "patroni":
            if self.patroni is None:
                raise ValueError("kind 'patroni' needs patroni: the REST API URL of every node")
        elif self.kind == "aurora":
            if not self.aurora_block:
                raise ValueError("kind 'aurora' needs aurora_block: the name of the AuroraCluster block")
        elif self.kind == "neon":
            if not self.neon_block:
                raise ValueError("kind 'neon' needs neon_block: the name of the NeonEndpoint block")
        elif not self.data_dirs:
            raise ValueError("data_dirs needs the data directory of every node")
        return self


class EndpointControl(Block):
    """How clients reach the primary, and how the failover repoints them.

    kind 'pgbouncer': PAUSE / rewrite the [databases] host and port in `ini_path` / RELOAD / RESUME
    through the admin console. kind 'none': clients use libpq multi-host with
    target_session_attrs=read-write, so fencing the old primary is what repoints them.
    """

    _block_type_name = "Endpoint Control"
    _block_type_slug = "endpoint-control"
    _description = "How pg-runbooks' failover holds and repoints clients (pgbouncer, or none for libpq multi-host)."
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks#failover-and-switchover"

    kind: Literal["pgbouncer", "none"] = Field(default="pgbouncer", description="Endpoint type.")
    admin_host: str = Field(default="127.0.0.1", description="pgbouncer host.")
    admin_port: int = Field(default=6432, ge=1, le=65535, description="pgbouncer port.")
    admin_user: str = Field(default="pgbouncer", description="A user listed in pgbouncer's admin_users.")
    admin_password: SecretStr | None = Field(default=None, description="Password of the admin user.")
    ini_path: str | None = Field(default=None, description="pgbouncer.ini to rewrite (on this host).")
    connect_timeout: int = Field(default=5, ge=1, le=60, description="Seconds to wait for the admin console.")

    def admin_connect_kwargs(self) -> dict:
        """psycopg.connect arguments for the admin console. The one place the password is read."""
        kwargs = {
            "host": self.admin_host,
            "port": self.admin_port,
            "user": self.admin_user,
            "dbname": "pgbouncer",
            "connect_timeout": self.connect_timeout,
            "autocommit": True,
            "prepare_threshold": None,
            "application_name": "pg-runbooks/failover",
        }
        if self.admin_password is not None:
            kwargs["password"] = self.admin_password.get_secret_value()
        return kwargs
