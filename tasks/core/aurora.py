"""Aurora PostgreSQL through the RDS and CloudWatch APIs (boto3): read the cluster, scale Serverless v2, fail
over, read CloudWatch metrics. Shared by the high-load response (scale), the failover (switch backend), the
report and the alert monitor (metrics), so it sits in tasks/core.

Every destructive call has a dry run: `ApiRequest.render()` is the exact request we would send. Capacity
ranges are validated here before any call (AWS validates too; local stand-ins do not). Throttling is retried
with backoff up to the block's `api_attempts`; other errors become a typed ProviderError saying what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from blocks.aurora import ACU_MAX, ACU_STEP, AUTO_PAUSE_MAX_SECONDS, AUTO_PAUSE_MIN_SECONDS, AuroraCluster
from tasks.core.errors import InvalidScaling, ProviderError
from tasks.core.provider import ApiRequest, ScaleResult

THROTTLING = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
# Errors that mean "the cluster is busy with something else now": retry later, nothing changed.
BUSY = {"InvalidDBClusterStateFault", "InvalidDBInstanceStateFault"}
ACTIONS = {
    "DBClusterNotFoundFault": "check cluster_identifier and region in the AuroraCluster block",
    "DBInstanceNotFoundFault": "check the instance identifier (the PostgresCluster block's node names)",
    "InvalidDBClusterStateFault": "the cluster is busy (modifying, failing over, backing up): wait until it is "
                                  "available and rerun",
    "AccessDenied": "grant the IAM permission named in docs/providers/aurora.md to the credentials' principal",
    "AccessDeniedException": "grant the IAM permission named in docs/providers/aurora.md to the credentials' "
                             "principal",
    "InvalidParameterCombination": "the capacity range is not one Aurora accepts; see the message",
    "InvalidParameterValue": "the capacity range is not one Aurora accepts; see the message",
}
# CloudWatch metrics of the cluster's writer (AWS/RDS, dimensions DBClusterIdentifier + Role=WRITER).
CLOUDWATCH_METRICS = {
    "cpu": "CPUUtilization",
    "acu_utilization": "ACUUtilization",
    "capacity": "ServerlessDatabaseCapacity",
    "connections": "DatabaseConnections",
    "free_local_storage": "FreeLocalStorage",
    "replica_lag": "ReplicaLag",
}


class AuroraApi:
    """boto3 clients of one cluster with our retry and error translation. Tests may hand in clients (a
    botocore Stubber's) and a sleep."""

    def __init__(self, block: AuroraCluster, rds: Any = None, cloudwatch: Any = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.block = block
        self._clients = {"rds": rds, "cloudwatch": cloudwatch}
        self.sleep = sleep

    def client(self, service: str) -> Any:
        if self._clients.get(service) is None:
            self._clients[service] = self.block.client(service)
        return self._clients[service]

    def call(self, request: ApiRequest) -> dict:
        """Send one request; throttling retried with exponential backoff; errors typed."""
        from botocore.exceptions import BotoCoreError, ClientError

        method = getattr(self.client(request.service), _snake(request.operation))
        attempts = self.block.api_attempts
        for attempt in range(1, attempts + 1):
            try:
                return method(**request.params)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "Unknown")
                message = exc.response.get("Error", {}).get("Message", "")
                if code in THROTTLING and attempt < attempts:
                    self.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
                    continue
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                raise ProviderError(
                    f"{self.block.label}: {request.operation} failed: {code}: {message[:300]}"
                    + (f" (after {attempt} attempts)" if code in THROTTLING else "")
                    + f" — {ACTIONS.get(code, 'see the message')}",
                    transient=code in THROTTLING or code in BUSY or status >= 500, code=code) from None
            except BotoCoreError as exc:
                raise ProviderError(f"{self.block.label}: {request.operation} did not reach AWS: "
                                    f"{type(exc).__name__}: {str(exc)[:200]}", transient=True) from None
        raise AssertionError("unreachable")

    def cluster(self) -> dict:
        """DescribeDBClusters of the block's cluster."""
        answer = self.call(ApiRequest(service="rds", operation="DescribeDBClusters",
                                      params={"DBClusterIdentifier": self.block.cluster_identifier}))
        clusters = answer.get("DBClusters") or []
        if not clusters:
            raise ProviderError(f"{self.block.label} does not exist — {ACTIONS['DBClusterNotFoundFault']}",
                                code="DBClusterNotFoundFault")
        return clusters[0]

    def instance(self, identifier: str) -> dict:
        answer = self.call(ApiRequest(service="rds", operation="DescribeDBInstances",
                                      params={"DBInstanceIdentifier": identifier}))
        return (answer.get("DBInstances") or [{}])[0]


def _snake(operation: str) -> str:
    """'DescribeDBClusters' -> 'describe_db_clusters' (botocore's method names)."""
    from botocore import xform_name

    return xform_name(operation)


# ---- scaling (Serverless v2) -------------------------------------------------------------------------------

def scaling_problems(min_acu: float, max_acu: float, auto_pause_seconds: int | None,
                     ceiling_acu: float | None = None) -> list[str]:
    """Why Aurora would refuse (or we must not send) this ServerlessV2ScalingConfiguration; empty = valid."""
    problems = []
    for name, value in (("MinCapacity", min_acu), ("MaxCapacity", max_acu)):
        if value < 0 or value > ACU_MAX:
            problems.append(f"{name} {value:g} is outside 0-{ACU_MAX:g} ACU")
        elif round(value / ACU_STEP, 9) % 1:
            problems.append(f"{name} {value:g} is not a multiple of {ACU_STEP} ACU")
    if max_acu < 1:
        problems.append(f"MaxCapacity {max_acu:g} is below 1 ACU")
    if min_acu > max_acu:
        problems.append(f"MinCapacity {min_acu:g} is above MaxCapacity {max_acu:g}")
    if min_acu == 0:
        if auto_pause_seconds is None:
            problems.append("MinCapacity 0 (auto-pause) needs SecondsUntilAutoPause")
        elif not AUTO_PAUSE_MIN_SECONDS <= auto_pause_seconds <= AUTO_PAUSE_MAX_SECONDS:
            problems.append(f"SecondsUntilAutoPause {auto_pause_seconds} is outside "
                            f"{AUTO_PAUSE_MIN_SECONDS}-{AUTO_PAUSE_MAX_SECONDS} s")
    elif auto_pause_seconds is not None:
        problems.append("SecondsUntilAutoPause applies only with MinCapacity 0")
    if ceiling_acu is not None and max_acu > ceiling_acu:
        problems.append(f"MaxCapacity {max_acu:g} is above the configured ceiling {ceiling_acu:g} ACU "
                        "(max_capacity_ceiling_acu in the AuroraCluster block)")
    return problems


class ScalePlan(BaseModel):
    """What a scale-up would send, from the cluster's current range."""

    status: str  # planned | at_max | not_serverless
    before: dict[str, float | int] = Field(default_factory=dict)
    after: dict[str, float | int] = Field(default_factory=dict)
    request: ApiRequest | None = None
    summary: str


def plan_scale_up(block: AuroraCluster, cluster: dict) -> ScalePlan:
    """Raise MaxCapacity by the block's step, never above its ceiling; min and auto-pause unchanged."""
    current = cluster.get("ServerlessV2ScalingConfiguration")
    if not current:
        return ScalePlan(status="not_serverless", summary=(
            f"{block.label} has no ServerlessV2ScalingConfiguration (provisioned instances): scaling means a "
            "larger instance class, which pg-runbooks does not change; do it in a maintenance window"))
    before = {k: current[k] for k in ("MinCapacity", "MaxCapacity", "SecondsUntilAutoPause") if k in current}
    old_max, old_min = float(current["MaxCapacity"]), float(current["MinCapacity"])
    new_max = min(old_max + block.scale_step_acu, block.max_capacity_ceiling_acu)
    if new_max <= old_max:
        return ScalePlan(status="at_max", before=before, after=before, summary=(
            f"{block.label} MaxCapacity is {old_max:g} ACU, already at the configured ceiling "
            f"{block.max_capacity_ceiling_acu:g} ACU"))
    after = {**before, "MaxCapacity": new_max}
    pause = before.get("SecondsUntilAutoPause") if old_min == 0 else None
    if problems := scaling_problems(old_min, new_max, pause, block.max_capacity_ceiling_acu):
        raise InvalidScaling(f"{block.label}: refusing to send {old_min:g}-{new_max:g} ACU: " + "; ".join(problems))
    config = {"MinCapacity": old_min, "MaxCapacity": new_max}
    if pause is not None:
        config["SecondsUntilAutoPause"] = pause
    request = ApiRequest(service="rds", operation="ModifyDBCluster", params={
        "DBClusterIdentifier": block.cluster_identifier, "ServerlessV2ScalingConfiguration": config,
        "ApplyImmediately": True})
    return ScalePlan(status="planned", before=before, after=after, request=request,
                     summary=f"raise {block.label} MaxCapacity {old_max:g} -> {new_max:g} ACU "
                             f"(ceiling {block.max_capacity_ceiling_acu:g})")


def scale_up(api: AuroraApi, dry_run: bool) -> ScaleResult:
    """Plan, (unless a dry run) send ModifyDBCluster, read the range back, handle pending-reboot members."""
    block = api.block
    plan = plan_scale_up(block, api.cluster())
    old = plan.before.get("MaxCapacity")
    if plan.status != "planned":
        return ScaleResult(status=plan.status, summary=plan.summary + ".", before=old, after=old)
    rendered = plan.request.render()
    if dry_run:
        return ScaleResult(status="planned", before=old, after=plan.after["MaxCapacity"], request=rendered,
                           summary=f"dry run: would {plan.summary}: {rendered}.")
    api.call(plan.request)
    cluster = api.cluster()
    got = cluster.get("ServerlessV2ScalingConfiguration") or {}
    wanted = plan.request.params["ServerlessV2ScalingConfiguration"]
    if any(float(got.get(k, -1)) != float(v) for k, v in wanted.items()):
        raise ProviderError(f"{block.label}: after ModifyDBCluster the range reads {got}, expected {wanted}; "
                            "check the cluster's pending modifications in the RDS console")
    pending = pending_reboot(api, cluster)
    rebooted = []
    if pending and block.allow_reboot:
        for member in pending:
            api.call(ApiRequest(service="rds", operation="RebootDBInstance",
                                params={"DBInstanceIdentifier": member}))
            rebooted.append(member)
    summary = f"{plan.summary[0].upper()}{plan.summary[1:]}: done, read back {got.get('MaxCapacity'):g} ACU"
    if rebooted:
        summary += f"; rebooted {', '.join(rebooted)} (parameters pending-reboot, allow_reboot is on)"
    elif pending:
        summary += (f"; max_connections (derived from MaxCapacity) takes effect only after a reboot of "
                    f"{', '.join(pending)} (pending-reboot; allow_reboot is off)")
    else:
        summary += ("; max_connections follows MaxCapacity only after the members reboot (no member reports "
                    "pending-reboot)")
    return ScaleResult(status="scaled", before=old, after=float(got["MaxCapacity"]), request=rendered,
                       pending_reboot=pending, rebooted=rebooted, summary=summary + ".")


def pending_reboot(api: AuroraApi, cluster: dict) -> list[str]:
    """Members whose cluster or instance parameters wait for a reboot."""
    pending = []
    for member in cluster.get("DBClusterMembers", []):
        ident = member["DBInstanceIdentifier"]
        if member.get("DBClusterParameterGroupStatus") == "pending-reboot":
            pending.append(ident)
            continue
        groups = api.instance(ident).get("DBParameterGroups", [])
        if any(g.get("ParameterApplyStatus") == "pending-reboot" for g in groups):
            pending.append(ident)
    return pending


# ---- failover ------------------------------------------------------------------------------------------------

def writer_of(cluster: dict) -> str | None:
    return next((m["DBInstanceIdentifier"] for m in cluster.get("DBClusterMembers", []) if m.get("IsClusterWriter")),
                None)


def failover_refusals(cluster: dict, target: str) -> list[str]:
    """Why FailoverDBCluster to `target` must not be sent now (empty: go)."""
    members = {m["DBInstanceIdentifier"]: m for m in cluster.get("DBClusterMembers", [])}
    reasons = []
    if cluster.get("Status") != "available":
        reasons.append(f"Aurora cluster {cluster.get('DBClusterIdentifier')} is {cluster.get('Status')}, not "
                       "available: wait for it and rerun")
    if target not in members:
        reasons.append(f"{target} is not a member of Aurora cluster {cluster.get('DBClusterIdentifier')} "
                       f"({', '.join(sorted(members)) or 'no members'})")
    elif members[target].get("IsClusterWriter"):
        reasons.append(f"{target} is already the writer of Aurora cluster {cluster.get('DBClusterIdentifier')}")
    return reasons


def promotion_warning(cluster: dict, target: str) -> str | None:
    """A warning when the target may be smaller than the writer: Serverless v2 readers in promotion tiers 0-1
    scale with the writer; tiers 2-15 scale on their own and may be at their minimum when promoted."""
    member = next((m for m in cluster.get("DBClusterMembers", []) if m["DBInstanceIdentifier"] == target), None)
    tier = member.get("PromotionTier") if member else None
    if cluster.get("ServerlessV2ScalingConfiguration") and tier is not None and tier >= 2:
        return (f"{target} is in promotion tier {tier}: Serverless v2 readers in tiers 2+ scale independently of "
                "the writer and may be at MinCapacity when promoted (expect a slow start under load); tiers 0-1 "
                "follow the writer's capacity")
    return None


def failover_request(block: AuroraCluster, target: str) -> ApiRequest:
    return ApiRequest(service="rds", operation="FailoverDBCluster", params={
        "DBClusterIdentifier": block.cluster_identifier, "TargetDBInstanceIdentifier": target})


def fail_over(api: AuroraApi, target: str, clock: Callable[[], float] = time.monotonic) -> dict:
    """FailoverDBCluster to `target`, then poll DescribeDBClusters until it is the writer and the cluster is
    available. {'request', 'polls', 'statuses', 'seconds'}; ProviderError on timeout or refusal."""
    block = api.block
    request = failover_request(block, target)
    started = clock()
    api.call(request)
    statuses, polls = [], 0
    deadline = started + block.failover_timeout_seconds
    while True:
        polls += 1
        try:
            cluster = api.cluster()
        except ProviderError as exc:
            if not exc.transient or clock() > deadline:
                raise
            cluster = {}
        status = cluster.get("Status")
        if status and (not statuses or statuses[-1] != status):
            statuses.append(status)
        if cluster and writer_of(cluster) == target and status == "available":
            return {"request": request.render(), "polls": polls, "statuses": statuses,
                    "seconds": round(clock() - started, 3), "endpoint": cluster.get("Endpoint"),
                    "port": cluster.get("Port")}
        if clock() > deadline:
            raise ProviderError(
                f"{block.label}: {target} is not the available writer {block.failover_timeout_seconds:g} s after "
                f"FailoverDBCluster (status {status or 'unknown'}, writer {writer_of(cluster) or 'unknown'}, seen "
                f"{' -> '.join(statuses) or 'nothing'}); check the cluster's events in the RDS console")
        api.sleep(block.poll_seconds)


# ---- metrics -------------------------------------------------------------------------------------------------

def metric_queries(block: AuroraCluster) -> list[dict]:
    dims = [{"Name": "DBClusterIdentifier", "Value": block.cluster_identifier}, {"Name": "Role", "Value": "WRITER"}]
    return [{"Id": key, "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": "AWS/RDS", "MetricName": name, "Dimensions": dims},
        "Period": block.metrics_period_seconds, "Stat": "Average"}} for key, name in CLOUDWATCH_METRICS.items()]


def cloudwatch_sample(api: AuroraApi, now: datetime | None = None) -> dict[str, float | None]:
    """The latest datapoint of each metric within the block's window (None where CloudWatch has none)."""
    now = now or datetime.now(UTC)
    block = api.block
    answer = api.call(ApiRequest(service="cloudwatch", operation="GetMetricData", params={
        "MetricDataQueries": metric_queries(block), "ScanBy": "TimestampDescending",
        "StartTime": now - timedelta(seconds=block.metrics_window_seconds), "EndTime": now + timedelta(seconds=60)}))
    values: dict[str, float | None] = dict.fromkeys(CLOUDWATCH_METRICS)
    for result in answer.get("MetricDataResults", []):
        points = sorted(zip(result.get("Timestamps", []), result.get("Values", []), strict=False),
                        key=lambda p: p[0], reverse=True)
        if points and result.get("Id") in values:
            values[result["Id"]] = float(points[0][1])
    return values
