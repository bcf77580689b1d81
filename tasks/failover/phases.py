"""The three phases of a failover run, each one Prefect task run with its own on_failure hook.

A phase used to be a subflow; a flow run costs up to a second at its exit (Prefect 3.9's heartbeat thread is
joined in 1 s steps), a task run a few milliseconds, and a task's on_failure hook runs just as a subflow's did
(`hooks.phase_failed`: undo where safe, then the Slack thread). The phases find the run's context by the parent
flow run's id (`run_key`).

A phase's steps are journaled calls inside its task run (tasks/failover/run.py `run_step`), and its reads plain
calls, not task runs of their own: fewer API writes, so fewer waits on a busy Prefect server. Inside the hold
(clients PAUSEd at pgbouncer) they run on connections opened before the PAUSE and held for the phase
(`held_connections`): the clients wait for PostgreSQL and pgbouncer, not for the orchestrator.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.db import connect
from tasks.core.publish import artifact_key, publish_markdown
from tasks.failover import endpoint as ep
from tasks.failover import hooks
from tasks.failover.model import FailoverPlan
from tasks.failover.plan import decide, probe_deadline
from tasks.failover.report import render_backup
from tasks.failover.run import RunContext, context, reply_phase, run_step
from tasks.failover.steps import (
    application_target,
    lift_login_retry,
    pause_endpoint,
    probe_application,
    read_backup,
    read_endpoint,
    read_node_state,
    repoint_endpoint,
    resume_endpoint,
    verify_promotion,
)
from tasks.failover.switch import backend_for
from tasks.failover.wiring import (
    LOGIN_RETRY_FACT,
    note_lifted,
    note_probe,
    restore_endpoint,
    resume_plan,
    save_cluster_block,
    start_journal,
)

PHASE = dict(retries=0, cache_policy=NO_CACHE, on_failure=[hooks.phase_failed])


@task(name="failover-pre", **PHASE)
def pre_failover(run_key: str) -> FailoverPlan:
    """Phase 1: inspect every node and the endpoint, decide (or refuse), back up the critical state."""
    ctx = context(run_key)
    started = time.perf_counter()
    states = {t.node: read_node_state.fn(t) for t in ctx.cluster.targets()}
    try:
        endpoint, endpoint_error = read_endpoint.fn(ctx.endpoint), None
    except Exception as exc:  # noqa: BLE001 - an unusable endpoint is a refusal reason
        endpoint, endpoint_error = {}, str(exc)
    backend = backend_for(ctx.node_control)
    own = getattr(backend, "decide", None)  # a backend with no standby to promote (Neon) plans on its own
    plan = resume_plan(ctx, states, endpoint_error) or (
        own(ctx, states, endpoint_error) if own else decide(ctx.request, ctx.cluster, states, endpoint_error,
                                                             ctx.endpoint.kind))
    plan = backend.preflight(ctx, plan, states)
    start_journal(ctx, plan)
    backup = {"states": {k: v.model_dump() for k, v in states.items()}, "endpoint": endpoint,
              "switch_backend": ctx.backend_view,
              "nodes": [read_backup.fn(t).model_dump() for t in ctx.cluster.targets() if states[t.node].reachable],
              "plan": plan.model_dump()}
    path = ctx.store.write_backup(ctx.cluster.cluster_name, ctx.run_id, backup)
    ctx.journal.facts["backup_path"] = str(path)
    publish_markdown(artifact_key("failover-backup", ctx.cluster.cluster_name), render_backup(backup),
                     f"Pre-failover backup of {ctx.cluster.cluster_name}")
    ctx.phase_seconds["pre-failover"] = time.perf_counter() - started
    reply_phase(ctx, 1, ctx.phase_seconds["pre-failover"])
    return plan


@contextlib.contextmanager
def held_connections(ctx: RunContext, candidate: str) -> Iterator[None]:
    """pgbouncer's admin console and the candidate, opened before the hold and closed when phase 2 ends. (PAUSE
    takes its own connection: the hold starts when it returns, and one that never returns is abandoned with it.)

    A candidate that cannot be reached now gets no held session: its steps then connect themselves (and say why
    they cannot)."""
    with contextlib.ExitStack() as stack:
        if ctx.endpoint.kind == "pgbouncer":
            ctx.held["admin"] = stack.enter_context(ep.admin(ctx.endpoint))
        with contextlib.suppress(Exception):
            ctx.held["candidate"] = stack.enter_context(
                connect(ctx.cluster.target(candidate), purpose="failover", statement_timeout_ms=10_000))
        try:
            yield
        finally:
            ctx.held.clear()
            ctx.holding = False
            ctx.save()  # the hold's last outcomes


@task(name="failover-switch", **PHASE)
def failover_phase(run_key: str) -> None:
    """Phase 2: hold the clients, switch the primary (the configured backend), verify, repoint, RESUME."""
    ctx = context(run_key)
    started = time.perf_counter()
    plan, c, endpoint = ctx.journal.plan, ctx.cluster, ctx.endpoint
    backend = backend_for(ctx.node_control)
    cand = c.target(plan.candidate)
    cand_state = read_node_state.fn(cand)
    backend.before_hold(ctx, plan, cand_state.reachable and cand_state.in_recovery is False)
    with held_connections(ctx, plan.candidate):
        admin = ctx.held.get("admin")
        ctx.holding = True  # from here to RESUME: held connections; outcomes fsynced with the next step's start
        run_step(ctx, 2, "pause-endpoint", "endpoint", pause_endpoint, endpoint, ctx.request.pause_timeout_seconds)
        ctx.paused_at = time.perf_counter()
        shutdown = backend.switch(ctx, plan, cand_state)
        verified = run_step(ctx, 2, "verify-promotion", cand.node, verify_promotion, cand, plan.original_timeline,
                            ctx.held.get("candidate"))
        ctx.journal.facts.update(new_timeline=verified["timeline"], switch_lsn=verified["switch_lsn"])
        if verified["switch_lsn"]:  # where the old timeline really ended (timeline history), not the journal's word
            ctx.journal.facts["promoted_at"] = verified["switch_lsn"]
        backend.after_verify(ctx, plan, shutdown)
        cand_host = c.node(plan.candidate).host
        run_step(ctx, 2, "repoint-endpoint", "endpoint", repoint_endpoint, endpoint, cand_host, cand.port, admin)
        note_lifted(ctx, run_step(ctx, 2, "lift-login-retry", "endpoint", lift_login_retry, endpoint, admin))
        run_step(ctx, 2, "resume-endpoint", "endpoint", resume_endpoint, endpoint, admin)
        ctx.write_pause_ms = round((time.perf_counter() - ctx.paused_at) * 1000, 1)
        ctx.paused_at = None
    ctx.phase_seconds["failover"] = time.perf_counter() - started
    reply_phase(ctx, 2, ctx.phase_seconds["failover"])


@task(name="failover-post", **PHASE)
def post_failover(run_key: str) -> None:
    """Phase 3: write-then-read through the endpoint (retried until its deadline; not confirmed is a warning, the
    new primary itself was verified in phase 2); pgbouncer's settings restored; the cluster block follows (one
    partial update of its document, tasks/failover/wiring.py)."""
    ctx = context(run_key)
    started = time.perf_counter()
    plan = ctx.journal.plan
    target = application_target(ctx.cluster.target(plan.candidate), ctx.endpoint)
    probe = run_step(ctx, 3, "probe-application", "endpoint", probe_application, target,
                     probe_deadline(ctx.request.endpoint_probe_seconds, ctx.journal.facts.get(LOGIN_RETRY_FACT),
                                    target.connect_timeout))
    note_probe(ctx, probe)
    restore_endpoint(ctx, 3)
    if probe["ok"] and probe["port"] != ctx.cluster.node(plan.candidate).port:
        raise hooks.endpoint_elsewhere(probe["port"], plan.candidate)
    run_step(ctx, 3, "update-cluster-block", "cluster", save_cluster_block, ctx.request.cluster_block,
             plan.candidate, plan.old_primary)
    backend_for(ctx.node_control).settle(ctx, plan)
    ctx.journal.status = "completed"
    ctx.phase_seconds["post-failover"] = time.perf_counter() - started
    reply_phase(ctx, 3, ctx.phase_seconds["post-failover"])
