"""Backstop of the failover runbook: a failover run whose worker died is marked Crashed and alerted.

Started by the server, not by people (tasks/failover/backstop.py, prefect.yaml): when a failover run goes silent
(no heartbeat, no final state: the whole worker is gone) or becomes Crashed (its process was killed). Such a run
runs no hook of its own; this flow says so in the run's Slack thread, with the last journaled step and who is
writable now. Rerunning the failover resumes it.
"""

from prefect import flow, get_run_logger

from tasks.core.limits import crash_alert_lock_name, in_turn
from tasks.failover.backstop import already_alerted, cluster_now, mark_crashed, post_crash_alert, run_id_of
from tasks.failover.model import FailoverRequest


@flow(name="failover-crash-alert", log_prints=False)
def failover_crash_alert(flow_run_id: str = "", silence: str = "90 s") -> str:
    """Mark a silent failover run Crashed and alert its Slack thread (unless its own hook did).

    Args:
        flow_run_id: The silent failover run: its id, or the event resource id 'prefect.flow-run.<id>'.
        silence: How long it was silent (said in its state message and the alert).
    """
    logger = get_run_logger()
    if not flow_run_id.strip():
        return "no flow run given: nothing to do (the server's trigger passes the silent run)"
    run, marked = mark_crashed(run_id_of(flow_run_id), silence)
    if run.state is None or run.state.type.value != "CRASHED":
        logger.info("failover run %s: %s", run.id, marked)
        return marked
    request = FailoverRequest.model_validate((run.parameters or {}).get("request") or {})
    # both triggers fire for one lost worker (silent, then the Crashed this run set): one alerts, the other reads it
    with in_turn(crash_alert_lock_name(request.cluster_block)):
        if by := already_alerted(str(run.id), request):
            logger.info("failover run %s %s; already alerted by %s", run.id, marked, by)
            return f"failover run {run.id} {marked}; already alerted by {by}"
        outcome = post_crash_alert(str(run.id), request, cluster_now(request))
    summary = f"failover run {run.id} {marked}; alert: {outcome.summary}"
    (logger.info if outcome.ok else logger.warning)(summary)
    return summary
