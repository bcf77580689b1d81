"""Scaler blocks: how the high-load response adds resources. Configuration only.

Three kinds, chosen by which block the flow is given (`<block-type-slug>/<name>`):
  no-scaler              records that no scaler is configured
  webhook-scaler         POSTs a JSON request to a URL (provider APIs, internal tooling)
  pgbouncer-pool-scaler  raises pgbouncer's default_pool_size through its admin console, within a maximum
  aurora-cluster         raises an Aurora Serverless v2 cluster's MaxCapacity within a ceiling (blocks/aurora.py)
  neon-endpoint          raises a Neon endpoint's autoscaling_limit_max_cu within a ceiling (blocks/neon.py)
The acting code lives in tasks/emergency/scale.py; only these blocks read their secrets.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from blocks.aurora import AuroraCluster
from blocks.neon import NeonEndpoint

ScalerKind = Literal["none", "webhook", "pgbouncer", "aurora", "neon"]


class NoScaler(Block):
    """Explicitly no scaler: the response records that scaling was not available."""

    _block_type_name = "No Scaler"
    _block_type_slug = "no-scaler"
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks#high-load-response-runbooks-41-and-52"
    _code_example = """
```python
from blocks.scalers import NoScaler

scaler = NoScaler.load("BLOCK_NAME")
```
Pass it to the high-load response as scaler_block="no-scaler/BLOCK_NAME".
"""
    _description = "pg-runbooks high-load response: no way to add resources is configured."
    kind: ClassVar[ScalerKind] = "none"

    note: str = Field(default="", description="Why there is no scaler (shown in the report).")


class WebhookScaler(Block):
    """POST a JSON scale request to a URL; any 2xx answer counts as accepted."""

    _block_type_name = "Webhook Scaler"
    _block_type_slug = "webhook-scaler"
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks#high-load-response-runbooks-41-and-52"
    _code_example = """
```python
from blocks.scalers import WebhookScaler

scaler = WebhookScaler.load("BLOCK_NAME")
```
Pass it to the high-load response as scaler_block="webhook-scaler/BLOCK_NAME".
"""
    _description = "pg-runbooks high-load response: ask a provider API or internal tool for more capacity."
    kind: ClassVar[ScalerKind] = "webhook"

    url: str = Field(description="http(s) URL that accepts the JSON scale request.", pattern=r"^https?://")
    bearer_token: SecretStr | None = Field(default=None, description="Sent as 'Authorization: Bearer ...'.")
    extra_payload: dict[str, Any] = Field(
        default_factory=dict, description="Merged into the request body, e.g. {'instance': 'db-1', 'size': 'xl'}."
    )
    timeout_seconds: float = Field(default=10, ge=0.5, le=120, description="HTTP timeout of the request.")

    def auth_headers(self) -> dict[str, str]:
        """The only place the bearer token is read."""
        if self.bearer_token is None:
            return {}
        return {"Authorization": f"Bearer {self.bearer_token.get_secret_value()}"}


class PgBouncerPoolScaler(Block):
    """Raise pgbouncer's default_pool_size by `step`, never above `max_pool_size`.

    A runtime change through the admin console (`SET default_pool_size = N`): a later
    RELOAD or restart of pgbouncer returns to the value in pgbouncer.ini.
    """

    _block_type_name = "PgBouncer Pool Scaler"
    _block_type_slug = "pgbouncer-pool-scaler"
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks#high-load-response-runbooks-41-and-52"
    _code_example = """
```python
from blocks.scalers import PgBouncerPoolScaler

scaler = PgBouncerPoolScaler.load("BLOCK_NAME")
```
Pass it to the high-load response as scaler_block="pgbouncer-pool-scaler/BLOCK_NAME".
"""
    _description = "pg-runbooks high-load response: raise pgbouncer's pool size within a maximum."
    kind: ClassVar[ScalerKind] = "pgbouncer"

    host: str = Field(description="pgbouncer host.")
    port: int = Field(default=6432, ge=1, le=65535, description="pgbouncer port.")
    admin_database: str = Field(default="pgbouncer", description="The admin console's database name.")
    user: str = Field(description="A user listed in pgbouncer's admin_users.")
    password: SecretStr | None = Field(default=None, description="That user's password.")
    step: int = Field(default=10, ge=1, le=1000, description="How many server connections to add per run.")
    max_pool_size: int = Field(ge=1, le=10_000, description="Never raise default_pool_size above this.")
    connect_timeout: int = Field(default=5, ge=1, le=60, description="Seconds to wait for the console.")

    @model_validator(mode="after")
    def _step_fits(self) -> PgBouncerPoolScaler:
        if self.step > self.max_pool_size:
            raise ValueError(f"step {self.step} is larger than max_pool_size {self.max_pool_size}")
        return self

    @property
    def label(self) -> str:
        return f"pgbouncer ({self.host}:{self.port})"

    def connect_kwargs(self) -> dict[str, Any]:
        """psycopg.connect arguments for the admin console. The one place the password is read."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.admin_database,
            "user": self.user,
            "connect_timeout": self.connect_timeout,
            "application_name": "pg-runbooks/scale",
        }
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        return kwargs


SCALER_TYPES: tuple[type[Block], ...] = (NoScaler, WebhookScaler, PgBouncerPoolScaler, AuroraCluster,
                                           NeonEndpoint)
