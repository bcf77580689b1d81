"""The health-check flow end to end: real primary and replica, real Prefect API, fake Slack."""

import threading
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from pydantic import SecretStr

from blocks.postgres_cluster import PostgresCluster, PostgresNode
from flows.health_check import health_check
from sandbox.blocks import sandbox_cluster_block
from sandbox.cluster import free_port
from tasks.health.report import HealthThresholds
from tests.helpers import ensure_healthy, psql, save_slack_block, wait_for


def by(report, name, node=None):
    return [c for c in report.checks if c.name == name and (node is None or c.node == node)]


@pytest.mark.versioned
def test_healthy_cluster_is_all_ok(cluster_block, slack):
    save_slack_block(slack, "slack-ok", "xoxb-ok-health")
    report = health_check(cluster_block=cluster_block, slack_block="slack-ok")
    assert report.status == "ok", report.summary
    assert report.primary == "primary"
    assert {c.name for c in report.checks} == {
        "connectivity", "replication", "replication-slot", "wal-receiver", "long-queries"}
    assert by(report, "replication", "replica")[0].details["state"] == "streaming"
    assert report.summary.startswith("test-sandbox: all")
    assert slack.calls() == []  # nothing to say when all is ok
    assert report.artifact_key == "health-test-sandbox"


async def _artifact(key):
    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_report_is_published_as_markdown_artifact(cluster_block):
    import asyncio

    report = health_check(cluster_block=cluster_block)
    artifacts = asyncio.run(_artifact(report.artifact_key))
    assert artifacts and artifacts[0].type == "markdown"
    assert "Health check of test-sandbox" in artifacts[0].data


@pytest.mark.versioned
def test_long_running_queries_are_found_and_idle_ones_are_not(sandbox, cluster_block):
    done = threading.Event()

    def sleeper():
        with sandbox.connect("primary") as conn:
            conn.execute("SET application_name = 'slow-report'")
            conn.execute("SELECT pg_sleep(8)")
        done.set()

    idle = sandbox.connect("primary")
    idle.execute("SELECT 1")  # an idle session must not count
    t = threading.Thread(target=sleeper)
    t.start()
    try:
        wait_for(lambda: psql(sandbox, "primary",
                 "SELECT 1 FROM pg_stat_activity WHERE application_name='slow-report' AND state='active'"),
                 what="sleeper to start")
        time.sleep(1.2)
        thresholds = HealthThresholds(long_query_seconds=1, long_query_critical_seconds=3600)
        report = health_check(cluster_block=cluster_block, thresholds=thresholds)
    finally:
        t.join()
        idle.close()
    check = by(report, "long-queries", "primary")[0]
    assert check.status == "warning"
    apps = [s["application_name"] for s in check.details["sessions"]]
    assert apps == ["slow-report"]
    assert "pg_sleep" in check.details["sessions"][0]["query"]
    assert by(report, "long-queries", "replica")[0].status == "ok"


@pytest.mark.versioned
def test_replication_lag_shows_while_replay_is_paused_and_clears_after(sandbox, cluster_block):
    psql(sandbox, "primary", "CREATE TABLE IF NOT EXISTS hc_lag (id int, pad text)")
    psql(sandbox, "replica", "SELECT pg_wal_replay_pause()")
    try:
        psql(sandbox, "primary", "INSERT INTO hc_lag SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
        # wait until the standby has reported its (stale) replay position after receiving
        wait_for(lambda: psql(sandbox, "primary",
                 "SELECT 1 FROM pg_stat_replication WHERE pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) > 0"
                 " AND flush_lsn = pg_current_wal_lsn()"), what="flushed but not replayed")
        truth = psql(sandbox, "primary",
                     "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication")[0][0]
        report = health_check(cluster_block=cluster_block)
        rep = by(report, "replication", "replica")[0]
        assert rep.details["replay_lag_bytes"] > 0
        # ground truth: pg_stat_replication right before the run, nothing replayed since
        assert rep.details["replay_lag_bytes"] >= truth
        receiver = by(report, "wal-receiver", "replica")[0]
        assert receiver.status == "warning" and "PAUSED" in receiver.summary
        assert report.status in ("warning", "critical")
    finally:
        psql(sandbox, "replica", "SELECT pg_wal_replay_resume()")
    caught_up = wait_for(lambda: psql(sandbox, "primary", "SELECT replay_lsn::text FROM pg_stat_replication"
                                      " WHERE replay_lsn = pg_current_wal_lsn()"), what="replay caught up")[0][0]
    report = health_check(cluster_block=cluster_block)
    rep = by(report, "replication", "replica")[0]
    # the primary goes on writing WAL (autovacuum of hc_lag, checkpoints): the lag the run saw is at most what
    # was written since the standby had replayed everything
    written_since = psql(sandbox, "primary",
                         "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint", (caught_up,))[0][0]
    assert 0 <= rep.details["replay_lag_bytes"] <= written_since and rep.status == "ok"


@pytest.mark.versioned
def test_pg_monitor_role_is_enough(monitor_cluster_block):
    report = health_check(cluster_block=monitor_cluster_block)
    assert report.status == "ok", report.summary
    assert by(report, "replication", "replica")[0].details["replay_lsn"] is not None
    assert by(report, "wal-receiver", "replica")[0].details["receiver_status"] == "streaming"


def test_replica_down_is_a_finding_not_a_crash(sandbox, cluster_block):
    sandbox.stop_node("replica")
    try:
        report = health_check(cluster_block=cluster_block)
    finally:
        ensure_healthy(sandbox)
    assert report.status == "critical"
    assert "unreachable" in by(report, "connectivity", "replica")[0].summary
    (missing,) = by(report, "replication", "replica")  # named by the block's node, with why
    assert missing.status == "critical" and "missing from primary's pg_stat_replication" in missing.summary
    assert "replica could not be read" in missing.summary and "unreachable" in missing.summary


def test_primary_down_is_a_finding_not_a_crash(sandbox, cluster_block):
    sandbox.stop_node("primary")
    try:
        report = health_check(cluster_block=cluster_block)
    finally:
        ensure_healthy(sandbox)
    assert report.status == "critical"
    assert by(report, "connectivity", "primary")[0].status == "critical"
    assert by(report, "connectivity", "replica")[0].status == "ok"
    assert report.primary is None
    assert by(report, "replication", "cluster")[0].status == "unknown"


def test_wrong_host_port_and_password_are_findings(sandbox, prefect_api):
    good = sandbox_cluster_block(sandbox)
    bad = good.model_copy(update={
        "cluster_name": "badcluster",
        "nodes": [PostgresNode(name="primary", host="127.0.0.1", port=sandbox.config.primary_port),
                  PostgresNode(name="ghost", host="127.0.0.1", port=free_port())],
        "password": SecretStr("definitely-wrong-pw"),
    })
    PostgresCluster.model_validate(bad.model_dump()).save("bad-cluster", overwrite=True)
    report = health_check(cluster_block="bad-cluster")
    assert report.status == "critical"
    assert "refused the login" in by(report, "connectivity", "primary")[0].summary
    assert "unreachable" in by(report, "connectivity", "ghost")[0].summary
    assert "definitely-wrong-pw" not in report.model_dump_json()


@pytest.mark.parametrize("token, channel, delivered", [
    ("xoxb-ok-notify", "#db-ops", True),
    ("xoxb-ratelimit-once", "#db-ops", True),
    ("xoxb-server-error", "#db-ops", False),
    ("xoxb-ok-notify", "not-in-channel", False),
    ("xoxb-hang", "#db-ops", False),
])
def test_slack_outcome_never_changes_the_runbook_result(cluster_block, slack, token, channel, delivered):
    save_slack_block(slack, "slack-case", token, channel=channel, timeout_seconds=1)
    report = health_check(cluster_block=cluster_block, slack_block="slack-case", always_notify=True)
    assert report.status == "ok"
    assert report.notification.attempted
    assert report.notification.ok is delivered, report.notification
    if delivered:
        methods = [c.method for c in slack.calls(token=token) if c.status == 200]
        assert methods == ["chat.postMessage", "chat.postMessage", "chat.update"]
        parent = slack.calls(token=token)[-1].body["ts"]
        assert slack.calls(token=token)[-2].body["thread_ts"] == parent
    else:
        assert "Slack" in report.notification.summary


def test_missing_slack_block_is_a_recorded_notification_failure(cluster_block):
    report = health_check(cluster_block=cluster_block, slack_block="no-such-block", always_notify=True)
    assert report.status == "ok" and not report.notification.ok
    assert "no-such-block" in report.notification.errors[0]


def test_database_without_pg_stat_statements_is_fine(sandbox, prefect_api):
    if not psql(sandbox, "primary", "SELECT 1 FROM pg_database WHERE datname = 'no_pgss'"):
        psql(sandbox, "primary", "CREATE DATABASE no_pgss")
    block = sandbox_cluster_block(sandbox, name="nopgss").model_copy(update={"database": "no_pgss"})
    PostgresCluster.model_validate(block.model_dump()).save("nopgss", overwrite=True)
    report = health_check(cluster_block="nopgss")
    assert report.status == "ok", report.summary
