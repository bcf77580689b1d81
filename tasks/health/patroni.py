"""The health check's Patroni view: per member role, state, lag, timeline, pending restart, the leader lock and
maintenance mode, from Patroni's GET /cluster, and where Patroni's view and SQL disagree.

Only for a cluster whose NodeControl block lists Patroni's REST URLs (kind 'patroni', or REST URLs with another
kind): a cluster without them costs nothing more than looking that block up. Patroni not answering is one finding;
the SQL checks run regardless. Decisions are pure functions over what the reads returned.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.failover_adapters import NodeControl, PatroniApi
from blocks.postgres_cluster import PostgresCluster
from tasks.core import patroni_api as api
from tasks.core.findings import Check, Status, human_bytes, worst
from tasks.health.checks import NodeProbe

RUNNING = {"running", "streaming"}
STANDBY_ROLES = {"replica", "sync_standby", "quorum_standby"}


class PatroniView(BaseModel):
    """What one GET /cluster answered, and which node's REST API answered it."""

    read_from: str
    url: str
    cluster: dict


def patroni_settings(cluster_block: str, node_control_block: str | None) -> PatroniApi | None:
    """Patroni's REST API settings of the cluster: the named NodeControl block's, or (no name given) those of the
    NodeControl block named like the cluster block when there is one. None: no Patroni configured."""
    try:
        control = NodeControl.load(node_control_block or cluster_block)
    except ValueError:
        if node_control_block:
            raise
        return None  # no NodeControl block of that name: a cluster without Patroni, no view
    return control.patroni


@task(name="read-patroni-view", retries=0, cache_policy=NO_CACHE)
def read_patroni_view(patroni: PatroniApi, prefer: list[str]) -> PatroniView:
    """GET /cluster from the first REST API that answers (the believed primary's first); PatroniUnreachable when
    none does."""
    node, answer = api.first_answer(patroni, "/cluster", prefer=prefer)
    if answer.status != 200 or not isinstance(answer.body, dict):
        raise api.PatroniUnreachable(f"Patroni REST API of {node} answered {answer.status} to GET /cluster: "
                                     f"{answer.text[:200]}")
    return PatroniView(read_from=node, url=patroni.urls[node], cluster=answer.body)


def _block_node(cluster: PostgresCluster, m: dict) -> str | None:
    """The cluster block's node a Patroni member is: by name, else by host and port."""
    names = {n.name for n in cluster.nodes}
    if m.get("name") in names:
        return m["name"]
    return next((n.name for n in cluster.nodes if n.host == m.get("host") and n.port == m.get("port")), None)


def _lag_status(lag, warning: int, critical: int) -> Status:
    if not isinstance(lag, int):
        return "warning"
    return "critical" if lag >= critical else "warning" if lag >= warning else "ok"


def member_check(m: dict, node: str, leader_timeline, lag_warning: int, lag_critical: int) -> Check:
    """One Patroni member as Patroni sees it: role, state, timeline, lag, pending restart, tags."""
    role, state, timeline = m.get("role", "?"), m.get("state", "?"), m.get("timeline")
    statuses: list[Status] = ["ok"]
    notes = []
    if state not in RUNNING:
        statuses.append("critical" if role in ("leader", "standby_leader") else "warning")
        notes.append(f"state {state}: not serving (patronictl list; the node's Patroni log says why)")
    if role in STANDBY_ROLES:
        lag = m.get("lag")
        statuses.append(_lag_status(lag, lag_warning, lag_critical))
        notes.append(f"lag {human_bytes(lag) if isinstance(lag, int) else repr(lag)}")
        if leader_timeline is not None and timeline is not None and timeline != leader_timeline:
            statuses.append("warning")
            notes.append(f"on timeline {timeline}, the leader on {leader_timeline} (not following it yet)")
    if m.get("pending_restart"):
        statuses.append("warning")
        reason = m.get("pending_restart_reason")
        notes.append("PENDING RESTART" + (f" ({', '.join(sorted(reason))})" if isinstance(reason, dict) else "")
                     + ": a changed parameter takes effect only after patronictl restart")
    tags = {k: v for k, v in (m.get("tags") or {}).items() if v}
    if tags:
        notes.append(f"tags {tags}")
    where = f"{m.get('host')}:{m.get('port')}"
    return Check(name="patroni", node=node, status=worst(statuses), details={"member": m},
                 summary=f"{node} ({where}) is Patroni's {role}, {state}, timeline {timeline}"
                         + (f"; {'; '.join(notes)}" if notes else "") + ".")


def patroni_checks(view: PatroniView | None, error: BaseException | None, cluster: PostgresCluster,
                   probes: dict[str, NodeProbe | None], lag_warning: int, lag_critical: int) -> list[Check]:
    """The Patroni view: the cluster (leader lock, maintenance mode, scheduled switchover), each member, and every
    disagreement between Patroni and SQL (`probes`: the SQL probe of each block node, None when unreachable)."""
    if view is None:
        return [Check(name="patroni", node="cluster", status="warning", details={"error": str(error)},
                      summary=f"Patroni's view is missing: {error}; the SQL checks ran without it (if Patroni is down "
                              "on every node, nothing fails over automatically).")]
    data, checks = view.cluster, []
    members = [m for m in data.get("members", []) if isinstance(m, dict)]
    leader = next((m for m in members if m.get("role") in ("leader", "standby_leader")), None)
    facts = []
    status: Status = "ok"
    if leader is None:
        status = "critical"
        facts.append("NO member holds the leader lock: the cluster has no Patroni leader (a failover in progress, "
                     "or none possible: patronictl list)")
    else:
        facts.append(f"{leader.get('name')} holds the leader lock (timeline {leader.get('timeline')})")
    if data.get("pause"):
        status = worst([status, "warning"])
        facts.append("MAINTENANCE MODE (pause): Patroni does not fail over or restart anything; patronictl resume "
                     "ends it")
    if scheduled := data.get("scheduled_switchover"):
        facts.append(f"a switchover is scheduled at {scheduled.get('at', '?')} (from {scheduled.get('from', '?')} "
                     f"to {scheduled.get('to', 'any')})")
    checks.append(Check(name="patroni", node="cluster", status=status,
                        details={"read_from": view.read_from, "pause": bool(data.get("pause")),
                                 "scheduled_switchover": scheduled, "leader": leader and leader.get("name")},
                        summary=f"Patroni ({len(members)} members, read from {view.read_from}): "
                                + "; ".join(facts) + "."))
    mapped = {}
    for m in members:
        node = _block_node(cluster, m)
        if node is None:
            checks.append(Check(name="patroni-vs-sql", node=str(m.get("name")), status="warning",
                                details={"member": m},
                                summary=f"Patroni lists {m.get('name')} ({m.get('host')}:{m.get('port')}, "
                                        f"{m.get('role')}), which is not in the cluster block: SQL does not see it; "
                                        "add it to the block."))
            continue
        mapped[node] = m
        checks.append(member_check(m, node, leader and leader.get("timeline"), lag_warning, lag_critical))
    checks += disagreements(cluster, mapped, leader and _block_node(cluster, leader), probes)
    return checks


def disagreements(cluster: PostgresCluster, mapped: dict[str, dict], leader: str | None,
                  probes: dict[str, NodeProbe | None]) -> list[Check]:
    """Where Patroni's view and SQL disagree: the leader in recovery, a writable node Patroni does not lead, a
    block node that is no Patroni member."""
    checks = []
    if leader and (probe := probes.get(leader)) is not None and probe.in_recovery:
        checks.append(Check(name="patroni-vs-sql", node=leader, status="critical",
                            details={"patroni_leader": leader, "sql_in_recovery": True},
                            summary=f"Patroni says {leader} holds the leader lock, but SQL says {leader} is in "
                                    "recovery (a standby): a switch in progress or a confused Patroni; check "
                                    "patronictl list before anything writes."))
    for node, probe in probes.items():
        if probe is not None and not probe.in_recovery and node != leader:
            checks.append(Check(name="patroni-vs-sql", node=node, status="critical",
                                details={"patroni_leader": leader, "sql_writable": node},
                                summary=f"SQL says {node} accepts writes, but Patroni's leader is "
                                        f"{leader or 'nobody'}: a primary Patroni does not manage (two writable "
                                        "servers?); fence it or let Patroni demote it."))
    for n in cluster.nodes:
        if n.name not in mapped:
            checks.append(Check(name="patroni-vs-sql", node=n.name, status="warning", details={},
                                summary=f"{n.name} is in the cluster block but not a member of Patroni's cluster: "
                                        "Patroni does not manage it (or its Patroni is down)."))
    return checks
