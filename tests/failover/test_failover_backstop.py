"""The server-side backstop of a failover run whose worker died: the run is marked Crashed and its Slack thread
gets the alert (last journaled step, who is writable, whether clients are held). Real parts: the Prefect API
(a flow run left RUNNING, as a SIGKILLed worker leaves it), the sandbox, pgbouncer's admin console, the fake Slack.
The server's proactive trigger that starts this flow is declared in prefect.yaml (tests/test_prefect_yaml.py)."""

from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.states import Running

from blocks.postgres_cluster import PostgresCluster
from flows.failover import failover
from flows.failover_crash_alert import failover_crash_alert
from sandbox.blocks import sandbox_endpoint_block
from tasks.failover.journal import Journal, JournalStore
from tasks.failover.model import FailoverPlan, StepRecord
from tests.helpers import save_slack_block

PARENT_TS = "1700000000.000100"


def test_a_silent_failover_run_is_marked_crashed_and_alerted_in_its_thread(sandbox, cluster_block, slack, tmp_path):
    save_slack_block(slack, "slack-backstop", "xoxb-ok-backstop")
    sandbox_endpoint_block(sandbox).save("backstop", overwrite=True)
    request = {"cluster_block": cluster_block, "endpoint_block": "backstop", "slack_block": "slack-backstop",
               "journal_dir": str(tmp_path), "mode": "switchover"}
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(failover, parameters={"request": request}, state=Running())
    name, now = PostgresCluster.load(cluster_block).cluster_name, datetime.now(UTC)
    plan = FailoverPlan(cluster=name, mode="switchover", old_primary="primary", candidate="replica", lag_bytes=0,
                        original_timeline=1)
    JournalStore(tmp_path).save(Journal(
        cluster=name, run_id=str(run.id), plan=plan, started_at=now, updated_at=now, slack_parent_ts=PARENT_TS,
        steps=[StepRecord(phase=2, step="checkpoint", node="primary", status="done", at=now)]))

    out = failover_crash_alert(flow_run_id=f"prefect.flow-run.{run.id}")  # as the trigger passes it
    assert out.startswith(f"failover run {run.id} marked CRASHED (it was RUNNING"), out
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state.type.value == "CRASHED" and "no heartbeat for 90 s" in state.message
    (reply,) = slack.calls("chat.postMessage", token="xoxb-ok-backstop")
    assert reply.body.get("thread_ts") == PARENT_TS
    text = str(reply.body)
    for needle in ("Failover CRASHED (worker lost)", "after step `checkpoint` (done)", "writable: primary",
                   "standby: replica", "clients not paused", "rerun the failover"):
        assert needle in text, needle

    again = failover_crash_alert(flow_run_id=str(run.id))  # the Crashed it set fires the reactive trigger too
    assert again.endswith("already alerted by an earlier failover-crash-alert run"), again
    assert len(slack.calls("chat.postMessage", token="xoxb-ok-backstop")) == 1
    assert failover_crash_alert().startswith("no flow run given")


def test_a_run_its_worker_marked_crashed_is_alerted_once_and_never_after_its_own_hook(sandbox, cluster_block,
                                                                                       slack, tmp_path):
    from prefect.states import Crashed

    from tasks.failover.hooks import CRASH_ALERTED

    # its worker saw the process die and marked it Crashed
    name, store, run = crashed_run_with_journal(sandbox, cluster_block, slack, tmp_path, "backstop2",
                                                Crashed(message="exit -9"))
    out = failover_crash_alert(flow_run_id=str(run.id))
    assert "already CRASHED" in out and "1 Slack message(s) delivered" in out, out
    assert store.load(name).facts[CRASH_ALERTED] == "backstop"
    assert failover_crash_alert(flow_run_id=str(run.id)).endswith("an earlier failover-crash-alert run")
    assert len(slack.calls("chat.postMessage", token="xoxb-ok-backstop2")) == 1  # once, not per firing
    store.save(store.load(name).model_copy(update={"facts": {CRASH_ALERTED: "CRASHED"}}))  # as the hook records
    assert failover_crash_alert(flow_run_id=str(run.id)).endswith("already alerted by its own hook")


def test_two_backstop_runs_of_one_crash_alert_once(sandbox, cluster_block, slack, tmp_path):
    """Both triggers fire for one lost worker (silent, then the Crashed the first backstop run set). The second
    run waits for the cluster's alert slot while the first posts, then finds the alert in the journal."""
    import threading
    import time

    from tasks.core.limits import crash_alert_lock_name, exclusive
    from tasks.failover.hooks import CRASH_ALERTED

    name, store, run = crashed_run_with_journal(sandbox, cluster_block, slack, tmp_path, "backstop3", Running())

    out: list[str] = []
    with exclusive(crash_alert_lock_name(cluster_block)) as held:  # "the first backstop run", posting
        assert held
        second = threading.Thread(target=lambda: out.append(failover_crash_alert(flow_run_id=str(run.id))))
        second.start()
        deadline = time.monotonic() + 60
        while True:  # the second run marked the run Crashed: it is now at the alert slot
            with get_client(sync_client=True) as client:
                if client.read_flow_run(run.id).state.type.value == "CRASHED":
                    break
            assert time.monotonic() < deadline, "the backstop never marked the run Crashed"
            time.sleep(0.2)
        time.sleep(2)  # let it reach the slot and wait there (without the slot it would read the journal now)
        store.save(store.load(name).model_copy(update={"facts": {CRASH_ALERTED: "backstop"}}))  # the first posted
    second.join(timeout=120)
    assert out and out[0].endswith("already alerted by an earlier failover-crash-alert run"), out
    assert slack.calls("chat.postMessage", token="xoxb-ok-backstop3") == []


def crashed_run_with_journal(sandbox, cluster_block, slack, tmp_path, token: str, state):
    """A failover run in `state` with its journal (no step done): the request, the journal store, the run."""
    save_slack_block(slack, f"slack-{token}", f"xoxb-ok-{token}")
    sandbox_endpoint_block(sandbox).save("backstop", overwrite=True)
    request = {"cluster_block": cluster_block, "endpoint_block": "backstop", "slack_block": f"slack-{token}",
               "journal_dir": str(tmp_path)}
    name, now = PostgresCluster.load(cluster_block).cluster_name, datetime.now(UTC)
    plan = FailoverPlan(cluster=name, mode="switchover", old_primary="primary", candidate="replica", lag_bytes=0,
                        original_timeline=1)
    store = JournalStore(tmp_path)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(failover, parameters={"request": request}, state=state)
    store.save(Journal(cluster=name, run_id=str(run.id), plan=plan, started_at=now, updated_at=now))
    return name, store, run
