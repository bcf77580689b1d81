"""Alert messages in Slack, Alertmanager-style: one thread per (alert, cluster, labels) episode.

Fire: a parent message with value, threshold, how long, the action and its flow run, the
response checklist and the action's mention group. Still firing after the re-notification
interval: a reply in the thread, broadcast to the channel. Resolved: a reply in the same
thread and the parent rewritten as resolved. What Slack refused stays due in the state and
is retried at the next evaluation; delivery never raises.
"""

from __future__ import annotations

import logging
from datetime import datetime

from blocks.slack_notifier import SlackNotifier
from tasks.alerts.evaluate import MAX_OUTBOX, AlertInstance, ClusterAlertState, ResolvedNotice, rule_for, series_key
from tasks.alerts.rules import AlertRule, RuleSet, format_duration
from tasks.core.findings import human_seconds
from tasks.core.notify import NotificationOutcome, SlackThread, section_blocks

log = logging.getLogger("pg_runbooks.alerts")
EMOJI = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}


def _value(rule: AlertRule, value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value:.1f} {rule.unit}" if rule.unit == "s" else f"{value:.1f}{rule.unit}"


def _labels(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


def title_of(state: str, cluster: str, rule_name: str, labels: dict[str, str], node: str | None) -> str:
    """A title that tells two alerts apart: the rule, the metric of a no-data alert, the cluster, the node or
    replica."""
    rest = {k: v for k, v in labels.items() if k != "metric"}
    what = f"no_data {labels['metric']}" if rule_name == "no_data" and "metric" in labels else rule_name
    where = _labels(rest) if rest else (f"node {node}" if node else "")
    return f"{state}: {what} on {cluster}{f' ({where})' if where else ''}"


def fire_message(cluster: str, rule: AlertRule, alert: AlertInstance, now: datetime,
                 mention: str | None, renotify: bool = False) -> tuple[str, list[str], str]:
    """(title, lines, fallback text) of a firing alert: the cause, the cluster, the node and the metric."""
    held = human_seconds((now - alert.active_since).total_seconds())
    state = "STILL FIRING" if renotify else "FIRING"
    title = title_of(state, cluster, rule.name, alert.labels, alert.node)
    on = f" on {alert.node}" if alert.node else ""
    if rule.name == "no_data":
        head = (f"*No data* for {rule.metric}{on} for {held} (no_data_for: {format_duration(rule.for_seconds)}): "
                f"{alert.cause or 'no data'}.")
    else:
        head = (f"*{_value(rule, alert.value)}* above the threshold {_value(rule, rule.threshold)}{on} at every "
                f"evaluation for {held} (for: {format_duration(rule.for_seconds)}).")
    lines = [f"{EMOJI.get(rule.severity, '')} {head}",
             f"Cluster: {cluster}; node: {alert.node or 'n/a'}; metric: {rule.metric}; severity: {rule.severity}; "
             f"labels: {_labels(alert.labels)}."]
    if mention:
        lines.insert(0, mention)
    lines.append(action_line(rule, alert))
    lines.append("*Response procedure*:")
    lines += [f"☐ {step}" for step in rule.checklist]
    text = f"{title}: {head}".replace("*", "")
    return title, lines, text


def action_line(rule: AlertRule, alert: AlertInstance) -> str:
    if rule.action in ("notify_team", "notify_dba"):
        return f"Action: {rule.action} (notification only)."
    if alert.action_url or alert.action_run:
        return f"Action: {rule.action} → {_run_link(alert)}{f' ({alert.action_note})' if alert.action_note else ''}."
    if alert.action_due and not alert.action_note:
        return f"Action: {rule.action}: starts right after this message; its outcome follows in this thread."
    return f"Action: {rule.action}: {alert.action_note or 'not started yet (retried at the next evaluation)'}."


def _run_link(alert: AlertInstance) -> str:
    link = f"flow run {alert.action_run}"
    return f"<{alert.action_url}|{link}>" if alert.action_url else link


def action_reply(notifier: SlackNotifier | None, cluster: str, rule: AlertRule, alert: AlertInstance
                 ) -> NotificationOutcome:
    """The action's outcome, in the alert's thread (its page went out first). Never raises."""
    outcome = NotificationOutcome()
    if notifier is None or not alert.thread_ts:
        return outcome  # no page yet: the page, when it goes out, carries the action line
    thread = SlackThread(notifier, outcome)
    thread.outcome.parent_ts = alert.thread_ts
    title = title_of("ACTION", cluster, rule.name, alert.labels, alert.node)
    line = action_line(rule, alert)
    thread.reply(f"{title}: {line}", section_blocks(title, [line]))
    return outcome


def resolved_message(cluster: str, rule: AlertRule | None, notice: ResolvedNotice) -> tuple[str, list[str], str]:
    name = notice.rule
    lasted = human_seconds((notice.resolved_at - notice.fired_at).total_seconds()) if notice.fired_at else "?"
    title = title_of("RESOLVED", cluster, name, notice.labels, notice.node)
    if name == "no_data":
        first = f":white_check_mark: {notice.reason} ({notice.labels.get('metric', 'its metric')}); fired for {lasted}."
    else:
        value = _value(rule, notice.value) if rule else str(notice.value)
        now = f" (now {value})" if notice.value is not None else ""
        first = f":white_check_mark: {notice.reason}{now}; fired for {lasted}."
    lines = [first, f"Cluster: {cluster}; node: {notice.node or 'n/a'}; labels: {_labels(notice.labels)}."]
    return title, lines, f"{title}: {lines[0]}"


def deliver(notifier: SlackNotifier | None, cluster: str, rules: RuleSet, state: ClusterAlertState,
            now: datetime) -> NotificationOutcome:
    """Send every due message of `state` and record what was delivered in it (mutates `state`).

    With no notifier the resolved messages are logged and dropped (nothing would ever send them).
    """
    outcome = NotificationOutcome()
    if notifier is None:
        logger = _logger()
        for notice in state.outbox:
            logger.info("%s (no Slack notifier: logged only)", resolved_message(cluster, None, notice)[2])
        state.outbox, state.outbox_dropped = [], 0
        return outcome
    for key, alert in state.alerts.items():
        if alert.status != "firing" or alert.notify_due is None:
            continue
        rule = rule_for(alert.rule, alert.labels, rules)
        if rule is None or alert.inhibited_by:  # an inhibited alert is listed in its inhibitor's message
            continue
        renotify = alert.notify_due == "renotify" and alert.thread_ts is not None
        title, lines, text = fire_message(cluster, rule, alert, now, notifier.mention_groups.get(rule.action),
                                          renotify)
        lines += inhibited_lines(state, key) + dropped_lines(state)
        thread = SlackThread(notifier, NotificationOutcome())
        if renotify:
            thread.outcome.parent_ts = alert.thread_ts
            thread._call("chat_postMessage", text=text, blocks=section_blocks(title, lines),
                         thread_ts=alert.thread_ts, reply_broadcast=True)
        else:
            thread.post(text, section_blocks(title, lines, series_key(alert.rule, alert.labels)))
        if thread.outcome.failed == 0 and thread.outcome.delivered:
            alert.notify_due, alert.notified_at, state.outbox_dropped = None, now, 0
            if not renotify:
                alert.thread_ts, alert.channel = thread.outcome.parent_ts, thread.outcome.channel
        merge_outcome(outcome, thread.outcome)
    kept = []
    for notice in state.outbox:
        rule = rule_for(notice.rule, notice.labels, rules)
        title, lines, text = resolved_message(cluster, rule, notice)
        lines += dropped_lines(state)
        thread = SlackThread(notifier, NotificationOutcome())
        if notice.thread_ts:
            thread.outcome.parent_ts = notice.thread_ts
            thread.reply(text, section_blocks(title, lines))
            delivered = thread.outcome.failed == 0
            if delivered:  # the parent shows the episode is over; a failure here is only logged
                thread.update(text, section_blocks(title, lines, series_key(notice.rule, notice.labels)))
        else:
            thread.post(text, section_blocks(title, lines))
            delivered = thread.outcome.failed == 0
        if not delivered:
            kept.append(notice)
        else:
            state.outbox_dropped = 0
        merge_outcome(outcome, thread.outcome)
    state.outbox = kept
    return outcome


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger (shown in the Prefect UI), or this module's outside a run."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def inhibited_lines(state: ClusterAlertState, key: str) -> list[str]:
    """The alerts this one stands for (Alertmanager inhibition), named in its message."""
    held = [a for a in state.alerts.values() if a.inhibited_by == key]
    if not held:
        return []
    names = "; ".join(f"{a.labels.get('metric', a.rule)} ({_labels(_without_metric(a.labels))})" for a in held)
    return [f"Also without data, the same incident (not sent separately while this fires; any still firing "
            f"after it resolves gets its own message): {names}."]


def _without_metric(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "metric"}


def dropped_lines(state: ClusterAlertState) -> list[str]:
    """What a full outbox lost, said once in the next delivered message."""
    if not state.outbox_dropped:
        return []
    return [f":warning: {state.outbox_dropped} older resolved message(s) of {state.cluster} were dropped while "
            f"Slack could not be reached (the monitor keeps the newest {MAX_OUTBOX}); see the monitor's flow runs."]


def merge_outcome(total: NotificationOutcome, one: NotificationOutcome) -> None:
    total.attempted = total.attempted or one.attempted
    total.delivered += one.delivered
    total.failed += one.failed
    total.errors += one.errors
    total.channel = total.channel or one.channel
