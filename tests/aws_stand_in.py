"""moto's real HTTP server (ThreadedMotoServer on a free port) as the AWS stand-in of the Aurora tests, and the
Aurora clusters seeded in it. moto answers `available` at once and flips the writer instantly: the polling and
error cases use botocore's Stubber instead (tests/core/test_aurora.py)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import boto3
from pydantic import SecretStr

REGION = "us-east-1"
ACCESS_KEY = "AKIAPGRBTESTKEY00001"
SECRET_KEY = "pgrb-aws-secret-never-logged-7f3e9c"  # tests assert it never reaches logs, artifacts or Slack
_names = itertools.count(1)


class MotoStandIn:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.stop()

    def client(self, service: str):
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY)

    def seed_cluster(self, writer: str | None = None, readers: dict[str, int] | None = None, min_acu: float = 0.5,
                     max_acu: float = 4.0, serverless: bool = True) -> str:
        """An Aurora PostgreSQL cluster with `writer` (tier 0) and readers {name: promotion tier}; its id. Instance
        identifiers are global in a region: by default <cluster>-w and <cluster>-r."""
        cluster_id = f"pgrb-aurora-{next(_names)}"
        writer = writer or f"{cluster_id}-w"
        readers = readers if readers is not None else {f"{cluster_id}-r": 1}
        rds = self.client("rds")
        scaling = {"MinCapacity": min_acu, "MaxCapacity": max_acu}
        extra = {"ServerlessV2ScalingConfiguration": scaling} if serverless else {}
        rds.create_db_cluster(DBClusterIdentifier=cluster_id, Engine="aurora-postgresql", EngineVersion="15.4",
                              MasterUsername="pgrb", MasterUserPassword="not-used-by-tests", **extra)
        klass = "db.serverless" if serverless else "db.r6g.large"
        for ident, tier in {writer: 0, **readers}.items():
            rds.create_db_instance(DBInstanceIdentifier=ident, DBClusterIdentifier=cluster_id,
                                   Engine="aurora-postgresql", DBInstanceClass=klass, PromotionTier=tier)
        return cluster_id

    def put_metrics(self, cluster_id: str, values: dict[str, float], when: datetime | None = None) -> None:
        """Seed the writer's AWS/RDS metrics (moto generates none)."""
        dims = [{"Name": "DBClusterIdentifier", "Value": cluster_id}, {"Name": "Role", "Value": "WRITER"}]
        self.client("cloudwatch").put_metric_data(Namespace="AWS/RDS", MetricData=[
            {"MetricName": name, "Dimensions": dims, "Value": value, "Timestamp": when or datetime.now(UTC)}
            for name, value in values.items()])

    def aurora_block(self, cluster_id: str, **kw):
        from prefect_aws import AwsCredentials

        from blocks.aurora import AuroraCluster

        creds = AwsCredentials(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SecretStr(SECRET_KEY),
                               region_name=REGION)
        return AuroraCluster(credentials=creds, cluster_identifier=cluster_id, endpoint_url=self.url,
                             **{"poll_seconds": 0.05, **kw})
