"""Alert evaluation with Prometheus `for:` semantics: a pure function of rules, samples, state and now.

inactive -> pending (remember since when) -> firing when the condition held at every
evaluation for the whole duration; one evaluation below the threshold drops a pending
alert; firing -> resolved. A sample without a value is "no data": it never counts as ok,
a firing alert stays firing, and it feeds its own `no_data` alert.

Notifications and actions are recorded as *due* in the state (an outbox): the monitor
delivers them and clears them; what could not be delivered is retried at the next
evaluation, while the state itself keeps advancing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tasks.alerts.rules import RUNBOOK_ACTIONS, AlertRule, RuleSet, format_duration
from tasks.core.findings import human_seconds

SeriesState = Literal["inactive", "pending", "firing", "nodata"]
MAX_OUTBOX = 8  # undelivered resolved messages kept per cluster (~300 characters each, in a 5,000-character Variable)
NO_DATA_RULE = "no_data"
# Alertmanager-style inhibition: while the cluster's database gives no data (down, unreachable, timed out),
# the cluster's other no-data alerts (per replica, host metrics) are the same incident. They are listed in
# this alert's message, not sent alone; when it resolves, one never sent alone starts a fresh pending period.
INHIBITOR = 'no_data{metric="connection_usage_percent"}'
NO_DATA_RESPONSE = [
    "Check that the cluster answers (health-check flow) and that the monitor's role can log in.",
    "Check the metrics source (host agent or Prometheus) if only CPU or disk is missing.",
    "Until data is back, the other alerts of this cluster cannot fire or resolve.",
]


class Sample(BaseModel):
    """One measurement of one series; `value` None means no data (with the reason)."""

    metric: str
    labels: dict[str, str] = Field(default_factory=dict)
    value: float | None = None
    no_data: str | None = Field(default=None, description="Why there is no value.")
    unconfigured: bool = Field(default=False, description="No source is configured: no data, but no alert.")
    node: str | None = Field(default=None, description="The node it was measured on (named in pages).")


class AlertInstance(BaseModel):
    """A pending or firing alert of one (rule, cluster, labels) episode; persisted between runs."""

    rule: str
    labels: dict[str, str] = Field(default_factory=dict)
    status: Literal["pending", "firing"]
    active_since: datetime
    last_eval: datetime
    value: float | None = None
    fired_at: datetime | None = None
    notified_at: datetime | None = None
    notify_due: Literal["fire", "renotify"] | None = None
    thread_ts: str | None = None
    channel: str | None = None
    action_due: bool = False
    action_run: str | None = None
    action_url: str | None = None
    action_note: str | None = None
    no_data_since: datetime | None = None
    node: str | None = Field(default=None, description="The node it was last measured on.")
    cause: str | None = Field(default=None, description="A no-data alert: why there is no data (latest).")
    inhibited_by: str | None = Field(default=None, description="The firing alert whose message stands for this "
                                                                 "one (Alertmanager inhibition); not sent alone.")


class ResolvedNotice(BaseModel):
    """A resolved message still to be delivered (kept until Slack accepts it)."""

    rule: str
    labels: dict[str, str] = Field(default_factory=dict)
    fired_at: datetime | None = None
    resolved_at: datetime
    value: float | None = None
    reason: str = "back below the threshold"
    node: str | None = None
    thread_ts: str | None = None
    channel: str | None = None


class ClusterAlertState(BaseModel):
    """Everything the monitor remembers about one cluster."""

    cluster: str
    revision: int = 0
    updated_at: datetime | None = None
    alerts: dict[str, AlertInstance] = Field(default_factory=dict)
    outbox: list[ResolvedNotice] = Field(default_factory=list, description=f"At most {MAX_OUTBOX}, newest kept.")
    outbox_dropped: int = Field(default=0, description="Resolved messages dropped from a full outbox since the "
                                                       "last delivered message (said in the next one).")


class SeriesStatus(BaseModel):
    """The outcome of one rule on one series at this evaluation (for the report)."""

    rule: str
    metric: str
    labels: dict[str, str] = Field(default_factory=dict)
    state: SeriesState
    value: float | None = None
    threshold: float
    since: datetime | None = None
    unconfigured: bool = Field(default=False, description="No data because no source is configured.")
    summary: str


class Evaluation(BaseModel):
    state: ClusterAlertState
    series: list[SeriesStatus] = Field(default_factory=list)
    transitions: list[str] = Field(default_factory=list, description="One sentence per state change.")


def series_key(rule: str, labels: dict[str, str]) -> str:
    """Prometheus-style identity of an alert: rule{k="v",...}."""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{rule}{{{inner}}}"


def no_data_rule(metric: str, rules: RuleSet) -> AlertRule:
    """The synthetic rule that fires when a metric has had no data for `no_data_for`."""
    return AlertRule.model_validate({
        "name": NO_DATA_RULE, "metric": metric, "threshold": 0, "for": rules.settings.no_data_for_seconds,
        "action": rules.settings.no_data_action, "severity": "critical", "response": NO_DATA_RESPONSE})


def rule_for(name: str, metric_labels: dict[str, str], rules: RuleSet) -> AlertRule | None:
    if name == NO_DATA_RULE:
        return no_data_rule(metric_labels.get("metric", "replication_lag_seconds"), rules)
    return next((r for r in rules.rules if r.name == name), None)


def evaluate(rules: RuleSet, samples: list[Sample], state: ClusterAlertState, now: datetime) -> Evaluation:
    """Advance `state` by one evaluation at `now`; returns the new state (the input is not changed)."""
    new = state.model_copy(deep=True)
    result = Evaluation(state=new)
    seen: set[str] = set()
    for rule in rules.rules:
        for sample in (s for s in samples if s.metric == rule.metric):
            labels = {**rule.labels, **sample.labels}
            key = series_key(rule.name, labels)
            seen.add(key)
            if sample.value is None:
                result.series.append(_no_value(rule, labels, key, sample, new, now, result))
            else:
                result.series.append(_step(rule, labels, key, sample.value, rule.breached(sample.value),
                                           new, now, rules, result, sample))
    for metric in sorted({r.metric for r in rules.rules}):
        rule = no_data_rule(metric, rules)
        for sample in (s for s in samples if s.metric == metric):
            labels = {"metric": metric, **sample.labels}
            key = series_key(NO_DATA_RULE, labels)
            seen.add(key)
            missing = sample.value is None and not sample.unconfigured
            status = _step(rule, labels, key, None, missing, new, now, rules, result, sample)
            if missing:
                result.series.append(status)
    blind = {s.metric for s in samples if s.value is None and not s.unconfigured}
    for key in [k for k in new.alerts if k not in seen]:
        alert = new.alerts[key]
        rule = rule_for(alert.rule, alert.labels, rules)
        if rule is not None and rule.metric in blind:
            # The whole source is silent (e.g. the cluster timed out): not a resolution.
            if alert.status == "firing":
                alert.no_data_since, alert.last_eval = alert.no_data_since or now, now
                continue
            result.transitions.append(f"{key} pending timer reset: no data.")
        new.alerts.pop(key)
        if alert.status == "firing":
            _resolve(alert, None, now, new, result,
                     "recovered: its series is no longer reported" if rule is not None and rule.name == NO_DATA_RULE
                     else "its series is no longer measured (rule or node removed)")
    for key in _inhibit(new, now, result):  # pending again: say so in this evaluation's report too
        for status in (x for x in result.series if series_key(x.rule, x.labels) == key):
            status.state, status.since = "pending", now
            status.summary = f"{key} pending: no data, a fresh no_data_for since its inhibition ended."
    new.updated_at = now
    new.revision += 1
    return result


def _inhibit(state: ClusterAlertState, now: datetime, result: Evaluation) -> list[str]:
    """Mark the firing no-data alerts that the database's own no-data alert stands for (see INHIBITOR). When
    the inhibition ends, an alert never sent on its own starts a fresh pending period (its `no_data_for`)
    before it may page: a replica that is only reconnecting after its primary came back is not paged."""
    source = state.alerts.get(INHIBITOR)
    active = source is not None and source.status == "firing"
    reset = []
    for key, alert in state.alerts.items():
        inhibited = active and key != INHIBITOR and alert.rule == NO_DATA_RULE and alert.status == "firing"
        if inhibited and alert.inhibited_by is None:
            result.transitions.append(f"{key} notification inhibited: {INHIBITOR} is firing (same incident).")
        elif not inhibited and alert.inhibited_by is not None:
            if alert.notified_at is None and alert.thread_ts is None:
                alert.status, alert.active_since, alert.fired_at = "pending", now, None
                alert.notify_due, alert.action_due = None, False
                reset.append(key)
                result.transitions.append(f"{key} no longer inhibited: pending again from now (a fresh "
                                          "no_data_for before it may page on its own).")
            elif alert.notify_due:
                result.transitions.append(f"{key} no longer inhibited: its own message is due.")
        alert.inhibited_by = INHIBITOR if inhibited else None
    return reset


def _step(rule: AlertRule, labels: dict[str, str], key: str, value: float | None, breached: bool,
          state: ClusterAlertState, now: datetime, rules: RuleSet, result: Evaluation,
          sample: Sample | None = None) -> SeriesStatus:
    alert = state.alerts.get(key)
    if alert is not None and alert.status == "pending" and \
            (now - alert.last_eval).total_seconds() > rules.settings.stale_after_seconds:
        result.transitions.append(f"{key} pending timer restarted: not evaluated since {alert.last_eval:%H:%M:%S}.")
        alert = None
        state.alerts.pop(key, None)
    if not breached:
        if alert is not None:
            state.alerts.pop(key)
            if alert.status == "firing":
                _resolve(alert, value, now, state, result,
                         "data is back" if rule.name == NO_DATA_RULE else "back below the threshold")
            else:
                result.transitions.append(f"{key} back to inactive: {_value(rule, value)} is not above "
                                          f"{_value(rule, rule.threshold)} (pending timer reset).")
        return _status(rule, labels, "inactive", value, None)
    if alert is None:
        alert = AlertInstance(rule=rule.name, labels=labels, status="pending", active_since=now, last_eval=now)
        state.alerts[key] = alert
        result.transitions.append(f"{key} pending: {_value(rule, value)} above {_value(rule, rule.threshold)}.")
    alert.last_eval, alert.value, alert.no_data_since = now, value, None
    if sample is not None:
        alert.node = sample.node or alert.node
        if rule.name == NO_DATA_RULE:
            alert.cause = sample.no_data or alert.cause
    held = (now - alert.active_since).total_seconds()
    if alert.status == "pending" and held >= rule.for_seconds:
        alert.status, alert.fired_at = "firing", now
        alert.notify_due = "fire"
        alert.action_due = rule.action in RUNBOOK_ACTIONS
        result.transitions.append(f"{key} FIRING: above {_value(rule, rule.threshold)} at every evaluation "
                                  f"for {human_seconds(held)} (for: {format_duration(rule.for_seconds)}).")
    elif alert.status == "firing" and alert.notify_due is None and alert.notified_at is not None and \
            (now - alert.notified_at).total_seconds() >= rules.settings.renotify_seconds:
        alert.notify_due = "renotify"
        result.transitions.append(f"{key} still firing: re-notification due.")
    return _status(rule, labels, alert.status, value, alert.active_since)


def _no_value(rule: AlertRule, labels: dict[str, str], key: str, sample: Sample,
              state: ClusterAlertState, now: datetime, result: Evaluation) -> SeriesStatus:
    """No data: a firing alert stays firing (never resolved by silence); a pending one cannot advance."""
    alert = state.alerts.get(key)
    reason = sample.no_data or "no data"
    if alert is not None and alert.status == "firing":
        alert.no_data_since = alert.no_data_since or now
        alert.last_eval = now
        return SeriesStatus(rule=rule.name, metric=rule.metric, labels=labels, state="firing", value=None,
                            threshold=rule.threshold, since=alert.active_since,
                            summary=f"{key} still firing, but no data now ({reason}): not resolved.")
    if alert is not None:
        state.alerts.pop(key)
        result.transitions.append(f"{key} pending timer reset: no data ({reason}).")
    return SeriesStatus(rule=rule.name, metric=rule.metric, labels=labels, state="nodata", value=None,
                        threshold=rule.threshold, unconfigured=sample.unconfigured,
                        summary=f"{key}: no data ({reason}).")


def _resolve(alert: AlertInstance, value: float | None, now: datetime, state: ClusterAlertState,
             result: Evaluation, reason: str) -> None:
    if alert.inhibited_by and alert.notified_at is None and alert.thread_ts is None:
        # Never sent on its own (its inhibitor's message listed it): no resolved message of its own either.
        result.transitions.append(f"{series_key(alert.rule, alert.labels)} RESOLVED: {reason} "
                                  f"(was inhibited by {alert.inhibited_by}: no message).")
        return
    state.outbox.append(ResolvedNotice(rule=alert.rule, labels=alert.labels, fired_at=alert.fired_at,
                                       resolved_at=now, value=value, reason=reason, node=alert.node,
                                       thread_ts=alert.thread_ts, channel=alert.channel))
    if len(state.outbox) > MAX_OUTBOX:  # a long Slack outage: keep the newest, count the others
        state.outbox_dropped += len(state.outbox) - MAX_OUTBOX
        state.outbox = state.outbox[-MAX_OUTBOX:]
    result.transitions.append(f"{series_key(alert.rule, alert.labels)} RESOLVED: {reason}.")


def _status(rule: AlertRule, labels: dict[str, str], state: SeriesState, value: float | None,
            since: datetime | None) -> SeriesStatus:
    key = series_key(rule.name, labels)
    if rule.name == NO_DATA_RULE:
        text = f"{key} {state}: no data" if state != "inactive" else f"{key}: data present"
    else:
        text = f"{key} {state}: {_value(rule, value)} (threshold {_value(rule, rule.threshold)}, " \
               f"for {format_duration(rule.for_seconds)})"
    return SeriesStatus(rule=rule.name, metric=rule.metric, labels=labels, state=state, value=value,
                        threshold=rule.threshold, since=since, summary=text + ".")


def _value(rule: AlertRule, value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value:.1f}{' ' if rule.unit == 's' else ''}{rule.unit}"
