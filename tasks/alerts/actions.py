"""Alert actions run runbooks as their own flow runs, linked to the monitor run that fired them.

With a deployment registered (`prefect deploy`, see prefect.yaml) the action is a deployment
run (`run_deployment(..., timeout=0)`: the monitor does not wait; a worker runs it with the
deployment's parameters, e.g. dry_run off). Without one (a bare test harness, a laptop) the
flow runs in-process as a subflow. An idempotency key per episode means a monitor retry
returns the same run instead of starting a second one; the action flows also hold a global
concurrency slot per cluster, so two runs never overlap. connection remediation gets the alerting
cluster's own scaler (tasks.alerts.sources), or none: never another cluster's pool.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from tasks.alerts.evaluate import AlertInstance, series_key
from tasks.alerts.rules import AlertRule
from tasks.alerts.sources import BlockChoice, usable_block
from tasks.core.alert_context import AlertContext
from tasks.core.limits import action_lock_name, ensure_limits

log = logging.getLogger("pg_runbooks.alerts")

# action -> (flow name, deployment name) of the runbook it runs
ACTION_DEPLOYMENTS = {
    "scale_connections": ("connection-remediation", "connection-remediation"),
    "cleanup_data": ("disk-pressure", "disk-pressure"),
    "high_load_response": ("high-load-response", "high-load-response"),
}
# action -> the same runbook's flow as a module path (its prefect.yaml entrypoint), for the in-process
# fallback. Bound late, by name, like the deployment: tasks never import flows (docs/DEVELOPING.md).
ACTION_FLOWS = {
    "scale_connections": "flows.connection_remediation:connection_remediation",
    "cleanup_data": "flows.disk_pressure:disk_pressure",
    "high_load_response": "flows.high_load_response:high_load_response",
}
SCALED_ACTIONS = ("scale_connections", "high_load_response")  # these get the cluster's own scaler (or none)


class ActionStart(BaseModel):
    started: bool
    run_id: str | None = None
    url: str | None = None
    note: str


def _flow_for(action: str):
    """The runbook flow of `action`, loaded by its module path (no deployment registered)."""
    import importlib

    module, name = ACTION_FLOWS[action].split(":")
    return getattr(importlib.import_module(module), name)


def _deployment_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
            return True
        except ObjectNotFound:
            return False


def _url(run_id: str) -> str | None:
    from prefect.utilities.urls import url_for

    try:
        return url_for("flow-run", obj_id=run_id)
    except Exception:  # noqa: BLE001 - a missing UI URL is not an error
        return None


def idempotency_key(cluster: str, alert: AlertInstance) -> str:
    """One action run per episode of one series: cluster, rule, labels and when it fired."""
    fired = alert.fired_at.isoformat() if alert.fired_at else ""
    return f"alert:{cluster}:{series_key(alert.rule, alert.labels)}:{fired}"


def start_action(rule: AlertRule, cluster_block: str, cluster: str, alert: AlertInstance,
                 slack_block: str | None, monitor_run: str | None, scaler: BlockChoice | None = None) -> ActionStart:
    """Start the runbook of `rule.action` for this alert; never raises (a failure is retried next time).

    scale_connections gets this cluster's scaler, or explicitly none (never the deployment's default).
    """
    flow_name, deployment = ACTION_DEPLOYMENTS[rule.action]
    context = AlertContext(rule=rule.name, cluster=cluster, labels=alert.labels, value=alert.value,
                           threshold=rule.threshold, fired_at=alert.fired_at, monitor_flow_run=monitor_run)
    parameters: dict[str, Any] = {"cluster_block": cluster_block, "slack_block": slack_block,
                                  "alert": context.model_dump(mode="json")}
    try:
        if rule.action in SCALED_ACTIONS:
            parameters["scaler_block"] = usable_block(scaler)
        ensure_limits([action_lock_name(cluster, rule.action)])
        name = f"{flow_name}/{deployment}"
        if _deployment_exists(name):
            from prefect.deployments import run_deployment

            run = run_deployment(
                name=name, parameters=parameters, timeout=0, tags=["alert", rule.name],
                flow_run_name=f"{rule.name}-{cluster}",
                idempotency_key=idempotency_key(cluster, alert))
            run_id = str(run.id)
            return ActionStart(started=True, run_id=run_id, url=_url(run_id), note=f"deployment {name}")
        flow = _flow_for(rule.action)
        state = flow.with_options(flow_run_name=f"{rule.name}-{cluster}")(
            **{**parameters, "alert": context}, return_state=True)
        run_id = str(state.state_details.flow_run_id)
        summary = ""
        if state.is_completed():
            summary = getattr(state.result(raise_on_failure=False), "summary", "")
        note = f"no deployment {name}: ran as a subflow, {state.name.lower()}"
        return ActionStart(started=True, run_id=run_id, url=_url(run_id),
                           note=f"{note}: {summary}" if summary else note)
    except Exception as exc:  # noqa: BLE001 - the alert is still notified; the start is retried
        log.warning("action %s for %s could not start: %s", rule.action, cluster, exc)
        return ActionStart(started=False, note=f"could not start: {type(exc).__name__}: {str(exc)[:200]}")
