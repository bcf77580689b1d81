"""prefect.yaml: every key is one Prefect knows (it silently ignores misspelled ones), every
entrypoint imports, every parameter is one the flow accepts and validates."""

import importlib
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import (
    ConcurrencyLimitSpec,
    DeploymentConfig,
    PrefectYamlModel,
    RawScheduleConfig,
    WorkPoolConfig,
)
from prefect.flows import Flow

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = CONFIG["deployments"]
TOP_KEYS = {f.alias or name for name, f in PrefectYamlModel.model_fields.items()} | {"definitions"}


def _unknown(keys, model) -> set:
    known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    return set(keys) - known


def load_flow(entrypoint: str) -> Flow:
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert isinstance(flow, Flow), entrypoint
    return flow


def test_top_level_keys_are_known():
    assert set(CONFIG) <= TOP_KEYS, set(CONFIG) - TOP_KEYS
    PrefectYamlModel.model_validate(CONFIG)


def test_pull_step_sets_the_working_directory_at_run_time():
    (step,) = CONFIG["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PG_RUNBOOKS_HOME }}"}}


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_keys_are_known(deployment):
    assert not _unknown(deployment, DeploymentConfig), _unknown(deployment, DeploymentConfig)
    assert not _unknown(deployment["work_pool"], WorkPoolConfig)
    assert deployment["work_pool"]["name"] == "pg-runbooks"
    for schedule in deployment.get("schedules") or []:
        assert not _unknown(schedule, RawScheduleConfig), schedule
        RawScheduleConfig.model_validate(schedule)
    limit = deployment.get("concurrency_limit")
    if isinstance(limit, dict):
        assert not _unknown(limit, ConcurrencyLimitSpec)
        assert limit["collision_strategy"] in {"ENQUEUE", "CANCEL_NEW"}
    for trigger in deployment.get("triggers") or []:  # the trigger models ignore unknown keys: check them here
        from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

        assert not _unknown(trigger, DeploymentEventTrigger), _unknown(trigger, DeploymentEventTrigger)
        DeploymentEventTrigger.model_validate(trigger)
    DeploymentConfig.model_validate(deployment)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_imports_and_parameters_validate(deployment):
    flow = load_flow(deployment["entrypoint"])
    params = deployment.get("parameters") or {}
    accepted = set(flow.parameters.properties)
    assert set(params) <= accepted, set(params) - accepted
    flow.validate_parameters(params)  # raises on a value the flow's schema refuses
    assert deployment.get("description"), "the UI shows this to the on-call engineer"


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_every_run_form_field_has_a_description(deployment):
    """The UI form shows each top-level parameter's description (from the flow's `Args:` docstring)."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(load_flow(deployment["entrypoint"]).fn).model_dump()
    missing = [name for name, prop in schema["properties"].items() if not prop.get("description")]
    assert not missing, f"{deployment['entrypoint']}: no description for {missing}"


def test_deployment_names_are_unique():
    names = [(load_flow(d["entrypoint"]).name, d["name"]) for d in DEPLOYMENTS]
    assert len(names) == len(set(names))


def test_the_failover_backstop_watches_failover_runs_heartbeats():
    """A failover run heartbeats every 30 s; the backstop fires when one goes silent for 90 s (three beats)."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    by_name = {d["name"]: d for d in DEPLOYMENTS}
    assert by_name["failover"]["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    silent, crashed = by_name["failover-crash-alert"]["triggers"]
    model = DeploymentEventTrigger.model_validate(silent)
    assert model.posture == "Proactive" and model.within.total_seconds() == 90
    assert model.after == {"prefect.flow-run.heartbeat"} and "prefect.flow-run.Completed" in model.expect
    reactive = DeploymentEventTrigger.model_validate(crashed)
    assert reactive.posture == "Reactive" and reactive.expect == {"prefect.flow-run.Crashed"}
    for trigger in (silent, crashed):
        assert trigger["match_related"] == {"prefect.resource.role": "flow", "prefect.resource.name": "failover"}
        assert trigger["parameters"]["flow_run_id"] == "{{ event.resource.id }}"
