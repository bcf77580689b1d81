"""Alert messages that could not be delivered: retried on a quiet cluster, bounded, never a reason to lose state.

Real parts: the monitor flow on the sandbox, the Prefect API as the state store, the fake Slack
(its `xoxb-server-error` token is Slack being down).
"""

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from flows.alert_monitor import alert_monitor
from tasks.alerts.evaluate import MAX_OUTBOX, AlertInstance, ClusterAlertState, ResolvedNotice, Sample, evaluate
from tasks.alerts.monitor import MonitorParams, needs_turn, save_alert_states
from tasks.alerts.notify import deliver
from tasks.alerts.rules import load_rules
from tasks.alerts.state import StateStoreError, encode, load_states
from tests.helpers import save_slack_block

T0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
LAG_RULES = "rules:\n  - {name: lag, metric: replication_lag_seconds, threshold: 5, for: 1m, action: notify_dba}\n"


def always_rules(tmp_path, threshold):
    path = tmp_path / "always.yaml"
    path.write_text("rules:\n  - {name: always, metric: connection_usage_percent, threshold: " + str(threshold)
                    + ", for: 1m, action: notify_team}\n")
    return str(path)


def test_a_failed_resolved_message_is_retried_on_a_quiet_cluster(sandbox, prefect_api, slack, tmp_path):
    from sandbox.blocks import sandbox_cluster_block

    block = "alert-retry"
    sandbox_cluster_block(sandbox, name=block).save(block, overwrite=True)
    save_slack_block(slack, "slack-retry", "xoxb-ok-retry", server_error_retries=0)
    t0 = datetime.now(UTC)

    def run(seconds, threshold):
        return alert_monitor(cluster_blocks=[block], slack_block="slack-retry",
                             params=MonitorParams(rules_file=always_rules(tmp_path, threshold)),
                             evaluated_at=t0 + timedelta(seconds=seconds))

    run(0, 0)
    assert run(61, 0).firing()
    thread_ts = load_states([block])[block].alerts["always{}"].thread_ts
    assert thread_ts
    save_slack_block(slack, "slack-retry", "xoxb-server-error", server_error_retries=0)  # Slack goes down
    resolved = run(121, 99)
    assert not resolved.firing() and resolved.clusters[0].notification.failed
    assert len(load_states([block])[block].outbox) == 1
    down = len(slack.calls(token="xoxb-server-error"))
    run(181, 99)  # nothing changes on the cluster: the outbox alone is the reason to try again
    assert len(slack.calls(token="xoxb-server-error")) > down
    save_slack_block(slack, "slack-retry", "xoxb-ok-retry-back", server_error_retries=0)  # Slack is back
    back = run(241, 99)
    replies = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-retry-back") if "RESOLVED" in str(c.body)]
    assert len(replies) == 1 and replies[0].body.get("thread_ts") == thread_ts
    assert back.clusters[0].notification.delivered >= 1
    state = load_states([block])[block]
    assert state.outbox == [] and state.alerts == {}
    quiet = run(301, 99)  # delivered: nothing left to do, and nothing is sent twice
    assert quiet.clusters[0].notification.attempted is False
    assert len([c for c in slack.calls("chat.postMessage", token="xoxb-ok-retry-back")
                if "RESOLVED" in str(c.body)]) == 1


def test_a_non_empty_outbox_needs_a_turn_even_when_nothing_changed():
    state = ClusterAlertState(cluster="c", outbox=[ResolvedNotice(rule="x", resolved_at=T0)])
    again = evaluate(load_rules_text(LAG_RULES), [], state, T0 + timedelta(minutes=1)).state
    assert needs_turn(state, again)
    assert not needs_turn(ClusterAlertState(cluster="c"), ClusterAlertState(cluster="c", revision=1))


def load_rules_text(text):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "rules.yaml"
    path.write_text(text)
    return load_rules(str(path))


def many_resolved(n: int) -> ClusterAlertState:
    """n replicas lagging and firing, then all caught up at once: n resolved messages."""
    rules = load_rules_text(LAG_RULES)
    state = ClusterAlertState(cluster="outage")
    lagging = [Sample(metric="replication_lag_seconds", labels={"replica": f"replica-{i:02d}"}, value=60)
               for i in range(n)]
    for minutes in (0, 2):
        state = evaluate(rules, lagging, state, T0 + timedelta(minutes=minutes)).state
    assert sum(a.status == "firing" for a in state.alerts.values()) == n
    fine = [s.model_copy(update={"value": 0.0}) for s in lagging]
    return evaluate(rules, fine, state, T0 + timedelta(minutes=3)).state


def test_the_outbox_keeps_the_newest_and_says_what_it_dropped(slack):
    from pydantic import SecretStr

    from blocks.slack_notifier import SlackNotifier

    state = many_resolved(MAX_OUTBOX + 4)
    assert len(state.outbox) == MAX_OUTBOX and state.outbox_dropped == 4
    assert [n.labels["replica"] for n in state.outbox][-1] == f"replica-{MAX_OUTBOX + 3:02d}"  # newest kept
    assert len(json.dumps(encode(state))) <= 5000
    notifier = SlackNotifier(bot_token=SecretStr("xoxb-ok-outbox"), channel="#db-ops", base_url=slack.base_url)
    outcome = deliver(notifier, "outage", load_rules_text(LAG_RULES), state, T0 + timedelta(minutes=4))
    assert outcome.delivered == MAX_OUTBOX and state.outbox == [] and state.outbox_dropped == 0
    texts = [str(c.body) for c in slack.calls("chat.postMessage", token="xoxb-ok-outbox")]
    assert sum("4 older resolved message(s) of outage were dropped" in t for t in texts) == 1


def test_without_a_notifier_resolved_messages_are_logged_not_queued(caplog):
    state = many_resolved(3)
    assert len(state.outbox) == 3
    with caplog.at_level(logging.INFO, logger="pg_runbooks.alerts"):
        outcome = deliver(None, "outage", load_rules_text(LAG_RULES), state, T0 + timedelta(minutes=4))
    assert state.outbox == [] and state.outbox_dropped == 0 and not outcome.attempted
    logged = [r.getMessage() for r in caplog.records if "RESOLVED: lag on outage" in r.getMessage()]
    assert len(logged) == 3 and all("no Slack notifier" in line for line in logged)


def test_a_state_too_large_drops_oldest_messages_before_it_fails():
    state = many_resolved(MAX_OUTBOX)
    state.outbox = state.outbox * 5  # as if an older state had piled them up
    value = encode(state)
    assert len(json.dumps(value)) <= 5000 and value["outbox_dropped"] > 0
    assert value["outbox"][-1] == state.outbox[-1].model_dump(mode="json", exclude_none=True)


def test_every_cluster_is_saved_before_one_error_names_the_failures(prefect_api):
    now = T0
    huge = ClusterAlertState(cluster="save-huge", alerts={
        f"k{i}": AlertInstance(rule="r" * 60, labels={"replica": "x" * 80}, status="firing", active_since=now,
                               last_eval=now) for i in range(40)})
    before = [ClusterAlertState(cluster="save-ok-1", revision=7), ClusterAlertState(cluster="save-ok-2", revision=9)]
    with pytest.raises(StateStoreError, match="1 of 3 cluster state.*save-huge.*characters"):
        save_alert_states.fn([before[0], huge, before[1]])
    stored = load_states(["save-ok-1", "save-ok-2"])
    assert stored["save-ok-1"].revision == 7 and stored["save-ok-2"].revision == 9  # the one after it too


def test_a_steadily_firing_alert_needs_no_turn_but_a_pending_or_due_one_does():
    """A firing alert whose only news is its latest value is neither locked nor rewritten (the firing fleet costs
    what a quiet one does); a pending timer's evaluation time, a due message and a due action are saved."""
    rules = load_rules_text(LAG_RULES)

    def lag(v):
        return [Sample(metric="replication_lag_seconds", labels={"replica": "r1"}, value=v)]

    state = ClusterAlertState(cluster="c")
    pending = evaluate(rules, lag(9), state, T0).state
    assert needs_turn(state, pending)
    again = evaluate(rules, lag(10), pending, T0 + timedelta(seconds=30)).state
    assert needs_turn(pending, again)  # still pending: its evaluation time keeps the timer from going stale
    fired = evaluate(rules, lag(11), again, T0 + timedelta(minutes=1)).state
    assert needs_turn(again, fired)
    alert = fired.alerts['lag{replica="r1"}']
    assert alert.status == "firing" and alert.notify_due == "fire"
    alert.notify_due, alert.notified_at = None, T0 + timedelta(minutes=1)  # delivered
    steady = evaluate(rules, lag(12), fired, T0 + timedelta(minutes=2)).state
    assert not needs_turn(fired, steady)
    steady.alerts['lag{replica="r1"}'].action_due = True  # an action that has not started yet is retried
    assert needs_turn(fired, steady)
