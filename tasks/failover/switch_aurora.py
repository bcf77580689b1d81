"""The Aurora switch backend: Aurora promotes (FailoverDBCluster), we keep the plan, the checks, the journal, the
approval, Slack and the verification.

Phase 1 reads DescribeDBClusters beside our SQL checks and refuses when the cluster is not available, the
candidate is not a member or already the writer, or Aurora's writer is not the plan's old primary; it warns when
the candidate's promotion tier lets it be smaller than the writer. The plan's step says the exact API request (a
dry run stops there). Phase 2: FailoverDBCluster(TargetDBInstanceIdentifier), poll DescribeDBClusters until the
candidate is the writer and the cluster is available, then fresh SQL connections through the cluster's writer
endpoint until one writes, and the flow verifies the candidate itself. Before the clients go on, the old writer
must no longer accept writes (Aurora restarts it as a reader; a client that cached the writer endpoint's DNS gets
SQLSTATE 25006 there). Phase 3: the readers follow the new writer on their own; we read the members back.
Node names of the PostgresCluster block are the DB instance identifiers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.aurora import AuroraCluster
from blocks.postgres_cluster import ConnectionTarget
from tasks.core import aurora
from tasks.core.db import connect, fetch_one_fresh
from tasks.core.errors import ProviderError, RunbookDBError
from tasks.failover.model import FailoverPlan, FailoverRefused, FailoverStepFailed, NodeState, PlannedStep
from tasks.failover.run import run_step
from tasks.failover.run import skip_step as skip
from tasks.failover.switch_patroni import IN_RECOVERY_SQL

if TYPE_CHECKING:
    from tasks.failover.run import RunContext

STEP = dict(retries=0, cache_policy=NO_CACHE)
NATIVE_ONLY = {"checkpoint", "fence", "lsn-gate", "promote", "follow-new-primary"}
# Which server answers this connection (address, port, start), and is it in recovery?
SERVER_SQL = """
SELECT pg_catalog.host(pg_catalog.inet_server_addr()) AS addr,
       pg_catalog.inet_server_port()                  AS port,
       pg_catalog.pg_postmaster_start_time()::text    AS started,
       pg_catalog.pg_is_in_recovery()                 AS in_recovery
"""


class _Server(BaseModel):
    addr: str | None
    port: int | None
    started: str
    in_recovery: bool


def plan_steps(plan: FailoverPlan, request: aurora.ApiRequest, members: list[str]) -> list[PlannedStep]:
    """The native plan with Aurora's failover in place of checkpoint/fence/gate/promote and a read of the members
    in place of our follow-new-primary."""
    if any(s.step == "aurora-failover" for s in plan.steps):  # a resumed plan has them already
        return list(plan.steps)
    steps: list[PlannedStep] = []
    for s in plan.steps:
        if s.step == "notify":
            steps += [PlannedStep(phase=3, step="await-aurora-reader", node=m, why=(
                f"Aurora restarts it as a reader of {plan.candidate}; read DescribeDBClusters until it is one"))
                for m in members if m != plan.candidate]
        if s.step not in NATIVE_ONLY:
            steps.append(s)
        if s.step == "pause-endpoint":
            steps.append(PlannedStep(phase=2, step="aurora-failover", node=plan.candidate, why=(
                f"{request.render()} (Aurora has no separate fence: it stops the old writer and promotes the "
                "target); then poll DescribeDBClusters until the target is the writer and the cluster available, "
                "and fresh connections through the writer endpoint until one writes")))
        if s.step == "verify-promotion":
            steps.append(PlannedStep(phase=2, step="await-old-demoted", node=plan.old_primary, why=(
                "never two writable primaries: wait until the old writer accepts no writes; count how long it "
                "answered SQLSTATE 25006 (read-only) to a client that cached the writer endpoint")))
    return steps


@task(name="aurora-failover", **STEP)
def aurora_failover(block: AuroraCluster, cand: ConnectionTarget) -> dict:
    """FailoverDBCluster to the candidate, wait until it is the available writer (DescribeDBClusters), then until a
    fresh SQL connection through the cluster's writer endpoint (a CNAME, 5 s TTL) reaches a server out of recovery."""
    try:
        done = aurora.fail_over(aurora.AuroraApi(block), cand.node)
    except ProviderError as exc:
        raise FailoverStepFailed(str(exc)) from None
    writer = writer_target(block, done, cand)
    started = time.monotonic()
    if not wait_reaches(writer, cand, started + block.failover_timeout_seconds):
        raise FailoverStepFailed(f"Aurora made {cand.node} the writer, but a fresh SQL connection through "
                                 f"{writer.label} does not reach {cand.node} out of recovery "
                                 f"{block.failover_timeout_seconds:g} s later; clients stay held: check the writer "
                                 "endpoint and the instance in the RDS console, then rerun")
    done["writer_endpoint_writable_after_s"] = round(time.monotonic() - started, 3)
    return {**done, "detail": f"{done['request']} → {cand.node} is the writer, cluster available after "
            f"{done['seconds']:.1f} s ({done['polls']} polls; seen {' -> '.join(done['statuses'])}); a fresh "
            f"connection through {writer.label} reached it out of recovery "
            f"{done['writer_endpoint_writable_after_s']:.1f} s later"}


def server(target: ConnectionTarget) -> _Server | None:
    return fetch_one_fresh(target, SERVER_SQL, _Server, purpose="failover")


def wait_reaches(writer: ConnectionTarget, cand: ConnectionTarget, deadline: float) -> bool:
    """Poll fresh connections through the writer endpoint until they reach the candidate itself (same address,
    port and start time as a direct connection) out of recovery: a writable server there that is not the candidate
    is the old writer behind a stale DNS answer, and does not count."""
    while True:
        through = server(writer)
        if through is not None and not through.in_recovery:
            direct = server(cand)
            if direct is not None and (through.addr, through.port, through.started) == (
                    direct.addr, direct.port, direct.started):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def writer_target(block: AuroraCluster, done: dict, cand: ConnectionTarget) -> ConnectionTarget:
    """The candidate's connection settings aimed at the cluster's writer endpoint (or the block's override)."""
    host = block.writer_host or done.get("endpoint") or cand.host
    port = block.writer_port or done.get("port") or cand.port
    return cand.model_copy(update={"node": "writer endpoint", "host": host, "port": port,
                                   "via_pooler": block.writer_is_pooler})


@task(name="await-old-demoted", **STEP)
def await_demoted(old: ConnectionTarget, timeout_s: float) -> dict:
    """Wait until the old writer accepts no writes (a reader, restarting or unreachable)."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        try:
            with connect(old, purpose="failover", statement_timeout_ms=5_000) as db:
                writable = db.scalar(IN_RECOVERY_SQL) is False
        except RunbookDBError as exc:
            return {"detail": f"{old.node} accepts no writes (unreachable: {exc.problem})",
                    "read_only_after_s": round(time.monotonic() - started, 3)}
        if not writable:
            return {"detail": f"{old.node} is a reader (in recovery): a client with a cached writer address gets "
                              "SQLSTATE 25006 there until its DNS cache expires (writer endpoint TTL 5 s)",
                    "read_only_after_s": round(time.monotonic() - started, 3)}
        if time.monotonic() > deadline:
            raise FailoverStepFailed(
                f"{old.node} still accepts writes {timeout_s:.0f} s after Aurora made another instance the writer: "
                "clients stay held; check the instance in the RDS console before rerunning")
        time.sleep(0.2)


@task(name="await-aurora-reader", **STEP)
def await_reader(block: AuroraCluster, node: str, writer: str) -> dict:
    """Read the members back: `node` is a reader and `writer` the writer."""
    try:
        cluster = aurora.AuroraApi(block).cluster()
    except ProviderError as exc:
        return {"status": "failed", "detail": str(exc)}
    member = next((m for m in cluster.get("DBClusterMembers", []) if m["DBInstanceIdentifier"] == node), None)
    if member is not None and not member.get("IsClusterWriter") and aurora.writer_of(cluster) == writer:
        return {"status": "streaming", "detail": f"{node} is a reader of {writer} (Aurora)"}
    return {"status": "failed", "detail": f"{node} is not a reader of {writer} in DescribeDBClusters (writer "
            f"{aurora.writer_of(cluster) or 'none'}); check the cluster in the RDS console"}


class AuroraSwitch:
    """Aurora fails over its own instances; we never stop, start or promote them ourselves."""

    name = "Aurora"

    def __init__(self, block: AuroraCluster):
        self.block = block

    def preflight(self, ctx: RunContext, plan: FailoverPlan, states: dict[str, NodeState]) -> FailoverPlan:
        try:
            cluster = aurora.AuroraApi(self.block).cluster()
        except ProviderError as exc:
            raise FailoverRefused([f"cannot read {self.block.label}: {exc}"]) from None
        ctx.backend_view = {"backend": self.name, "cluster": _view(cluster)}
        writer = aurora.writer_of(cluster)
        if plan.resumed and writer == plan.candidate:
            reasons = []
        else:
            reasons = aurora.failover_refusals(cluster, plan.candidate)
            if writer != plan.old_primary:
                reasons.append(f"Aurora's writer is {writer or 'none'}, the plan's old primary is {plan.old_primary}: "
                               "fix the PostgresCluster block (node names are instance identifiers)")
        if reasons:
            raise FailoverRefused(reasons)
        warnings = list(plan.warnings)
        if warning := aurora.promotion_warning(cluster, plan.candidate):
            warnings.append(warning)
        members = [m["DBInstanceIdentifier"] for m in cluster.get("DBClusterMembers", [])]
        request = aurora.failover_request(self.block, plan.candidate)
        # Aurora's shared storage does not promise PostgreSQL's timeline switch: verify-promotion checks that the
        # candidate left recovery and commits a write, not that its timeline went up.
        return plan.model_copy(update={"steps": plan_steps(plan, request, members), "warnings": warnings,
                                       "original_timeline": None})

    def before_hold(self, ctx: RunContext, plan: FailoverPlan, promoted: bool) -> None:
        """Nothing: Aurora's storage is shared; there is no WAL to carry over."""

    def switch(self, ctx: RunContext, plan: FailoverPlan, candidate: NodeState) -> dict:
        if candidate.reachable and candidate.in_recovery is False:
            skip(ctx, 2, "aurora-failover", plan.candidate, f"{plan.candidate} is already writable: resuming after "
                 "the failover, not failing over twice")
        else:
            done = run_step(ctx, 2, "aurora-failover", plan.candidate, aurora_failover, self.block,
                            ctx.cluster.target(plan.candidate))
            ctx.journal.facts["aurora_failover"] = done
        return {"state": None, "checkpoint": None, "timeline": None}

    def after_verify(self, ctx: RunContext, plan: FailoverPlan, shutdown: dict) -> None:
        done = run_step(ctx, 2, "await-old-demoted", plan.old_primary, await_demoted,
                        ctx.cluster.target(plan.old_primary), self.block.failover_timeout_seconds)
        ctx.journal.facts["old_writer_read_only_after_s"] = done["read_only_after_s"]

    def settle(self, ctx: RunContext, plan: FailoverPlan) -> None:
        for node in [s.node for s in plan.steps if s.step == "await-aurora-reader"]:
            result = run_step(ctx, 3, "await-aurora-reader", node, await_reader, self.block, node, plan.candidate)
            ctx.journal.facts.setdefault("followers", {})[node] = result["status"]
            if node == plan.old_primary:
                ctx.journal.facts["old_primary_note"] = (
                    f"{node} is a reader (Aurora); {stale_dns_sentence(ctx.journal.facts)}"
                    if result["status"] == "streaming" else f"{node} is NOT a reader yet (check the RDS console)")


def stale_dns_sentence(facts: dict) -> str:
    """The SQLSTATE 25006 window as far as the run can see it: when the old writer stopped taking writes and when a
    fresh lookup of the writer endpoint reached the new writer. How long a client that cached the endpoint's address
    keeps getting 25006 from the old writer (now a reader) is its DNS cache's lifetime, which no server sees."""
    failover = facts.get("aurora_failover") or {}
    moved = failover.get("writer_endpoint_writable_after_s")
    demoted = facts.get("old_writer_read_only_after_s")
    seen = []
    if moved is not None:
        seen.append(f"a fresh lookup of the writer endpoint reached the new writer {moved:.1f} s after Aurora "
                    "reported the failover done")
    if demoted is not None:
        seen.append(f"the old writer refused writes {demoted:.1f} s after that")
    return ((", ".join(seen) + "; " if seen else "") +
            "a client that cached the writer endpoint's address gets SQLSTATE 25006 (read-only) from the old writer "
            "until its DNS cache expires: up to the endpoint's 5 s TTL after the move if it honours the TTL, until "
            "reconnect otherwise (JVM: networkaddress.cache.ttl)")


def _view(cluster: dict) -> dict:
    """What the backup keeps of DescribeDBClusters."""
    keys = ("DBClusterIdentifier", "Status", "Endpoint", "ReaderEndpoint", "EngineVersion",
            "ServerlessV2ScalingConfiguration", "DBClusterMembers")
    return {k: cluster[k] for k in keys if k in cluster}
