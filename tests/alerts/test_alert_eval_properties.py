"""Property tests of the pure evaluator (hypothesis): for random series of samples and rule durations, an
alert pages only after its condition held at every evaluation for its duration, pages once per episode,
resolves once, and does page when the condition held long enough. No database, no Prefect: fast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.alerts.evaluate import ClusterAlertState, Sample, evaluate, series_key
from tasks.alerts.rules import parse_rules

T0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
THRESHOLD = 50.0
STALE = 600
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (seconds since the previous evaluation, value; None is no data)
steps = st.lists(st.tuples(st.integers(min_value=1, max_value=STALE + 100),
                           st.one_of(st.none(), st.floats(min_value=0, max_value=100))),
                 min_size=1, max_size=40)


def rules(for_seconds: int, no_data_for: int):
    return parse_rules(f"settings:\n  no_data_for: {no_data_for}s\n  stale_after: {STALE}s\n  renotify_interval: 1d\n"
                       f"rules:\n  - {{name: hot, metric: cpu_usage_percent, threshold: {THRESHOLD:g}, "
                       f"for: {for_seconds}s, action: notify_team}}\n")


def play(series, ruleset):
    """Evaluate the series; per key, the events ('fire' / 'resolve', time) as a perfect notifier sees them."""
    state, now, events, seen = ClusterAlertState(cluster="prop"), T0, [], []
    for gap, value in series:
        now += timedelta(seconds=gap)
        state = evaluate(ruleset, [Sample(metric="cpu_usage_percent", value=value, no_data="gone")], state, now).state
        seen.append((now, value))
        for key, alert in state.alerts.items():
            if alert.notify_due == "fire":
                events.append(("fire", key, now))
                alert.notify_due, alert.notified_at, alert.thread_ts = None, now, "1.1"
        events += [("resolve", series_key(n.rule, n.labels), now) for n in state.outbox]
        state.outbox = []
    return events, seen


def held_since(seen, until, condition):
    """The start of the run of evaluations up to `until` that all met `condition` with no gap above STALE."""
    start = None
    for i, (at, value) in enumerate(seen):
        if at > until:
            break
        fresh = i > 0 and (at - seen[i - 1][0]).total_seconds() <= STALE
        start = (start if fresh and start is not None else at) if condition(value) else None
    return start


def hot(value):
    return value is not None and value > THRESHOLD


def missing(value):
    return value is None


KEYS = {"hot{}": hot, 'no_data{metric="cpu_usage_percent"}': missing}


@FAST
@given(series=steps, for_seconds=st.integers(min_value=0, max_value=900),
       no_data_for=st.integers(min_value=0, max_value=900))
def test_pages_only_after_the_condition_held_for_its_duration(series, for_seconds, no_data_for):
    events, seen = play(series, rules(for_seconds, no_data_for))
    duration = {"hot{}": for_seconds, 'no_data{metric="cpu_usage_percent"}': no_data_for}
    for kind, key, at in events:
        if kind == "fire":
            start = held_since(seen, at, KEYS[key])
            assert start is not None and (at - start).total_seconds() >= duration[key], (key, at, start)


@FAST
@given(series=steps, for_seconds=st.integers(min_value=0, max_value=900),
       no_data_for=st.integers(min_value=0, max_value=900))
def test_pages_once_per_episode_and_resolves_once(series, for_seconds, no_data_for):
    events, seen = play(series, rules(for_seconds, no_data_for))
    for key in KEYS:
        kinds = [kind for kind, k, _ in events if k == key]
        assert all(a != b for a, b in zip(kinds, kinds[1:], strict=False)), kinds  # fire, resolve, fire, ...
        assert not kinds or kinds[0] == "fire", kinds
    for kind, key, at in events:  # a threshold alert resolves on a value at or below it, never on silence
        if kind == "resolve" and key == "hot{}":
            assert dict(seen)[at] is not None and dict(seen)[at] <= THRESHOLD


@FAST
@given(series=steps, for_seconds=st.integers(min_value=0, max_value=900))
def test_a_condition_held_for_its_duration_has_paged(series, for_seconds):
    events, seen = play(series, rules(for_seconds, 120))
    hot_events = [(kind, at) for kind, key, at in events if key == "hot{}"]
    for at, _ in seen:
        start = held_since(seen, at, hot)
        if start is not None and (at - start).total_seconds() >= for_seconds:
            latest = [kind for kind, when in hot_events if when <= at][-1:]
            assert latest == ["fire"], (at, start, hot_events)  # paged, and not resolved since
