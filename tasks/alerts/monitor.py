"""The steps of the alert monitor between sampling and Slack: rules in force, the fleet, one cluster's turn.

Pure decisions live in tasks.alerts.evaluate; this module wires them to the state store,
the notifier and the actions.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks.slack_notifier import SlackNotifier
from tasks.alerts.actions import start_action
from tasks.alerts.evaluate import ClusterAlertState, Evaluation, SeriesStatus, evaluate, rule_for, series_key
from tasks.alerts.metrics import ClusterSamples
from tasks.alerts.notify import action_reply, deliver, merge_outcome
from tasks.alerts.rules import RuleFileError, RuleSet, default_rules, load_rules
from tasks.alerts.rules_incident import in_force_sentence, rules_loaded, rules_rejected
from tasks.alerts.sources import BlockChoice
from tasks.alerts.state import StateStoreError, load_states, save_state
from tasks.core.notify import NotificationOutcome

log = logging.getLogger("pg_runbooks.alerts")
LAST_VALID_RULES = "alert-rules-last-valid"
_last_valid: dict[str, RuleSet] = {}


class MonitorParams(BaseModel):
    """How the monitor runs (the Prefect UI renders this form)."""

    rules_file: str | None = Field(default=None, description="YAML rule file; empty: the runbook's four rules.")
    deadline_seconds: float = Field(default=10, ge=1, le=50,
                                    description="Per-cluster deadline for its whole sampling: loading its block, "
                                                "the database and the metrics source.")
    fleet_budget_seconds: float = Field(default=45, ge=1, le=600,
                                        description="Sampling budget of the whole fleet (below the 60 s interval): "
                                                    "a cluster not sampled by then is no data (timed out).")
    lock_timeout_seconds: float = Field(default=30, ge=1, le=300,
                                        description="Wait this long for another monitor run's state lock.")
    dispatch_actions: bool = Field(default=True, description="Start the actions of firing alerts.")
    wake_paused: bool = Field(default=False, description="Connect to a managed cluster whose compute is paused "
                              "(Aurora 0 ACU, Neon idle), waking it; off: it is reported paused, no data, no alert.")


class ClusterResult(BaseModel):
    block: str
    cluster: str
    seconds: float = Field(description="Time to sample this cluster.")
    series: list[SeriesStatus] = Field(default_factory=list)
    transitions: list[str] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)

    def count(self, state: str) -> int:
        return sum(1 for s in self.series if s.state == state)


class MonitorReport(BaseModel):
    started_at: datetime
    evaluated_at: datetime | None = None
    finished_at: datetime | None = None
    status: Literal["ok", "warning", "critical"] = "ok"
    summary: str = ""
    rules_source: str = "built-in defaults"
    rules_error: str | None = None
    clusters: list[ClusterResult] = Field(default_factory=list)
    sample_seconds: float = 0.0
    phase_seconds: dict[str, float] = Field(default_factory=dict, description="Wall time of each phase.")
    artifact_key: str | None = None

    def firing(self) -> list[SeriesStatus]:
        return [s for c in self.clusters for s in c.series if s.state == "firing"]


def rules_in_force(rules_file: str | None) -> tuple[RuleSet | None, str | None]:
    """The rules to evaluate and, if the file was rejected, why and what stays in force: the last valid rules
    of that file, or none (then the monitor evaluates nothing: tasks.alerts.rules_incident pages)."""
    if not rules_file:
        return default_rules(), None
    try:
        rules = load_rules(rules_file)
    except RuleFileError as exc:
        previous = _last_valid.get(rules_file) or _stored_rules(rules_file)
        log.error("%s", exc)
        return previous, f"{exc} {in_force_sentence(rules_file, previous)}"
    _last_valid[rules_file] = rules
    _store_rules(rules_file, rules)
    return rules, None


def answer_rules(slack_block: str | None, rules_file: str | None, rules: RuleSet | None, error: str | None,
                 now: datetime, link: str | None) -> RuleSet:
    """Page a rejected rule file once per episode and resolve it when fixed (tasks.alerts.rules_incident);
    the rules to evaluate, or RuleFileError when none is in force (after the page)."""
    if not rules_file:
        return rules or default_rules()
    if error is None and rules is not None:
        rules_loaded(slack_block, rules_file, rules, now)
        return rules
    rules_rejected(slack_block, rules_file, error or "rejected", rules, now, link)
    if rules is None:
        raise RuleFileError(rules_file, [f"{error}", "and no previous valid rules are known: NO alert rules are in "
                                                    "force, this monitor evaluates nothing (paged)"])
    return rules


def _stored_rules(rules_file: str) -> RuleSet | None:
    from prefect.variables import Variable

    try:
        stored = Variable.get(LAST_VALID_RULES, default=None)
        if isinstance(stored, dict) and stored.get("source") == rules_file:
            return RuleSet.model_validate(stored["rules"])
    except Exception as exc:  # noqa: BLE001
        log.warning("could not read the last valid rules: %s", exc)
    return None


def _store_rules(rules_file: str, rules: RuleSet) -> None:
    """Remember the last valid rules for other workers (when they fit in a Variable)."""
    from prefect.variables import Variable

    value = {"source": rules_file, "rules": rules.compact()}
    if len(json.dumps(value)) > 4900:
        return
    try:
        if Variable.get(LAST_VALID_RULES, default=None) != value:
            Variable.set(LAST_VALID_RULES, value, overwrite=True)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not store the last valid rules: %s", exc)


def resolve_clusters(cluster_blocks: list[str], cluster_group: str | None, fleet_block: str | None = None
                     ) -> list[str]:
    """The cluster blocks to evaluate: the listed ones, every PostgresCluster block named group*, and the members of
    the Fleet block (listed, by prefix, by tag). An empty selection is an empty fleet (the monitor evaluates none)."""
    from blocks.fleet import Fleet
    from tasks.core.fleet import EmptyFleet, resolve_fleet

    try:
        return resolve_fleet(Fleet.load(fleet_block) if fleet_block else None, cluster_blocks, cluster_group,
                             fleet_name=fleet_block or cluster_group or "listed")
    except EmptyFleet:
        return []


@task(name="load-alert-state", cache_policy=NO_CACHE, retries=0)
def load_alert_state(blocks: list[str]) -> dict[str, ClusterAlertState]:
    return load_states(blocks)


def evaluate_fleet(blocks: list[str], sampled: dict[str, ClusterSamples], states: dict[str, ClusterAlertState],
                   rules: RuleSet, now: datetime) -> tuple[dict[str, Evaluation], list[str]]:
    """Evaluate every cluster (pure); the clusters that need a turn (they take the lock): their state changed,
    or a message is still to deliver (a failed resolved message is retried even when nothing else moves)."""
    evaluations = {b: evaluate(rules, sampled[b].samples, states[b], now) for b in blocks}
    return evaluations, [b for b in blocks if needs_turn(states[b], evaluations[b].state)]


def quiet_result(block: str, sampled: ClusterSamples, evaluation: Evaluation) -> ClusterResult:
    """A cluster with nothing pending, firing or due: nothing to lock, send or save."""
    return ClusterResult(block=block, cluster=sampled.cluster, seconds=sampled.seconds,
                         series=evaluation.series, transitions=evaluation.transitions)


def cluster_turn(block: str, sampled: ClusterSamples, evaluation: Evaluation, rules: RuleSet,
                 now: datetime, notifier: SlackNotifier | None, slack_block: str | None,
                 dispatch_actions: bool, monitor_run: str | None,
                 scaler: BlockChoice | None = None) -> tuple[ClusterResult, ClusterAlertState]:
    """Start the due actions and deliver the due messages of one evaluated cluster; the state to save.

    Called with the cluster's state lock held, on an evaluation of the state as stored.
    """
    new = evaluation.state
    result = ClusterResult(block=block, cluster=sampled.cluster, seconds=sampled.seconds,
                           series=evaluation.series, transitions=evaluation.transitions)
    result.notification = deliver(notifier, sampled.cluster, rules, new, now)  # the page first, then the action
    for alert in new.alerts.values():
        if not (alert.action_due and dispatch_actions):
            continue
        rule = rule_for(alert.rule, alert.labels, rules)
        if rule is None:
            continue
        started = start_action(rule, block, sampled.cluster, alert, slack_block, monitor_run, scaler)
        said, alert.action_note = alert.action_note, started.note[:300]
        if started.started:
            alert.action_due, alert.action_run, alert.action_url = False, started.run_id, started.url
        result.actions.append(f"{series_key(alert.rule, alert.labels)}: {rule.action}: {started.note}")
        if started.started or alert.action_note != said:  # its outcome in the thread, once per change
            merge_outcome(result.notification, action_reply(notifier, sampled.cluster, rule, alert))
    return result, new


def changed(before: ClusterAlertState, after: ClusterAlertState) -> bool:
    return _material(before) != _material(after)


def _material(state: ClusterAlertState) -> dict:
    """What must be saved: everything but a firing alert's latest value and evaluation time. Nothing reads
    those between turns (a pending alert's evaluation time restarts a stale timer, so it is kept), and leaving
    them out is what lets a steadily firing fleet skip the lock and the write at every evaluation."""
    data = state.model_dump(mode="json", include={"alerts", "outbox", "outbox_dropped"})
    for alert in data.get("alerts", {}).values():
        if alert["status"] == "firing":
            alert.pop("last_eval", None)
            alert.pop("value", None)
    return data


def needs_turn(before: ClusterAlertState, after: ClusterAlertState) -> bool:
    """The state changed, a message or an action is due (retried at every evaluation until done), or messages
    wait in the outbox."""
    return (bool(after.outbox) or any(a.notify_due or a.action_due for a in after.alerts.values())
            or changed(before, after))


@task(name="save-alert-state", cache_policy=NO_CACHE, retries=0)
def save_alert_states(states: list[ClusterAlertState]) -> int:
    """Write every state, each on its own; then one StateStoreError naming every cluster that could not be
    written (one failing cluster never costs the others their state)."""
    failed: list[str] = []
    for state in states:
        try:
            save_state(state)
        except StateStoreError as exc:
            log.error("%s", exc)
            failed.append(f"{state.cluster}: {exc.detail}")
    if failed:
        raise StateStoreError("writing", f"{len(failed)} of {len(states)} cluster state(s) not saved (the others "
                                         f"were): {'; '.join(failed)}"[:2000])
    return len(states)


class Phases:
    """Wall time of consecutive phases, written into a dict (for the report and the benchmark)."""

    def __init__(self, into: dict[str, float]):
        import time

        self.into, self._time, self._last = into, time.perf_counter, time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._time()
        self.into[name] = round(now - self._last, 3)
        self._last = now


def finish(report: MonitorReport) -> MonitorReport:
    firing = report.firing()
    nodata = [s for c in report.clusters for s in c.series if s.state == "nodata" and not s.unconfigured]
    unconfigured = sorted({s.metric for c in report.clusters for s in c.series if s.unconfigured})
    pending = [s for c in report.clusters for s in c.series if s.state == "pending"]
    report.status = "critical" if firing else ("warning" if report.rules_error or
                                                [s for s in nodata if s.rule == "no_data"] else "ok")
    parts = [f"{len(report.clusters)} cluster(s) evaluated", f"{len(firing)} alert(s) firing",
             f"{len(pending)} pending", f"{len(nodata)} series without data"]
    first = f"; {firing[0].summary}" if firing else ""
    bad_rules = "; the rule file was rejected, its last valid rules in force" if report.rules_error else ""
    not_set = f"; {', '.join(unconfigured)}: no source configured" if unconfigured else ""
    report.summary = ", ".join(parts) + first + bad_rules + not_set
    return report


def render_markdown(report: MonitorReport) -> str:
    from tasks.core.findings import md_cell

    lines = [f"# Alert monitor: {report.status.upper()}", "", md_cell(report.summary), "",
             f"Rules: {md_cell(report.rules_source)}; evaluated at {report.evaluated_at:%Y-%m-%d %H:%M:%S %Z}.", ""]
    if report.rules_error:
        lines += [f"**Rule file rejected:** {md_cell(report.rules_error)}", ""]
    lines += ["| cluster | state | alert | summary |", "|---|---|---|---|"]
    order = {"firing": 0, "pending": 1, "nodata": 2}
    rows = sorted(((c, s) for c in report.clusters for s in c.series if s.state != "inactive"),
                  key=lambda cs: (order.get(cs[1].state, 3), cs[0].cluster))
    for c, s in rows[:300]:
        lines.append(f"| {md_cell(c.cluster)} | {s.state} | {md_cell(series_key(s.rule, s.labels))} | "
                     f"{md_cell(s.summary)} |")
    if not rows:
        lines.append("| all | inactive | | every rule below its threshold |")
    actions = [a for c in report.clusters for a in c.actions]
    if actions:
        lines += ["", "## Actions", ""] + [f"- {md_cell(a)}" for a in actions]
    return "\n".join(lines)


__all__ = ["Phases", "StateStoreError", "MonitorParams", "MonitorReport", "cluster_turn", "changed", "finish",
           "needs_turn",
           "evaluate_fleet", "quiet_result",
           "load_alert_state", "render_markdown", "resolve_clusters", "rules_in_force", "answer_rules",
           "save_alert_states"]
