"""Journal wiring of a failover run: fresh start or resume, and the cluster block update."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentUpdate

from blocks.postgres_cluster import PostgresCluster
from tasks.failover.journal import Journal
from tasks.failover.model import FailoverPlan, FailoverRefused, NodeState
from tasks.failover.plan import rerun_mode_decision, resume_point, unconfirmed_fence_refusal
from tasks.failover.run import RunContext, run_step
from tasks.failover.steps import restore_login_retry

LOGIN_RETRY_FACT = "login_retry_original"  # journal fact: pgbouncer's server_login_retry before the run lifted it
LOGIN_RETRY_RESTORED = "login_retry_restored"


def resume_plan(ctx: RunContext, states: dict[str, NodeState], endpoint_error: str | None) -> FailoverPlan | None:
    """The plan of an unfinished run whose phase 2 started (to be continued), else None (decide afresh).

    Only the plan (which node was leaving, which was promoted) comes from the journal; every
    step of phase 2 inspects the node again before acting. A dry run reads the journal and never
    changes it: it returns what the resume would do and leaves the journal for the real rerun.
    A rerun in failover mode replaces an unfinished switchover that never asked its candidate to promote:
    the run decides afresh and, unless that is refused, closes the old journal as superseded (kept).
    """
    dry_run = ctx.request.dry_run
    journal = ctx.store.load(ctx.cluster.cluster_name)
    if journal is None:
        return None
    if journal.status != "in_progress" or not any(s.phase >= 2 for s in journal.steps):
        if not dry_run:
            ctx.store.archive(ctx.cluster.cluster_name)
        return None
    plan = journal.plan
    action, note = rerun_mode_decision(plan, journal.steps, ctx.request.mode, journal.run_id)
    if action == "supersede":  # closed by start_journal, once the fresh plan is not refused
        ctx.supersedes = (journal.run_id, note)
        return None
    reasons = []
    if fence_reason := unconfirmed_fence_refusal(ctx.request, ctx.endpoint.kind):
        reasons.append(fence_reason)
    if ctx.request.candidate and ctx.request.candidate != plan.candidate:
        reasons.append(f"an unfinished failover of {plan.cluster} to {plan.candidate} (run {journal.run_id}) must "
                       f"be completed first: rerun with candidate {plan.candidate} or empty")
    if endpoint_error:
        reasons.append(f"the endpoint is unusable: {endpoint_error}")
    writable = [n for n, s in states.items() if s.reachable and s.in_recovery is False]
    if len(writable) > 1:
        reasons.append(f"SPLIT BRAIN: {', '.join(writable)} all accept writes; stop {plan.old_primary} by hand")
    if not states[plan.candidate].reachable:
        reasons.append(f"candidate {plan.candidate} is unreachable ({states[plan.candidate].error})")
    if reasons:
        raise FailoverRefused(reasons)
    after, start = resume_point(plan, journal.steps)
    journal = journal.model_copy(deep=True) if dry_run else journal  # a dry run's copy is never saved
    journal.plan = plan.model_copy(update={"resumed": True, "resumed_from_run": journal.run_id,
                                           "resume_after": after, "resume_from": start,
                                           "warnings": [*plan.warnings, *([note] if note else [])]})
    journal.facts["resumed_from_run"] = journal.run_id
    journal.run_id = ctx.run_id
    ctx.journal = journal
    return journal.plan


def start_journal(ctx: RunContext, plan: FailoverPlan) -> None:
    if ctx.journal is None:
        if ctx.supersedes:
            plan.warnings.append(ctx.supersedes[1])
            close_superseded(ctx)
        now = datetime.now(UTC)
        ctx.journal = Journal(cluster=ctx.cluster.cluster_name, run_id=ctx.run_id, plan=plan, started_at=now,
                              updated_at=now, slack_channel=ctx.thread.outcome.channel)
        if ctx.supersedes:
            ctx.journal.facts["supersedes_run"] = ctx.supersedes[0]
    ctx.save()


def close_superseded(ctx: RunContext) -> None:
    """Mark the unfinished run this one replaces as superseded and archive it (kept, never deleted)."""
    old = ctx.store.load(ctx.cluster.cluster_name)
    if ctx.request.dry_run or old is None or old.run_id != ctx.supersedes[0]:
        return
    old.status = "superseded"
    old.facts.update(superseded_by=ctx.run_id, superseded_because=ctx.supersedes[1])
    ctx.store.save(old)
    ctx.store.archive(ctx.cluster.cluster_name)


@task(name="update-cluster-block", retries=0, cache_policy=NO_CACHE)  # the Prefect client retries 429/503 itself
def save_cluster_block(block_name: str, new_primary: str, fenced: str) -> str:
    """Every scheduled flow follows the new primary; the old one is recorded as fenced.

    One read and one partial update of the block document (the server merges the two fields into the stored data:
    every other field, the password included, stays as it is), instead of Block.save's schema registration."""
    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(block_name, PostgresCluster.get_block_type_slug(),
                                                 include_secrets=False)
        fenced_nodes = sorted({*(doc.data.get("fenced_nodes") or []), fenced} - {new_primary})
        client.update_block_document(doc.id, BlockDocumentUpdate(
            data={"primary_node": new_primary, "fenced_nodes": fenced_nodes}, merge_existing_data=True))
    return f"block {block_name}: primary_node={new_primary}, fenced={fenced_nodes}"


def note_lifted(ctx: RunContext, lifted: dict) -> None:
    """Remember the server_login_retry value to put back (the journal outlives the worker; hooks read it)."""
    if lifted.get("original") is not None:
        ctx.journal.facts[LOGIN_RETRY_FACT] = lifted["original"]
        ctx.journal.facts[LOGIN_RETRY_RESTORED] = False
        if not ctx.holding:  # inside the hold: written with the next record (a rerun's RELOAD restores it anyway)
            ctx.save()


def note_probe(ctx: RunContext, probe: dict) -> None:
    """The probe's verdict: when writes through the endpoint were confirmed, or why not yet."""
    facts = ctx.journal.facts
    facts["endpoint_verified"] = bool(probe["ok"])
    if probe["ok"]:
        facts["writes_back_at"] = probe["at"]
        facts.pop("endpoint_error", None)
    else:
        facts["endpoint_error"] = probe["error"]
        facts["endpoint_probe_detail"] = probe["detail"]
    ctx.save()


def restore_endpoint(ctx: RunContext, phase: int) -> None:
    """SET server_login_retry back to the value the run found, once (a journaled step)."""
    facts = ctx.journal.facts
    if facts.get(LOGIN_RETRY_FACT) is None or facts.get(LOGIN_RETRY_RESTORED):
        return
    run_step(ctx, phase, "restore-login-retry", "endpoint", restore_login_retry, ctx.endpoint, facts[LOGIN_RETRY_FACT])
    facts[LOGIN_RETRY_RESTORED] = True
    ctx.save()
