"""The AuroraCluster block: one Aurora PostgreSQL cluster (Serverless v2 or provisioned) and the limits within
which pg-runbooks may act on it. Configuration only: the calls live in tasks/core/aurora.py.

One block serves the three backends: as a scaler ("aurora-cluster/<name>" as scaler_block), as the failover's
switch backend (NodeControl kind 'aurora' with aurora_block) and as a metrics source (MetricsSource kind
'cloudwatch' with aurora_block). Credentials come from prefect-aws' AwsCredentials block (keys, profile or an
assumed role); only that block reads them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field, model_validator

ACU_STEP = 0.5
ACU_MAX = 256.0
AUTO_PAUSE_MIN_SECONDS = 300
AUTO_PAUSE_MAX_SECONDS = 86_400


class AuroraCluster(Block):
    """An Aurora PostgreSQL cluster reached through the RDS and CloudWatch APIs."""

    _block_type_name = "Aurora Cluster"
    _block_type_slug = "aurora-cluster"
    _description = "pg-runbooks on Aurora PostgreSQL: scale (Serverless v2), fail over, CloudWatch metrics."
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks/blob/main/docs/providers/aurora.md"
    kind: ClassVar[Literal["aurora"]] = "aurora"

    credentials: AwsCredentials = Field(
        default_factory=AwsCredentials, description="prefect-aws credentials (keys, profile or assumed role).")
    cluster_identifier: str = Field(description="DBClusterIdentifier of the Aurora cluster.", min_length=1)
    region_name: str | None = Field(default=None, description="AWS region (default: the credentials' region).")
    endpoint_url: str | None = Field(
        default=None, description="Another RDS/CloudWatch endpoint (a VPC endpoint, or a local stand-in in tests).")
    scale_step_acu: float = Field(default=2.0, ge=0.5, le=256, description="ACU added to MaxCapacity per scale-up.")
    max_capacity_ceiling_acu: float = Field(
        default=16.0, ge=0.5, le=ACU_MAX, description="Never raise MaxCapacity above this (cost guard).")
    allow_reboot: bool = Field(
        default=False, description="Reboot members whose parameters are pending-reboot after a scale (max_connections "
        "follows MaxCapacity only after a reboot). Off: the report says a reboot is needed.")
    failover_timeout_seconds: float = Field(
        default=180, ge=5, le=1800, description="How long to wait for the target to be the writer and available.")
    writer_host: str | None = Field(
        default=None, description="Verify a failover through this host instead of the cluster's writer endpoint "
        "from DescribeDBClusters (e.g. a proxy in front of it; a local stand-in in tests).")
    writer_port: int | None = Field(default=None, ge=1, le=65535, description="Port with writer_host.")
    writer_is_pooler: bool = Field(
        default=False, description="writer_host is a pooler such as pgbouncer (settings sent per transaction).")
    poll_seconds: float = Field(default=2.0, ge=0.01, le=30, description="Seconds between DescribeDBClusters polls.")
    api_attempts: int = Field(default=5, ge=1, le=20, description="Attempts per API call on throttling.")
    metrics_period_seconds: int = Field(default=60, ge=1, le=3600, description="CloudWatch period of a sample.")
    metrics_window_seconds: int = Field(
        default=600, ge=60, le=86_400, description="How far back CloudWatch is read for the latest datapoint.")

    @model_validator(mode="after")
    def _ceiling_on_step(self) -> AuroraCluster:
        for name in ("scale_step_acu", "max_capacity_ceiling_acu"):
            if round(getattr(self, name) / ACU_STEP, 9) % 1:
                raise ValueError(f"{name} must be a multiple of {ACU_STEP} ACU")
        return self

    @property
    def label(self) -> str:
        return f"Aurora cluster {self.cluster_identifier}"

    def client(self, service: Literal["rds", "cloudwatch"]):
        """A boto3 client for `service`. The one place the credentials are read (through prefect-aws).

        botocore's own retries are off (one attempt): tasks/core/aurora.py retries throttling itself, so the
        number of attempts is the block's and visible in tests."""
        from botocore.config import Config

        params = self.credentials.aws_client_parameters.get_params_override()
        params.pop("config", None)
        if self.endpoint_url:
            params["endpoint_url"] = self.endpoint_url
        region = self.region_name or self.credentials.region_name
        if region:
            params["region_name"] = region
        config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30)
        return self.credentials.get_boto3_session().client(service, config=config, **params)
