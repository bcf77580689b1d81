"""The approval gate of a failover triggered automatically: a timed pause whose form shows the plan.

Fails closed: a timeout or a rejection refuses the failover before phase 2, so nothing changes.
"""

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from tasks.core.findings import md_cell
from tasks.failover.model import FailoverPlan, FailoverRefused


class FailoverApproval(RunInput):
    """What the on-call answers in the Prefect UI (Resume form)."""

    approve: bool = Field(default=False, description="Approve this plan: phase 2 promotes the candidate.")
    approver: str = Field(default="", max_length=200, description="Who approves, for the audit trail.")


def plan_markdown(plan: FailoverPlan) -> str:
    """The plan as the approval form's description: every step, on which node, and why."""
    lines = [
        f"### Approve {plan.mode} of {md_cell(plan.cluster)}: {plan.old_primary} → {plan.candidate}?",
        f"Candidate lag: {plan.lag_bytes if plan.lag_bytes is not None else 'unknown'} bytes; "
        f"timeline {plan.original_timeline}.",
        "",
        "| phase | step | node | why |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s.phase} | {md_cell(s.step)} | {md_cell(s.node)} | {md_cell(s.why)} |" for s in plan.steps]
    lines += [f"- warning: {md_cell(w)}" for w in plan.warnings]
    lines += ["", "Leave *approve* off, or let the pause time out, to refuse: nothing will be changed."]
    return "\n".join(lines)


def await_approval(plan: FailoverPlan, timeout_seconds: int, poll_seconds: int = 2) -> FailoverApproval:
    """Block until the on-call approves; refuse (FailoverRefused) on rejection or timeout."""
    form = FailoverApproval.with_initial_data(description=plan_markdown(plan), approve=False)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_seconds, poll_interval=poll_seconds,
                                key="failover-approval")
    except FlowPauseTimeout:
        raise FailoverRefused([f"no approval within {timeout_seconds} s (fails closed): rerun or approve in time"]
                              ) from None
    if not answer.approve:
        who = f" by {answer.approver}" if answer.approver else ""
        raise FailoverRefused([f"the plan was rejected{who} in the approval form"])
    return answer
