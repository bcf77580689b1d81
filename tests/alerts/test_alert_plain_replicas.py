"""Replicas known by identity on a topology built without the sandbox's conventions (issue 19).

A sandbox of its own (its replica: slot + application_name = node name) plus standbys made the ordinary way:
`plain` (plain `pg_basebackup -R`: application_name `walreceiver`, no slot), `custom` (its own
application_name) and `cascade` (plain `pg_basebackup -R` from `plain`). The monitor and the health check log
in with a pg_monitor-only role. The alert monitor must stay quiet while nothing is wrong, page once with the
cause when the primary stops, and send no extra page when it returns, while a replica restarts after it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from blocks.postgres_cluster import PostgresNode
from flows.alert_monitor import alert_monitor
from flows.health_check import health_check
from sandbox.blocks import sandbox_cluster_block
from sandbox.cluster import HOST, Sandbox
from tests.helpers import save_slack_block, wait_for
from tests.plain_standby import plain_standby

CUSTOM_NAME = "billing-standby-7"


@pytest.fixture(scope="module")
def plain_box(prefect_api):
    box = Sandbox.ephemeral("pgrb-plain-")
    box.start()
    standbys = {}
    try:
        standbys["plain"] = plain_standby(box, "plain", box.config.primary_port)
        standbys["custom"] = plain_standby(box, "custom", box.config.primary_port, application_name=CUSTOM_NAME)
        standbys["cascade"] = plain_standby(box, "cascade", standbys["plain"].port)
        yield box, standbys
    finally:
        for node in standbys.values():
            node.stop()
        box.destroy()


def save_block(box: Sandbox, standbys, name: str, nodes: tuple[str, ...]) -> str:
    """A cluster block of the pg_monitor role naming the primary, the sandbox's replica and `nodes`."""
    block = sandbox_cluster_block(box, superuser=False, name=name)
    block.nodes += [PostgresNode(name=n, host=HOST, port=standbys[n].port) for n in nodes]
    block.save(name, overwrite=True)
    return name


def test_ground_truth_the_standbys_are_not_named_after_their_nodes(plain_box):
    box, standbys = plain_box
    with box.connect("primary") as conn:
        names = sorted(r[0] for r in conn.execute("SELECT application_name FROM pg_stat_replication"))
    assert names == sorted(["replica", "walreceiver", CUSTOM_NAME])
    with box.connect("primary") as conn:
        cascade = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE client_port IS NOT NULL").fetchone()
    assert cascade == (3,)  # the cascading standby is not on the primary
    assert standbys["cascade"].receiver() == ("streaming", standbys["plain"].port)


def test_the_monitor_stays_quiet_and_agrees_with_the_health_check(plain_box, slack):
    box, standbys = plain_box
    block = save_block(box, standbys, "plain-quiet", ("plain", "custom", "cascade"))
    save_slack_block(slack, "slack-plain-quiet", "xoxb-ok-plain-quiet")
    t0 = datetime.now(UTC)
    reports = [alert_monitor(cluster_blocks=[block], slack_block="slack-plain-quiet",
                             evaluated_at=t0 + timedelta(seconds=s)) for s in (0, 61, 181)]
    lag = {s.labels["replica"]: s for s in reports[-1].clusters[0].series if s.rule == "replication_lag"}
    assert set(lag) == {"replica", "plain", "custom", "cascade"}, lag  # every one by its node name, none unknown
    assert all(s.state == "inactive" and s.value is not None for s in lag.values()), lag
    assert reports[-1].status == "ok" and not reports[-1].firing(), reports[-1].summary
    assert slack.calls("chat.postMessage", token="xoxb-ok-plain-quiet") == []
    health = health_check(cluster_block=block)
    rep = {c.node: c for c in health.checks if c.name == "replication"}
    assert set(rep) == set(lag) and all(c.status == "ok" for c in rep.values()), [c.summary for c in rep.values()]
    assert "walreceiver" in rep["plain"].details["how"] and CUSTOM_NAME in rep["custom"].details["how"]
    assert rep["cascade"].summary.endswith("behind plain in replay (recognised by application_name "
                                           "'walreceiver').")
    assert rep["replica"].details["how"].startswith("slot replica1")


def test_a_standby_missing_from_the_block_is_unknown_not_a_missing_replica(plain_box):
    box, standbys = plain_box
    block = save_block(box, standbys, "plain-partial", ("plain", "cascade"))  # `custom` is not in the block
    report = alert_monitor(cluster_blocks=[block], evaluated_at=datetime.now(UTC))
    lag = {s.labels["replica"]: s for s in report.clusters[0].series if s.rule == "replication_lag"}
    unknown = [k for k in lag if k.startswith("unknown standby")]
    assert unknown == [f"unknown standby {CUSTOM_NAME!r} from 127.0.0.1 (not in the cluster block)"], lag
    assert {k: s.state for k, s in lag.items() if k in ("replica", "plain", "cascade")} == dict.fromkeys(
        ("replica", "plain", "cascade"), "inactive")
    assert not [s for s in report.clusters[0].series if s.state == "nodata" and not s.unconfigured]
    health = health_check(cluster_block=block)
    (check,) = [c for c in health.checks if c.name == "replication" and c.node.startswith("unknown standby")]
    assert check.status == "warning" and "Add it to the cluster block" in check.summary


def test_primary_stop_pages_once_with_the_cause_and_its_return_adds_no_page(plain_box, slack):
    """Done when of issue 19: primary + a plain `pg_basebackup -R` replica; the replica also restarts after
    the primary is back (it is missing for one evaluation: a fresh pending period, not a page)."""
    box, standbys = plain_box
    block = save_block(box, standbys, "plain-outage", ("plain",))
    save_slack_block(slack, "slack-plain-outage", "xoxb-ok-plain-outage")

    def run(seconds):
        return alert_monitor(cluster_blocks=[block], slack_block="slack-plain-outage",
                             evaluated_at=t0 + timedelta(seconds=seconds))

    def pages():
        return [c for c in slack.calls("chat.postMessage", token="xoxb-ok-plain-outage") if not c.body.get("thread_ts")]

    t0 = datetime.now(UTC)
    assert not run(0).firing() and pages() == []
    box.stop_node("primary")
    try:
        down = [run(s) for s in (60, 121, 181, 241)]
    finally:
        box.start_node("primary")
    assert down[-1].status == "critical"
    (page,) = pages()
    text = str(page.body)
    assert f"FIRING: no_data connection_usage_percent on {block} (node primary)" in text
    assert "connection refused" in text and "replica=plain" in text and "replica=replica" in text
    standbys["plain"].stop()  # the replica restarts after the primary is back
    try:
        gap = run(301)
    finally:
        standbys["plain"].start()
    plain = {s.labels.get("replica"): s for s in gap.clusters[0].series if s.rule == "no_data"}
    assert plain["plain"].state == "pending", plain  # a fresh pending period after the inhibition
    wait_for(lambda: _all_streaming(box, standbys), timeout=60, what="every standby streaming again")
    back = [run(s) for s in (361, 481)]
    assert not back[-1].firing() and back[-1].status == "ok", back[-1].summary
    assert len(pages()) == 1, [str(p.body)[:200] for p in pages()]  # no extra page on the way back
    replies = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-plain-outage") if c.body.get("thread_ts")]
    assert len(replies) == 1 and "RESOLVED: no_data connection_usage_percent" in replies[0].body.get("text", "")


def _all_streaming(box: Sandbox, standbys) -> bool:
    return standbys["plain"].receiver()[0] == "streaming" and standbys["cascade"].receiver()[0] == "streaming" \
        and box.status()["nodes"]["primary"].get("in_recovery") is False


def test_a_role_without_pg_monitor_needs_declared_names_and_says_so(plain_box):
    """A role that may not see a WAL receiver (no pg_read_all_stats) nor a walsender's progress: the replicas
    declared in the block (application_name) are still known; their lag is unknown, with why, never 0."""
    from pydantic import SecretStr

    from tasks.alerts.metrics import database_samples

    box, standbys = plain_box
    # a standby restarted by the test before may still be reconnecting: its receiver then has no pid at all
    wait_for(lambda: _all_streaming(box, standbys), timeout=60, what="every standby streaming")
    with box.connect("primary") as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'plain_login'").fetchone():
            conn.execute("CREATE ROLE plain_login LOGIN PASSWORD 'plain-login-pw'")
    block = sandbox_cluster_block(box, superuser=False, name="plain-unprivileged")
    block.user, block.password = "plain_login", SecretStr("plain-login-pw")
    undeclared = block.model_copy(deep=True)
    undeclared.nodes += [PostgresNode(name="plain", host=HOST, port=standbys["plain"].port)]
    (plain,) = [s for s in database_samples(undeclared, 10) if s.labels.get("replica") == "plain"]
    assert plain.value is None and "cannot see plain's WAL receiver (grant pg_monitor)" in plain.no_data
    block.nodes += [PostgresNode(name="plain", host=HOST, port=standbys["plain"].port, application_name="walreceiver"),
                    PostgresNode(name="custom", host=HOST, port=standbys["custom"].port,
                                 application_name=CUSTOM_NAME)]
    samples = {s.labels.get("replica"): s for s in database_samples(block, 10) if s.metric == "replication_lag_seconds"}
    cascade = "unknown standby 'walreceiver' from an address hidden from this role (not in the cluster block)"
    assert set(samples) == {"replica", "plain", "custom", cascade}, samples  # the cascade, on plain: not declared
    for sample in samples.values():
        assert sample.value is None and "may not see this standby's progress" in sample.no_data, sample
