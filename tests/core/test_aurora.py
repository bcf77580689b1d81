"""The Aurora backend's provider side (tasks/core/aurora.py) against moto's real HTTP server: scaling validated,
dry-run first, sent, read back; failover polled until the target is the available writer; CloudWatch metrics; and,
through botocore's Stubber, what moto cannot produce: throttling, a busy cluster, failing-over -> available
polling, an unknown cluster, pending-reboot members. The AWS secret key never reaches a log line or a result."""

from __future__ import annotations

import logging

import boto3
import pytest
from botocore.stub import Stubber
from prefect_aws import AwsCredentials

from blocks.aurora import AuroraCluster
from blocks.metrics_source import MetricsSource
from tasks.core import aurora
from tasks.core.errors import InvalidScaling, ProviderError
from tasks.core.host_metrics import read_source
from tests.aws_stand_in import REGION, SECRET_KEY, MotoStandIn


def api_of(moto: MotoStandIn, cluster_id: str, **kw) -> aurora.AuroraApi:
    return aurora.AuroraApi(moto.aurora_block(cluster_id, **kw))


@pytest.mark.parametrize(("low", "high", "pause", "ceiling", "problem"), [
    (0.5, 4, None, None, None),
    (0, 4, 300, None, None),
    (0, 4, 86_400, None, None),
    (0, 4, None, None, "needs SecondsUntilAutoPause"),
    (0, 4, 299, None, "outside 300-86400 s"),
    (0, 4, 86_401, None, "outside 300-86400 s"),
    (0.5, 4, 600, None, "applies only with MinCapacity 0"),
    (0.5, 4.25, None, None, "not a multiple of 0.5 ACU"),
    (0.5, 256.5, None, None, "outside 0-256 ACU"),
    (0.5, 300, None, None, "outside 0-256 ACU"),
    (8, 4, None, None, "MinCapacity 8 is above MaxCapacity 4"),
    (0.5, 16.5, None, 16, "above the configured ceiling 16"),
    (0, 0.5, 300, None, "below 1 ACU"),
])
def test_scaling_ranges_are_validated_by_us(low, high, pause, ceiling, problem):
    """moto accepts 300 ACU or min > max; we refuse what Aurora would, before sending anything."""
    problems = aurora.scaling_problems(low, high, pause, ceiling)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_scale_up_dry_run_first_then_sent_and_read_back(moto):
    cid = moto.seed_cluster(min_acu=0.5, max_acu=4)
    api = api_of(moto, cid, scale_step_acu=2, max_capacity_ceiling_acu=7)
    planned = aurora.scale_up(api, dry_run=True)
    assert planned.status == "planned" and (planned.before, planned.after) == (4, 6)
    assert planned.request == (f'rds ModifyDBCluster {{"ApplyImmediately": true, "DBClusterIdentifier": "{cid}", '
                               '"ServerlessV2ScalingConfiguration": {"MaxCapacity": 6.0, "MinCapacity": 0.5}}')
    assert planned.request in planned.summary
    config = moto.client("rds").describe_db_clusters(DBClusterIdentifier=cid)["DBClusters"][0][
        "ServerlessV2ScalingConfiguration"]
    assert config["MaxCapacity"] == 4  # the dry run sent nothing
    done = aurora.scale_up(api, dry_run=False)
    assert done.status == "scaled" and (done.before, done.after) == (4, 6) and done.request == planned.request
    assert "max_connections" in done.summary and "reboot" in done.summary
    config = moto.client("rds").describe_db_clusters(DBClusterIdentifier=cid)["DBClusters"][0][
        "ServerlessV2ScalingConfiguration"]
    assert (config["MinCapacity"], config["MaxCapacity"]) == (0.5, 6)
    capped = aurora.scale_up(api, dry_run=False)  # 6 + 2 > ceiling 7: up to the ceiling only
    assert (capped.status, capped.after) == ("scaled", 7)
    at_max = aurora.scale_up(api, dry_run=False)
    assert at_max.status == "at_max" and "ceiling 7" in at_max.summary


def test_scale_up_keeps_auto_pause(moto):
    """A cluster that pauses at 0 ACU keeps MinCapacity 0 and its SecondsUntilAutoPause."""
    cid = moto.seed_cluster(min_acu=0.5, max_acu=2)
    moto.client("rds").modify_db_cluster(DBClusterIdentifier=cid, ApplyImmediately=True,
                                         ServerlessV2ScalingConfiguration={
                                             "MinCapacity": 0, "MaxCapacity": 2, "SecondsUntilAutoPause": 900})
    done = aurora.scale_up(api_of(moto, cid), dry_run=False)
    assert done.status == "scaled" and '"SecondsUntilAutoPause": 900' in done.request
    config = moto.client("rds").describe_db_clusters(DBClusterIdentifier=cid)["DBClusters"][0][
        "ServerlessV2ScalingConfiguration"]
    assert config == {"MinCapacity": 0, "MaxCapacity": 4, "SecondsUntilAutoPause": 900}


def test_provisioned_cluster_is_not_scaled(moto):
    cid = moto.seed_cluster(serverless=False)
    result = aurora.scale_up(api_of(moto, cid), dry_run=False)
    assert result.status == "not_serverless" and "instance class" in result.summary


def test_fail_over_on_moto(moto):
    cid = moto.seed_cluster()
    api = api_of(moto, cid)
    cluster = api.cluster()
    assert aurora.writer_of(cluster) == f"{cid}-w"
    assert aurora.failover_refusals(cluster, f"{cid}-w") == [f"{cid}-w is already the writer of Aurora cluster {cid}"]
    assert "not a member" in aurora.failover_refusals(cluster, "elsewhere")[0]
    done = aurora.fail_over(api, f"{cid}-r")
    assert done["request"] == (f'rds FailoverDBCluster {{"DBClusterIdentifier": "{cid}", '
                               f'"TargetDBInstanceIdentifier": "{cid}-r"}}')
    assert aurora.writer_of(api.cluster()) == f"{cid}-r"


def test_promotion_tier_warning(moto):
    cid = moto.seed_cluster(readers={"tier1-" + "x": 1, "tier2-x": 2})
    cluster = aurora.AuroraApi(moto.aurora_block(cid)).cluster()
    assert aurora.promotion_warning(cluster, "tier1-x") is None
    assert "promotion tier 2" in aurora.promotion_warning(cluster, "tier2-x")


def stubbed(cluster_id: str = "stubbed", **kw) -> tuple[aurora.AuroraApi, Stubber, list[float]]:
    """An AuroraApi whose RDS client answers from a Stubber (no network), and the sleeps it asked for."""
    client = boto3.client("rds", region_name=REGION, aws_access_key_id="AKIAX", aws_secret_access_key=SECRET_KEY)
    sleeps: list[float] = []
    block = AuroraCluster(credentials=AwsCredentials(region_name=REGION), cluster_identifier=cluster_id,
                          **{"poll_seconds": 0.01, **kw})
    return aurora.AuroraApi(block, rds=client, sleep=sleeps.append), Stubber(client), sleeps


def cluster_answer(status: str, writer: str, ident: str = "stubbed") -> dict:
    return {"DBClusters": [{"DBClusterIdentifier": ident, "Status": status, "DBClusterMembers": [
        {"DBInstanceIdentifier": "a", "IsClusterWriter": writer == "a", "PromotionTier": 0},
        {"DBInstanceIdentifier": "b", "IsClusterWriter": writer == "b", "PromotionTier": 1}]}]}


def test_failover_polls_failing_over_until_available():
    api, stub, sleeps = stubbed()
    expected = {"DBClusterIdentifier": "stubbed"}
    stub.add_response("failover_db_cluster", {"DBCluster": {"DBClusterIdentifier": "stubbed"}},
                      {"DBClusterIdentifier": "stubbed", "TargetDBInstanceIdentifier": "b"})
    for status, writer in (("failing-over", "a"), ("failing-over", "b"), ("available", "b")):
        stub.add_response("describe_db_clusters", cluster_answer(status, writer), expected)
    with stub:
        done = aurora.fail_over(api, "b")
    stub.assert_no_pending_responses()
    assert done["statuses"] == ["failing-over", "available"] and done["polls"] == 3 and len(sleeps) == 2


def test_failover_times_out_naming_what_it_saw():
    api, stub, _ = stubbed(failover_timeout_seconds=5)
    ticks = iter([0, 1, 10])
    stub.add_response("failover_db_cluster", {"DBCluster": {}})
    stub.add_response("describe_db_clusters", cluster_answer("failing-over", "a"))
    stub.add_response("describe_db_clusters", cluster_answer("failing-over", "a"))
    with stub, pytest.raises(ProviderError, match=r"b is not the available writer 5 s after FailoverDBCluster "
                                                  r"\(status failing-over, writer a, seen failing-over\)"):
        aurora.fail_over(api, "b", clock=lambda: next(ticks))


def test_throttling_is_retried_with_backoff_then_typed():
    api, stub, sleeps = stubbed(api_attempts=3)
    stub.add_client_error("describe_db_clusters", "Throttling", "Rate exceeded", http_status_code=400)
    stub.add_client_error("describe_db_clusters", "Throttling", "Rate exceeded", http_status_code=400)
    stub.add_response("describe_db_clusters", cluster_answer("available", "a"))
    with stub:
        assert aurora.writer_of(api.cluster()) == "a"
    assert sleeps == [0.2, 0.4]
    api, stub, sleeps = stubbed(api_attempts=2)
    for _ in range(2):
        stub.add_client_error("describe_db_clusters", "Throttling", "Rate exceeded", http_status_code=400)
    with stub, pytest.raises(ProviderError, match="Throttling: Rate exceeded \\(after 2 attempts\\)") as raised:
        api.cluster()
    assert raised.value.transient


def test_busy_cluster_and_unknown_cluster_are_typed():
    api, stub, _ = stubbed()
    stub.add_client_error("failover_db_cluster", "InvalidDBClusterStateFault", "DbCluster stubbed is not available",
                          http_status_code=400)
    with stub, pytest.raises(ProviderError, match="wait until it is available and rerun") as raised:
        aurora.fail_over(api, "b")
    assert raised.value.transient and raised.value.code == "InvalidDBClusterStateFault"
    api, stub, _ = stubbed("nope")
    stub.add_client_error("describe_db_clusters", "DBClusterNotFoundFault", "DBCluster nope not found.",
                          http_status_code=404)
    with stub, pytest.raises(ProviderError, match="check cluster_identifier and region") as raised:
        api.cluster()
    assert not raised.value.transient


def test_pending_reboot_is_said_and_rebooted_only_when_allowed():
    for allow in (False, True):
        api, stub, _ = stubbed(allow_reboot=allow)
        before = cluster_answer("available", "a")
        before["DBClusters"][0]["ServerlessV2ScalingConfiguration"] = {"MinCapacity": 0.5, "MaxCapacity": 4.0}
        after = cluster_answer("available", "a")
        after["DBClusters"][0]["ServerlessV2ScalingConfiguration"] = {"MinCapacity": 0.5, "MaxCapacity": 6.0}
        stub.add_response("describe_db_clusters", before)
        stub.add_response("modify_db_cluster", {"DBCluster": {}})
        stub.add_response("describe_db_clusters", after)
        stub.add_response("describe_db_instances", {"DBInstances": [{"DBParameterGroups": [
            {"DBParameterGroupName": "custom", "ParameterApplyStatus": "pending-reboot"}]}]})
        stub.add_response("describe_db_instances", {"DBInstances": [{"DBParameterGroups": [
            {"DBParameterGroupName": "custom", "ParameterApplyStatus": "in-sync"}]}]})
        if allow:
            stub.add_response("reboot_db_instance", {"DBInstance": {}}, {"DBInstanceIdentifier": "a"})
        with stub:
            result = aurora.scale_up(api, dry_run=False)
        stub.assert_no_pending_responses()
        assert result.pending_reboot == ["a"]
        if allow:
            assert result.rebooted == ["a"] and "rebooted a" in result.summary
        else:
            assert result.rebooted == [] and "only after a reboot of a (pending-reboot; allow_reboot is off)" in \
                result.summary


def test_invalid_range_is_never_sent():
    """A cluster whose current minimum is not on a half step: refused before ModifyDBCluster."""
    api, stub, _ = stubbed()
    odd = cluster_answer("available", "a")
    odd["DBClusters"][0]["ServerlessV2ScalingConfiguration"] = {"MinCapacity": 0.25, "MaxCapacity": 4.0}
    stub.add_response("describe_db_clusters", odd)
    with stub, pytest.raises(InvalidScaling, match="MinCapacity 0.25 is not a multiple of 0.5 ACU"):
        aurora.scale_up(api, dry_run=False)


def test_cloudwatch_metrics_source(moto, prefect_api):
    cid = moto.seed_cluster()
    moto.put_metrics(cid, {"CPUUtilization": 37.5, "ACUUtilization": 50.0, "ServerlessDatabaseCapacity": 2.0,
                           "DatabaseConnections": 12, "FreeLocalStorage": 1e9})
    moto.aurora_block(cid).save(f"aurora-{cid}", overwrite=True)
    source = MetricsSource(kind="cloudwatch", aurora_block=f"aurora-{cid}")
    metrics = read_source(source)
    assert (metrics.source, metrics.cpu_percent, metrics.capacity_acu, metrics.connections) == (
        "cloudwatch", 37.5, 2.0, 12)
    assert metrics.disk_free_bytes == 10**9 and metrics.replica_lag_ms is None
    assert "of max ACU" in metrics.summary and "MaxCapacity" in metrics.note
    from tasks.core.host_metrics import sample_host

    source.save(f"cw-{cid}", overwrite=True)
    reported = sample_host.fn(f"cw-{cid}", None)  # the daily report's task: no SQL needed for this source
    assert reported.source == "cloudwatch" and reported.cpu_percent == 37.5
    from tasks.alerts.metrics import host_samples

    samples = {s.metric: s for s in host_samples(f"cw-{cid}")}
    assert samples["cpu_usage_percent"].value == 37.5
    disk = samples["disk_usage_percent"]  # managed storage: no data, and no no-data alert
    assert disk.value is None and disk.unconfigured and "Aurora storage is managed" in disk.no_data


def test_aws_secret_never_logged(moto, prefect_api, caplog):
    """The scale task, its dry run and a refused call, with the AWS secret key in the block: not in any log
    record, summary or request."""
    from tasks.emergency.scale import ScaleRequest, ScalerError, scale_up

    cid = moto.seed_cluster()
    moto.aurora_block(cid).save(f"secret-{cid}", overwrite=True)
    moto.aurora_block("pgrb-missing").save("secret-missing", overwrite=True)
    caplog.set_level(logging.DEBUG)
    outcomes = []
    for dry in (True, False):
        request = ScaleRequest(cluster="c", reason="test", dry_run=dry, active_sessions=1, waiting_sessions=0)
        outcomes.append(scale_up(f"aurora-cluster/secret-{cid}", request))
    assert [o.status for o in outcomes] == ["planned", "scaled"]
    with pytest.raises(ScalerError) as raised:
        scale_up.fn("aurora-cluster/secret-missing", request)
    text = " ".join([caplog.text, str(raised.value)] + [o.model_dump_json() for o in outcomes])
    assert SECRET_KEY not in text
