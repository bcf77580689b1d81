"""Prometheus `for:` semantics with an injected clock (pure evaluator), and Slack delivery of alerts."""

from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from blocks.slack_notifier import SlackNotifier
from tasks.alerts.evaluate import ClusterAlertState, Sample, evaluate
from tasks.alerts.notify import deliver
from tasks.alerts.rules import default_rules, parse_rules

T0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
RULES = default_rules()


def cpu(v):
    return [Sample(metric="cpu_usage_percent", value=v)]


def run(values, rules=RULES, state=None, start=T0, step=60, extra=None):
    """Evaluate once per `step` seconds; returns the final state and every transition sentence."""
    state = state or ClusterAlertState(cluster="c1")
    transitions = []
    for i, v in enumerate(values):
        samples = (cpu(v) if not callable(v) else v()) + (extra or [])
        result = evaluate(rules, samples, state, start + timedelta(seconds=i * step))
        state = result.state
        transitions += result.transitions
        _pretend_delivered(state, start + timedelta(seconds=i * step))
    return state, transitions


def _pretend_delivered(state, now):
    for a in state.alerts.values():
        if a.notify_due:
            a.notify_due, a.notified_at, a.thread_ts = None, now, a.thread_ts or "1.1"
    state.outbox = []


def fired(transitions, rule="high_cpu"):
    return [t for t in transitions if t.startswith(rule) and "FIRING" in t]


def test_breach_held_for_the_whole_duration_fires_exactly_once():
    state, transitions = run([90] * 11)  # 0..10 min, for: 5m
    assert len(fired(transitions)) == 1
    alert = state.alerts['high_cpu{}']
    assert alert.status == "firing"
    assert alert.fired_at == T0 + timedelta(minutes=5)  # at the first evaluation where 5 min had held
    assert "at every evaluation for 5.0 min" in fired(transitions)[0]


def test_not_yet_firing_before_the_duration():
    state, transitions = run([90] * 5)  # 0..4 min
    assert state.alerts['high_cpu{}'].status == "pending"
    assert fired(transitions) == []


def test_one_dip_never_fires():
    state, transitions = run([90, 90, 90, 90, 70, 90, 90, 90, 90])  # dip at 4 min resets the timer
    assert fired(transitions) == []
    assert state.alerts['high_cpu{}'].active_since == T0 + timedelta(minutes=5)
    assert any("pending timer reset" in t for t in transitions)


def test_exactly_at_threshold_is_not_a_breach():
    _, transitions = run([80] * 8)
    assert transitions == []


def test_resolves_after_recovery_with_one_message_due():
    state, transitions = run([90] * 6)
    alert = state.alerts['high_cpu{}']
    result = evaluate(RULES, cpu(50), state, T0 + timedelta(minutes=6))
    assert 'high_cpu{}' not in result.state.alerts
    assert [n.rule for n in result.state.outbox] == ["high_cpu"]
    notice = result.state.outbox[0]
    assert notice.thread_ts == alert.thread_ts and notice.fired_at == alert.fired_at
    assert any("RESOLVED" in t for t in result.transitions)


def test_renotification_after_the_interval_only():
    state, _ = run([90] * 6)
    fired_at = state.alerts['high_cpu{}'].notified_at
    later = evaluate(RULES, cpu(95), state, fired_at + timedelta(hours=3, minutes=59)).state
    assert later.alerts['high_cpu{}'].notify_due is None
    due = evaluate(RULES, cpu(95), later, fired_at + timedelta(hours=4)).state
    assert due.alerts['high_cpu{}'].notify_due == "renotify"
    assert due.alerts['high_cpu{}'].status == "firing"


def test_disk_rule_with_synthetic_samples_and_its_action():
    def disk(v):
        return lambda: [Sample(metric="disk_usage_percent", value=v)]

    state, transitions = run([disk(90)] * 11)
    alert = state.alerts['disk_usage{}']
    assert alert.status == "firing" and alert.fired_at == T0 + timedelta(minutes=10)
    assert alert.action_due  # cleanup_data runs a flow
    assert not run([90] * 6)[0].alerts['high_cpu{}'].action_due  # notify_team is notification only


def test_no_data_is_its_own_state_and_never_resolves_a_firing_alert():
    state, _ = run([90] * 6)
    silent = [Sample(metric="cpu_usage_percent", no_data="metrics source failed: timeout")]
    t = T0 + timedelta(minutes=6)
    result = evaluate(RULES, silent, state, t)
    assert result.state.alerts['high_cpu{}'].status == "firing"
    assert result.state.outbox == []
    assert [s.state for s in result.series if s.rule == "high_cpu"] == ["firing"]
    nd = 'no_data{metric="cpu_usage_percent"}'
    assert result.state.alerts[nd].status == "pending"
    state = result.state
    for minutes in (7, 8):
        state = evaluate(RULES, silent, state, T0 + timedelta(minutes=minutes)).state
    assert state.alerts[nd].status == "firing" and state.alerts[nd].notify_due == "fire"
    back = evaluate(RULES, cpu(90), state, T0 + timedelta(minutes=9)).state
    assert nd not in back.alerts and [n.rule for n in back.outbox] == ["no_data"]
    assert back.alerts['high_cpu{}'].no_data_since is None


def test_no_data_resets_pending_and_unconfigured_source_raises_no_alert():
    state, _ = run([90, 90])
    unconfigured = [Sample(metric="cpu_usage_percent", no_data="metrics source not configured", unconfigured=True)]
    result = evaluate(RULES, unconfigured, state, T0 + timedelta(minutes=2))
    assert result.state.alerts == {}
    assert [s.state for s in result.series] == ["nodata"]
    for minutes in range(3, 10):
        result = evaluate(RULES, unconfigured, result.state, T0 + timedelta(minutes=minutes))
    assert result.state.alerts == {}


def test_a_timed_out_cluster_keeps_per_replica_alerts_firing():
    lag = [Sample(metric="replication_lag_seconds", labels={"replica": "r1"}, value=900)]
    state, _ = run([lambda: lag] * 6)
    key = 'replication_lag{replica="r1"}'
    assert state.alerts[key].status == "firing"
    timeout = [Sample(metric="replication_lag_seconds", no_data="no answer within the 10 s deadline")]
    after = evaluate(RULES, timeout, state, T0 + timedelta(minutes=6)).state
    assert after.alerts[key].status == "firing" and after.outbox == []


def test_stale_pending_timer_starts_over():
    state, _ = run([90, 90])
    result = evaluate(RULES, cpu(90), state, T0 + timedelta(hours=2))
    assert result.state.alerts['high_cpu{}'].active_since == T0 + timedelta(hours=2)
    assert result.state.alerts['high_cpu{}'].status == "pending"


def test_for_zero_fires_at_the_first_breach():
    rules = parse_rules("rules:\n  - {name: now, metric: cpu_usage_percent, threshold: 50, for: 0s, "
                        "action: notify_team}\n")
    result = evaluate(rules, cpu(60), ClusterAlertState(cluster="c1"), T0)
    assert result.state.alerts['now{}'].status == "firing"


def test_removed_rule_resolves_its_alert():
    state, _ = run([90] * 6)
    rules = parse_rules("rules:\n  - {name: other, metric: disk_usage_percent, threshold: 50, for: 1m, "
                        "action: notify_team}\n")
    result = evaluate(rules, cpu(90), state, T0 + timedelta(minutes=7))
    assert result.state.alerts == {} and result.state.outbox[0].reason.startswith("its series is no longer")


def _notifier(fake_slack, token):
    return SlackNotifier(bot_token=SecretStr(token), channel="#alerts", base_url=fake_slack.base_url,
                         timeout_seconds=2, server_error_retries=0, connection_error_retries=0,
                         mention_groups={"notify_team": "<!subteam^TEAM>"})


def test_slack_down_state_advances_and_the_message_is_retried(slack):
    state = ClusterAlertState(cluster="c1")
    for minute in range(6):
        state = evaluate(RULES, cpu(91), state, T0 + timedelta(minutes=minute)).state
    down = deliver(_notifier(slack, "xoxb-server-error"), "c1", RULES, state, T0 + timedelta(minutes=5))
    alert = state.alerts['high_cpu{}']
    assert down.failed == 1 and alert.status == "firing" and alert.notify_due == "fire"
    state = evaluate(RULES, cpu(92), state, T0 + timedelta(minutes=6)).state
    assert state.alerts['high_cpu{}'].notify_due == "fire"  # not forgotten, not duplicated
    up = deliver(_notifier(slack, "xoxb-ok-alert"), "c1", RULES, state, T0 + timedelta(minutes=6))
    assert up.delivered == 1 and up.failed == 0
    posts = slack.calls("chat.postMessage", token="xoxb-ok-alert")
    assert len(posts) == 1
    text = str(posts[0].body)
    for needle in ("FIRING: high_cpu on c1", "92.0%", "80.0%", "for 6.0 min", "(for: 5m)", "<!subteam^TEAM>",
                   "Response procedure", "☐ Check the top queries", "notification only"):
        assert needle in text, needle
    alert = state.alerts['high_cpu{}']
    assert alert.notify_due is None and alert.thread_ts
    # nothing more to say at the next evaluation: deduplicated per episode
    state = evaluate(RULES, cpu(93), state, T0 + timedelta(minutes=7)).state
    assert deliver(_notifier(slack, "xoxb-ok-alert"), "c1", RULES, state, T0).attempted is False
    # recovery: the resolved message goes to the same thread, the parent is rewritten
    state = evaluate(RULES, cpu(10), state, T0 + timedelta(minutes=8)).state
    deliver(_notifier(slack, "xoxb-ok-alert"), "c1", RULES, state, T0 + timedelta(minutes=8))
    reply = slack.calls("chat.postMessage", token="xoxb-ok-alert")[-1]
    assert reply.body.get("thread_ts") == alert.thread_ts and "RESOLVED: high_cpu on c1" in str(reply.body)
    assert slack.calls("chat.update", token="xoxb-ok-alert")[-1].body.get("ts") == alert.thread_ts
    assert state.outbox == []


def test_renotification_is_a_broadcast_reply_in_the_thread(slack):
    state, _ = run([90] * 6)
    state.alerts['high_cpu{}'].thread_ts = "1700000000.000001"
    state = evaluate(RULES, cpu(95), state, T0 + timedelta(hours=5)).state
    deliver(_notifier(slack, "xoxb-ok-renotify"), "c1", RULES, state, T0 + timedelta(hours=5))
    call = slack.calls("chat.postMessage", token="xoxb-ok-renotify")[0]
    assert call.body.get("thread_ts") == "1700000000.000001"
    assert str(call.body.get("reply_broadcast")).lower() == "true"
    assert "STILL FIRING" in str(call.body)


def _unreachable(reason="connection refused"):
    """What the monitor samples for a cluster whose database does not answer (two replicas, host source down)."""
    return ([Sample(metric=m, no_data=reason) for m in ("connection_usage_percent", "cpu_usage_percent")]
            + [Sample(metric="replication_lag_seconds", labels={"replica": r}, no_data=reason) for r in ("r1", "r2")])


def _down_for(minutes):
    state = ClusterAlertState(cluster="c1")
    for minute in range(minutes):
        state = evaluate(RULES, _unreachable(), state, T0 + timedelta(minutes=minute)).state
    return state


def test_an_unreachable_cluster_sends_one_message_that_names_the_alerts_it_inhibits(slack):
    state = _down_for(3)
    source = state.alerts['no_data{metric="connection_usage_percent"}']
    others = [a for k, a in state.alerts.items() if k != 'no_data{metric="connection_usage_percent"}']
    assert source.status == "firing" and source.inhibited_by is None
    assert len(others) == 3 and all(a.status == "firing" and a.inhibited_by for a in others)
    sent = deliver(_notifier(slack, "xoxb-ok-inhibit"), "c1", RULES, state, T0 + timedelta(minutes=2))
    posts = slack.calls("chat.postMessage", token="xoxb-ok-inhibit")
    assert sent.delivered == 1 and len(posts) == 1  # not 1 + 2 replicas + CPU
    text = str(posts[0].body)
    for needle in ("connection_usage_percent", "replication_lag_seconds (replica=r1)",
                   "replication_lag_seconds (replica=r2)", "cpu_usage_percent (none)", "same incident"):
        assert needle in text, needle
    # the cluster comes back: one resolved message (in the thread), none for the alerts never sent alone
    back = [Sample(metric="connection_usage_percent", value=10), Sample(metric="cpu_usage_percent", value=10)] + [
        Sample(metric="replication_lag_seconds", labels={"replica": r}, value=0) for r in ("r1", "r2")]
    result = evaluate(RULES, back, state, T0 + timedelta(minutes=3))
    assert result.state.alerts == {}
    assert [n.labels for n in result.state.outbox] == [{"metric": "connection_usage_percent"}]
    assert sum("was inhibited by" in t for t in result.transitions) == 3


def _back(r2_value=None):
    """The cluster answers again; r2 is streaming (a value) or still not (no data)."""
    r2 = (Sample(metric="replication_lag_seconds", labels={"replica": "r2"}, value=r2_value) if r2_value is not None
          else Sample(metric="replication_lag_seconds", labels={"replica": "r2"}, node="r2",
                      no_data="r2 is not streaming from pg-1: its WAL receiver is stopped"))
    return [Sample(metric="connection_usage_percent", value=10), Sample(metric="cpu_usage_percent", value=10),
            Sample(metric="replication_lag_seconds", labels={"replica": "r1"}, value=0), r2]


def test_an_inhibited_alert_starts_a_fresh_pending_period_when_its_inhibitor_resolves(slack):
    state = _down_for(3)
    state.alerts['no_data{metric="connection_usage_percent"}'].notify_due = None  # its message went out
    back = evaluate(RULES, _back(), state, T0 + timedelta(minutes=3))
    r2 = back.state.alerts['no_data{metric="replication_lag_seconds",replica="r2"}']
    assert r2.status == "pending" and r2.inhibited_by is None and r2.notify_due is None
    assert r2.active_since == T0 + timedelta(minutes=3)
    assert any("pending again from now" in t for t in back.transitions)
    # still not streaming for the whole no_data_for (2m): now it pages on its own, with its cause
    state = evaluate(RULES, _back(), back.state, T0 + timedelta(minutes=4)).state
    assert state.alerts['no_data{metric="replication_lag_seconds",replica="r2"}'].status == "pending"
    state = evaluate(RULES, _back(), state, T0 + timedelta(minutes=5)).state
    assert state.alerts['no_data{metric="replication_lag_seconds",replica="r2"}'].notify_due == "fire"
    state.outbox = []
    deliver(_notifier(slack, "xoxb-ok-uninhibit"), "c1", RULES, state, T0 + timedelta(minutes=5))
    posts = [str(c.body) for c in slack.calls("chat.postMessage", token="xoxb-ok-uninhibit")]
    assert len(posts) == 1 and "FIRING: no_data replication_lag_seconds on c1 (replica=r2)" in posts[0], posts
    assert "its WAL receiver is stopped" in posts[0]


def test_a_replica_reconnecting_after_its_primary_returns_is_not_paged():
    state = _down_for(3)
    state.alerts['no_data{metric="connection_usage_percent"}'].notify_due = None
    state = evaluate(RULES, _back(), state, T0 + timedelta(minutes=3)).state  # r2 not yet reconnected
    result = evaluate(RULES, _back(r2_value=0.0), state, T0 + timedelta(minutes=4))  # reconnected
    assert result.state.alerts == {} and not any(a.notify_due for a in result.state.alerts.values())
    assert [n.labels for n in result.state.outbox] == [{"metric": "connection_usage_percent"}]


def test_a_no_data_alert_resolves_with_data_is_back_not_a_threshold():
    from tasks.alerts.evaluate import ResolvedNotice
    from tasks.alerts.notify import resolved_message

    notice = ResolvedNotice(rule="no_data", labels={"metric": "connection_usage_percent"}, node="pg-1",
                            fired_at=T0, resolved_at=T0 + timedelta(minutes=3), reason="data is back")
    title, lines, text = resolved_message("c1", None, notice)
    assert title == "RESOLVED: no_data connection_usage_percent on c1 (node pg-1)"
    assert "data is back (connection_usage_percent); fired for 3" in text
    assert "threshold" not in text and "no value" not in text
