"""A monitor that cannot evaluate its rule file pages someone: once per episode, resolved when fixed.

An episode starts at the first run whose rule file is rejected (invalid, unreadable) and ends at the first run
that loads it again. Its page says exactly what holds: the last valid rules of that file still in force (named),
or NO rules in force, the monitor evaluating nothing. A different error in the same episode is a reply in the
page's thread, not a new page; a page Slack refused is retried at the next run. The episode is a Prefect
Variable per rule file, so every worker agrees.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import BaseModel

from tasks.alerts.rules import RuleSet
from tasks.core.limits import slug
from tasks.core.notify import NotificationOutcome, SlackThread, load_notifier, section_blocks

log = logging.getLogger("pg_runbooks.alerts")
PREFIX = "alert-rules-incident-"


class RulesIncident(BaseModel):
    source: str
    since: datetime
    error: str
    in_force: str
    thread_ts: str | None = None


def in_force_sentence(source: str, rules: RuleSet | None) -> str:
    """What the monitor evaluates while `source` is rejected."""
    if rules is None:
        return (f"NO alert rules are in force: this monitor evaluates nothing, so no alert can fire or resolve, "
                f"until {source} is fixed.")
    names = ", ".join(r.name for r in rules.rules)
    return f"In force: the last valid rules of {source} ({len(rules.rules)}: {names}), until it is fixed."


def rules_rejected(slack_block: str | None, source: str, error: str, rules: RuleSet | None, now: datetime,
                   link: str | None = None) -> NotificationOutcome:
    """Record (and page, once per episode) that `source` was rejected. Never raises."""
    in_force = in_force_sentence(source, rules)
    incident = _load(source)
    notifier, load_error = load_notifier(slack_block)
    outcome = NotificationOutcome(errors=[load_error] if load_error else [])
    thread = SlackThread(notifier, outcome)
    title = (f"ALERTING DISABLED: no rules in force ({source})" if rules is None
             else f"ALERT RULES REJECTED: {source} (previous rules in force)")
    lines = [in_force, f"Why: {error}"[:2900]] + ([f"<{link}|monitor run>"] if link else [])
    if incident is None or incident.thread_ts is None:
        incident = RulesIncident(source=source, since=incident.since if incident else now, error=error,
                                 in_force=in_force)
        thread.post(f"{title}: {in_force}", section_blocks(title, lines))
        incident.thread_ts = outcome.parent_ts
    elif (incident.error, incident.in_force) != (error, in_force):
        thread.outcome.parent_ts = incident.thread_ts
        thread.reply(f"Still rejected, now: {error}"[:3000], section_blocks(title, lines))
        incident.error, incident.in_force = error, in_force
    else:
        return outcome
    _save(incident)
    return outcome


def rules_loaded(slack_block: str | None, source: str, rules: RuleSet, now: datetime) -> NotificationOutcome:
    """End the episode of `source`, if one is open: a resolved reply in its thread. Never raises."""
    incident = _load(source)
    outcome = NotificationOutcome()
    if incident is None:
        return outcome
    notifier, _ = load_notifier(slack_block)
    if incident.thread_ts and notifier is not None:
        thread = SlackThread(notifier, outcome)
        thread.outcome.parent_ts = incident.thread_ts
        title = f"RESOLVED: alert rules of {source} valid again"
        lines = [f"{len(rules.rules)} rule(s) in force: {', '.join(r.name for r in rules.rules)}; rejected since "
                 f"{incident.since:%Y-%m-%d %H:%M:%S %Z} ({int((now - incident.since).total_seconds())} s)."]
        thread.reply(f"{title}: {lines[0]}", section_blocks(title, lines))
        if outcome.failed:
            return outcome  # retried at the next run
        thread.update(f"{title}: {lines[0]}", section_blocks(title, lines))
    _unset(source)
    return outcome


def _name(source: str) -> str:
    return PREFIX + slug(source)[:180]


def _load(source: str) -> RulesIncident | None:
    from prefect.variables import Variable

    try:
        value = Variable.get(_name(source), default=None)
        return RulesIncident.model_validate(value) if isinstance(value, dict) else None
    except Exception as exc:  # noqa: BLE001 - unknown: treated as a new episode (one page too many, not none)
        log.warning("could not read the rule-file incident of %s: %s", source, exc)
        return None


def _save(incident: RulesIncident) -> None:
    from prefect.variables import Variable

    value = incident.model_dump(mode="json")
    value["error"], value["in_force"] = value["error"][:2500], value["in_force"][:1500]
    try:
        Variable.set(_name(incident.source), value, overwrite=True)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not record the rule-file incident of %s: %s", incident.source, exc)


def _unset(source: str) -> None:
    from prefect.variables import Variable

    try:
        Variable.unset(_name(source))
    except Exception as exc:  # noqa: BLE001
        log.warning("could not close the rule-file incident of %s: %s", source, exc)
