"""The NeonEndpoint block: one Neon compute endpoint and the limits within which pg-runbooks may act on it.
Configuration only: the calls live in tasks/core/neon.py. Only this block reads the API key."""

from __future__ import annotations

from typing import ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

CU_STEP = 0.25
CU_MAX_AUTOSCALED = 16.0
CU_MAX_SPREAD = 8.0


class NeonEndpoint(Block):
    """A Neon compute endpoint reached through the Neon API v2."""

    _block_type_name = "Neon Endpoint"
    _block_type_slug = "neon-endpoint"
    _description = "pg-runbooks on Neon: scale a compute endpoint's autoscaling range, restart it, read its state."
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks/blob/main/docs/providers/neon.md"
    kind: ClassVar[Literal["neon"]] = "neon"

    api_key: SecretStr = Field(description="Neon API key (a project-scoped key is enough: docs/providers/neon.md).")
    project_id: str = Field(description="Neon project id, e.g. 'polished-sun-123456'.", min_length=1)
    endpoint_id: str = Field(description="Compute endpoint id, e.g. 'ep-cool-darkness-123456'.", min_length=1)
    base_url: str = Field(default="https://console.neon.tech/api/v2", pattern=r"^https?://",
                          description="API base URL (a local stand-in in tests).")
    scale_step_cu: float = Field(default=1.0, ge=0.25, le=16, description="CU added to the maximum per scale-up.")
    max_cu_ceiling: float = Field(default=8.0, ge=0.25, le=CU_MAX_AUTOSCALED,
                                  description="Never raise autoscaling_limit_max_cu above this (cost guard).")
    suspend_timeout_seconds: int | None = Field(
        default=None, ge=-1, le=604_800, description="Sent with a scale-up when set: seconds idle before Neon "
        "suspends the compute (-1 never, 0 Neon's default, else 60-604800).")
    timeout_seconds: float = Field(default=10, ge=0.5, le=120, description="HTTP timeout of one request.")
    operation_timeout_seconds: float = Field(default=120, ge=1, le=1800,
                                             description="How long to wait for the returned operations to finish.")
    poll_seconds: float = Field(default=1.0, ge=0.01, le=30, description="Seconds between operation polls.")
    api_attempts: int = Field(default=6, ge=1, le=20, description="Attempts per request on 423, 429 and 5xx.")

    @model_validator(mode="after")
    def _steps(self) -> NeonEndpoint:
        for name in ("scale_step_cu", "max_cu_ceiling"):
            if round(getattr(self, name) / CU_STEP, 9) % 1:
                raise ValueError(f"{name} must be a multiple of {CU_STEP} CU")
        return self

    @model_validator(mode="after")
    def _suspend(self) -> NeonEndpoint:
        if self.suspend_timeout_seconds is not None and 0 < self.suspend_timeout_seconds < 60:
            raise ValueError("suspend_timeout_seconds must be -1, 0 or 60-604800")
        return self

    @property
    def label(self) -> str:
        return f"Neon endpoint {self.endpoint_id}"

    def auth_headers(self) -> dict[str, str]:
        """The one place the API key is read."""
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}", "Accept": "application/json"}
