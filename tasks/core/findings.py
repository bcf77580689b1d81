"""The shared vocabulary of results: a status, a finding with a one-sentence summary."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["ok", "warning", "critical", "unknown"]
SEVERITY = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}


class Check(BaseModel):
    """One check of one node: a status and the sentence an operator reads."""

    name: str = Field(description="What was checked, e.g. 'connectivity', 'replication'.")
    node: str = Field(description="The node the check is about ('cluster' when it spans nodes).")
    status: Status
    summary: str = Field(description="One plain-English sentence.")
    details: dict[str, Any] = Field(default_factory=dict)


def worst(statuses: list[Status]) -> Status:
    """The most severe status of a list (ok for an empty list)."""
    return max(statuses, key=SEVERITY.__getitem__, default="ok")


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def md_cell(value: Any) -> str:
    """A value made safe for one markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ").replace("`", "'")
