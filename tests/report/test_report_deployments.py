"""The report and troubleshooter deployments in prefect.yaml load, and their parameters render as forms."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[2]
OURS = {"performance-report": "params", "troubleshoot-connections": "rules", "troubleshoot-performance": "rules"}


def test_deployments_have_schedules_and_forms():
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    daily = deployments["performance-report-daily"]  # over the fleet, daily; on demand: one cluster, no schedule
    assert daily["schedules"] == [{"cron": "0 6 * * *", "timezone": "UTC"}]
    assert daily["entrypoint"] == "flows/fleet.py:fleet" and daily["parameters"]["runbook"] == "performance-report"
    assert "schedules" not in deployments["performance-report"]
    for kind in ("connections", "performance"):  # on demand, and daily before the report (a day since the last)
        assert "schedules" not in deployments[f"troubleshoot-{kind}"]
        daily = deployments[f"troubleshoot-{kind}-daily"]
        assert daily["schedules"] == [{"cron": "45 5 * * *", "timezone": "UTC"}]
        assert daily["entrypoint"] == "flows/fleet.py:fleet"
        assert daily["parameters"]["runbook"] == f"troubleshoot-{kind}"
    for name, model_param in OURS.items():
        flow = load_flow_from_entrypoint(str(ROOT / deployments[name]["entrypoint"]))
        validated = flow.validate_parameters(deployments[name].get("parameters", {}))
        assert validated["cluster_block"] == "sandbox"
        schema = parameter_schema(flow).model_dump_for_openapi()
        assert {"cluster_block", "slack_block", model_param} <= set(schema["properties"]), name
        definition = next(iter(schema["definitions"].values()))
        bounded = [p for p in definition["properties"].values() if "minimum" in p or "exclusiveMinimum" in p]
        assert bounded and all("description" in p for p in definition["properties"].values()), name


def test_report_deployment_uses_the_sandbox_host_source():
    from flows.performance_report import performance_report

    deployment = next(d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
                      if d["name"] == "performance-report")
    params = performance_report.validate_parameters(deployment["parameters"])["params"]
    assert params.metrics_block == "sandbox-host" and params.top_n == 10
