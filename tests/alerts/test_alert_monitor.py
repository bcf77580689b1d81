"""The alert monitor against the real sandbox, the real Prefect API and the fake Slack.

Real conditions: a connection surge (many sessions) fires connection_limit and runs its
action as a flow run; paused replay on the replica fires replication_lag; a hanging cluster
is no data while the others are evaluated. Durations are covered by passing the evaluation
time (`evaluated_at`) instead of sleeping through them.
"""

import contextlib
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

from blocks.postgres_cluster import PostgresCluster, PostgresNode
from flows.alert_monitor import alert_monitor
from sandbox.cluster import HOST
from tasks.alerts.evaluate import ClusterAlertState, Sample, evaluate
from tasks.alerts.monitor import MonitorParams
from tasks.alerts.rules import RuleFileError, default_rules, load_rules
from tasks.alerts.state import StateStoreError, load_states, locked, save_state, variable_name
from tests.helpers import psql, save_slack_block, wait_for

SURGE_RULES = """\
rules:
  - name: connection_limit
    metric: connection_usage_percent
    threshold: {threshold}
    for: 1m
    action: scale_connections
    severity: critical
  - name: replication_lag
    metric: replication_lag_seconds
    threshold: 1
    for: 1m
    action: notify_dba
"""


def rules_file(tmp_path, threshold=30.0, name="rules.yaml"):
    path = tmp_path / name
    path.write_text(SURGE_RULES.format(threshold=threshold))
    return str(path)


def fresh_block(sandbox, name):
    """A cluster block of its own (own state variable), pointing at the sandbox."""
    from sandbox.blocks import sandbox_cluster_block

    sandbox_cluster_block(sandbox, name=name).save(name, overwrite=True)
    return name


def usage_now(sandbox) -> float:
    used, top, reserved = psql(sandbox, "primary", """
        SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
               current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int""")[0]
    return 100.0 * used / (top - reserved)


@contextlib.contextmanager
def surge(sandbox, n):
    conns = []
    try:
        for _ in range(n):
            conn = psycopg.connect(sandbox.conninfo("primary"), autocommit=True, application_name="surge")
            conns.append(conn)
        yield conns
    finally:
        for conn in conns:
            conn.close()


def test_state_survives_a_restart_and_keeps_the_pending_timer(prefect_api):
    rules = default_rules()
    t0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    state = evaluate(rules, [Sample(metric="cpu_usage_percent", value=95)], ClusterAlertState(cluster="restart-1"),
                     t0).state
    save_state(state)
    # "another worker": nothing in memory, only what the store holds
    loaded = load_states(["restart-1"])["restart-1"]
    assert loaded.alerts['high_cpu{}'].active_since == t0 and loaded.revision == 1
    for minutes in (2, 4):
        loaded = evaluate(rules, [Sample(metric="cpu_usage_percent", value=95)], loaded,
                          t0 + timedelta(minutes=minutes)).state
        save_state(loaded)
        loaded = load_states(["restart-1"])["restart-1"]
    result = evaluate(rules, [Sample(metric="cpu_usage_percent", value=95)], loaded, t0 + timedelta(minutes=5))
    assert result.state.alerts['high_cpu{}'].status == "firing"
    assert load_states(["never-seen"])["never-seen"].alerts == {}


def test_store_unreachable_fails_loudly(prefect_api):
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with temporary_settings({PREFECT_API_URL: f"http://{HOST}:{port}/api"}):
        with pytest.raises(StateStoreError, match="stops instead of resetting alert timers"):
            load_states(["c1"])
        with pytest.raises(StateStoreError, match="writing"):
            save_state(ClusterAlertState(cluster="c1"))


def test_concurrent_runs_for_a_cluster_are_serialised(prefect_api):
    held, release = threading.Event(), threading.Event()

    def first():
        with locked(["lock-1"]):
            state = load_states(["lock-1"])["lock-1"]
            held.set()
            release.wait(10)
            state.revision += 1
            save_state(state)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        held.wait(10)
        with pytest.raises(StateStoreError, match="another monitor run held the state"):
            with locked(["lock-1"], timeout_seconds=1):
                pass
        release.set()
        with locked(["lock-1"], timeout_seconds=20):  # waits, then sees the first run's write
            assert load_states(["lock-1"])["lock-1"].revision == 1
    finally:
        release.set()
        thread.join()


def test_connection_surge_fires_connection_limit_and_runs_its_action(sandbox, prefect_api, slack, tmp_path):
    block = fresh_block(sandbox, "alert-surge")
    save_slack_block(slack, "slack-alerts", "xoxb-ok-alerts", mention_groups={"notify_dba": "<!subteam^DBA>"})
    threshold = usage_now(sandbox) + 15
    params = MonitorParams(rules_file=rules_file(tmp_path, threshold=round(threshold, 1)))
    t0 = datetime.now(UTC)
    with surge(sandbox, 60):
        assert usage_now(sandbox) > threshold  # ground truth from pg_stat_activity
        first = alert_monitor(cluster_blocks=[block], slack_block="slack-alerts", params=params, evaluated_at=t0)
        pending = [s for s in first.clusters[0].series if s.rule == "connection_limit"][0]
        assert pending.state == "pending" and pending.value > threshold
        second = alert_monitor(cluster_blocks=[block], slack_block="slack-alerts", params=params,
                               evaluated_at=t0 + timedelta(seconds=61))
        third = alert_monitor(cluster_blocks=[block], slack_block="slack-alerts", params=params,
                              evaluated_at=t0 + timedelta(seconds=121))
    fired = [s for s in second.firing() if s.rule == "connection_limit"]
    assert fired and second.status == "critical", second.summary
    assert len(second.clusters[0].actions) == 1 and "connection-remediation" in second.clusters[0].actions[0]
    assert third.clusters[0].actions == []  # one action per episode
    posts = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-alerts") if not c.body.get("thread_ts")]
    firing = [p for p in posts if "FIRING: connection_limit on alert-surge" in str(p.body)]
    assert len(firing) == 1, [str(p.body)[:200] for p in posts]
    state = load_states([block])[block]
    alert = state.alerts['connection_limit{}']
    assert alert.action_run and alert.thread_ts and "starts right after this message" in str(firing[0].body)
    replies = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-alerts") if
               c.body.get("thread_ts") == alert.thread_ts]  # the page went out first; the action's outcome follows
    assert len(replies) == 1 and f"flow run {alert.action_run}" in str(replies[0].body)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(alert.action_run)
    assert run.state.is_completed() and run.parameters["alert"]["rule"] == "connection_limit"
    assert run.parent_task_run_id is not None  # a child of the monitor run in the UI
    note = second.clusters[0].actions[0]  # the action flow's own summary
    assert "dry run" in note and "nothing was terminated" in note and "scaler: none configured" in note
    # the surge is gone: resolved in the same thread
    after = alert_monitor(cluster_blocks=[block], slack_block="slack-alerts", params=params,
                          evaluated_at=t0 + timedelta(seconds=181))
    assert not after.firing()
    resolved = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-alerts") if "RESOLVED" in str(c.body)
                and "ACTION" not in c.body.get("text", "")]
    assert len(resolved) == 1 and resolved[0].body.get("thread_ts") == alert.thread_ts
    assert variable_name(block) == "alert-state-alert-surge"
    for secret in (sandbox.config.password, "xoxb-ok-alerts"):
        assert secret not in second.model_dump_json() and secret not in str([c.body for c in slack.calls()])


def test_paused_replay_fires_replication_lag(sandbox, prefect_api, slack, tmp_path):
    block = fresh_block(sandbox, "alert-lag")
    save_slack_block(slack, "slack-dba", "xoxb-ok-dba", mention_groups={"notify_dba": "<!subteam^DBA>"})
    params = MonitorParams(rules_file=rules_file(tmp_path, threshold=99))
    psql(sandbox, "primary", "CREATE TABLE IF NOT EXISTS alert_lag_probe (id bigserial, at timestamptz)")
    psql(sandbox, "replica", "SELECT pg_wal_replay_pause()")
    stop = threading.Event()

    def writer():
        with sandbox.connect("primary") as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO alert_lag_probe (at) VALUES (now())")
                time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: (psql(sandbox, "primary", "SELECT extract(epoch FROM replay_lag) FROM pg_stat_replication "
                                                   "WHERE application_name = 'replica'")[0][0] or 0) > 1.5,
                 timeout=30, what="replay_lag above 1.5 s")
        t0 = datetime.now(UTC)
        alert_monitor(cluster_blocks=[block], slack_block="slack-dba", params=params, evaluated_at=t0)
        fired = alert_monitor(cluster_blocks=[block], slack_block="slack-dba", params=params,
                              evaluated_at=t0 + timedelta(seconds=61))
    finally:
        stop.set()
        thread.join()
        psql(sandbox, "replica", "SELECT pg_wal_replay_resume()")
        psql(sandbox, "primary", "DROP TABLE IF EXISTS alert_lag_probe")
    lag = [s for s in fired.firing() if s.rule == "replication_lag"]
    assert lag and lag[0].labels == {"replica": "replica"} and lag[0].value > 1
    post = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-dba") if "FIRING: replication_lag" in str(c.body)]
    assert len(post) == 1 and "<!subteam^DBA>" in str(post[0].body)
    wait_for(lambda: (psql(sandbox, "primary", "SELECT coalesce(extract(epoch FROM replay_lag), 0) "
                                               "FROM pg_stat_replication")[0][0]) < 1
             and psql(sandbox, "primary", "SELECT replay_lsn = pg_current_wal_lsn() FROM pg_stat_replication")[0][0],
             timeout=30, what="replica to catch up")
    resolved = alert_monitor(cluster_blocks=[block], slack_block="slack-dba", params=params,
                             evaluated_at=t0 + timedelta(seconds=121))
    assert not resolved.firing(), resolved.summary


def test_a_hanging_cluster_is_no_data_and_the_others_are_evaluated(sandbox, prefect_api):
    good = fresh_block(sandbox, "alert-good")
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(16)  # accepts TCP, never speaks: a server that hangs
    PostgresCluster(cluster_name="alert-hang", nodes=[PostgresNode(name="pg-1", host=HOST,
                    port=listener.getsockname()[1])], primary_node="pg-1", password=SecretStr("x"),
                    sslmode="disable").save("alert-hang", overwrite=True)
    try:
        started = time.perf_counter()
        report = alert_monitor(cluster_blocks=[good], cluster_group="alert-ha",  # the group: blocks named alert-ha*
                               params=MonitorParams(deadline_seconds=2))
        wall = time.perf_counter() - started
    finally:
        listener.close()
    by_block = {c.block: c for c in report.clusters}
    hang = by_block["alert-hang"]
    assert [s.state for s in hang.series if s.rule == "connection_limit"] == ["nodata"]
    assert any("timeout" in s.summary or "deadline" in s.summary for s in hang.series)
    assert [s.state for s in by_block[good].series if s.rule == "connection_limit"] == ["inactive"]
    assert "cpu_usage_percent, disk_usage_percent: no source configured" in report.summary
    assert wall < 30
    state = load_states(["alert-hang"])["alert-hang"]
    assert 'no_data{metric="connection_usage_percent"}' in state.alerts  # pending no-data alert, never "ok"


@contextlib.contextmanager
def black_hole_prometheus(name):
    """A host-metrics-source block of kind prometheus whose server accepts TCP and never answers (HTTP timeout
    60 s, far past any deadline here)."""
    from blocks.metrics_source import MetricsSource

    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(64)  # the kernel completes the handshake; nobody ever reads the request
    MetricsSource(kind="prometheus", prometheus_url=f"http://{HOST}:{listener.getsockname()[1]}",
                  instance="db1:9100", timeout_seconds=60).save(name, overwrite=True)
    try:
        yield name
    finally:
        listener.close()


def test_a_hanging_metrics_source_is_bounded_by_the_cluster_deadline(sandbox, prefect_api):
    """The deadline covers the cluster's whole sampling, not only its database: a Prometheus that never
    answers is no data (timed out) after the deadline, what was read before it is kept, and a healthy
    cluster in the same run is sampled normally."""
    good, slow = fresh_block(sandbox, "alert-dl-good"), fresh_block(sandbox, "alert-dl-slow")
    with black_hole_prometheus("alert-dl-slow-host") as source:
        started = time.perf_counter()
        report = alert_monitor(cluster_blocks=[good, slow], metrics_blocks={slow: source},
                               params=MonitorParams(deadline_seconds=2))
        wall = time.perf_counter() - started
    by_block = {c.block: c for c in report.clusters}
    hung = {s.rule: s for s in by_block[slow].series}
    assert hung["high_cpu"].state == hung["disk_usage"].state == "nodata"
    assert "timed out: the metrics source did not answer within the 2 s per-cluster deadline" in \
        hung["high_cpu"].summary
    assert hung["connection_limit"].state == "inactive"  # read before the source hung: kept
    assert 2 <= by_block[slow].seconds < 30  # cut at its deadline, far from the source's 60 s hang
    assert {s.rule: s.state for s in by_block[good].series}["connection_limit"] == "inactive"
    assert wall < 40  # a correctness bound on the deadline (the source would hang 60 s), not a benchmark


def test_the_fleet_budget_ends_sampling_and_the_run_saves_its_state(sandbox, prefect_api):
    """A fleet budget below the per-cluster deadline: at the budget the hung cluster is no data (timed out)
    with that reason, its abandoned thread does not hold the run, and its state is saved."""
    good, slow = fresh_block(sandbox, "alert-fb-good"), fresh_block(sandbox, "alert-fb-slow")
    with black_hole_prometheus("alert-fb-slow-host") as source:
        started = time.perf_counter()
        report = alert_monitor(cluster_blocks=[good, slow], metrics_blocks={slow: source},
                               params=MonitorParams(deadline_seconds=30, fleet_budget_seconds=3))
        wall = time.perf_counter() - started
    by_block = {c.block: c for c in report.clusters}
    hung = {s.rule: s for s in by_block[slow].series}
    assert hung["high_cpu"].state == "nodata"
    assert "timed out: the metrics source did not answer within the fleet's sampling budget" in \
        hung["high_cpu"].summary
    assert {s.rule: s.state for s in by_block[good].series}["connection_limit"] == "inactive"
    assert report.sample_seconds < 30  # cut at the 3 s budget, far from the source's 60 s hang
    assert wall < 40  # a correctness bound on the budget (the source would hang 60 s), not a benchmark
    state = load_states([slow])[slow]
    assert 'no_data{metric="cpu_usage_percent"}' in state.alerts  # pending no-data alert, saved


def test_the_fleet_is_loaded_in_one_listing_and_a_missing_block_is_no_data(sandbox, prefect_api):
    """The fleet's cluster blocks come from one listing, secrets included (the password works: real samples);
    a listed block that does not exist is no data saying so, and the others are evaluated."""
    from tasks.alerts.metrics import fleet_clusters

    good = fresh_block(sandbox, "alert-fl-good")
    loaded = fleet_clusters([good, "alert-fl-missing"])
    assert list(loaded) == [good]
    assert loaded[good].password.get_secret_value() == sandbox.config.password
    report = alert_monitor(cluster_blocks=[good, "alert-fl-missing"], params=MonitorParams(deadline_seconds=5))
    by_block = {c.block: c for c in report.clusters}
    assert {s.rule: s.state for s in by_block[good].series}["connection_limit"] == "inactive"
    missing = {s.rule: s for s in by_block["alert-fl-missing"].series}
    assert missing["connection_limit"].state == "nodata"
    assert "cannot load PostgresCluster block 'alert-fl-missing'" in missing["connection_limit"].summary


def test_invalid_rule_file_keeps_the_previous_rules(sandbox, prefect_api, slack, tmp_path):
    block = fresh_block(sandbox, "alert-rules")
    path = rules_file(tmp_path, threshold=99, name="live.yaml")
    good = path.replace("live.yaml", "good.yaml")
    Path(good).write_text(Path(path).read_text())
    ok = alert_monitor(cluster_blocks=[block], params=MonitorParams(rules_file=path))
    assert ok.rules_error is None
    with open(path, "a") as f:
        f.write("  - name: broken\n    metric: connection_usage_percent\n    threshold: '80%'\n    for: 5m\n"
                "    action: notify_team\n")
    save_slack_block(slack, "slack-rules", "xoxb-ok-rules")
    kept = alert_monitor(cluster_blocks=[block], slack_block="slack-rules", params=MonitorParams(rules_file=path))
    alert_monitor(cluster_blocks=[block], slack_block="slack-rules", params=MonitorParams(rules_file=path))
    posts = slack.calls("chat.postMessage", token="xoxb-ok-rules")
    assert len(posts) == 1 and "ALERT RULES REJECTED" in str(posts[0].body)  # paged once, not every minute
    assert "line 15, rules.2.threshold (rule broken)" in kept.rules_error
    assert f"In force: the last valid rules of {path} (2: connection_limit, replication_lag)" in kept.rules_error
    assert "In force: the last valid rules" in str(posts[0].body)
    assert {s.rule for s in kept.clusters[0].series} >= {"connection_limit", "replication_lag"}
    assert kept.status == "warning" and "its last valid rules in force" in kept.summary
    Path(path).write_text(Path(good).read_text())  # fixed: the episode resolves in the page's thread
    alert_monitor(cluster_blocks=[block], slack_block="slack-rules", params=MonitorParams(rules_file=path))
    replies = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-rules") if c.body.get("thread_ts")]
    assert len(replies) == 1 and "valid again" in str(replies[0].body)


def test_a_rule_file_never_valid_pages_once_and_resolves_when_fixed(sandbox, prefect_api, slack, tmp_path):
    block = fresh_block(sandbox, "alert-never")
    save_slack_block(slack, "slack-never", "xoxb-ok-never")
    other = tmp_path / "never-valid.yaml"
    other.write_text("rules: []\n")
    for _ in range(2):
        with pytest.raises(RuleFileError, match="NO alert rules are in force"):
            alert_monitor(cluster_blocks=[block], slack_block="slack-never",
                          params=MonitorParams(rules_file=str(other)))
    posts = slack.calls("chat.postMessage", token="xoxb-ok-never")
    assert len(posts) == 1, [str(p.body)[:200] for p in posts]
    text = str(posts[0].body)
    assert "ALERTING DISABLED" in text and "evaluates nothing" in text and "stay in force" not in text
    other.write_text(SURGE_RULES.format(threshold=99))
    fixed = alert_monitor(cluster_blocks=[block], slack_block="slack-never",
                          params=MonitorParams(rules_file=str(other)))
    assert fixed.rules_error is None
    replies = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-never") if c.body.get("thread_ts")]
    assert len(replies) == 1 and "2 rule(s) in force: connection_limit, replication_lag" in str(replies[0].body)


def test_two_concurrent_runs_send_one_message(sandbox, prefect_api, slack, tmp_path):
    """Both runs see the alert fire; the second, after the lock, re-reads the moved state: no duplicate."""
    block = fresh_block(sandbox, "alert-race")
    save_slack_block(slack, "slack-race", "xoxb-ok-race")
    path = tmp_path / "always.yaml"
    path.write_text("rules:\n  - {name: always, metric: connection_usage_percent, threshold: 0, for: 1m, "
                    "action: notify_team}\n")
    params = MonitorParams(rules_file=str(path))
    t0 = datetime.now(UTC)
    alert_monitor(cluster_blocks=[block], slack_block="slack-race", params=params, evaluated_at=t0)
    reports = []

    def run(seconds):
        reports.append(alert_monitor(cluster_blocks=[block], slack_block="slack-race", params=params,
                                     evaluated_at=t0 + timedelta(seconds=seconds)))

    threads = [threading.Thread(target=run, args=(s,)) for s in (61, 62)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reports) == 2 and all(r.firing() for r in reports)
    posts = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-race") if "FIRING: always" in str(c.body)]
    assert len(posts) == 1
    state = load_states([block])[block]
    # none lost: the first run's firing turn is saved (revision 2); the second saves too (3) when it evaluated
    # before that save and redid its turn under the lock, and writes nothing when it saw a steadily firing alert
    assert state.revision in (2, 3) and state.alerts['always{}'].notify_due is None
    assert state.alerts['always{}'].notified_at is not None and state.alerts['always{}'].thread_ts


def test_state_moved_by_another_run_is_re_evaluated_not_overwritten(sandbox, prefect_api, slack, tmp_path):
    """Compare-and-set: the run waits for the lock, sees a newer revision, and redoes its evaluation on it."""
    block = fresh_block(sandbox, "alert-cas")
    save_slack_block(slack, "slack-cas", "xoxb-ok-cas")
    path = tmp_path / "always.yaml"
    path.write_text("rules:\n  - {name: always, metric: connection_usage_percent, threshold: 0, for: 1m, "
                    "action: notify_team}\n")
    params = MonitorParams(rules_file=str(path))
    t0 = datetime.now(UTC)
    alert_monitor(cluster_blocks=[block], slack_block="slack-cas", params=params, evaluated_at=t0)
    reports = []
    with locked([block]):
        thread = threading.Thread(target=lambda: reports.append(alert_monitor(
            cluster_blocks=[block], slack_block="slack-cas", params=params, evaluated_at=t0 + timedelta(seconds=62))))
        thread.start()
        time.sleep(4)  # the run has read revision 1 and waits for the lock
        other = evaluate(load_rules(path), [Sample(metric="connection_usage_percent", value=5.0)],
                         load_states([block])[block], t0 + timedelta(seconds=61)).state
        other.alerts['always{}'].notify_due, other.alerts['always{}'].thread_ts = None, "1.2"  # "it notified"
        other.alerts['always{}'].notified_at = t0 + timedelta(seconds=61)
        save_state(other)
    thread.join()
    assert reports and reports[0].firing()
    assert [c for c in slack.calls("chat.postMessage", token="xoxb-ok-cas") if "FIRING" in str(c.body)] == []
    state = load_states([block])[block]
    assert state.revision == 3 and state.alerts['always{}'].thread_ts == "1.2"


def test_cpu_and_disk_come_from_the_metrics_source(sandbox, prefect_api):
    import os

    from sandbox.blocks import save_sandbox_blocks
    from tasks.alerts.metrics import host_samples

    save_sandbox_blocks(sandbox, "hm-sandbox")
    samples = {s.metric: s for s in host_samples("hm-sandbox-host")}
    assert set(samples) == {"cpu_usage_percent", "disk_usage_percent"}
    assert all(s.value is not None and 0 <= s.value <= 100 for s in samples.values()), samples
    st = os.statvfs(sandbox.primary_dir)  # ground truth, computed as df does
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    truth = 100 * used / (used + st.f_bavail * st.f_frsize)
    assert abs(samples["disk_usage_percent"].value - truth) < 1.0


HOST_RULES = """\
rules:
  - name: high_cpu
    metric: cpu_usage_percent
    threshold: {cpu}
    for: 1m
    action: notify_team
  - name: disk_usage
    metric: disk_usage_percent
    threshold: {disk}
    for: 1m
    action: cleanup_data
"""


def disk_used_percent(path) -> float:
    """Ground truth for the disk holding `path`, computed as df does."""
    import os

    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return 100 * used / (used + st.f_bavail * st.f_frsize)


@contextlib.contextmanager
def cpu_load():
    """A real busy process on this host, so a CPU figure above 0 does not depend on what else runs."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_high_cpu_and_disk_usage_fire_and_resolve_on_real_host_metrics(sandbox, prefect_api, slack, tmp_path):
    """The default rules' host metrics through the real local source (`{cluster}-host`, as prefect.yaml
    configures it): thresholds the machine's real figures cross fire both rules after `for`, disk_usage
    starts the disk-pressure runbook, and thresholds they cannot reach resolve both in their threads."""
    from sandbox.blocks import save_sandbox_blocks

    block = save_sandbox_blocks(sandbox, "alert-host")  # cluster block + host-metrics-source/alert-host-host
    save_slack_block(slack, "slack-host", "xoxb-ok-host", mention_groups={"notify_team": "<!here>"})
    path = tmp_path / "host.yaml"
    path.write_text(HOST_RULES.format(cpu=0, disk=1))
    assert disk_used_percent(sandbox.primary_dir) > 1  # ground truth: the real filesystem crosses it

    def run(seconds):
        return alert_monitor(cluster_blocks=[block], slack_block="slack-host", metrics_block="{cluster}-host",
                             params=MonitorParams(rules_file=str(path)), evaluated_at=t0 + timedelta(seconds=seconds))

    t0 = datetime.now(UTC)
    with cpu_load():
        first = run(0)
        pending = {s.rule: s for s in first.clusters[0].series}
        assert {pending["high_cpu"].state, pending["disk_usage"].state} == {"pending"}, first.summary
        fired = run(61)
    series = {s.rule: s for s in fired.clusters[0].series}
    assert series["high_cpu"].state == "firing" and 0 < series["high_cpu"].value <= 100
    assert series["disk_usage"].state == "firing"
    assert abs(series["disk_usage"].value - disk_used_percent(sandbox.primary_dir)) < 1.0
    state = load_states([block])[block]
    assert {k: a.status for k, a in state.alerts.items()} == {"high_cpu{}": "firing", "disk_usage{}": "firing"}
    # cleanup_data ran the disk-pressure runbook (a subflow here: the harness has no deployment of it)
    (note,) = fired.clusters[0].actions
    assert "disk-pressure" in note and "ran as a subflow, completed" in note and "recommendation(s)" in note
    disk = state.alerts["disk_usage{}"]
    assert state.alerts["high_cpu{}"].action_run is None  # notify_team: notification only
    with get_client(sync_client=True) as client:
        action = client.read_flow_run(disk.action_run)
    assert action.state.is_completed() and action.parameters["alert"]["rule"] == "disk_usage"
    posts = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-host") if not c.body.get("thread_ts")]
    cpu_post = [p for p in posts if f"FIRING: high_cpu on {block}" in str(p.body)]
    disk_post = [p for p in posts if f"FIRING: disk_usage on {block}" in str(p.body)]
    assert len(cpu_post) == 1 and len(disk_post) == 1 and "<!here>" in str(cpu_post[0].body)
    in_thread = [c for c in slack.calls("chat.postMessage", token="xoxb-ok-host")
                 if c.body.get("thread_ts") == disk.thread_ts]
    assert any(f"flow run {disk.action_run}" in str(c.body) for c in in_thread)  # after the page, in its thread

    path.write_text(HOST_RULES.format(cpu=100, disk=99.99))  # out of reach of the real figures
    assert disk_used_percent(sandbox.primary_dir) < 99.99
    resolved = run(121)
    assert not resolved.firing(), resolved.summary
    assert {s.rule: s.state for s in resolved.clusters[0].series} == {"high_cpu": "inactive", "disk_usage": "inactive"}
    assert resolved.clusters[0].actions == []
    assert load_states([block])[block].alerts == {}
    resolved_in = {c.body.get("thread_ts"): c.body.get("text", "") for c in slack.calls("chat.postMessage",
                   token="xoxb-ok-host") if c.body.get("text", "").startswith("RESOLVED")}
    assert len(resolved_in) == 2  # one each, in the thread of its FIRING message
    assert resolved_in[state.alerts["high_cpu{}"].thread_ts].startswith(f"RESOLVED: high_cpu on {block}")
    assert resolved_in[disk.thread_ts].startswith(f"RESOLVED: disk_usage on {block}")


def test_a_cluster_that_is_down_sends_one_no_data_message_naming_its_replicas(prefect_api, slack):
    """A real refused connection (nothing listens) on a cluster with two replicas: the database's no-data alert
    fires and stands for the replicas' (Alertmanager inhibition): one Slack message, not three."""
    from sandbox.cluster import free_port

    dead = free_port()
    PostgresCluster(cluster_name="alert-down", nodes=[PostgresNode(name=n, host=HOST, port=dead)
                                                      for n in ("pg-1", "pg-2", "pg-3")],
                    primary_node="pg-1", password=SecretStr("x"), sslmode="disable").save("alert-down", overwrite=True)
    save_slack_block(slack, "slack-down", "xoxb-ok-down")
    t0 = datetime.now(UTC)
    reports = [alert_monitor(cluster_blocks=["alert-down"], slack_block="slack-down",
                             evaluated_at=t0 + timedelta(seconds=s)) for s in (0, 61, 121, 181)]
    firing = {s.summary.split(" ")[0] for s in reports[2].firing()}
    lag = 'no_data{metric="replication_lag_seconds",replica="%s"}'
    assert firing == {'no_data{metric="connection_usage_percent"}', lag % "pg-2", lag % "pg-3"}, firing
    posts = slack.calls("chat.postMessage", token="xoxb-ok-down")
    assert len(posts) == 1, [str(p.body)[:200] for p in posts]
    text = str(posts[0].body)
    assert "FIRING: no_data connection_usage_percent on alert-down (node pg-1)" in text
    assert "connection refused" in text and "replica=pg-2" in text and "replica=pg-3" in text
