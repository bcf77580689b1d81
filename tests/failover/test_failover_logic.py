"""The failover's pure decisions and parsers (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from blocks.failover_adapters import EndpointControl, NodeControl
from blocks.postgres_cluster import PostgresCluster, PostgresNode
from tasks.failover.endpoint import ini_targets, rewrite_ini
from tasks.failover.model import FailoverRefused, FailoverRequest, NodeState, RejoinRequest
from tasks.failover.node_control import parse_controldata, parse_wal_end
from tasks.failover.plan import data_loss, decide, lsn_int, probe_deadline
from tasks.failover.rejoin import needs_rewind, slot_name
from tasks.failover.report import endpoint_sentence, write_availability
from tasks.failover.steps import _redact, switch_point

CLUSTER = PostgresCluster(
    cluster_name="c", primary_node="a", password=SecretStr("pw"),
    nodes=[PostgresNode(name="a", host="h", port=1), PostgresNode(name="b", host="h", port=2),
           PostgresNode(name="c", host="h", port=3)])


def primary(**kw):
    return NodeState(node="a", reachable=True, in_recovery=False, timeline=1, current_lsn="0/3000000", **kw)


def standby(node, replay="0/3000000", status="streaming", paused=False, tl=1):
    return NodeState(node=node, reachable=True, in_recovery=True, timeline=tl, receive_lsn=replay,
                     replay_lsn=replay, replay_paused=paused, receiver_status=status)


def test_lsn_arithmetic_matches_pg_wal_lsn_diff():
    assert lsn_int("16/B374D848") - lsn_int("16/B3740000") == 0xD848
    assert lsn_int("1/0") - lsn_int("0/FFFFFFFF") == 1


def test_healthiest_candidate_is_streaming_unpaused_least_lag():
    states = {"a": primary(), "b": standby("b", "0/2FF0000"), "c": standby("c", "0/2FFF000")}
    plan = decide(FailoverRequest(), CLUSTER, states, None)
    assert plan.candidate == "c" and plan.lag_bytes == 0x1000
    states["c"] = standby("c", "0/2FFF000", paused=True)
    assert decide(FailoverRequest(), CLUSTER, states, None).candidate == "b"


def test_every_refusal_reason_is_given_at_once():
    states = {"a": primary(), "b": standby("b", "0/1000000", status="startup", paused=True, tl=2),
              "c": standby("c")}
    with pytest.raises(FailoverRefused) as exc:
        decide(FailoverRequest(candidate="b", max_lag_bytes=1024), CLUSTER, states, "pgbouncer is down")
    text = str(exc.value)
    for part in ("endpoint is unusable", "replay paused", "not streaming", "timeline 2", "more than max_lag_bytes"):
        assert part in text


def test_force_turns_the_lag_guard_into_a_warning():
    states = {"a": primary(), "b": standby("b", "0/1000000"), "c": standby("c", "0/1000000")}
    plan = decide(FailoverRequest(candidate="b", max_lag_bytes=1024, force=True), CLUSTER, states, None)
    assert plan.candidate == "b" and "force" in plan.warnings[0]


def test_switchover_needs_a_live_primary_failover_does_not():
    states = {"a": NodeState(node="a", reachable=False, error="is unreachable"), "b": standby("b", status=None),
              "c": standby("c", "0/2000000", status=None)}
    with pytest.raises(FailoverRefused, match="use mode 'failover'"):
        decide(FailoverRequest(), CLUSTER, states, None)
    plan = decide(FailoverRequest(mode="failover"), CLUSTER, states, None)
    assert plan.candidate == "b" and plan.steps[0].step == "pause-endpoint"


def test_candidate_that_is_a_primary_or_unknown_is_refused():
    states = {"a": primary(), "b": standby("b"), "c": standby("c")}
    with pytest.raises(FailoverRefused, match="actually a primary"):
        decide(FailoverRequest(candidate="a"), CLUSTER, states, None)
    with pytest.raises(FailoverRefused, match="not a node"):
        decide(FailoverRequest(candidate="zz"), CLUSTER, states, None)
    states["c"] = NodeState(node="c", reachable=True, in_recovery=False, timeline=2, current_lsn="0/3")
    with pytest.raises(FailoverRefused, match="split brain"):
        decide(FailoverRequest(candidate="b"), CLUSTER, states, None)


def test_request_bounds_are_enforced():
    with pytest.raises(ValueError):
        FailoverRequest(max_lag_bytes=-1)
    with pytest.raises(ValueError):
        FailoverRequest(mode="yolo")
    with pytest.raises(ValueError):
        RejoinRequest(streaming_timeout_seconds=0)


def test_data_loss_sentences():
    assert data_loss("switchover", "0/3000060", "0/30000D8").gap_bytes == 0
    crash = data_loss("failover", "0/30265F8", "0/3026000")
    assert crash.gap_bytes == 0x5F8 and "LSN gap 1528 bytes" in crash.sentence
    assert data_loss("failover", None, "0/1").gap_bytes is None
    assert data_loss("failover", "0/1000", "0/2000").gap_bytes is None  # inconsistent: never claims 0


def test_pgbouncer_ini_rewrite_touches_only_databases():
    ini = ("[databases]\n* = host=127.0.0.1 port=5432\napp = host=10.0.0.1 port=5433 dbname=app\n"
           ";old = host=x port=1\n[pgbouncer]\nlisten_port = 6432\n")
    new = rewrite_ini(ini, "10.0.0.9", 5499)
    assert ini_targets(new) == {("10.0.0.9", 5499)}
    assert "listen_port = 6432" in new and ";old = host=x port=1" in new and "dbname=app" in new


def test_parsers():
    assert parse_wal_end("pg_waldump: error: error in WAL record at 0/30265D0: invalid record length at "
                         "0/30265F8: wanted 24, got 0") == "0/30265F8"
    assert parse_wal_end('pg_waldump: error: could not find file "/pg/15/A/pg_wal/000000020000000000000003": '
                         "No such file or directory") is None  # a path is not a WAL position
    assert parse_wal_end("pg_waldump: error: could not find a valid record after 0/3000148") == "0/3000148"
    assert parse_controldata("Latest checkpoint location:           0/2000060\n")["Latest checkpoint location"] \
        == "0/2000060"
    history = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n"
    assert switch_point(history, 1) == "0/3000148"
    assert switch_point(history) == "0/5000000"  # the promotion that created the current timeline
    assert needs_rewind("shut down", "0/3000060", 1, "0/30000D8") is False
    assert needs_rewind("in production", "0/3000060", 1, "0/30000D8") is True
    assert slot_name("pg-1.East") == "pg_1_east"
    assert _redact({"setting": "host=x password=s3cret user=r"})["setting"] == "host=x password=******** user=r"


def test_prefect_yaml_failover_deployment_serializes_per_cluster_not_per_deployment():
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    # no deployment-wide limit: it would cancel another cluster's failover; the run's own per-cluster locks
    # (global concurrency limit failover-<cluster>, journal flock, advisory lock) keep two of one cluster apart
    assert "concurrency_limit" not in deployments["failover"]
    assert "schedules" not in deployments["failover"] and "schedules" not in deployments["rejoin"]
    ui = FailoverRequest(**deployments["failover"]["parameters"]["request"])
    assert ui.dry_run is True  # the UI form opens as a dry run: Submit with the defaults shows the plan only
    assert FailoverRequest().dry_run is False  # a request from incident tooling replaces the deployment's whole
    RejoinRequest(**deployments["rejoin"]["parameters"]["request"])


def test_a_real_run_needs_the_cluster_typed_again_a_dry_run_does_not():
    from tasks.failover.plan import confirmation_refusal, refuse_unconfirmed

    real = FailoverRequest(cluster_block="orders-block")
    assert "needs the cluster typed again" in confirmation_refusal(real, "orders")
    assert confirmation_refusal(real.model_copy(update={"confirm_cluster": "orders-block"}), "orders") is None
    assert confirmation_refusal(real.model_copy(update={"confirm_cluster": " orders "}), "orders") is None  # name
    wrong = real.model_copy(update={"confirm_cluster": "payments"})
    assert "'payments' is not the cluster of this run" in confirmation_refusal(wrong, "orders")
    assert confirmation_refusal(real.model_copy(update={"confirm_cluster": "Orders"}), "orders") is not None
    assert confirmation_refusal(real.model_copy(update={"dry_run": True}), "orders") is None
    with pytest.raises(FailoverRefused, match="nothing was changed"):
        refuse_unconfirmed(wrong, "orders")


def test_the_ui_form_is_one_model_with_bounds():
    from prefect.utilities.callables import parameter_schema

    from flows.failover import failover

    schema = parameter_schema(failover).model_dump_for_openapi()
    model = schema["definitions"]["FailoverRequest"]["properties"]
    assert model["mode"]["enum"] == ["switchover", "failover"]
    assert model["max_lag_bytes"]["minimum"] == 0 and model["max_lag_bytes"]["default"] == 1024 * 1024
    assert {"candidate", "force", "dry_run", "lsn_gate_timeout_seconds", "confirm_cluster"} <= set(model)
    assert "a dry run shows the candidate" in model["dry_run"]["description"]


class TestNodeControlStandard(BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return NodeControl

    def test_has_a_valid_image(self, block):
        pytest.skip("no logo: the network is closed here")


class TestEndpointControlStandard(BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return EndpointControl

    def test_has_a_valid_image(self, block):
        pytest.skip("no logo: the network is closed here")


def test_endpoint_password_is_read_only_for_the_admin_connection():
    block = EndpointControl(admin_password=SecretStr("adm1n-pw"), ini_path="/x/pgbouncer.ini")
    assert "adm1n-pw" not in repr(block) and "adm1n-pw" not in block.model_dump_json()
    assert block.admin_connect_kwargs()["password"] == "adm1n-pw"


def test_shell_templates_fill_placeholders_without_a_shell():
    from tasks.failover.node_control import _argv

    control = NodeControl(kind="shell", data_dirs={"a": "/srv/pg a"},
                          stop_command="ssh {host} pg_ctl stop -m {mode} -D '{data_dir}'")
    assert _argv(control, control.stop_command, "pg_ctl", [], node="a", host="db1", mode="fast",
                 data_dir="/srv/pg a") == ["ssh", "db1", "pg_ctl", "stop", "-m", "fast", "-D", "/srv/pg a"]


def test_a_crashed_or_cancelled_run_alerts_its_thread(slack, tmp_path):
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from prefect.states import Cancelled, Crashed

    from blocks.slack_notifier import SlackNotifier
    from tasks.core.notify import SlackThread
    from tasks.failover import hooks as failover_hooks
    from tasks.failover import run as failover_run
    from tasks.failover.journal import Journal, JournalStore
    from tasks.failover.model import FailoverPlan, StepRecord

    notifier = SlackNotifier(bot_token=SecretStr("xoxb-ok-crash"), channel="#db", base_url=slack.base_url)
    now = datetime.now(UTC)
    plan = FailoverPlan(cluster="c", mode="switchover", old_primary="a", candidate="b", lag_bytes=0,
                        original_timeline=1)
    ctx = failover_run.RunContext(
        run_id="run-1", request=FailoverRequest(), cluster=CLUSTER,
        node_control=NodeControl(data_dirs={"a": "/x"}), endpoint=EndpointControl(),
        store=JournalStore(tmp_path), thread=SlackThread(notifier),
        journal=Journal(cluster="c", run_id="run-1", plan=plan, started_at=now, updated_at=now,
                        steps=[StepRecord(phase=2, step="promote", node="b", status="done", at=now)]))
    failover_run._CONTEXTS["run-1"] = ctx
    try:
        failover_hooks.run_crashed(None, SimpleNamespace(id="run-1", parameters={}), Crashed())
        failover_hooks.run_crashed(None, SimpleNamespace(id="run-1", parameters={}), Cancelled())
    finally:
        failover_run.close_context("run-1")
    raw = "\n".join(c.raw for c in slack.calls(token="xoxb-ok-crash"))
    assert "CRASHED after step `promote`" in raw and "CANCELLED after step `promote`" in raw
    assert "rerun the failover" in raw


def test_accept_unconfirmed_fence_is_refused_without_a_pooler():
    states = {"a": primary(), "b": standby("b"), "c": standby("c")}
    req = FailoverRequest(accept_unconfirmed_fence=True, force=True)
    with pytest.raises(FailoverRefused, match="refused with endpoint kind 'none'"):
        decide(req, CLUSTER, states, None, "none")
    plan = decide(req, CLUSTER, states, None, "pgbouncer")
    assert any("accept_unconfirmed_fence" in w for w in plan.warnings)
    assert "it never skips the fence" in FailoverRequest.model_fields["force"].description


def test_resume_point_names_the_last_step_and_where_a_resume_starts():
    from datetime import UTC, datetime

    from tasks.failover.model import StepRecord
    from tasks.failover.plan import resume_point

    plan = decide(FailoverRequest(), CLUSTER, {"a": primary(), "b": standby("b"), "c": standby("c")}, None)

    def rec(step, status):
        return StepRecord(phase=2, step=step, node="x", status=status, at=datetime.now(UTC))

    done = [rec("checkpoint", "started"), rec("checkpoint", "done"), rec("promote", "started"), rec("promote", "done"),
            rec("read-shutdown-checkpoint", "done")]
    assert resume_point(plan, done) == ("promote (done)", "verify-promotion")
    assert resume_point(plan, [*done, rec("verify-promotion", "started")]) == (
        "verify-promotion (started)", "verify-promotion")
    assert resume_point(plan, []) == (None, "checkpoint")


def test_a_failover_rerun_supersedes_a_switchover_only_before_any_promotion():
    from datetime import UTC, datetime

    from tasks.failover.model import StepRecord
    from tasks.failover.plan import rerun_mode_decision

    def rec(step, status="done"):
        return StepRecord(phase=2, step=step, node="x", status=status, at=datetime.now(UTC))

    switchover = decide(FailoverRequest(mode="switchover"), CLUSTER, {"a": primary(), "b": standby("b")}, None)
    fenced = [rec("checkpoint"), rec("pause-endpoint"), rec("fence"), rec("read-shutdown-checkpoint", "failed")]
    # same mode: resume, nothing to say
    assert rerun_mode_decision(switchover, fenced, "switchover", "r1") == ("resume", None)
    # failover requested, the candidate never asked to promote: a fresh failover replaces the switchover
    action, note = rerun_mode_decision(switchover, fenced, "failover", "r1")
    assert action == "supersede" and "run r1" in note and "never asked b to promote" in note
    # once pg_promote was requested (whatever its outcome), only a resume: never two promotions
    for status in ("started", "failed", "done", "skipped"):
        action, note = rerun_mode_decision(switchover, [*fenced, rec("promote", status)], "failover", "r1")
        assert action == "resume" and "never two promotions" in note and "already asked b to promote" in note
    # a failover that started phase 2 is never turned back into a switchover (its old primary may be gone)
    crash = decide(FailoverRequest(mode="failover"), CLUSTER, {"a": primary(), "b": standby("b")}, None)
    action, note = rerun_mode_decision(crash, [rec("pause-endpoint")], "switchover", "r2")
    assert action == "resume" and "resuming it in failover mode" in note


def test_the_probe_deadline_covers_pgbouncers_login_wait():
    assert probe_deadline(30, "15", 5) == 30  # the request's value already covers 15 s + two connect timeouts
    assert probe_deadline(10, "15", 5) == 25
    assert probe_deadline(10, None, 5) == 10  # endpoint 'none', or nothing was lifted


def test_write_availability_is_measured_from_the_incident_or_the_run_start():
    start = datetime(2026, 1, 1, 3, 0, 0, tzinfo=UTC)
    facts = {"endpoint_verified": True, "writes_back_at": (start + timedelta(seconds=4.5)).isoformat()}
    assert write_availability(facts, None, start) == {
        "endpoint_verified": True, "writes_back_at": start + timedelta(seconds=4.5), "write_availability_s": 4.5,
        "write_availability_from": "run start"}
    incident = start - timedelta(seconds=60)
    assert write_availability(facts, incident, start)["write_availability_s"] == 64.5
    assert write_availability({}, None, start) == {}  # not probed (dry run, refused)
    endpoint = EndpointControl(admin_host="pgb", admin_port=6432)
    sentence = endpoint_sentence(facts, "b", endpoint, incident, start)
    assert sentence == "writes through pgbouncer back at 03:00:04 UTC, 64.5 s after the incident"
    down = endpoint_sentence({"endpoint_verified": False, "endpoint_error": "is unreachable: timeout"}, "b", endpoint,
                             None, start)
    assert down.startswith("WARNING: writes through pgbouncer NOT confirmed yet (is unreachable: timeout)")
    assert "b itself is up and verified" in down and "pgb:6432" in down


def test_the_plan_lifts_and_restores_server_login_retry_around_resume():
    steps = [s.step for s in decide(FailoverRequest(mode="failover", candidate="b"), CLUSTER,
                                    {"a": NodeState(node="a", reachable=False), "b": standby("b"),
                                     "c": standby("c")}, None, "pgbouncer").steps]
    assert steps.index("repoint-endpoint") < steps.index("lift-login-retry") < steps.index("resume-endpoint")
    assert steps.index("probe-application") + 1 == steps.index("restore-login-retry")


def test_the_block_update_changes_two_fields_and_keeps_the_password(prefect_api):
    """The cluster block follows the new primary with one partial update of its document: primary_node and
    fenced_nodes change, every other field (the password included) is what was saved."""
    from tasks.failover.wiring import save_cluster_block

    CLUSTER.model_copy(update={"fenced_nodes": ["c"]}).save("fo-logic-block", overwrite=True)
    assert "fenced=['a', 'c']" in save_cluster_block.fn("fo-logic-block", "b", "a")
    block = PostgresCluster.load("fo-logic-block")
    assert (block.primary_node, block.fenced_nodes) == ("b", ["a", "c"])
    assert block.password.get_secret_value() == "pw" and block.nodes == CLUSTER.nodes
    save_cluster_block.fn("fo-logic-block", "a", "b")  # and back: the new primary is never listed as fenced
    assert (PostgresCluster.load("fo-logic-block").primary_node,
            PostgresCluster.load("fo-logic-block").fenced_nodes) == ("a", ["b", "c"])
