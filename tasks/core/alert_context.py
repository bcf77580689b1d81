"""The alert that started an action runbook: what the alert monitor hands to the flow it starts
(connection remediation, disk pressure, high-load response), shown in that flow's report and Slack message."""

from datetime import datetime

from pydantic import BaseModel, Field


class AlertContext(BaseModel):
    """The alert that started an action flow run (shown in its report and Slack message)."""

    rule: str = Field(description="Alert rule name.")
    cluster: str = Field(description="Cluster the alert is about.")
    labels: dict[str, str] = Field(default_factory=dict)
    value: float | None = Field(default=None, description="Value when it fired.")
    threshold: float | None = None
    fired_at: datetime | None = None
    monitor_flow_run: str | None = Field(default=None, description="The monitor run that fired it.")
