"""The server-side backstop of a failover run whose worker died (SIGKILL, lost host): no hook of its own ran.

The `failover-crash-alert` deployment is started by two triggers in prefect.yaml: a proactive one when a failover
run that sent a heartbeat sends nothing more (no heartbeat, no final state) within the window (the whole worker is
gone), and a reactive one when a failover run becomes Crashed (e.g. its worker saw the flow-run process killed).
A silent run is marked Crashed (nothing executes it any more); unless the run's own hook already alerted (the
journal says so), the crash alert goes to the run's Slack thread: its last journaled step, who is writable now,
whether clients are held at pgbouncer, and the next action (rerun: it resumes from the journal).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.states import Crashed

from blocks.failover_adapters import EndpointControl
from blocks.postgres_cluster import PostgresCluster
from tasks.core.notify import NotificationOutcome, SlackThread, load_notifier, section_blocks
from tasks.failover import endpoint as ep
from tasks.failover.hooks import CRASH_ALERTED, crash_line, saved_journal
from tasks.failover.journal import JournalStore
from tasks.failover.model import FailoverRequest
from tasks.failover.report import cluster_state_sentence
from tasks.failover.steps import read_node_state

STILL_RUNNING = {"RUNNING", "PENDING", "CANCELLING"}


def run_id_of(reference: str) -> str:
    """A flow run id, from itself or from the event resource id 'prefect.flow-run.<id>'."""
    return reference.strip().removeprefix("prefect.flow-run.")


@task(name="mark-silent-run-crashed", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def mark_crashed(run_id: str, silence: str) -> tuple[FlowRun, str]:
    """Crashed, if the run still claims to run; (the run as it is now, what was done)."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        before = run.state.type.value if run.state else "UNKNOWN"
        if before == "CRASHED":
            return run, "already CRASHED (its worker saw the process die)"
        if before not in STILL_RUNNING:
            return run, f"the run already ended as {before}: nothing to do"
        client.set_flow_run_state(run_id, Crashed(message=f"no heartbeat for {silence}: its worker is gone "
                                                          "(marked by failover-crash-alert)"), force=True)
        return client.read_flow_run(run_id), f"marked CRASHED (it was {before}, silent for {silence})"


@task(name="inspect-cluster-after-crash", cache_policy=NO_CACHE)
def cluster_now(request: FailoverRequest) -> str:
    """Who is writable, who is down, whether pgbouncer holds the clients (never raises: best effort)."""
    try:
        cluster = PostgresCluster.load(request.cluster_block)
        states = [read_node_state.fn(t) for t in cluster.targets()]
    except Exception as exc:  # noqa: BLE001 - the alert goes out anyway
        return f"cluster state unknown ({type(exc).__name__}: {exc})"[:300]
    return cluster_state_sentence(states, clients_held(request.endpoint_block))


def clients_held(endpoint_block: str) -> bool | None:
    """Whether pgbouncer holds clients (a database pool PAUSED: SHOW DATABASES' `paused`); None: unknown."""
    try:
        control = EndpointControl.load(endpoint_block)
        if control.kind != "pgbouncer":
            return None
        rows = ep.show_databases(control)
    except Exception:  # noqa: BLE001 - unknown is said as unknown
        return None
    return any(str(r.get("paused", "0")) not in ("0", "False", "false") for r in rows if r.get("name") != "pgbouncer")


def already_alerted(run_id: str, request: FailoverRequest) -> str | None:
    """Who already posted this run's crash alert (the journal records it): its own on_crashed hook, or an earlier
    backstop run; None when nobody did."""
    journal = saved_journal(request.model_dump(), run_id)
    by = journal.facts.get(CRASH_ALERTED) if journal is not None else None
    if by is None:
        return None
    return "an earlier failover-crash-alert run" if by == "backstop" else "its own hook"


@task(name="post-crash-alert", cache_policy=NO_CACHE)
def post_crash_alert(run_id: str, request: FailoverRequest, state_now: str) -> NotificationOutcome:
    """The alert in the run's own Slack thread (a new message when it never posted)."""
    journal = saved_journal(request.model_dump(), run_id)
    line = (f"{crash_line(journal, 'CRASHED')}. Its worker died, so no hook of the run could act; cluster now: "
            f"{state_now}. Do not start the old primary by hand while a standby may have been promoted.")
    notifier, _ = load_notifier(request.slack_block)
    thread = SlackThread(notifier)
    title = "Failover CRASHED (worker lost)"
    if journal is not None and journal.slack_parent_ts:
        thread.outcome.parent_ts = journal.slack_parent_ts
        thread.reply(title, section_blocks(title, [line]))
    else:
        thread.post(f"Failover of {request.cluster_block}: {title}: {line}", section_blocks(title, [line]))
    if journal is not None and thread.outcome.ok:
        journal.facts[CRASH_ALERTED] = "backstop"
        JournalStore(request.journal_dir).save(journal)
    return thread.outcome
