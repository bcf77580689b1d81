"""prefect.yaml: every scheduled runbook runs over the fleet, its per-cluster parameters validate against the runbook
itself, an on-demand one-cluster deployment exists beside it, and failovers of two clusters are not serialized."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.fleet import FLOWS, fleet
from tasks.core.fleet import for_cluster

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
SCHEDULED = {n: d for n, d in DEPLOYMENTS.items() if d.get("schedules")}


def test_every_scheduled_runbook_runs_over_the_fleet():
    assert set(SCHEDULED) == {"health-check-fleet", "performance-report-daily", "troubleshoot-connections-daily",
                              "troubleshoot-performance-daily", "vacuum-nightly", "bloat-analysis-weekly",
                              "index-maintenance-weekly", "alert-monitor"}
    for name, d in SCHEDULED.items():
        if name == "alert-monitor":  # the monitor reads the fleet itself (one evaluation per minute)
            assert d["parameters"]["fleet_block"] == "fleet"
            continue
        assert d["entrypoint"] == "flows/fleet.py:fleet", name
        assert d["parameters"]["fleet_block"] == "fleet", name
    assert {d["parameters"]["runbook"] for n, d in SCHEDULED.items() if n != "alert-monitor"} == set(FLOWS)


@pytest.mark.parametrize("name", [n for n in SCHEDULED if n != "alert-monitor"])
def test_fleet_parameters_validate_against_the_runbook_for_a_cluster(name):
    params = SCHEDULED[name]["parameters"]
    fleet.validate_parameters(params)
    runbook = FLOWS[params["runbook"]]
    validated = runbook.validate_parameters(for_cluster(params.get("parameters") or {}, "prod-7"))
    assert validated["cluster_block"] == "prod-7"
    on_demand = [d for d in DEPLOYMENTS.values() if d["entrypoint"].endswith(f":{runbook.fn.__name__}")]
    assert on_demand and not any(d.get("schedules") for d in on_demand), "on demand, one cluster, as before"


def test_cluster_placeholder_is_filled_per_cluster():
    out = for_cluster({"params": {"metrics_block": "{cluster}-host", "tables": ["a"]}, "n": 3}, "pg-eu")
    assert out == {"params": {"metrics_block": "pg-eu-host", "tables": ["a"]}, "n": 3, "cluster_block": "pg-eu"}


def test_failovers_of_two_clusters_are_not_serialized_by_the_deployment():
    """Two failovers of one cluster stay impossible through the run's own per-cluster slot and advisory lock
    (tests/failover/test_failover.py); the deployment-wide one-at-a-time limit is gone."""
    assert "concurrency_limit" not in DEPLOYMENTS["failover"]
