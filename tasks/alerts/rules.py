"""Alert rules (runbook 5.1): threshold, duration, action, as a validated YAML file.

Prometheus alerting rules are the model: a rule fires when its condition held at every
evaluation for the whole `for:` duration. A bad file is rejected at load with the line and
field of each mistake (RuleFileError); the caller keeps the previous valid rules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

Metric = Literal["cpu_usage_percent", "disk_usage_percent", "connection_usage_percent", "replication_lag_seconds"]
Action = Literal["notify_team", "notify_dba", "scale_connections", "cleanup_data", "high_load_response"]
# Actions that start a runbook (a deployment run) besides notifying.
RUNBOOK_ACTIONS = ("scale_connections", "cleanup_data", "high_load_response")
Severity = Literal["info", "warning", "critical"]

METRICS: dict[str, dict[str, Any]] = {
    "cpu_usage_percent": {"unit": "%", "max": 100, "what": "CPU usage of the primary's host"},
    "disk_usage_percent": {"unit": "%", "max": 100, "what": "disk usage of the data directory's filesystem"},
    "connection_usage_percent": {"unit": "%", "max": 100,
                                 "what": "client connections against usable slots (max_connections - reserved)"},
    "replication_lag_seconds": {"unit": "s", "max": None, "what": "replay lag of each replica seen by the primary"},
}

# Runbook 5.2: the response procedure of each action, shown as a checklist in the alert.
DEFAULT_RESPONSES: dict[str, list[str]] = {
    "notify_team": [
        "Check the top queries by CPU (pg_stat_statements, the daily report).",
        "Look for a new deployment, a batch job or a missing index behind the load.",
        "Cancel runaway queries only with the owning team's agreement.",
        "If it persists, scale the host or move read traffic to replicas.",
    ],
    "scale_connections": [
        "Check pg_stat_activity for idle-in-transaction sessions and their applications.",
        "The connection remediation flow terminates stale sessions (dry run until turned on).",
        "Check the pooler (pgbouncer) pool sizes and client counts.",
        "Raise max_connections only with a restart plan and memory headroom.",
    ],
    "notify_dba": [
        "Check the replica's receiver and replay (health check, pg_stat_wal_receiver).",
        "Look for long queries on the replica (replay conflicts) and replay pause.",
        "Check network and disk I/O between primary and replica.",
        "If the lag keeps growing, take the replica out of read traffic.",
    ],
    "high_load_response": [
        "The high-load response flow surveys the sessions, ends long queries and old idle transactions,",
        "resolves lock chains and asks the scaler (dry run unless its params turn dry_run off).",
        "Read its audit: who was cancelled or terminated, and the lock chains it found.",
        "If the load persists after the response, find its source (report, troubleshooter) and scale.",
    ],
    "cleanup_data": [
        "Read the disk-pressure report: inactive slots, archiver failures, temp files, largest relations.",
        "Fix the archiver or drop an abandoned slot only after confirming its consumer is gone.",
        "Purge data only as the retention policy allows.",
        "Grow the volume before it reaches 95%.",
    ],
}

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: Any) -> float:
    """'5m', '1h30m', '300s', '10s', 0 or a number of seconds -> seconds (Prometheus-style units)."""
    if isinstance(value, bool):
        raise ValueError(f"duration must look like 30s, 5m, 1h30m; got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative; got {value}")
        return float(value)
    text = str(value).strip()
    match = _DURATION.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"duration must look like 30s, 5m, 1h30m; got {value!r}")
    d, h, m, s = (int(g or 0) for g in match.groups())
    return float(((d * 24 + h) * 60 + m) * 60 + s)


def format_duration(seconds: float) -> str:
    """300 -> '5m', 5400 -> '1h30m', 2 -> '2s'."""
    seconds = int(round(seconds))
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


class AlertRule(BaseModel):
    """One rule: fire when `metric` is above `threshold` at every evaluation for `for`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="Rule name, e.g. high_cpu.")
    metric: Metric = Field(description="What is measured.")
    threshold: float = Field(ge=0, description="Fires above this value (a plain number: 80, not '80%').")
    for_seconds: float = Field(alias="for", ge=0, le=7 * 86_400, description="How long it must hold, e.g. 5m.")
    action: Action = Field(description="What happens when it fires.")
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels of the alert.")
    response: list[str] | None = Field(default=None, description="Response checklist (default: runbook 5.2).")

    @field_validator("threshold", mode="before")
    @classmethod
    def _plain_number(cls, value: Any) -> Any:
        if isinstance(value, str):
            hint = value.strip().rstrip("%s ").strip()
            raise ValueError(f"threshold must be a plain number (write {hint or 80}, not {value!r})")
        if isinstance(value, bool):
            raise ValueError("threshold must be a number, not true/false")
        return value

    @field_validator("for_seconds", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("threshold", mode="after")
    @classmethod
    def _within_metric_range(cls, value: float, info: ValidationInfo) -> float:
        metric = info.data.get("metric")
        top = METRICS[metric]["max"] if metric in METRICS else None
        if top is not None and value > top:
            raise ValueError(f"threshold {value:g} is above {top} for {metric} (a percentage)")
        return value

    @property
    def checklist(self) -> list[str]:
        return self.response if self.response is not None else DEFAULT_RESPONSES[self.action]

    @property
    def unit(self) -> str:
        return METRICS[self.metric]["unit"]

    def breached(self, value: float) -> bool:
        return value > self.threshold


class RuleSettings(BaseModel):
    """How alerts are delivered, for every rule of the file."""

    model_config = ConfigDict(extra="forbid")

    renotify_seconds: float = Field(default=4 * 3600, alias="renotify_interval", ge=60,
                                    description="Repeat a firing alert this often (default 4h).")
    no_data_for_seconds: float = Field(default=120, alias="no_data_for", ge=0,
                                       description="No data for this long is its own alert.")
    stale_after_seconds: float = Field(default=600, alias="stale_after", ge=60,
                                       description="A pending timer not evaluated for this long starts over.")
    no_data_action: Action = "notify_dba"

    @field_validator("renotify_seconds", "no_data_for_seconds", "stale_after_seconds", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class RuleSet(BaseModel):
    """A whole rule file: settings and rules (unique names)."""

    model_config = ConfigDict(extra="forbid")

    settings: RuleSettings = Field(default_factory=RuleSettings)
    rules: list[AlertRule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return self

    def compact(self) -> dict[str, Any]:
        """The smallest JSON form that loads back to the same rules (for a Prefect Variable)."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)


DEFAULT_RULES_YAML = """\
# The runbook's four alert rules (section 5.1). `for:` as in Prometheus: the condition must
# hold at every evaluation for the whole duration. Thresholds are plain numbers.
settings:
  renotify_interval: 4h
  no_data_for: 2m
rules:
  - name: high_cpu
    metric: cpu_usage_percent
    threshold: 80
    for: 5m
    action: notify_team
    severity: warning
  - name: connection_limit
    metric: connection_usage_percent
    threshold: 80
    for: 5m
    action: scale_connections
    severity: critical
  - name: replication_lag
    metric: replication_lag_seconds
    threshold: 300
    for: 5m
    action: notify_dba
    severity: critical
  - name: disk_usage
    metric: disk_usage_percent
    threshold: 85
    for: 10m
    action: cleanup_data
    severity: critical
"""


class RuleFileError(ValueError):
    """A rule file was rejected; `problems` are 'line N, field: message' strings."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(
            f"invalid alert rules in {source}: " + "; ".join(problems)
            + " — fix the file")


def default_rules() -> RuleSet:
    return parse_rules(DEFAULT_RULES_YAML, "built-in defaults")


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate a rule file; RuleFileError names the line and field of each problem."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RuleFileError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "somewhere"
        raise RuleFileError(source, [f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(data, dict):
        raise RuleFileError(source, ["line 1: the file must be a mapping with a 'rules:' list"])
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        raise RuleFileError(source, [_describe(err, node, data) for err in exc.errors()]) from None


def _describe(err: dict[str, Any], root: yaml.Node | None, data: Any) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    line = _line_of(root, loc)
    field = ".".join(str(p) for p in loc) or "file"
    rule = _rule_name(data, loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error" and loc and loc[-1] == "metric":
        message = f"unknown metric {err.get('input')!r}; known: {', '.join(METRICS)}"
    elif err["type"] == "literal_error" and loc and loc[-1] in ("action", "no_data_action"):
        message = f"unknown action {err.get('input')!r}; known: {', '.join(DEFAULT_RESPONSES)}"
    elif err["type"] == "extra_forbidden":
        message = "unknown field (misspelled?)"
    where = f"line {line}" if line else "line ?"
    return f"{where}, {field}{f' (rule {rule})' if rule else ''}: {message}"


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """1-based line of the YAML node at `loc` (or of its closest existing parent)."""
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            key = "for" if part == "for_seconds" else part
            found = next(((k, v) for k, v in node.value if k.value == key), None)
            if found is None:
                break
            node = found[1]
            best = found[0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            break
    return best


def _rule_name(data: Any, loc: list[Any]) -> str | None:
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = data.get("rules") if isinstance(data, dict) else None
        if isinstance(rules, list) and loc[1] < len(rules) and isinstance(rules[loc[1]], dict):
            return rules[loc[1]].get("name")
    return None
