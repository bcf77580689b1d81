"""What every managed-provider backend (tasks/core/aurora.py, tasks/core/neon.py) returns: the exact request it
sends (or would send in a dry run) and the outcome of a scale-up."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field


class ApiRequest(BaseModel):
    """One provider call exactly as sent (never a credential: those travel in headers or signatures)."""

    service: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)

    def render(self) -> str:
        return f"{self.service} {self.operation} {json.dumps(self.params, sort_keys=True, default=str)}"


class ScaleResult(BaseModel):
    status: str  # planned | scaled | at_max | not_serverless
    summary: str
    before: float | None = None
    after: float | None = None
    request: str | None = Field(default=None, description="The exact API request (dry run or sent).")
    pending_reboot: list[str] = Field(default_factory=list)
    rebooted: list[str] = Field(default_factory=list)
