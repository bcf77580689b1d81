"""Fleets: membership (listed, prefix, tags, excluded), and a runbook over a fleet with one child run per cluster,
a cluster that is down and one whose block is missing, the summary artifact and the Slack digest."""

from __future__ import annotations

import time

import pytest

from blocks.fleet import Fleet
from sandbox.blocks import sandbox_cluster_block
from sandbox.cluster import free_port
from tasks.core import fleet as fleet_core
from tests.helpers import save_slack_block


@pytest.fixture(scope="module")
def fleet_blocks(sandbox, prefect_api):
    """Three cluster blocks over the shared sandbox (two tagged 'tier-1') and one whose nodes listen nowhere."""
    for name, tags in (("fl-a", ["tier-1"]), ("fl-b", ["tier-1", "eu"]), ("fl-c", [])):
        block = sandbox_cluster_block(sandbox, name=name)
        block.tags = tags
        block.save(name, overwrite=True)
    down = sandbox_cluster_block(sandbox, name="fl-down")
    for node in down.nodes:
        node.port = free_port()
    down.connect_timeout = 1
    down.tags = ["tier-1"]
    down.save("fl-down", overwrite=True)
    Fleet(name_prefix="fl-", exclude=["fl-c"], max_parallel=2).save("fl-prefix", overwrite=True)
    Fleet(tags=["tier-1"]).save("fl-tier1", overwrite=True)
    Fleet(members=["fl-a", "fl-missing"]).save("fl-listed", overwrite=True)
    return ["fl-a", "fl-b", "fl-c", "fl-down"]


def test_membership_by_prefix_tags_members_and_exclusions(fleet_blocks):
    assert fleet_core.resolve_fleet(Fleet.load("fl-prefix")) == ["fl-a", "fl-b", "fl-down"]
    assert fleet_core.resolve_fleet(Fleet.load("fl-tier1")) == ["fl-a", "fl-b", "fl-down"]
    assert fleet_core.resolve_fleet(Fleet(tags=["tier-1", "eu"])) == ["fl-b"]
    assert fleet_core.resolve_fleet(Fleet.load("fl-listed")) == ["fl-a", "fl-missing"]  # listed: kept as given
    assert fleet_core.resolve_fleet(None, ["fl-c"], cluster_group="fl-d") == ["fl-c", "fl-down"]
    with pytest.raises(fleet_core.EmptyFleet, match="selects no PostgresCluster block"):
        fleet_core.resolve_fleet(Fleet(name_prefix="no-such-"), fleet_name="empty")
    with pytest.raises(ValueError, match="would select no cluster"):
        Fleet()


def test_health_check_over_a_fleet_one_run_per_cluster_none_hidden(fleet_blocks, slack, fake_slack):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from flows.fleet import fleet

    slack_block = save_slack_block(fake_slack, "fl-slack", "xoxb-fleet")
    report = fleet(runbook="health-check", fleet_block="fl-prefix", cluster_blocks=["fl-missing"],
                   slack_block=slack_block)
    by = {m.cluster: m for m in report.members}
    assert list(by) == ["fl-missing", "fl-a", "fl-b", "fl-down"]
    assert by["fl-a"].status == by["fl-b"].status == "ok", (by["fl-a"], by["fl-b"])
    assert by["fl-down"].status == "critical" and "unreachable" in by["fl-down"].summary.lower()
    assert by["fl-missing"].status == "failed" and "fl-missing" in by["fl-missing"].summary
    assert report.status == "critical"
    assert "4 cluster(s)" in report.summary and "1 failed" in report.summary

    with get_client(sync_client=True) as client:  # each cluster: its own run of the runbook, a child of the fleet
        for cluster in ("fl-a", "fl-down", "fl-missing"):
            run = client.read_flow_run(by[cluster].flow_run_id)
            assert run.name == f"health-check · {cluster}"
            assert run.parent_task_run_id is not None
        # filtered reads: the session's server holds more artifacts than one unfiltered page
        runs = [by[c].flow_run_id for c in ("fl-a", "fl-down")]
        by_run = {}
        for art in client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs))):
            by_run.setdefault(str(art.flow_run_id), set()).add(art.key)
        fleet_arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fleet-health-check-fl-prefix"])))
    assert "health-fl-a" in by_run[str(by["fl-a"].flow_run_id)]  # the cluster's own report, in its own run
    assert "health-fl-down" in by_run[str(by["fl-down"].flow_run_id)]
    assert fleet_arts, "the fleet run's summary artifact"

    posts = [p.body for p in fake_slack.calls("chat.postMessage", token="xoxb-fleet")]
    digest = [p for p in posts if "over fl-prefix" in p.get("text", "") and not p.get("thread_ts")]
    assert len(digest) == 1
    replies = [p["text"] for p in posts if p.get("thread_ts") and p["text"].startswith("fl-")]
    assert sorted(r.split(":")[0] for r in replies) == ["fl-down", "fl-missing"]  # what is not ok, in the thread
    assert any(r.startswith("fl-down: CRITICAL") for r in replies)
    assert any(r.startswith("fl-missing: FAILED") for r in replies)


def test_a_hung_cluster_is_abandoned_as_timed_out_and_the_others_finish(monkeypatch):
    monkeypatch.setattr(fleet_core, "GRACE_SECONDS", 0.0)
    started: list[str] = []

    def launch(cluster: str) -> fleet_core.MemberResult:
        started.append(cluster)
        if cluster == "hung":
            time.sleep(30)
        if cluster == "broken":
            raise RuntimeError("block could not be loaded")
        return fleet_core.MemberResult(cluster=cluster, status="ok", summary="fine")

    out = fleet_core.run_members(["hung", "broken", "a", "b", "c"], launch, max_parallel=2, timeout_seconds=0.5)
    assert [m.status for m in out] == ["timed-out", "failed", "ok", "ok", "ok"]
    assert "RuntimeError: block could not be loaded" in out[1].summary
    assert sorted(started) == ["a", "b", "broken", "c", "hung"]


def test_bounded_parallelism():
    import threading

    live, peak, lock = [0], [0], threading.Lock()

    def launch(cluster: str) -> fleet_core.MemberResult:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        return fleet_core.MemberResult(cluster=cluster, status="ok")

    out = fleet_core.run_members([f"c{i}" for i in range(12)], launch, max_parallel=3, timeout_seconds=60)
    assert len(out) == 12 and peak[0] <= 3


def test_summary_and_digest_order_worst_first():
    report = fleet_core.started_now("vacuum", "prod")
    report.members = [fleet_core.MemberResult(cluster=c, status=s, summary=f"{c} said")
                      for c, s in (("a", "ok"), ("b", "warning"), ("c", "timed-out"), ("d", "failed"))]
    fleet_core.finish(report)
    assert report.status == "critical"
    assert [m.cluster for m in report.not_ok] == ["d", "c", "b"]
    md = fleet_core.render_markdown(report)
    assert md.index("| d |") < md.index("| c |") < md.index("| b |") < md.index("| a |")


def test_the_alert_monitor_watches_a_fleet_block_and_cluster_group_still_works(fleet_blocks):
    from flows.alert_monitor import alert_monitor
    from tasks.alerts.monitor import MonitorParams, resolve_clusters

    report = alert_monitor(cluster_blocks=[], fleet_block="fl-tier1", params=MonitorParams(deadline_seconds=5))
    assert sorted(c.block for c in report.clusters) == ["fl-a", "fl-b", "fl-down"]
    assert resolve_clusters(["fl-c"], "fl-d") == ["fl-c", "fl-down"]
    assert resolve_clusters([], "no-such-prefix-") == []  # an empty group: nothing to watch, not an error


def test_nightly_vacuum_over_a_fleet_runs_the_async_flow_per_cluster(fleet_blocks):
    """The vacuum flow is async (flows/vacuum.py): each cluster's child run still runs to its end and reports."""
    from flows.fleet import fleet

    report = fleet(runbook="vacuum", cluster_blocks=["fl-a", "fl-b"],
                   parameters={"params": {"dry_run": True}})
    by = {m.cluster: m for m in report.members}
    assert set(by) == {"fl-a", "fl-b"}
    assert all(m.status in ("ok", "warning") and m.flow_run_id for m in by.values()), by
