"""Alert rule files: the shipped defaults, and bad rules rejected with line and field."""

from pathlib import Path

import pytest

from tasks.alerts.rules import (
    DEFAULT_RESPONSES,
    RuleFileError,
    RuleSet,
    default_rules,
    format_duration,
    load_rules,
    parse_duration,
    parse_rules,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_runbooks_four_rules_are_the_defaults():
    rules = {r.name: r for r in default_rules().rules}
    assert {n: (r.metric, r.threshold, r.for_seconds, r.action) for n, r in rules.items()} == {
        "high_cpu": ("cpu_usage_percent", 80, 300, "notify_team"),
        "connection_limit": ("connection_usage_percent", 80, 300, "scale_connections"),
        "replication_lag": ("replication_lag_seconds", 300, 300, "notify_dba"),
        "disk_usage": ("disk_usage_percent", 85, 600, "cleanup_data"),
    }
    assert rules["connection_limit"].checklist == DEFAULT_RESPONSES["scale_connections"]
    assert default_rules().settings.renotify_seconds == 4 * 3600


def test_shipped_rule_file_equals_the_defaults():
    assert load_rules(ROOT / "config" / "alert_rules.yaml") == default_rules()


def test_compact_form_round_trips():
    rules = default_rules()
    assert RuleSet.model_validate(rules.compact()) == rules


@pytest.mark.parametrize("text,seconds", [("5m", 300), ("10m", 600), ("300s", 300), ("1h30m", 5400),
                                          ("2s", 2), (0, 0), (90, 90), ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_format_duration():
    assert [format_duration(s) for s in (300, 5400, 2, 0)] == ["5m", "1h30m", "2s", "0s"]


BAD = """\
rules:
  - name: ok_rule
    metric: cpu_usage_percent
    threshold: 80
    for: 5m
    action: notify_team
  - name: bad_metric
    metric: cpu_percent
    threshold: 80
    for: 5m
    action: notify_team
  - name: negative
    metric: connection_usage_percent
    threshold: -1
    for: 5m
    action: notify_dba
  - name: percent_string
    metric: disk_usage_percent
    threshold: "80%"
    for: 5m
    action: cleanup_data
  - name: bad_action
    metric: disk_usage_percent
    threshold: 80
    for: 5m
    action: page_everyone
  - name: bad_duration
    metric: replication_lag_seconds
    threshold: 300
    for: five minutes
    action: notify_dba
"""


def test_bad_rules_name_line_and_field():
    with pytest.raises(RuleFileError) as caught:
        parse_rules(BAD, "rules.yaml")
    problems = caught.value.problems
    text = "\n".join(problems)
    assert len(problems) == 5, text
    assert "line 8, rules.1.metric (rule bad_metric): unknown metric 'cpu_percent'" in text
    assert "line 14, rules.2.threshold (rule negative)" in text and "greater than or equal to 0" in text
    assert "line 19, rules.3.threshold (rule percent_string): threshold must be a plain number (write 80" in text
    assert "line 26, rules.4.action (rule bad_action): unknown action 'page_everyone'" in text
    assert "line 30, rules.5.for (rule bad_duration): duration must look like" in text
    assert str(caught.value).endswith("— fix the file")  # what stays in force is the monitor's to say


def test_misspelled_key_percentage_over_100_and_duplicates():
    with pytest.raises(RuleFileError) as caught:
        parse_rules("rules:\n  - name: a\n    metric: cpu_usage_percent\n    threshold: 180\n    for: 1m\n"
                    "    action: notify_team\n    severty: critical\n  - name: a\n    metric: cpu_usage_percent\n"
                    "    threshold: 80\n    for: 1m\n    action: notify_team\n")
    text = "\n".join(caught.value.problems)
    assert "line 7, rules.0.severty (rule a): unknown field" in text
    assert "above 100" in text


def test_not_yaml_and_missing_file():
    with pytest.raises(RuleFileError, match="line 3: not valid YAML"):
        parse_rules("rules:\n  - name: [unclosed\n")
    with pytest.raises(RuleFileError, match="cannot read the file"):
        load_rules("/nonexistent/rules.yaml")


def test_prefect_yaml_deploys_the_monitor_every_minute_and_actions_on_demand():
    import importlib

    import yaml

    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert deployments["alert-monitor"]["schedules"] == [{"interval": 60}]
    assert "schedules" not in deployments["connection-remediation"] and "schedules" not in deployments["disk-pressure"]
    for name in ("alert-monitor", "connection-remediation", "disk-pressure"):
        d = deployments[name]
        path, func = d["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        flow = getattr(importlib.import_module(module), func)
        assert flow.name == name  # run_deployment("<flow>/<deployment>") relies on it
        flow.validate_parameters(d.get("parameters", {}))
    assert deployments["connection-remediation"]["parameters"]["params"]["dry_run"] is True
    assert load_rules(ROOT / deployments["alert-monitor"]["parameters"]["params"]["rules_file"]) == default_rules()
