"""The vocabulary of the failover runbook: its request (the UI form), node states, plan and report."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tasks.core.notify import NotificationOutcome

Mode = Literal["switchover", "failover"]
MiB = 1024 * 1024


class FailoverRefused(RuntimeError):
    """The failover was refused before anything changed; `reasons` say why and what to do."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("failover refused, nothing was changed: " + "; ".join(reasons))


class FailoverStepFailed(RuntimeError):
    """A step of phase 2 or 3 failed: the message names the step, the node and what to do."""


class FailoverRequest(BaseModel):
    """What the operator asks for. Renders as the Prefect UI form; the same schema validates API calls."""

    cluster_block: str = Field(default="sandbox", description="PostgresCluster block of the cluster.")
    mode: Mode = Field(
        default="switchover",
        description="switchover: the primary is alive (zero-loss, planned). failover: the primary is down "
        "or must be abandoned (reports the LSN gap).",
    )
    candidate: str | None = Field(
        default=None, description="Node to promote. Empty: the healthiest standby (streaming, not paused, least lag)."
    )
    max_lag_bytes: int = Field(
        default=MiB, ge=0, le=1 << 40,
        description="Refuse a candidate further behind than this many bytes of WAL (like Patroni's "
        "maximum_lag_on_failover), unless force.",
    )
    force: bool = Field(
        default=False, description="Proceed despite a lag-guard failure (only that: it never skips the fence check)."
    )
    accept_unconfirmed_fence: bool = Field(
        default=False,
        description="Proceed when node control cannot confirm the old primary is stopped (e.g. its host is "
        "unreachable) AND you have made sure it cannot accept writes (powered off, network cut). pgbouncer is "
        "then repointed, but direct clients could still write to it. Always refused with endpoint kind 'none' "
        "(libpq multi-host): nothing else keeps clients off an old primary.",
    )
    dry_run: bool = Field(
        default=False,
        description="Run only phase 1 and change nothing: a dry run shows the candidate it would promote and its "
        "lag in bytes, every reason it would refuse, the pre-failover backup (node states, settings, endpoint) and "
        "each step of phases 2 and 3 with its node and why, in the run's report. The UI form opens with it on.",
    )
    confirm_cluster: str = Field(
        default="",
        description="A real switchover or failover (dry run off) needs the cluster typed again here: the "
        "cluster_block above (or the block's cluster_name). Empty or different: refused before phase 1, nothing "
        "changes. Not needed for a dry run.",
    )
    require_approval: bool = Field(
        default=False,
        description="Pause after phase 1 until the on-call approves the plan in the Prefect UI (for automatic "
        "triggers). No answer within approval_timeout_seconds refuses the failover: nothing changes.",
    )
    approval_timeout_seconds: int = Field(
        default=900, ge=10, le=86_400, description="How long to wait for the approval before refusing."
    )
    node_control_block: str = Field(default="sandbox", description="NodeControl block (how to stop/start nodes).")
    endpoint_block: str = Field(default="sandbox", description="EndpointControl block (pgbouncer or none).")
    slack_block: str | None = Field(default=None, description="SlackNotifier block for the run's thread.")
    journal_dir: str | None = Field(
        default=None,
        description="Directory of the step journal and lock (shared, outside the worker). Default: "
        "$PG_RUNBOOKS_STATE_DIR/failover or ~/.pg-runbooks/failover.",
    )
    pause_timeout_seconds: float = Field(
        default=10, ge=1, le=300, description="Wait this long for pgbouncer PAUSE (running transactions)."
    )
    stop_timeout_seconds: int = Field(default=60, ge=5, le=600, description="Wait this long for the fence (stop).")
    lsn_gate_timeout_seconds: float = Field(
        default=30, ge=1, le=600, description="Wait this long for the candidate to replay the old primary's WAL."
    )
    promote_timeout_seconds: float = Field(default=30, ge=1, le=600, description="Wait this long for promotion.")
    patroni_timeout_seconds: float = Field(
        default=90, ge=5, le=600, description="Patroni backend: wait this long for the candidate to lead (the POST "
        "to Patroni, then GET /cluster; a failover after a lost leader waits for its leader key's ttl).")
    follow_timeout_seconds: float = Field(
        default=30, ge=1, le=600, description="Wait this long for each other standby to stream from the new primary."
    )
    endpoint_probe_seconds: float = Field(
        default=30, ge=1, le=600,
        description="Keep retrying the write probe through the endpoint this long (at least pgbouncer's "
        "server_login_retry plus two connect timeouts) before reporting the endpoint path as not yet confirmed.",
    )
    incident_at: datetime | None = Field(
        default=None,
        description="When the primary failed (e.g. the alert's firing time). The report measures write "
        "availability from it; empty: from the run's start.",
    )


class NodeState(BaseModel):
    """What one node says about itself right now (never what the journal says)."""

    node: str
    reachable: bool
    error: str | None = None
    in_recovery: bool | None = None
    timeline: int | None = None
    current_lsn: str | None = None
    receive_lsn: str | None = None
    replay_lsn: str | None = None
    replay_paused: bool | None = None
    receiver_status: str | None = None
    sender_port: int | None = None


class PlannedStep(BaseModel):
    phase: int
    step: str
    node: str
    why: str


class FailoverPlan(BaseModel):
    cluster: str
    mode: Mode
    old_primary: str
    candidate: str
    lag_bytes: int | None
    original_timeline: int | None
    resumed: bool = False
    resumed_from_run: str | None = Field(default=None, description="The unfinished run this one continues.")
    resume_after: str | None = Field(default=None, description="Its last journaled step, e.g. 'promote (done)'.")
    resume_from: str | None = Field(default=None, description="The first planned step after that one.")
    warnings: list[str] = Field(default_factory=list)
    steps: list[PlannedStep] = Field(default_factory=list)


class StepRecord(BaseModel):
    phase: int
    step: str
    node: str
    status: Literal["started", "done", "skipped", "failed"]
    detail: str = ""
    at: datetime
    duration_ms: float | None = None


class DataLoss(BaseModel):
    """Evidence of what the promotion may have lost."""

    old_wal_end: str | None = Field(default=None, description="End of the old primary's WAL (shutdown checkpoint, or "
                                    "the last valid record after a crash).")
    promoted_at_lsn: str | None = Field(default=None, description="Where the candidate's replay stood when promoted.")
    gap_bytes: int | None = Field(default=None, description="WAL the candidate never had (0 = none); None = unknown.")
    sentence: str = "unknown"


class FailoverReport(BaseModel):
    cluster: str
    mode: Mode
    status: Literal["completed", "dry_run", "refused", "failed"]
    summary: str
    old_primary: str | None = None
    new_primary: str | None = None
    resumed: bool = False
    plan: FailoverPlan | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    write_pause_ms: float | None = Field(default=None, description="From pgbouncer PAUSE to RESUME.")
    writes_back_at: datetime | None = Field(default=None, description="When a write through the endpoint committed.")
    write_availability_s: float | None = Field(
        default=None, description="From the incident (request.incident_at) or the run's start to writes_back_at.")
    write_availability_from: str | None = Field(default=None, description="'incident' or 'run start'.")
    endpoint_verified: bool | None = Field(
        default=None, description="A write through the endpoint committed on the new primary (None: not probed).")
    endpoint_actions: list[str] = Field(
        default_factory=list, description="What the run did to pgbouncer (PAUSE, ini, RELOAD, settings, RESUME).")
    data_loss: DataLoss = Field(default_factory=DataLoss)
    backup_path: str | None = None
    journal_path: str | None = None
    artifact_key: str | None = None
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)
    followers: dict[str, str] = Field(default_factory=dict, description="Each other standby: following, already, "
                                      "skipped or failed (the steps say why and what to do).")
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RejoinRequest(BaseModel):
    """Turn a fenced old primary into a streaming standby of the current primary."""

    cluster_block: str = Field(default="sandbox", description="PostgresCluster block of the cluster.")
    node: str | None = Field(default=None, description="Node to rejoin. Empty: the first fenced node of the block.")
    node_control_block: str = Field(default="sandbox", description="NodeControl block (local pg_ctl).")
    slack_block: str | None = Field(default=None, description="SlackNotifier block.")
    keep_diverged_copy: bool = Field(
        default=True, description="Copy the data directory aside before pg_rewind (it discards diverged writes)."
    )
    streaming_timeout_seconds: float = Field(default=60, ge=1, le=600, description="Wait this long for streaming.")
    keep_slots: list[str] = Field(
        default_factory=list, description="Inactive physical slots on the rejoined node to keep (e.g. of a cascading "
                                          "standby that is down); logical slots are always kept.")
    dry_run: bool = Field(default=False, description="Only decide (rewind or not) and say what would run.")


class RejoinReport(BaseModel):
    cluster: str
    node: str
    primary: str
    status: Literal["completed", "dry_run", "failed"]
    summary: str
    rewind_needed: bool
    diverged_at: str | None = None
    old_timeline: int | None = None
    new_timeline: int | None = None
    diverged_copy: str | None = None
    slot: str | None = None
    dropped_slots: list[str] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    artifact_key: str | None = None
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)
