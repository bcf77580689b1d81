"""The trigger script shapes --cluster/--mode by the deployment's parameter schema (no server needed)."""

import pytest

from tools.trigger_runbook import TriggerError, runbook_parameters

FAILOVER = {"properties": {"request": {"$ref": "#/definitions/FailoverRequest"}}}
HEALTH = {"properties": {"cluster_block": {"type": "string"}, "thresholds": {}}}


def test_failover_gets_cluster_and_mode_inside_its_request_with_approval_on():
    params = runbook_parameters(FAILOVER, {"request": {"dry_run": True}}, "orders", "failover", approval=True)
    assert params == {"request": {"dry_run": True, "cluster_block": "orders", "mode": "failover",
                                  "require_approval": True, "confirm_cluster": "orders"}}


def test_cluster_on_the_command_line_confirms_it_unless_the_request_says_otherwise():
    """A real failover needs confirm_cluster (the UI form's typed confirmation): --cluster is the deliberate act of
    incident tooling, so it fills it; an explicit confirm_cluster in --param is kept (and checked by the flow)."""
    assert runbook_parameters(FAILOVER, {}, "orders", "switchover")["request"]["confirm_cluster"] == "orders"
    kept = runbook_parameters(FAILOVER, {"request": {"confirm_cluster": "payments"}}, "orders", None)
    assert kept["request"]["confirm_cluster"] == "payments"
    assert "confirm_cluster" not in runbook_parameters(FAILOVER, {"request": {"cluster_block": "x"}}, None, None)[
        "request"]


def test_an_explicit_require_approval_param_wins_and_no_approval_turns_it_off():
    explicit = runbook_parameters(FAILOVER, {"request": {"require_approval": False}}, "orders", None, approval=True)
    assert explicit["request"]["require_approval"] is False
    off = runbook_parameters(FAILOVER, {}, "orders", "switchover", approval=False)
    assert off["request"]["require_approval"] is False
    assert "require_approval" not in runbook_parameters(FAILOVER, {}, "orders", None)["request"]  # library default


def test_other_runbooks_take_cluster_block_and_refuse_a_mode():
    params = runbook_parameters(HEALTH, {"thresholds": {}}, "orders", None)
    assert params == {"thresholds": {}, "cluster_block": "orders"}
    with pytest.raises(TriggerError, match="failover runbook only"):
        runbook_parameters(HEALTH, {}, "orders", "failover")
    with pytest.raises(TriggerError, match="no cluster_block"):
        runbook_parameters({"properties": {"rules_file": {}}}, {}, "orders", None)
