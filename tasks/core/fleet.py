"""Fleets: which clusters a fleet is, and running one runbook over all of them.

A fleet run starts each cluster's run as its own flow run (its own history, artifacts and Slack thread), at
most `max_parallel` at a time. A cluster's failure, timeout or unreachability is that cluster's line in the
summary; it never stops or hides the others. The summary is one artifact and one Slack digest whose thread
lists what is not ok.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from blocks.fleet import Fleet
from tasks.core.findings import md_cell
from tasks.core.notify import NotificationOutcome, open_thread, section_blocks

MemberStatus = Literal["ok", "warning", "critical", "unknown", "failed", "timed-out", "not-started"]
NOT_OK_ORDER = ["failed", "timed-out", "critical", "unknown", "warning", "not-started"]
GRACE_SECONDS = 30.0  # past its own timeout, a run that still has not returned is abandoned (reported timed out)


class EmptyFleet(ValueError):
    """The fleet selects no cluster block: nothing would run, so the run fails and says so."""

    action = ("save PostgresCluster blocks with the fleet's name prefix or tags, or list members in the Fleet "
              "block (Blocks page of the Prefect UI)")

    def __init__(self, fleet: str, how: str):
        self.fleet, self.how = fleet, how
        super().__init__(f"fleet {fleet!r} selects no PostgresCluster block ({how}) — {self.action}")


class MemberResult(BaseModel):
    """One cluster's run within a fleet run."""

    cluster: str = Field(description="The PostgresCluster block name.")
    status: MemberStatus = "unknown"
    summary: str = ""
    flow_run_id: str | None = None
    url: str | None = None
    seconds: float = 0.0


class FleetReport(BaseModel):
    """A fleet run: every cluster's outcome, worst first in the digest."""

    runbook: str
    fleet: str
    started_at: datetime
    finished_at: datetime | None = None
    members: list[MemberResult] = Field(default_factory=list)
    status: Literal["ok", "warning", "critical"] = "ok"
    summary: str = ""
    artifact_key: str | None = None
    notification: NotificationOutcome | None = None

    def count(self, status: str) -> int:
        return sum(1 for m in self.members if m.status == status)

    @property
    def not_ok(self) -> list[MemberResult]:
        bad = [m for m in self.members if m.status != "ok"]
        return sorted(bad, key=lambda m: (NOT_OK_ORDER.index(m.status), m.cluster))


def resolve_fleet(fleet: Fleet | None, cluster_blocks: list[str] | None = None,
                  cluster_group: str | None = None, fleet_name: str = "fleet") -> list[str]:
    """The cluster block names of a fleet: listed members (and `cluster_blocks`), every PostgresCluster block whose
    name starts with the prefix (the fleet's or `cluster_group`), or that carries all the fleet's tags; minus the
    excluded. One API call lists the cluster blocks (never their secrets). Raises EmptyFleet if none."""
    names = list(cluster_blocks or []) + (list(fleet.members) if fleet else [])
    prefixes = [p for p in (cluster_group, fleet.name_prefix if fleet else None) if p]
    tags = set(fleet.tags) if fleet else set()
    if prefixes or tags:
        for name, data in sorted(_cluster_documents().items()):
            block_tags = set(data.get("tags") or [])
            if any(name.startswith(p) for p in prefixes) or (tags and tags <= block_tags):
                names.append(name)
    excluded = set(fleet.exclude) if fleet else set()
    out = [n for n in dict.fromkeys(names) if n not in excluded]
    if not out:
        raise EmptyFleet(fleet_name, _how(fleet, cluster_group))
    return out


def _how(fleet: Fleet | None, cluster_group: str | None) -> str:
    parts = [f"prefix {p!r}" for p in (cluster_group, fleet.name_prefix if fleet else None) if p]
    if fleet and fleet.tags:
        parts.append(f"tags {sorted(fleet.tags)}")
    if fleet and fleet.members:
        parts.append(f"members {fleet.members} minus excluded {fleet.exclude}")
    return ", ".join(parts) or "nothing listed"


def _cluster_documents() -> dict[str, dict[str, Any]]:
    """Every PostgresCluster block: name -> its (secret-free) data."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        # One call: this endpoint returns every block of the type (it ignores offset and limit).
        docs = client.read_block_documents_by_type("postgres-cluster", include_secrets=False)
    return {d.name: dict(d.data or {}) for d in docs if d.name and not d.is_anonymous}


def run_members(clusters: list[str], launch: Callable[[str], MemberResult], max_parallel: int,
                timeout_seconds: float, poll_seconds: float = 0.05) -> list[MemberResult]:
    """`launch(cluster)` for every cluster, at most `max_parallel` at a time, each on its own daemon thread (which
    carries the caller's Prefect context, so a flow called there is a child of the fleet run).

    A launch that raises is that cluster's `failed` line; one still running `GRACE_SECONDS` after its timeout is
    abandoned as `timed-out` and its slot freed. Results come back in the order of `clusters`.
    """
    results: dict[str, MemberResult] = {}
    pending = list(clusters)
    running: dict[str, tuple[Future, float]] = {}
    while pending or running:
        now = time.monotonic()
        for cluster, (future, started) in list(running.items()):
            if future.done():
                results[cluster] = _outcome(cluster, future, now - started)
            elif now - started > timeout_seconds + GRACE_SECONDS:
                results[cluster] = MemberResult(
                    cluster=cluster, status="timed-out", seconds=now - started,
                    summary=f"No result after {timeout_seconds:g} s (+{GRACE_SECONDS:g} s grace): "
                            "abandoned; its own run says where it stopped.")
            else:
                continue
            del running[cluster]
        while pending and len(running) < max_parallel:
            cluster = pending.pop(0)
            running[cluster] = (_start(launch, cluster), time.monotonic())
        if running:
            time.sleep(poll_seconds)
    return [results[c] for c in clusters]


def _start(launch: Callable[[str], MemberResult], cluster: str) -> Future:
    future: Future = Future()
    context = contextvars.copy_context()

    def body() -> None:
        try:
            future.set_result(context.run(launch, cluster))
        except BaseException as exc:  # noqa: BLE001 - any failure is this cluster's line, never the fleet's
            future.set_exception(exc)

    threading.Thread(target=body, name=f"fleet-{cluster}", daemon=True).start()
    return future


def _outcome(cluster: str, future: Future, seconds: float) -> MemberResult:
    exc = future.exception()
    if exc is None:
        result = future.result()
        result.seconds = result.seconds or seconds
        return result
    return MemberResult(cluster=cluster, status="failed", seconds=seconds,
                        summary=f"Not run: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")


def member_from_state(cluster: str, state: Any, ui_url: str | None) -> MemberResult:
    """A finished child run's line: the runbook's own status and summary when it returned a report, else the run's
    final state (Failed, Crashed, TimedOut, Cancelled) and its message."""
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    url = f"{ui_url.rstrip('/')}/runs/flow-run/{run_id}" if ui_url and run_id else None
    member = MemberResult(cluster=cluster, flow_run_id=run_id, url=url)
    if state.is_completed():
        try:
            report = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - a result that cannot be read (not persisted): the state says enough
            report = None
        status = getattr(report, "status", "unknown")
        member.status = status if status in ("ok", "warning", "critical", "unknown") else "unknown"
        member.summary = getattr(report, "summary", "") or f"Completed ({state.name})."
        return member
    timed_out = state.name == "TimedOut" or "timed out" in (state.message or "").lower()
    member.status = "timed-out" if timed_out else "failed"
    member.summary = f"{state.name}: {(state.message or 'no message').splitlines()[0][:300]}"
    return member


def finish(report: FleetReport) -> FleetReport:
    n = len(report.members)
    counts = {s: report.count(s) for s in ("ok", *NOT_OK_ORDER)}
    severe = counts["failed"] + counts["timed-out"] + counts["critical"]
    report.status = "critical" if severe else "warning" if n - counts["ok"] else "ok"
    said = ", ".join(f"{c} {s}" for s, c in counts.items() if c)
    report.summary = (f"{report.runbook} over fleet {report.fleet}: {n} cluster(s), {said}."
                      if n else f"{report.runbook} over fleet {report.fleet}: no cluster.")
    return report


def render_markdown(report: FleetReport) -> str:
    lines = [f"# {report.runbook} over fleet {report.fleet}: {report.status.upper()}", "", report.summary, "",
             "| cluster | status | summary | run | seconds |", "|---|---|---|---|---|"]
    order = report.not_ok + [m for m in report.members if m.status == "ok"]
    for m in order:
        link = f"[run]({m.url})" if m.url else (m.flow_run_id or "")
        lines.append(f"| {md_cell(m.cluster)} | {m.status} | {md_cell(m.summary[:300])} | {link} | {m.seconds:.1f} |")
    return "\n".join(lines) + "\n"


def notify_digest(slack_block: str | None, report: FleetReport, link: str | None) -> NotificationOutcome:
    """One Slack message for the fleet run; its thread lists each cluster that is not ok (never raises)."""
    thread = open_thread(slack_block)
    if not thread.enabled:
        return thread.outcome
    title = f"{report.runbook} over {report.fleet}: {report.status.upper()}"
    footer = f"<{link}|Fleet run in Prefect>" if link else None
    thread.post(f"{title}: {report.summary}", section_blocks(title, [report.summary], footer))
    for m in report.not_ok:
        where = f" <{m.url}|its run>" if m.url else ""
        thread.reply(f"{m.cluster}: {m.status.upper()}", section_blocks(
            f"{m.cluster}: {m.status.upper()}", [m.summary[:500] + where]))
    return thread.outcome


def for_cluster(params: Any, cluster: str) -> Any:
    """The runbook's parameters for one cluster: `{cluster}` in any string (e.g. metrics_block '{cluster}-host') is
    that cluster's block name, and cluster_block is set."""
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{cluster}", cluster)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return dict(fill(dict(params)), cluster_block=cluster)


def flow_launcher(runbook_flow: Any, runbook: str, params: dict[str, Any], timeout_seconds: float,
                  ui_url: str | None) -> Callable[[str], MemberResult]:
    """Each cluster as a child flow run of the runbook in this process, named `<runbook> · <cluster>`."""

    def launch(cluster: str) -> MemberResult:
        child = runbook_flow.with_options(flow_run_name=f"{runbook} · {cluster}", timeout_seconds=timeout_seconds)
        state = child(**for_cluster(params, cluster), return_state=True)
        if inspect.iscoroutine(state):  # an async runbook flow (vacuum): run it to its end in this thread
            state = asyncio.run(state)
        return member_from_state(cluster, state, ui_url)

    return launch


def deployment_launcher(deployment: str, runbook: str, params: dict[str, Any], timeout_seconds: float,
                        ui_url: str | None, poll_seconds: float = 2.0) -> Callable[[str], MemberResult]:
    """Each cluster as a run of `deployment` (any worker of its pool runs it); its verdict is read back from the
    run's own report artifact (results of another process are not stored)."""
    from prefect.deployments import run_deployment

    def launch(cluster: str) -> MemberResult:
        run = run_deployment(name=deployment, parameters=for_cluster(params, cluster),
                             flow_run_name=f"{runbook} · {cluster}", timeout=timeout_seconds,
                             poll_interval=poll_seconds, as_subflow=True)
        url = f"{ui_url.rstrip('/')}/runs/flow-run/{run.id}" if ui_url else None
        if run.state is None or not run.state.is_final():
            return MemberResult(cluster=cluster, status="timed-out", flow_run_id=str(run.id), url=url,
                                summary=f"Not finished after {timeout_seconds:g} s "
                                        f"({run.state.name if run.state else 'no state'}): no worker took it, "
                                        "or it is still running.")
        member = member_from_state(cluster, run.state, ui_url)
        member.flow_run_id, member.url = str(run.id), url
        if run.state.is_completed():
            member.status, member.summary = artifact_verdict(run.id, member.summary)
        return member

    return launch


_VERDICT = re.compile(r":\s*(OK|WARNING|CRITICAL|UNKNOWN)\b")


def artifact_verdict(flow_run_id: Any, fallback: str) -> tuple[MemberStatus, str]:
    """A finished run's status and summary from its report artifact: the markdown title ends in ': STATUS' and the
    description is the one-sentence summary. No such artifact: unknown."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["markdown"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    for art in arts:
        head = str(art.data or "").splitlines()[0] if art.data else ""
        found = _VERDICT.search(head)
        if found and "progress" not in (art.key or ""):
            return found[1].lower(), art.description or fallback  # type: ignore[return-value]
    return "unknown", fallback or "Completed, but its report artifact was not found."


def now() -> datetime:
    return datetime.now(UTC)


def started_now(runbook: str, fleet: str) -> FleetReport:
    return FleetReport(runbook=runbook, fleet=fleet, started_at=datetime.now(UTC))
