"""The maintenance deployments in prefect.yaml: known keys, cron schedules, entrypoints whose
parameters (pydantic models) render as a UI form and accept the deployment's parameters."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.cli.deploy._models import ConcurrencyLimitSpec, DeploymentConfig, RawScheduleConfig
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"vacuum", "bloat-analysis", "index-maintenance"}  # on demand, one cluster
FLEET_NAMES = {"vacuum-nightly": "vacuum", "bloat-analysis-weekly": "bloat-analysis",
               "index-maintenance-weekly": "index-maintenance"}  # scheduled, over the fleet (tests/fleet)


def test_maintenance_deployments_are_well_formed():
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert NAMES | set(FLEET_NAMES) <= set(deployments)
    for name, runbook in FLEET_NAMES.items():
        assert deployments[name]["entrypoint"] == "flows/fleet.py:fleet"
        assert deployments[name]["parameters"]["runbook"] == runbook
    for name in NAMES:
        d = deployments[name]
        unknown = set(d) - set(DeploymentConfig.model_fields) - {"schedules", "concurrency_limit"}
        assert not unknown, (name, unknown)
        for s in d.get("schedules", []):
            assert set(s) <= set(RawScheduleConfig.model_fields), s
            assert s.get("cron") and s.get("timezone")
        if isinstance(d.get("concurrency_limit"), dict):
            ConcurrencyLimitSpec.model_validate(d["concurrency_limit"])
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        schema = parameter_schema(flow).model_dump()
        assert {"cluster_block", "params"} <= set(schema["properties"]), name
        flow.validate_parameters(d["parameters"])
    assert "window_minutes" in str(parameter_schema(load_flow_from_entrypoint(
        str(ROOT / "flows/vacuum.py:vacuum"))).model_dump())
