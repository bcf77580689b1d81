"""The live context of one failover run: blocks, journal, Slack thread, and the journaled step runner.

Phase subflows and their hooks find the context by the parent run's id (`run_key`). Every step
is journaled (started / done / failed, with its duration) before and after it runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import Task

from blocks.failover_adapters import EndpointControl, NodeControl
from blocks.postgres_cluster import PostgresCluster
from tasks.core.findings import md_cell
from tasks.core.notify import SlackThread, open_thread, section_blocks
from tasks.core.progress import Progress, progress_enabled
from tasks.core.publish import artifact_key
from tasks.failover.journal import Journal, JournalStore
from tasks.failover.model import FailoverRequest, StepRecord

FAULT_ENV = "PG_RUNBOOKS_FAILOVER_FAIL_AFTER"  # test hook: raise right after the named step
HANG_ENV = "PG_RUNBOOKS_FAILOVER_HANG_AFTER"  # test hook: block right after the named step (to kill the worker)
PHASES = {1: "pre-failover", 2: "failover", 3: "post-failover"}
# Inside the hold, steps whose "started" record need not reach the disk before they run: they only read, or they
# act on pgbouncer idempotently (a rerun repoints, RELOADs and RESUMEs again; the RELOAD puts back the ini's
# server_login_retry). Every other step (the fence, the promotion) is write-ahead, there too.
DEFERRED_IN_HOLD = {"read-shutdown-checkpoint", "lsn-gate", "verify-promotion", "replay-received", "await-old-demoted",
                    "repoint-endpoint", "lift-login-retry", "resume-endpoint"}


class InjectedFault(RuntimeError):
    """Raised after a named step when PG_RUNBOOKS_FAILOVER_FAIL_AFTER asks for it (tests, drills)."""


@dataclass
class RunContext:
    run_id: str
    request: FailoverRequest
    cluster: PostgresCluster
    node_control: NodeControl
    endpoint: EndpointControl
    store: JournalStore
    thread: SlackThread
    journal: Journal | None = None
    ui_url: str | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)
    paused_at: float | None = None
    write_pause_ms: float | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    progress: list[str] = field(default_factory=list)
    supersedes: tuple[str, str] | None = None  # (run id, why) of an unfinished run this one replaces
    bar: Progress | None = None  # the progress artifact of phases 2 and 3, one step per planned step
    backend_view: dict = field(default_factory=dict)  # what the switch backend read in phase 1 (backup)
    holding: bool = False  # phase 2's hold (PAUSE to RESUME): step outcomes are fsynced with the next step
    held: dict = field(default_factory=dict)  # connections held for phase 2: 'admin' (pgbouncer), 'candidate'

    @property
    def clients_paused(self) -> bool:
        return self.paused_at is not None

    def save(self) -> None:
        """Persist the journal; a dry run never writes it (an unfinished run's journal must survive it)."""
        if self.journal is not None and not self.request.dry_run:
            self.journal.slack_parent_ts = self.thread.outcome.parent_ts or self.journal.slack_parent_ts
            self.store.save(self.journal)


_CONTEXTS: dict[str, RunContext] = {}


def open_context(request: FailoverRequest, run_id: str, ui_url: str | None) -> RunContext:
    """Load the blocks of a run (a missing block is a clear error before anything changes)."""
    thread = open_thread(request.slack_block)
    ctx = RunContext(
        run_id=run_id, request=request, cluster=PostgresCluster.load(request.cluster_block),
        node_control=NodeControl.load(request.node_control_block),
        endpoint=EndpointControl.load(request.endpoint_block),
        store=JournalStore(request.journal_dir), thread=thread, ui_url=ui_url)
    _CONTEXTS[run_id] = ctx
    return ctx


def context(run_key: str) -> RunContext | None:
    return _CONTEXTS.get(run_key)


def close_context(run_key: str) -> None:
    ctx = _CONTEXTS.pop(run_key, None)
    if ctx is not None and ctx.bar is not None:  # not closed by the report: the run stopped early
        last = next((s for s in reversed(ctx.journal.steps) if s.status != "started"), None)
        where = f"after step {last.step} on {last.node} ({last.status})" if last else "before its first step"
        close_progress(ctx, f"stopped {where}: see the run's state and the failover report")
        ctx.bar.join()  # the run is over: let the last state reach the API


def run_step(ctx: RunContext, phase: int, step: str, node: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Journal the step, run it, journal its outcome; re-raise its error after recording it.

    A step is a journaled call inside its phase's task run (tasks/failover/phases.py): a step given as a Prefect
    task runs as its function, without a task run of its own (3 API writes, 5-40 ms, and on a busy SQLite-backed
    server a 2 s client back-off now and then). The journal, the progress artifact and the report list every
    step. Write-ahead: a step that changes a node has its "started" record fsynced before it acts. Inside
    phase 2's hold (`ctx.holding`) that one write also carries the outcomes of the steps before it (a step's
    outcome is otherwise written at once), and the records of reads and of pgbouncer's idempotent steps
    (`DEFERRED_IN_HOLD`) wait for the next write; the hold's end writes the rest. A crash in between leaves at
    worst a "started" record without its outcome, and the rerun inspects every node again, as it always does.
    """
    journal = ctx.journal
    started = time.perf_counter()
    journal.steps.append(StepRecord(phase=phase, step=step, node=node, status="started", at=datetime.now(UTC)))
    if not (ctx.holding and step in DEFERRED_IN_HOLD):
        ctx.save()
    if isinstance(fn, Task):
        fn = fn.fn
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        _record(ctx, phase, step, node, "failed", _sentence(exc), started)
        close_progress(ctx, f"stopped at step {step} on {node}: {_sentence(exc)}", wait=False)  # undo first
        raise
    detail = result if isinstance(result, str) else str(result.get("detail", "")) if isinstance(result, dict) else ""
    _record(ctx, phase, step, node, "done", detail, started)
    if os.environ.get(FAULT_ENV) == step:
        raise InjectedFault(f"injected fault after step {step} ({FAULT_ENV})")
    if os.environ.get(HANG_ENV) == step:
        ctx.save()  # what a killed worker leaves: every record so far
    while os.environ.get(HANG_ENV) == step:
        time.sleep(1)
    return result


def skip_step(ctx: RunContext, phase: int, step: str, node: str, why: str) -> None:
    _record(ctx, phase, step, node, "skipped", why, time.perf_counter())


def _record(ctx: RunContext, phase: int, step: str, node: str, status: str, detail: str, started: float) -> None:
    ctx.journal.steps.append(StepRecord(
        phase=phase, step=step, node=node, status=status, detail=detail[:500], at=datetime.now(UTC),
        duration_ms=round((time.perf_counter() - started) * 1000, 1)))
    if not ctx.holding or status == "failed":  # inside the hold: written with the next step's "started" record
        ctx.save()
    _move_progress(ctx, f"{step} on {node}: {status}")


# ---------------------------------------------------------------- progress artifact
def _move_progress(ctx: RunContext, current: str) -> None:
    """The bar counts the planned steps the journal has done or skipped (a resumed run starts where the
    earlier one stopped). It starts with phase 2's first step; its API calls run in a background thread,
    so no step waits for them."""
    plan = ctx.journal.plan
    if ctx.request.dry_run or not plan.steps:
        return
    if ctx.bar is None:
        if not progress_enabled():
            return
        ctx.bar = Progress(artifact_key("failover-progress", plan.cluster), len(plan.steps),
                           f"{plan.mode.capitalize()} of {plan.cluster}: {plan.old_primary} → {plan.candidate}",
                           "steps", flow_run_id=ctx.run_id if ctx.run_id != "local" else None).start()
    planned = {(p.step, p.node) for p in plan.steps}
    finished = {(s.step, s.node) for s in ctx.journal.steps if s.status in ("done", "skipped")}
    ctx.bar.set(len(planned & finished), current)


def close_progress(ctx: RunContext, outcome: str, complete: bool = False, wait: bool = True) -> None:
    """The bar's last state: completed (every step), or where the run stopped and why."""
    if ctx.bar is None:
        return
    if complete:
        ctx.bar.set(ctx.bar.total)
    ctx.bar.close(outcome, wait=wait)


def _sentence(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]


# ---------------------------------------------------------------- Slack
def headline(ctx: RunContext, status: str) -> str:
    plan = ctx.journal.plan if ctx.journal else None
    what = f"{plan.old_primary} → {plan.candidate}" if plan else "deciding"
    return f"Failover {ctx.cluster.cluster_name} ({ctx.request.mode}) {what}: {status}"


def post_progress(ctx: RunContext, status: str, line: str | None = None) -> None:
    """Update the run's parent message in place (posted on first use)."""
    if line:
        ctx.progress.append(line)
    footer = f"<{ctx.ui_url}|Flow run in Prefect>" if ctx.ui_url else None
    ctx.thread.post(headline(ctx, status), section_blocks(headline(ctx, status), ctx.progress or [status], footer))
    ctx.save()


def phase_lines(ctx: RunContext, phase: int) -> list[str]:
    steps = [s for s in ctx.journal.steps if s.phase == phase and s.status != "started"] if ctx.journal else []
    return [f"• `{s.step}` on {s.node}: {s.status} in {s.duration_ms:.0f} ms — {md_cell(s.detail)}" for s in steps]


def reply_phase(ctx: RunContext, phase: int, seconds: float) -> None:
    title = f"Phase {phase}/3 {PHASES[phase]}: done in {seconds:.2f} s"
    ctx.thread.reply(title, section_blocks(title, phase_lines(ctx, phase) or ["no steps"]))
