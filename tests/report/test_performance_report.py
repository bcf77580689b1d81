"""The daily performance report against the real sandbox, compared with what PostgreSQL says directly."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from blocks.metrics_source import MetricsSource
from blocks.postgres_cluster import PostgresCluster
from flows.performance_report import performance_report
from sandbox.blocks import sandbox_cluster_block
from sandbox.cluster import Sandbox
from tasks.core.findings import worst
from tasks.report.performance import ReportParams
from tests.helpers import psql, save_slack_block, seed_report_history, wait_for

pytestmark = pytest.mark.versioned  # database-facing, version-dependent: run on 14 and 18 too

QUIET_DB = "perf_quiet_db"
NOEXT_DB = "perf_noext_db"


def params(state_dir: str, **kw) -> ReportParams:
    return ReportParams(state_dir=state_dir, **kw)


@pytest.fixture
def state_dir() -> str:
    return tempfile.mkdtemp(prefix="pgrb-reports-")


@pytest.fixture(scope="module")
def extra_databases(sandbox: Sandbox):
    """A database nobody uses (for exact cache arithmetic) and one without pg_stat_statements."""
    for db in (QUIET_DB, NOEXT_DB):
        if not psql(sandbox, "primary", "SELECT 1 FROM pg_database WHERE datname = %s", (db,)):
            psql(sandbox, "primary", psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(db)))
    with sandbox.connect("primary", dbname=QUIET_DB) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS cache_probe (id int, pad text) WITH (autovacuum_enabled = off)")
        conn.execute("TRUNCATE cache_probe")
        conn.execute("INSERT INTO cache_probe SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g")
    yield QUIET_DB, NOEXT_DB
    for db in (QUIET_DB, NOEXT_DB):  # leave the shared sandbox as we found it
        psql(sandbox, "primary", psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(db)))


def no_negative_counts(obj, path="report"):
    """Every count in the deltas is >= 0 (sizes may shrink, so growth_bytes is excluded)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k != "growth_bytes":
                no_negative_counts(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            no_negative_counts(v, f"{path}[{i}]")
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        assert obj >= 0, f"{path} = {obj}"


def deltas_of(report) -> dict:
    data = report.model_dump(mode="json")
    return {k: data[k] for k in ("statements_delta", "storage_delta", "cache_delta", "checkpoint_delta")}


async def _artifacts(key):
    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_statement_calls_and_idle_transactions_match_postgres(sandbox, cluster_block, state_dir):
    psql(sandbox, "primary", "CREATE TABLE IF NOT EXISTS perf_probe (id int)")
    idle = []
    try:
        with sandbox.connect("primary") as conn:
            for _ in range(3):  # the statement exists before the first report
                conn.execute("SELECT count(*) FROM perf_probe WHERE id > %s", (1,))
        first = performance_report(cluster_block=cluster_block, params=params(state_dir))
        assert first.previous_at is None and "no previous report" in first.baseline_note
        assert first.statements_delta.since == "statistics reset"

        for _ in range(4):
            conn = sandbox.connect("primary")
            conn.execute("SET application_name = 'perf-idle-tx'")
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
            idle.append(conn)
        n = 7
        with sandbox.connect("primary") as conn:
            for i in range(n):
                conn.execute("SELECT count(*) FROM perf_probe WHERE id > %s", (i,))
        psql(sandbox, "primary", "DROP ROLE IF EXISTS perf_secret_probe")
        psql(sandbox, "primary", "CREATE ROLE perf_secret_probe PASSWORD 'sekrit-probe-pw'")  # tracked as is
        psql(sandbox, "primary", "DROP ROLE perf_secret_probe")
        truth_idle = {r[0] for r in psql(sandbox, "primary",
                      "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction' "
                      "AND application_name = 'perf-idle-tx'")}
        ancient = Path(state_dir) / "test-sandbox" / "20200101T000000Z.json"  # a copy past history_days (90)
        ancient.write_text((Path(state_dir) / first.stored_at).read_text())
        second = performance_report(cluster_block=cluster_block, params=params(state_dir, top_n=50))
    finally:
        for conn in idle:
            conn.close()
        psql(sandbox, "primary", "DROP TABLE IF EXISTS perf_probe")

    assert second.previous_at == first.started_at
    assert second.statements_delta.since == "previous report"
    probe = [s for s in second.statements_delta.statements if "FROM perf_probe WHERE id >" in s.query]
    assert len(probe) == 1 and probe[0].calls == n, probe
    assert len(truth_idle) == 4
    listed = {s.pid for s in second.connections.idle_in_transaction if s.application_name == "perf-idle-tx"}
    assert listed == truth_idle
    group = [g for g in second.connections.groups if g.application_name == "perf-idle-tx"]
    assert sum(g.idle_in_transaction for g in group) == 4
    assert second.connections.by_state()["idle in transaction"] >= 4
    assert second.check("connections").summary.count("idle in transaction") >= 1
    limits = psql(sandbox, "primary", "SELECT current_setting('max_connections')::int - "
                  "current_setting('superuser_reserved_connections')::int")[0][0]
    assert second.connections.limits.usable == limits
    no_negative_counts(deltas_of(second))

    # stored for the next run, published in the UI
    stored = json.loads((Path(state_dir) / "test-sandbox" / "latest.json").read_text())
    assert stored["started_at"].startswith(second.started_at.isoformat()[:19])
    assert (Path(state_dir) / second.stored_at).exists() and (Path(state_dir) / first.stored_at).exists()
    assert not ancient.exists() and second.history.startswith("1 stored report(s) older than 90 days removed")
    markdown = asyncio.run(_artifacts("performance-test-sandbox"))
    assert markdown and "Performance report of test-sandbox" in markdown[0].data
    assert "Top statements by total time" in markdown[0].data
    tables = asyncio.run(_artifacts("performance-test-sandbox-statements"))
    assert tables and tables[0].type == "table"
    # a password literal in a tracked statement never reaches the report, the store or the UI
    assert any("perf_secret_probe" in s.query for s in second.statements.statements)
    for text in (second.model_dump_json(), (Path(state_dir) / "test-sandbox" / "latest.json").read_text(),
                 markdown[0].data, str(tables[0].data)):
        assert "sekrit-probe-pw" not in text


def _quiet_counters(sandbox):
    return psql(sandbox, "primary", "SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = %s",
                (QUIET_DB,))[0]


def _stable_report(sandbox, cluster_block, state_dir):
    """Run the report while nothing touches the quiet database (an autovacuum worker visit, a late
    statistics flush); a retried run starts from the same stored snapshots as the first attempt."""
    saved = Path(tempfile.mkdtemp(prefix="report-state-")) / "state"
    if Path(state_dir).exists():
        shutil.copytree(state_dir, saved)
    for _ in range(5):
        before = _quiet_counters(sandbox)
        report = performance_report(cluster_block=cluster_block, params=params(state_dir))
        if _quiet_counters(sandbox) == before:
            shutil.rmtree(saved.parent, ignore_errors=True)
            return report, before
        shutil.rmtree(state_dir, ignore_errors=True)  # forget the attempt's snapshot: the next compares to the same
        if saved.exists():
            shutil.copytree(saved, state_dir)
        time.sleep(1.1)  # PostgreSQL flushes a backend's pending statistics at most once a second
    raise AssertionError("the quiet database kept changing")


def _wait_flushed(sandbox):
    """Backends flush their statistics when they exit: wait until the counters stop moving."""
    last = [None]

    def settled():
        now = _quiet_counters(sandbox)
        same, last[0] = now == last[0], now
        return same
    wait_for(settled, interval=0.3, what="quiet database statistics to settle")


def test_cache_hit_ratio_is_pg_stat_database_arithmetic(sandbox, cluster_block, extra_databases, state_dir):
    _wait_flushed(sandbox)
    first, (hit1, read1) = _stable_report(sandbox, cluster_block, state_dir)
    row = next(r for r in first.cache_delta if r.kind == "database" and r.name == QUIET_DB)
    assert (row.blks_hit, row.blks_read) == (hit1, read1)
    assert row.hit_ratio == pytest.approx(hit1 / (hit1 + read1), abs=1e-12)

    with sandbox.connect("primary", dbname=QUIET_DB) as conn:
        for _ in range(5):
            conn.execute("SELECT sum(length(pad)) FROM cache_probe").fetchone()
    _wait_flushed(sandbox)
    second, (hit2, read2) = _stable_report(sandbox, cluster_block, state_dir)
    row = next(r for r in second.cache_delta if r.kind == "database" and r.name == QUIET_DB)
    assert (row.blks_hit, row.blks_read) == (hit2 - hit1, read2 - read1)
    assert row.blks_hit > 0
    assert row.hit_ratio == pytest.approx((hit2 - hit1) / ((hit2 - hit1) + (read2 - read1)), abs=1e-12)
    assert not row.reset


def test_stats_reset_between_reports_is_detected_never_negative(sandbox, cluster_block, extra_databases,
                                                                 state_dir):
    with sandbox.connect("primary") as conn:
        for i in range(20):
            conn.execute("SELECT %s::int + 1 AS reset_probe", (i,))
    with sandbox.connect("primary", dbname=QUIET_DB) as conn:
        conn.execute("SELECT count(*) FROM cache_probe").fetchone()
    first = performance_report(cluster_block=cluster_block, params=params(state_dir))
    reset_before = first.statements.stats_reset
    psql(sandbox, "primary", "SELECT pg_stat_statements_reset()")
    with sandbox.connect("primary", dbname=QUIET_DB) as conn:
        conn.execute("SELECT pg_stat_reset()")  # this database's counters start again from zero
    with sandbox.connect("primary") as conn:
        conn.execute("SELECT %s::int + 1 AS reset_probe", (1,))
    second = performance_report(cluster_block=cluster_block, params=params(state_dir))

    assert second.statements.stats_reset > reset_before
    delta = second.statements_delta
    assert delta.reset_detected and delta.since == "statistics reset"
    probe = [s for s in delta.statements if "reset_probe" in s.query]
    assert probe and probe[0].calls == 1
    assert "reset" in second.check("statements").summary
    quiet = next(r for r in second.cache_delta if r.kind == "database" and r.name == QUIET_DB)
    assert quiet.reset
    no_negative_counts(deltas_of(second))


def test_trend_charts_from_two_stored_days_and_none_on_a_first_report(sandbox, cluster_block, slack, state_dir):
    """A first report says there is no trend yet; with two stored days of history the report embeds every chart as
    a data-URI SVG image, and the Slack digest links the run and the report's artifact page."""
    from prefect.artifacts import Artifact

    from tasks.report.charts import embedded_images

    first = performance_report(cluster_block=cluster_block, params=params(state_dir))
    first_md = Artifact.get("performance-test-sandbox").data
    assert "No trend yet: this is the first stored report" in first_md and not embedded_images(first_md)
    assert first.charts == []

    seed_report_history(state_dir, "test-sandbox", days=2)
    psql(sandbox, "primary", "CREATE TABLE IF NOT EXISTS perf_wal (n int)")
    psql(sandbox, "primary", "INSERT INTO perf_wal SELECT generate_series(1, 1000)")  # some WAL
    save_slack_block(slack, "slack-trends", "xoxb-ok-trends")
    third = performance_report(cluster_block=cluster_block, slack_block="slack-trends", params=params(state_dir))
    psql(sandbox, "primary", "DROP TABLE perf_wal")
    md = Artifact.get("performance-test-sandbox").data
    images = embedded_images(md)
    titles = [t for t, _, _ in images]
    assert titles == third.charts and "Connections by state" in titles and "WAL written per day" in titles
    assert {"Database size", "Cache hit ratio (since the report before)", "Oldest XID age (datfrozenxid)",
            "Database growth per day (all databases)"} <= set(titles)
    for title, media_type, data in images:
        assert media_type == "image/svg+xml" and ET.fromstring(data).tag.endswith("svg"), title
    assert "3 reports from" in md and "<svg" not in md
    parent = [c for c in slack.calls("chat.update", token="xoxb-ok-trends")][-1].raw
    assert "Flow run in Prefect" in parent
    assert "/artifacts/key/performance-test-sandbox|Report with trend charts" in parent


def test_pg_monitor_role_with_local_host_metrics_and_slack_digest(monitor_cluster_block, slack, state_dir):
    MetricsSource(kind="local").save("test-local-metrics", overwrite=True)
    save_slack_block(slack, "slack-perf", "xoxb-ok-perf")
    report = performance_report(cluster_block=monitor_cluster_block, slack_block="slack-perf",
                                params=params(state_dir, metrics_block="test-local-metrics"))
    unknown = [c.summary for c in report.checks if c.status == "unknown"]
    assert unknown == [], unknown
    assert {c.name for c in report.checks} == {
        "connections", "statements", "storage", "cache", "wraparound", "checkpoints", "io", "host"}
    assert report.storage.wal_bytes > 0 and report.statements.available
    assert report.host.source == "local" and 0 <= report.host.cpu_percent <= 100
    assert report.host.disk_path.endswith("primary")  # the data directory, read through SQL
    assert report.notification.ok and report.notification.delivered == 3
    posted = slack.calls("chat.postMessage", token="xoxb-ok-perf")
    assert "Performance report test-sandbox-monitor" in posted[0].body["text"]


def test_missing_extension_and_failing_source_leave_the_rest_reporting(sandbox, prefect_api, extra_databases,
                                                                       state_dir):
    block = sandbox_cluster_block(sandbox, name="perf-noext")
    PostgresCluster.model_validate({**block.model_dump(), "database": NOEXT_DB}).save("perf-noext", overwrite=True)
    MetricsSource(kind="prometheus", prometheus_url="http://127.0.0.1:9", instance="db1:9100",
                  timeout_seconds=1).save("test-dead-prometheus", overwrite=True)
    started = time.monotonic()
    report = performance_report(cluster_block="perf-noext",
                                params=params(state_dir, metrics_block="test-dead-prometheus"))
    statements = report.check("statements")
    assert statements.status == "unknown"
    assert "CREATE EXTENSION pg_stat_statements" in statements.summary
    assert report.statements_delta is None
    host = report.check("host")
    assert host.status == "unknown" and "unreachable" in host.summary
    assert all(report.check(n).status != "unknown" for n in ("connections", "storage", "cache", "wraparound",
                                                              "checkpoints"))
    # other tests of the session may leave warnings elsewhere: the overall status is the worst section,
    # and never "ok" while two sections could not report
    assert report.status != "ok"
    assert report.status == worst([c.status for c in report.checks])
    assert time.monotonic() - started < 60


def test_reports_can_live_in_a_filesystem_block(prefect_api, state_dir):
    from prefect.filesystems import LocalFileSystem

    from tasks.report.performance import PerformanceReport
    from tasks.report.store import ReportStoreError, load_previous, open_store, store_report

    LocalFileSystem(basepath=state_dir).save("perf-store", overwrite=True)
    report = PerformanceReport(cluster="c1", node="primary", started_at=datetime.now(UTC), summary="s")
    for name in ("perf-store", "local-file-system/perf-store"):
        assert load_previous.fn("", name, "c1", PerformanceReport)[0] is None
    path = store_report.fn("", "perf-store", "c1", report, report.started_at)
    assert (Path(state_dir) / path).exists()
    loaded, note = load_previous.fn("", "local-file-system/perf-store", "c1", PerformanceReport)
    assert note is None and loaded == report
    with pytest.raises(ReportStoreError, match="no-such-store"):
        open_store("", "no-such-store")


def test_a_role_without_pg_monitor_is_told_which_grant_is_missing(sandbox, prefect_api, state_dir):
    import secrets

    from pydantic import SecretStr

    password = secrets.token_urlsafe(12)
    psql(sandbox, "primary", "DROP ROLE IF EXISTS perf_plain")
    psql(sandbox, "primary", psycopg.sql.SQL("CREATE ROLE perf_plain LOGIN PASSWORD {}").format(
        psycopg.sql.Literal(password)))
    block = sandbox_cluster_block(sandbox, name="perf-plain")
    PostgresCluster.model_validate({**block.model_dump(), "user": "perf_plain"}).model_copy(
        update={"password": SecretStr(password)}).save("perf-plain", overwrite=True)
    try:
        report = performance_report(cluster_block="perf-plain", params=params(state_dir))
    finally:
        psql(sandbox, "primary", "DROP ROLE IF EXISTS perf_plain")
    storage = report.check("storage")
    assert storage.status == "unknown" and "pg_ls_waldir" in storage.summary and "pg_monitor" in storage.summary
    statements = report.check("statements")
    assert statements.status == "warning" and "pg_read_all_stats" in statements.summary
    assert report.check("wraparound").status == "ok" and report.check("connections").status == "ok"
    assert password not in report.model_dump_json()


def test_unreachable_primary_is_a_report_of_failed_sections_not_a_crash(sandbox, prefect_api, state_dir):
    from blocks.postgres_cluster import PostgresNode
    from sandbox.cluster import free_port

    block = sandbox_cluster_block(sandbox, name="perf-down")
    PostgresCluster.model_validate({**block.model_dump(), "cluster_name": "perf-down",
                                    "nodes": [PostgresNode(name="primary", host="127.0.0.1", port=free_port())]}
                                   ).save("perf-down", overwrite=True)
    report = performance_report(cluster_block="perf-down", params=params(state_dir))
    failed = {c.name for c in report.checks if c.status == "unknown"}
    assert failed == {"connections", "statements", "storage", "cache", "wraparound", "checkpoints", "io"}
    assert all("unreachable" in report.check(n).summary for n in failed)
    assert report.check("host").status == "ok" and report.status == "unknown"
    assert report.stored_at and (Path(state_dir) / report.stored_at).exists()


def test_report_store_that_cannot_be_opened_still_gives_a_report_without_deltas(cluster_block, slack, state_dir):
    from tasks.report.performance import PerformanceReport
    from tasks.report.store import load_previous

    previous, note = load_previous.fn("", "no-such-store", "c1", PerformanceReport)
    assert previous is None and "could not be read" in note and "no-such-store" in note

    blocker = Path(state_dir) / "a-file"
    blocker.write_text("not a directory")
    save_slack_block(slack, "slack-perf-nostore", "xoxb-ok-perf-nostore")
    report = performance_report(cluster_block=cluster_block, slack_block="slack-perf-nostore",
                                params=params(str(blocker / "reports")))
    assert report.previous_at is None and report.statements_delta.since == "statistics reset"
    assert report.baseline_note.startswith("the previous report could not be read")
    assert "Not a directory" in report.baseline_note and "no deltas" in report.baseline_note
    assert "the previous report could not be read" in report.summary
    assert report.store_error and report.stored_at is None
    assert all(c.status != "unknown" for c in report.checks), [c.summary for c in report.checks]
    markdown = max(asyncio.run(_artifacts(report.artifact_key)), key=lambda a: a.created).data  # this run's
    assert "the previous report could not be read" in markdown
    posted = slack.calls("chat.postMessage", token="xoxb-ok-perf-nostore")
    assert posted and "could not be read" in json.dumps(posted[0].body)


def test_wraparound_multixact_figures_match_postgres(sandbox):
    from tasks.report.performance import wraparound_check
    from tasks.report.wraparound import MXID_HARD_LIMIT, read_wraparound

    psql(sandbox, "primary", "CREATE TABLE IF NOT EXISTS perf_mxid (id int PRIMARY KEY)")
    psql(sandbox, "primary", "INSERT INTO perf_mxid VALUES (1) ON CONFLICT DO NOTHING")
    lockers = [psycopg.connect(sandbox.conninfo("primary")) for _ in range(2)]  # transactions, not autocommit
    try:
        for _ in range(3):  # two sessions share-locking one row make a multixact each time
            for conn in lockers:
                conn.execute("SELECT id FROM perf_mxid WHERE id = 1 FOR SHARE")
            for conn in lockers:
                conn.commit()
        snap = read_wraparound.fn(sandbox_cluster_block(sandbox).primary_target())
        truth = dict(psql(sandbox, "primary", "SELECT datname, mxid_age(datminmxid) FROM pg_database"))
        limit = int(psql(sandbox, "primary", "SELECT current_setting('autovacuum_multixact_freeze_max_age')")[0][0])
    finally:
        for conn in lockers:
            conn.close()
        psql(sandbox, "primary", "DROP TABLE IF EXISTS perf_mxid")
    assert {d.datname: d.mxid_age for d in snap.databases} == truth
    assert max(truth.values()) >= 3 and snap.multixact_freeze_max_age == limit
    check = wraparound_check("primary", snap, params("unused"))
    assert check.details["mxid_age"] == max(truth.values())
    assert check.details["mxid_share_of_freeze_max_age"] == round(max(truth.values()) / limit, 4)
    assert check.details["mxid_share_of_hard_limit"] == round(max(truth.values()) / MXID_HARD_LIMIT, 4)
    assert f"oldest multixact age {max(truth.values()):,}" in check.summary
