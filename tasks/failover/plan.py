"""Failover decisions: pure functions over node states (no cursor, no I/O)."""

from __future__ import annotations

from blocks.postgres_cluster import PostgresCluster
from tasks.core.findings import human_bytes
from tasks.failover.model import (
    DataLoss,
    FailoverPlan,
    FailoverRefused,
    FailoverRequest,
    NodeState,
    PlannedStep,
    StepRecord,
)


def lsn_int(lsn: str | None) -> int | None:
    """'16/B374D848' -> byte position (pg_wal_lsn_diff arithmetic)."""
    if not lsn:
        return None
    hi, _, lo = lsn.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def standby_position(s: NodeState) -> int:
    """How far a standby has the WAL: the larger of received and replayed."""
    return max(lsn_int(s.receive_lsn) or 0, lsn_int(s.replay_lsn) or 0)


def candidate_lag(mode: str, primary: NodeState | None, cand: NodeState, standbys: list[NodeState]) -> int | None:
    """Bytes the candidate must still replay to be where the primary (or the furthest standby) is."""
    replay = lsn_int(cand.replay_lsn) or 0
    if mode == "switchover" and primary and primary.current_lsn:
        return max(0, lsn_int(primary.current_lsn) - replay)
    best = max((standby_position(s) for s in standbys), default=standby_position(cand))
    return max(0, best - replay)


def healthiest(mode: str, primary: NodeState | None, standbys: list[NodeState]) -> NodeState | None:
    """Streaming (switchover), not paused, least lag; ties broken by name."""
    ok = [s for s in standbys if not s.replay_paused and (mode == "failover" or s.receiver_status == "streaming")]
    ok.sort(key=lambda s: (candidate_lag(mode, primary, s, standbys) or 0, s.node))
    return ok[0] if ok else None


def unconfirmed_fence_refusal(request: FailoverRequest, endpoint_kind: str) -> str | None:
    """accept_unconfirmed_fence is never allowed without a pooler that can be repointed away from the old primary."""
    if request.accept_unconfirmed_fence and endpoint_kind == "none":
        return ("accept_unconfirmed_fence is refused with endpoint kind 'none' (libpq multi-host): nothing but the "
                "fence keeps clients off the old primary; stop it, power it off or cut its network until node "
                "control reports it stopped, then rerun without accept_unconfirmed_fence")
    return None


def confirmation_refusal(request: FailoverRequest, cluster_name: str) -> str | None:
    """A real run needs the cluster named twice (cluster_block, then confirm_cluster), like a destructive
    dialog: one click on a form's defaults never switches a primary. A dry run needs nothing."""
    typed = request.confirm_cluster.strip()
    if request.dry_run or typed in {request.cluster_block, cluster_name}:
        return None
    if not typed:
        return (f"a real {request.mode} needs the cluster typed again in confirm_cluster "
                f"({request.cluster_block!r}); run it with dry_run on first to see the plan")
    return (f"confirm_cluster {typed!r} is not the cluster of this run ({request.cluster_block!r}, cluster_name "
            f"{cluster_name!r}): check which cluster you meant, then type its name again")


def refuse_unconfirmed(request: FailoverRequest, cluster_name: str) -> None:
    """FailoverRefused before phase 1 (no lock taken, no journal, nothing changed) unless confirmed."""
    if reason := confirmation_refusal(request, cluster_name):
        raise FailoverRefused([reason])


def decide(
    request: FailoverRequest, cluster: PostgresCluster, states: dict[str, NodeState], endpoint_error: str | None,
    endpoint_kind: str = "pgbouncer",
) -> FailoverPlan:
    """The plan of a fresh failover, or FailoverRefused with every reason (nothing changed yet)."""
    reasons: list[str] = []
    if fence_reason := unconfirmed_fence_refusal(request, endpoint_kind):
        reasons.append(fence_reason)
    warnings: list[str] = []
    old = cluster.primary_node
    primary = states.get(old)
    names = [n.name for n in cluster.nodes]
    if request.candidate and request.candidate not in names:
        raise FailoverRefused([f"candidate {request.candidate!r} is not a node of the cluster ({', '.join(names)})"])
    if endpoint_error:
        reasons.append(f"the endpoint is unusable: {endpoint_error}")
    writable = [s.node for s in states.values() if s.reachable and s.in_recovery is False]
    if request.mode == "switchover":
        if not primary or not primary.reachable:
            err = primary.error if primary else "unknown"
            reasons.append(
                f"the primary {old} is unreachable ({err}): a switchover needs a live primary; "
                "use mode 'failover' if it is down"
            )
        elif primary.in_recovery:
            reasons.append(f"the node {old} recorded as primary is in recovery: fix the PostgresCluster block first")
    if request.candidate and request.candidate == old or (
        request.candidate and states.get(request.candidate) and states[request.candidate].in_recovery is False
    ):
        reasons.append(f"candidate {request.candidate} is actually a primary (not in recovery): nothing to promote")
    stray = [n for n in writable if n != old]
    if stray:
        reasons.append(f"node(s) {', '.join(stray)} already accept writes: resolve the split brain by hand first")
    standbys = [s for s in states.values() if s.reachable and s.in_recovery and s.node not in cluster.fenced_nodes]
    if request.candidate:
        cand = states.get(request.candidate)
    else:
        cand = healthiest(request.mode, primary if primary and primary.reachable else None, standbys)
        if cand is None and not reasons:
            reasons.append("no standby qualifies as candidate (reachable, in recovery, streaming, replay not paused)")
    lag = None
    if cand is not None and cand.node != old and cand.in_recovery is not False:
        lag = _candidate_reasons(request, primary, cand, standbys, reasons, warnings, cluster)
    if reasons:
        raise FailoverRefused(reasons)
    assert cand is not None
    if request.mode == "failover" and primary and primary.reachable and primary.in_recovery is False:
        warnings.append(f"{old} is still up and writable: failover mode stops it immediately (fence)")
    if request.accept_unconfirmed_fence:
        warnings.append(f"accept_unconfirmed_fence is set: if node control cannot confirm {old} is stopped, the "
                        "run proceeds on your word that it cannot accept writes")
    return FailoverPlan(
        cluster=cluster.cluster_name, mode=request.mode, old_primary=old, candidate=cand.node, lag_bytes=lag,
        original_timeline=(primary.timeline if primary and primary.reachable else cand.timeline),
        warnings=warnings, steps=plan_steps(request.mode, old, cand.node, followers(cluster, old, cand.node)),
    )


def _candidate_reasons(request, primary, cand, standbys, reasons, warnings, cluster) -> int | None:
    if not cand.reachable:
        reasons.append(f"candidate {cand.node} is unreachable ({cand.error})")
        return None
    if cand.node in cluster.fenced_nodes:
        reasons.append(f"candidate {cand.node} is fenced: rejoin it first")
    if cand.replay_paused:
        reasons.append(f"candidate {cand.node} has WAL replay paused: run pg_wal_replay_resume() or pick another")
    if request.mode == "switchover" and cand.receiver_status != "streaming":
        reasons.append(f"candidate {cand.node} is not streaming (receiver: {cand.receiver_status or 'none'})")
    if request.mode == "switchover" and primary and primary.timeline and cand.timeline != primary.timeline:
        reasons.append(f"candidate {cand.node} is on timeline {cand.timeline}, the primary on {primary.timeline}")
    lag = candidate_lag(request.mode, primary if primary and primary.reachable else None, cand, standbys)
    if lag is not None and lag > request.max_lag_bytes:
        text = (f"candidate {cand.node} is {human_bytes(lag)} behind, more than max_lag_bytes "
                f"({human_bytes(request.max_lag_bytes)})")
        if request.force:
            warnings.append(text + ": proceeding because force is set")
        else:
            reasons.append(text + ": wait for it to catch up or set force")
    return lag


def resume_point(plan: FailoverPlan, journaled: list[StepRecord]) -> tuple[str | None, str | None]:
    """Where an unfinished run stopped: its last journaled step ('promote (done)') and the planned step a resume
    starts from (that step again if it failed or never finished, else the next one)."""
    names = [p.step for p in plan.steps]
    known = [s for s in journaled if s.step in names]
    if not known:
        return None, names[0] if names else None
    last = known[-1]
    at = names.index(last.step) + (1 if last.status in ("done", "skipped") else 0)
    return f"{last.step} ({last.status})", names[at] if at < len(names) else None


def rerun_mode_decision(plan: FailoverPlan, journaled: list[StepRecord], requested_mode: str,
                        run_id: str) -> tuple[str, str | None]:
    """Whether a rerun continues an unfinished run ('resume') or closes it and plans afresh ('supersede'), and the
    sentence that says why (None when the requested mode is the journal's).

    A switchover whose candidate was never asked to promote may give way to a fresh failover (its old primary
    could not be restarted, or stopped uncleanly); once pg_promote was requested the run is always resumed, so a
    cluster never sees two promotions.
    """
    if requested_mode == plan.mode:
        return "resume", None
    if plan.mode == "switchover" and requested_mode == "failover":
        if any(s.step == "promote" for s in journaled):
            return "resume", (f"mode failover was requested, but unfinished switchover run {run_id} already asked "
                              f"{plan.candidate} to promote: resuming it (never two promotions)")
        return "supersede", (f"unfinished switchover run {run_id} ({plan.old_primary} → {plan.candidate}) never asked "
                             f"{plan.candidate} to promote: closed as superseded and a fresh failover is planned, "
                             "as requested")
    return "resume", (f"mode {requested_mode} was requested, but unfinished {plan.mode} run {run_id} already "
                      f"started phase 2: resuming it in {plan.mode} mode")


def followers(cluster: PostgresCluster, old_primary: str, candidate: str) -> list[str]:
    """The standbys that must follow the new primary: every node but the two that swapped and the fenced."""
    return [n.name for n in cluster.nodes
            if n.name not in (old_primary, candidate) and n.name not in cluster.fenced_nodes]


def plan_steps(mode: str, old: str, cand: str, followers: list[str] | tuple[str, ...] = ()) -> list[PlannedStep]:
    """Every step of phases 2 and 3, on which node, and why."""
    s = PlannedStep
    steps = []
    if mode == "switchover":
        steps.append(s(phase=2, step="checkpoint", node=old, why="flush dirty buffers while clients still run, "
                       "so the fast stop's shutdown checkpoint is short"))
    steps += [
        s(phase=2, step="pause-endpoint", node="endpoint", why="hold clients at pgbouncer (no errors, no writes)"),
        s(phase=2, step="fence", node=old, why=("fast stop: the old primary can no longer accept writes"
                                                 if mode == "switchover" else
                                                 "immediate stop if it still runs: never two writable primaries")),
        s(phase=2, step="lsn-gate", node=cand, why=("wait until the candidate replayed past the old primary's "
                                                     "shutdown checkpoint: zero acknowledged writes lost"
                                                     if mode == "switchover" else
                                                     "replay all received WAL; measure the WAL the candidate "
                                                     "never received (LSN gap)")),
        s(phase=2, step="promote", node=cand, why="pg_promote, only if still in recovery (never twice)"),
        s(phase=2, step="verify-promotion", node=cand, why="not in recovery, timeline went up, a write commits"),
        s(phase=2, step="repoint-endpoint", node="endpoint", why=f"rewrite the pgbouncer ini to {cand}, RELOAD"),
        s(phase=2, step="lift-login-retry", node="endpoint", why="SET server_login_retry = 0: logins that failed on "
          f"the dead primary would otherwise keep pgbouncer away from {cand} for up to 15 s"),
        s(phase=2, step="resume-endpoint", node="endpoint", why="release the held clients onto the new primary"),
        s(phase=3, step="probe-application", node="endpoint", why="a write then a read through the endpoint, retried "
          "until endpoint_probe_seconds"),
        s(phase=3, step="restore-login-retry", node="endpoint", why="SET server_login_retry back to its value"),
        s(phase=3, step="update-cluster-block", node="cluster", why=f"primary_node={cand}, {old} recorded as fenced"),
        *[s(phase=3, step="follow-new-primary", node=n, why=f"its slot on {cand}, primary_conninfo aimed at {cand}, "
            "reload; wait until it streams on the new timeline (else: rejoin it)") for n in followers],
        s(phase=3, step="notify", node="slack", why="final verdict with the data-loss evidence"),
    ]
    return steps


def probe_deadline(requested_s: float, login_retry: str | None, connect_timeout_s: float) -> float:
    """How long phase 3 retries the write probe through the endpoint: the request's value, or longer when
    pgbouncer's own login wait (server_login_retry) plus two connect timeouts needs more."""
    return max(requested_s, float(login_retry or 0) + 2 * connect_timeout_s)


def data_loss(mode: str, old_wal_end: str | None, promoted_at: str | None) -> DataLoss:
    """The data-loss evidence of a promotion: the WAL the candidate did not have."""
    end, at = lsn_int(old_wal_end), lsn_int(promoted_at)
    if end is None or at is None:
        return DataLoss(old_wal_end=old_wal_end, promoted_at_lsn=promoted_at, sentence=(
            "LSN gap unknown: the old primary's WAL could not be read; acknowledged commits may be lost "
            "(asynchronous replication)"))
    if mode == "failover" and end < at:  # the candidate cannot hold WAL the old primary never wrote
        return DataLoss(old_wal_end=old_wal_end, promoted_at_lsn=promoted_at, sentence=(
            f"LSN gap unknown: the old primary's WAL reads as ending at {old_wal_end}, before the promotion point "
            f"{promoted_at} (inconsistent; check its pg_wal by hand)"))
    gap = max(0, end - at)
    if mode == "switchover":
        sentence = (f"0 bytes lost: the candidate replayed past the old primary's shutdown checkpoint "
                    f"{old_wal_end} (promoted at {promoted_at})") if gap == 0 else (
            f"{human_bytes(gap)} of WAL not replayed: investigate")
    else:
        sentence = (f"LSN gap {gap} bytes ({human_bytes(gap)}): the old primary's WAL ended at {old_wal_end}, "
                    f"the candidate was promoted at {promoted_at}" +
                    ("; commits in that range are lost" if gap else
                     "; the candidate had all of the old primary's WAL on disk"))
    return DataLoss(old_wal_end=old_wal_end, promoted_at_lsn=promoted_at, gap_bytes=gap, sentence=sentence)


def next_action(phase: int, step: str | None, candidate_promoted: bool, old_running: bool | None,
                clients_paused: bool | None, candidate: str, old: str) -> str:
    """The manual action an operator takes after a failed phase."""
    if phase == 1:
        return "nothing changed; fix the reason above and rerun"
    if candidate_promoted:
        return (f"{candidate} is the writable primary; rerun the failover (it resumes from the journal) or "
                f"point clients at {candidate} and RESUME pgbouncer by hand; keep {old} stopped")
    if old_running:
        return f"{old} is still the primary; check the error and rerun when ready"
    return (f"no node is writable: either start {old} again (if it was stopped cleanly and {candidate} was "
            f"never promoted) or rerun the failover to promote {candidate}")
