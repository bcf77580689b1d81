"""The high-load response's "increase resources" step with an AuroraCluster block as its scaler (moto's server as
RDS, the session sandbox as the SQL side): the dry run plans the exact ModifyDBCluster request and sends nothing;
the real run raises MaxCapacity within the ceiling and reads it back."""

from __future__ import annotations

from flows.high_load_response import high_load_response
from tasks.emergency.high_load_plan import HighLoadParams
from tests.aws_stand_in import SECRET_KEY


def max_capacity(moto, cid: str) -> float:
    cluster = moto.client("rds").describe_db_clusters(DBClusterIdentifier=cid)["DBClusters"][0]
    return cluster["ServerlessV2ScalingConfiguration"]["MaxCapacity"]


def test_high_load_scales_aurora_dry_run_first(moto, cluster_block, caplog):
    cid = moto.seed_cluster(max_acu=4)
    moto.aurora_block(cid, scale_step_acu=4, max_capacity_ceiling_acu=8).save("hl-aurora", overwrite=True)
    params = dict(long_query_seconds=3600, only_roles=["pgrb_nobody"])
    planned = high_load_response(cluster_block=cluster_block, scaler_block="aurora-cluster/hl-aurora",
                                 params=HighLoadParams(dry_run=True, **params))
    assert planned.scale.status == "planned" and "ModifyDBCluster" in planned.scale.request
    assert '"MaxCapacity": 8.0' in planned.scale.summary and max_capacity(moto, cid) == 4
    done = high_load_response(cluster_block=cluster_block, scaler_block="aurora-cluster/hl-aurora",
                              params=HighLoadParams(dry_run=False, **params))
    assert (done.scale.status, done.scale.before, done.scale.after) == ("scaled", 4, 8)
    assert max_capacity(moto, cid) == 8
    assert SECRET_KEY not in caplog.text and SECRET_KEY not in done.model_dump_json()


def test_connection_limit_action_scales_neon(neon, cluster_block):
    """The connection_limit alert action (connection remediation) asks the same scaler interface: a Neon endpoint's
    max CU, dry run first (the exact PATCH), then raised after its operations finished."""
    from pydantic import SecretStr

    from blocks.neon import NeonEndpoint
    from flows.connection_remediation import connection_remediation
    from tasks.emergency.remediation import RemediationParams
    from tests.neon_server import API_KEY

    neon.add_endpoint("proj-cr", "ep-cr", 0.25, 2)
    NeonEndpoint(api_key=SecretStr(API_KEY), project_id="proj-cr", endpoint_id="ep-cr", base_url=neon.url,
                 poll_seconds=0.01, scale_step_cu=2, max_cu_ceiling=8).save("cr-neon", overwrite=True)
    planned = connection_remediation(cluster_block=cluster_block, scaler_block="neon-endpoint/cr-neon",
                                     params=RemediationParams(dry_run=True, protected_users=["postgres"]))
    assert "dry run: would raise Neon endpoint ep-cr autoscaling_limit_max_cu 2 -> 4 CU" in planned.scaler
    assert 'neon PATCH /projects/proj-cr/endpoints/ep-cr {"endpoint": ' in planned.scaler
    assert neon.endpoints[("proj-cr", "ep-cr")]["autoscaling_limit_max_cu"] == 2
    done = connection_remediation(cluster_block=cluster_block, scaler_block="neon-endpoint/cr-neon",
                                  params=RemediationParams(dry_run=False, protected_users=["postgres"],
                                                           idle_in_transaction_seconds=86_400))
    assert "read back 4 CU" in done.scaler and neon.endpoints[("proj-cr", "ep-cr")]["autoscaling_limit_max_cu"] == 4
