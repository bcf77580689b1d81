"""The failover runbook on a cluster run by a real Patroni (etcd + two Patroni nodes of PostgreSQL and a pgbouncer,
started by the suite, one cluster for the module). Native fencing, promotion and rejoin are refused there; the
Patroni backend refuses in phase 1 on maintenance mode, reports Patroni's 412 as "nothing changed", switches over
under a writer without losing an acknowledged write, and fails over when the leader is killed. Tests run in file
order: each leaves a leader and a streaming replica."""

from __future__ import annotations

import logging
import tempfile

import pytest
from pydantic import SecretStr

from blocks.failover_adapters import NodeControl, PatroniApi
from blocks.postgres_cluster import PostgresNode
from flows.failover import failover
from flows.health_check import health_check
from flows.rejoin import rejoin
from sandbox.patroni import PatroniSandbox
from tasks.core import patroni_api as api
from tasks.failover import node_control as nc
from tasks.failover.model import (
    FailoverPlan,
    FailoverRefused,
    FailoverRequest,
    FailoverStepFailed,
    NodeState,
    RejoinRequest,
)
from tasks.failover.plan import plan_steps as plan_steps_native
from tasks.failover.switch_patroni import plan_steps, refusals
from tasks.health.checks import NodeProbe
from tasks.health.patroni import disagreements
from tests.helpers import Writer, failover_request, wait_for

BLOCK = "fo-patroni"


@pytest.fixture(scope="module")
def patroni():
    cluster = PatroniSandbox(nodes=2, prefix="pgrb-patroni-test-")
    try:
        cluster.start()
        cluster.start_pgbouncer()
        with cluster.connect(cluster.leader()) as conn:
            conn.execute("CREATE TABLE public.pt_writes (n int PRIMARY KEY)")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def journal_dir():
    return tempfile.mkdtemp(prefix="pgrb-journal-patroni-")


def save_blocks(patroni: PatroniSandbox, name: str, kind: str, with_api: bool = True) -> str:
    """Cluster (the current leader as primary), node control and endpoint (pgbouncer) blocks named `name`."""
    patroni.cluster_block(name).save(name, overwrite=True)
    control = patroni.node_control_block(kind, with_api)
    if control.patroni is not None:
        control.patroni.timeout_seconds = 2  # a hung Patroni costs phase 1 this much
    control.save(name, overwrite=True)
    patroni.endpoint_block().save(name, overwrite=True)
    return name


def other(patroni: PatroniSandbox, node: str) -> str:
    return next(n for n in patroni.names if n != node)


def step(report, name: str):
    return next(s for s in report.steps if s.step == name and s.status != "started")


def running_pids(patroni: PatroniSandbox) -> dict[str, int | None]:
    return {n: patroni.postmaster_pid(n) for n in patroni.names}


@pytest.mark.parametrize("with_api", [True, False], ids=["rest-api", "sql-sessions"])
def test_native_switchover_refused_on_a_patroni_node(patroni, prefect_api, journal_dir, with_api):
    """A NodeControl block of kind pg_ctl on Patroni's nodes (an operator who missed Patroni): phase 1 refuses,
    naming the evidence (Patroni's REST API answering for the node, or Patroni's sessions on it) and the Patroni
    backend; nothing is stopped or promoted."""
    name = save_blocks(patroni, f"{BLOCK}-native-{int(with_api)}", "pg_ctl", with_api)
    leader, pids = patroni.leader(), running_pids(patroni)
    with pytest.raises(FailoverRefused) as refused:
        failover(failover_request(name, journal_dir, confirm_cluster=name))
    text = str(refused.value)
    assert "with native pg_ctl" in text and "Patroni backend" in text and "nothing was changed" in text
    assert ("REST API at http://127.0.0.1:" in text) if with_api else ("'Patroni heartbeat'" in text)
    assert patroni.leader() == leader and running_pids(patroni) == pids


def test_rejoin_refused_on_a_patroni_node(patroni, prefect_api):
    """Rejoin (pg_ctl stop, pg_rewind, standby.signal) on a Patroni replica: refused before anything runs."""
    name = save_blocks(patroni, f"{BLOCK}-rejoin", "pg_ctl", with_api=True)
    leader = patroni.leader()
    replica = next(n for n in patroni.names if n != leader)
    pids = running_pids(patroni)
    with pytest.raises(FailoverStepFailed, match=f"refusing to rejoin {replica} with native pg_ctl: .*Patroni"):
        rejoin(RejoinRequest(cluster_block=name, node_control_block=name, node=replica))
    assert running_pids(patroni) == pids and patroni.leader() == leader


def test_node_control_of_kind_patroni_runs_no_pg_ctl(patroni):
    """The Patroni backend's NodeControl block never runs pg_ctl, whatever calls it."""
    control = patroni.node_control_block("patroni")
    leader, pids = patroni.leader(), running_pids(patroni)
    with pytest.raises(nc.NodeControlError, match="configures the Patroni backend"):
        nc.stop_node(control, leader, "127.0.0.1", "fast")
    with pytest.raises(nc.NodeControlError, match="configures the Patroni backend"):
        nc.start_node(control, leader, "127.0.0.1")
    assert running_pids(patroni) == pids


def test_maintenance_mode_refused(patroni, prefect_api, journal_dir):
    """Patroni paused (maintenance mode): phase 1 refuses, names it and changes nothing."""
    name = save_blocks(patroni, BLOCK, "patroni")
    leader = patroni.leader()
    patroni.set_pause(True)
    try:
        with pytest.raises(FailoverRefused, match=r"maintenance mode \(pause\)"):
            failover(failover_request(name, journal_dir, candidate=other(patroni, leader)))
    finally:
        patroni.set_pause(False)
    assert patroni.leader() == leader


# ---------------------------------------------------------------- the health check's Patroni view (the cluster as
# the suite started it; the switches follow)
def checks_of(report, name: str) -> dict:
    return {c.node: c for c in report.checks if c.name == name}


def test_health_check_shows_patronis_view(patroni, prefect_api):
    """Per member role, state, timeline and lag, the leader lock; Patroni and SQL agree (ground truth: the node SQL
    finds writable is the one Patroni says holds the lock). Found through the NodeControl block named like the
    cluster block; maintenance mode and a pending restart are flagged."""
    name = save_blocks(patroni, f"{BLOCK}-health", "patroni")
    leader = patroni.leader()
    replica = other(patroni, leader)
    report = health_check(cluster_block=name)
    view = checks_of(report, "patroni")
    assert view["cluster"].status == "ok" and f"{leader} holds the leader lock" in view["cluster"].summary
    assert report.primary == leader and view["cluster"].details["leader"] == leader
    assert "is Patroni's leader, running" in view[leader].summary
    assert "is Patroni's replica, streaming" in view[replica].summary and "; lag " in view[replica].summary
    assert view[replica].status == "ok"
    assert checks_of(report, "patroni-vs-sql") == {}
    patroni.set_pause(True)
    try:  # maintenance mode, and a parameter that needs a restart (Patroni marks every member pending restart)
        status, text = patroni.request(leader, "PATCH", "/config",
                                       {"postgresql": {"parameters": {"max_connections": 123}}})
        assert status == 200, text
        wait_for(lambda: (api.member(patroni.cluster(), replica) or {}).get("pending_restart"), 60,
                 what=f"{replica} pending restart in Patroni's view")
        paused = health_check(cluster_block=name)
    finally:
        patroni.request(leader, "PATCH", "/config", {"postgresql": {"parameters": {"max_connections": None}}})
        patroni.set_pause(False)
    view = checks_of(paused, "patroni")
    assert view["cluster"].status == "warning" and "MAINTENANCE MODE (pause)" in view["cluster"].summary
    assert view[replica].status == "warning" and "PENDING RESTART" in view[replica].summary
    wait_for(lambda: not any(m.get("pending_restart") for m in patroni.cluster()["members"]), 60,
             what="no member pending restart")


def test_health_check_flags_a_member_sql_does_not_see_and_an_unreachable_patroni(patroni, prefect_api, caplog):
    """A cluster block that lists only the leader: Patroni's replica is a member SQL does not see (flagged). Patroni's
    REST API not answering: one finding, the SQL checks still ran. A NodeControl without Patroni URLs: no view."""
    caplog.set_level(logging.DEBUG)
    name = save_blocks(patroni, f"{BLOCK}-health-partial", "patroni")
    leader = patroni.leader()
    replica = other(patroni, leader)
    block = patroni.cluster_block(name)
    block.nodes = [PostgresNode(name=leader, host="127.0.0.1", port=patroni.pg_ports[leader])]
    block.save(name, overwrite=True)
    report = health_check(cluster_block=name)
    (unseen,) = checks_of(report, "patroni-vs-sql").values()
    assert unseen.status == "warning" and f"Patroni lists {replica} (127.0.0.1:{patroni.pg_ports[replica]}" in \
        unseen.summary and "not in the cluster block" in unseen.summary
    secret = "patroni-rest-SECRET-7731"
    gone = NodeControl(kind="patroni", patroni=PatroniApi(urls={leader: "http://127.0.0.1:9"}, timeout_seconds=1,
                                                          username="patroni", password=SecretStr(secret)))
    gone.save(f"{name}-gone", overwrite=True)
    report = health_check(cluster_block=name, node_control_block=f"{name}-gone")
    (missing,) = checks_of(report, "patroni").values()
    assert missing.status == "warning" and "Patroni's view is missing" in missing.summary
    assert secret not in report.model_dump_json() and secret not in caplog.text
    assert checks_of(report, "connectivity")[leader].status == "ok"  # the SQL checks ran
    patroni.node_control_block("pg_ctl", with_api=False).save(name, overwrite=True)
    assert not any(c.name.startswith("patroni") for c in health_check(cluster_block=name).checks)


def test_refused_switchover_412_changes_nothing(patroni, prefect_api, journal_dir):
    """A candidate Patroni may not promote (tag nofailover): Patroni answers 412; the run reports it as refused with
    nothing changed, the clients held at pgbouncer are released onto the same leader."""
    name = save_blocks(patroni, BLOCK, "patroni")
    leader = patroni.leader()
    candidate = other(patroni, leader)
    patroni.set_tags(candidate, {"nofailover": True})
    try:
        with pytest.raises(FailoverStepFailed, match=r"Patroni refused POST /switchover .*\(412: .*nothing changed"):
            failover(failover_request(name, journal_dir, candidate=candidate))
    finally:
        patroni.set_tags(candidate, {})
    assert patroni.leader() == leader
    with patroni.connect("pgbouncer") as conn:  # released (RESUME), still on the leader
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == patroni.pg_ports[leader]


def test_planned_switchover_under_a_writer(patroni, prefect_api, journal_dir):
    """Switchover delegated to Patroni under a writer through pgbouncer: 0 acknowledged writes lost, 0 client
    errors; the old primary is back as a streaming replica (Patroni's rejoin, reported)."""
    name = save_blocks(patroni, BLOCK, "patroni")
    leader = patroni.leader()
    candidate = other(patroni, leader)
    writer = Writer(patroni, "pt_writes")
    writer.start()
    try:
        wait_for(lambda: len(writer.acked) > 50, 30)
        report = failover(failover_request(name, journal_dir, candidate=candidate))
        wait_for(lambda: len(writer.acked) > len(report.steps) + 100, 30)  # writes go on after the switch
    finally:
        writer.stop_event.set()
        writer.join(30)
    assert report.status == "completed" and report.new_primary == candidate
    assert patroni.leader() == candidate
    assert writer.errors == []
    with patroni.connect(candidate) as conn:
        stored = {r[0] for r in conn.execute("SELECT n FROM public.pt_writes")}
    assert set(writer.acked) <= stored
    switch = step(report, "patroni-switch")
    assert switch.status == "done" and "POST /switchover" in switch.detail
    assert {s.step for s in report.steps}.isdisjoint({"fence", "promote", "lsn-gate"})
    assert step(report, "checkpoint").status == "done"  # ours, while the clients still ran
    assert report.followers == {leader: "streaming"}
    assert f"{leader} rejoined as a Patroni replica" in report.summary


def test_switchover_status_unknown_503_then_polled(patroni, prefect_api, journal_dir):
    """Patroni waits ~20 s for a switchover it was asked for (max(10, loop_wait) polls of 1 s), then answers 503
    "Switchover status unknown" while the switch goes on. A leader whose before_stop script (Patroni runs it before
    stopping PostgreSQL) takes longer gets that real 503: the run keeps polling GET /cluster and SQL until the
    candidate leads and writes, then completes."""
    name = save_blocks(patroni, BLOCK, "patroni")
    leader = patroni.leader()
    candidate = other(patroni, leader)
    patroni.slow_stop(leader, 24)
    try:
        report = failover(failover_request(name, journal_dir, candidate=candidate))
    finally:
        patroni.slow_stop(leader, None)
    assert report.status == "completed" and patroni.leader() == candidate
    switch = step(report, "patroni-switch")
    assert "→ 503 'Switchover status unknown' (switch status unknown, then GET /cluster and SQL showed it)" in \
        switch.detail
    assert report.followers == {leader: "streaming"}


def test_failover_with_the_leader_killed(patroni, prefect_api, journal_dir):
    """The leader's host is lost (Patroni and PostgreSQL killed): POST /failover {candidate} to the candidate's
    Patroni; the candidate leads, pgbouncer follows, and the dead node is reported as not rejoined."""
    name = save_blocks(patroni, BLOCK, "patroni")
    leader = patroni.leader()
    candidate = other(patroni, leader)
    patroni.kill_node(leader)
    try:
        report = failover(failover_request(name, journal_dir, mode="failover", candidate=candidate,
                                           follow_timeout_seconds=5))
        assert report.status == "completed" and patroni.leader() == candidate
        switch = step(report, "patroni-switch")
        assert f"POST /failover {{'candidate': '{candidate}'}} → " in switch.detail
        assert report.followers == {leader: "failed"} and "has NOT rejoined" in report.summary
        with patroni.connect("pgbouncer") as conn:
            assert conn.execute("SELECT inet_server_port()").fetchone()[0] == patroni.pg_ports[candidate]
    finally:
        patroni.start_node(leader)
        patroni.wait_members()


def test_patroni_and_sql_disagree():
    """Patroni's leader in recovery; a writable node Patroni does not lead; a block node that is no member."""
    from blocks.postgres_cluster import PostgresCluster
    cluster = PostgresCluster(cluster_name="c", primary_node="pg1", nodes=[
        PostgresNode(name=n, host="h", port=p) for n, p in (("pg1", 1), ("pg2", 2), ("pg3", 3))])

    def probe(node, in_recovery):
        return NodeProbe(node=node, host="h", port=1, latency_ms=1, server_version="15", server_version_num=150000,
                         in_recovery=in_recovery, started_at="2026-12-05T00:00:00Z")
    members = {"pg1": {"name": "pg1"}, "pg2": {"name": "pg2"}}
    found = disagreements(cluster, members, "pg1", {"pg1": probe("pg1", True), "pg2": probe("pg2", False),
                                                    "pg3": None})
    by_node = {c.node: c for c in found}
    assert "Patroni says pg1 holds the leader lock, but SQL says pg1 is in recovery" in by_node["pg1"].summary
    assert "SQL says pg2 accepts writes, but Patroni's leader is pg1" in by_node["pg2"].summary
    assert "not a member of Patroni's cluster" in by_node["pg3"].summary
    assert {c.status for c in found} == {"critical", "warning"}


# ---------------------------------------------------------------- phase 1's decision on Patroni's view (pure)
def _view(**kw) -> dict:
    members = [{"name": "pg1", "role": "leader", "state": "running", "timeline": 1},
               {"name": "pg2", "role": "replica", "state": "streaming", "timeline": 1, "lag": 0}]
    return {"members": members, **kw}


def _states(writable: str = "pg1") -> dict[str, NodeState]:
    return {n: NodeState(node=n, reachable=True, in_recovery=n != writable, timeline=1) for n in ("pg1", "pg2")}


def _plan(**kw) -> FailoverPlan:
    base = dict(cluster="c", mode="switchover", old_primary="pg1", candidate="pg2", lag_bytes=0, original_timeline=1,
                steps=plan_steps_native("switchover", "pg1", "pg2"))
    return FailoverPlan(**{**base, **kw})


def test_refusals_from_patronis_view():
    req = FailoverRequest(max_lag_bytes=1024)
    assert refusals(_view(), _plan(), _states(), req) == []
    assert "maintenance mode" in refusals(_view(pause=True), _plan(), _states(), req)[0]
    scheduled = _view(scheduled_switchover={"at": "2026-12-05T03:00:00+00:00", "from": "pg1"})
    assert "switchover scheduled (2026-12-05T03:00:00+00:00, from pg1 to any)" in refusals(
        scheduled, _plan(), _states(), req)[0]
    (disagree,) = refusals(_view(), _plan(), _states(writable="pg2"), req)
    assert "Patroni's leader is pg1, SQL says pg2" in disagree
    lagging = _view()
    lagging["members"][1]["lag"] = 4096
    assert "lags 4096 bytes in Patroni's view" in refusals(lagging, _plan(), _states(), req)[0]
    assert refusals(lagging, _plan(), _states(), req.model_copy(update={"force": True})) == []
    unknown = _view()
    unknown["members"][1].update(lag="unknown", state="stopped")
    assert "cannot tell candidate pg2's lag" in refusals(unknown, _plan(), _states(), req)[0]
    # a rerun after Patroni switched: the candidate leads, SQL agrees with Patroni, phases 2 and 3 resume
    switched = {"members": [{"name": "pg2", "role": "leader", "state": "running"},
                            {"name": "pg1", "role": "replica", "state": "streaming", "lag": 0}]}
    assert refusals(switched, _plan(resumed=True), _states(writable="pg2"), req) == []


def test_patroni_plan_replaces_the_native_switch_once():
    steps = plan_steps(_plan(), ["pg1", "pg2"])
    names = [s.step for s in steps]
    assert {"fence", "lsn-gate", "promote"}.isdisjoint(names)
    order = ["checkpoint", "pause-endpoint", "patroni-switch", "verify-promotion", "await-old-demoted",
             "repoint-endpoint"]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)
    assert [s.node for s in steps if s.step == "await-patroni-rejoin"] == ["pg1"]
    assert plan_steps(_plan(steps=steps), ["pg1", "pg2"]) == steps  # a resumed plan is left as it is
