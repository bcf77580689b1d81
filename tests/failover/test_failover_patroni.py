"""The failover runbook on a cluster run by a real Patroni (etcd + two Patroni nodes of PostgreSQL and a pgbouncer,
started by the suite, one cluster for the module). Native fencing, promotion and rejoin are refused there; the
Patroni backend refuses in phase 1 on maintenance mode, reports Patroni's 412 as "nothing changed", switches over
under a writer without losing an acknowledged write, and fails over when the leader is killed. Tests run in file
order: each leaves a leader and a streaming replica."""

from __future__ import annotations

import tempfile

import pytest

from flows.failover import failover
from flows.rejoin import rejoin
from sandbox.patroni import PatroniSandbox
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
    assert {s.step for s in report.steps}.isdisjoint({"fence", "promote", "lsn-gate", "checkpoint"})
    assert report.followers == {leader: "streaming"}
    assert f"{leader} rejoined as a Patroni replica" in report.summary


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
    assert {"checkpoint", "fence", "lsn-gate", "promote"}.isdisjoint(names)
    assert names.index("pause-endpoint") < names.index("patroni-switch") < names.index("verify-promotion") < \
        names.index("await-old-demoted") < names.index("repoint-endpoint")
    assert [s.node for s in steps if s.step == "await-patroni-rejoin"] == ["pg1"]
    assert plan_steps(_plan(steps=steps), ["pg1", "pg2"]) == steps  # a resumed plan is left as it is
