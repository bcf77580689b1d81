"""Neon through its HTTP API v2 with our own thin client (httpx): read the endpoint, scale its autoscaling range,
restart it, wait for the operations every change returns. Retries: 423 (another operation on the project is
running: safe to retry), 429 (rate limit: Retry-After, else exponential backoff) and 5xx/connection errors.
Every change has a dry run whose text is the exact request (method, path, JSON body).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from blocks.neon import CU_MAX_AUTOSCALED, CU_MAX_SPREAD, CU_STEP, NeonEndpoint
from tasks.core.errors import InvalidScaling, ProviderError
from tasks.core.provider import ApiRequest, ScaleResult

RETRY_STATUSES = {423, 429, 500, 502, 503, 504}
ACTIONS = {
    401: "check the API key in the NeonEndpoint block",
    403: "the API key cannot act on this project: use a key of the project's organization (docs/providers/neon.md)",
    404: "check project_id and endpoint_id in the NeonEndpoint block",
    422: "Neon refused the values; see the message",
}


class NeonApi:
    """One endpoint's API calls. Tests may hand in an httpx client and a sleep."""

    def __init__(self, block: NeonEndpoint, client: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.block = block
        self.http = client  # None: one short-lived connection per request (nothing left open in a worker)
        self.sleep = sleep
        self.retries: list[int] = []  # statuses retried, for the report

    @property
    def endpoint_path(self) -> str:
        return f"/projects/{self.block.project_id}/endpoints/{self.block.endpoint_id}"

    def send(self, request: ApiRequest) -> dict:
        method, path = request.operation.split(" ", 1)
        attempts = self.block.api_attempts
        for attempt in range(1, attempts + 1):
            try:
                response = (self.http or httpx).request(
                    method, self.block.base_url.rstrip("/") + path, json=request.params or None,
                    headers=self.block.auth_headers(), timeout=self.block.timeout_seconds)
            except httpx.HTTPError as exc:
                if attempt < attempts:
                    self.sleep(_backoff(attempt))
                    continue
                raise ProviderError(f"{self.block.label}: {request.operation} did not reach Neon: "
                                    f"{type(exc).__name__}", transient=True) from None
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                self.retries.append(response.status_code)
                self.sleep(max(_retry_after(response) or 0.0, _backoff(attempt)))  # Retry-After, at least backoff
                continue
            if response.status_code >= 300:
                raise ProviderError(
                    f"{self.block.label}: {request.operation} answered HTTP {response.status_code}: "
                    f"{_message(response)} — {ACTIONS.get(response.status_code, 'see the message')}"
                    + (f" (after {attempt} attempts)" if response.status_code in RETRY_STATUSES else ""),
                    transient=response.status_code in RETRY_STATUSES, code=str(response.status_code))
            return response.json() if response.content else {}
        raise AssertionError("unreachable")

    def endpoint(self) -> dict:
        return self.send(ApiRequest(service="neon", operation=f"GET {self.endpoint_path}")).get("endpoint", {})

    def wait_operations(self, operations: list[dict], clock: Callable[[], float] = time.monotonic) -> list[str]:
        """Poll each returned operation until it is finished; ProviderError if one fails or the deadline passes."""
        deadline = clock() + self.block.operation_timeout_seconds
        done = []
        for op in operations:
            status = op.get("status")
            while status != "finished":
                if status in ("failed", "error", "cancelled", "skipped"):
                    raise ProviderError(f"{self.block.label}: Neon operation {op.get('id')} ({op.get('action')}) "
                                        f"ended {status}: {op.get('error', '')} — see the project's operations "
                                        "in the Neon console")
                if clock() > deadline:
                    raise ProviderError(f"{self.block.label}: Neon operation {op.get('id')} ({op.get('action')}) "
                                        f"is still {status} after {self.block.operation_timeout_seconds:g} s",
                                        transient=True)
                self.sleep(self.block.poll_seconds)
                op = self.send(ApiRequest(service="neon", operation=f"GET /projects/{self.block.project_id}/"
                                                                    f"operations/{op['id']}")).get("operation", {})
                status = op.get("status")
            done.append(f"{op.get('action')} {op.get('id')}")
        return done


def _backoff(attempt: int) -> float:
    return min(0.25 * 2 ** (attempt - 1), 8.0)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(float(response.headers.get("Retry-After", "")), 30.0)
    except ValueError:
        return None


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except ValueError:
        return response.text[:300]


def cu_problems(min_cu: float, max_cu: float, ceiling: float | None = None) -> list[str]:
    """Why Neon would refuse (or we must not send) this autoscaling range; empty = valid."""
    problems = []
    for name, value in (("autoscaling_limit_min_cu", min_cu), ("autoscaling_limit_max_cu", max_cu)):
        if value < CU_STEP or value > CU_MAX_AUTOSCALED:
            problems.append(f"{name} {value:g} is outside {CU_STEP:g}-{CU_MAX_AUTOSCALED:g} CU")
        elif round(value / CU_STEP, 9) % 1:
            problems.append(f"{name} {value:g} is not a multiple of {CU_STEP} CU")
    if min_cu > max_cu:
        problems.append(f"autoscaling_limit_min_cu {min_cu:g} is above autoscaling_limit_max_cu {max_cu:g}")
    elif max_cu - min_cu > CU_MAX_SPREAD:
        problems.append(f"max - min is {max_cu - min_cu:g} CU, more than Neon's {CU_MAX_SPREAD:g}")
    if ceiling is not None and max_cu > ceiling:
        problems.append(f"autoscaling_limit_max_cu {max_cu:g} is above the configured ceiling {ceiling:g} CU "
                        "(max_cu_ceiling in the NeonEndpoint block)")
    return problems


def scale_up(api: NeonApi, dry_run: bool) -> ScaleResult:
    """Raise autoscaling_limit_max_cu by the block's step within its ceiling (the minimum rises only as far as
    Neon's max - min <= 8 needs); wait for the operations; read the range back."""
    block = api.block
    endpoint = api.endpoint()
    old_min, old_max = float(endpoint["autoscaling_limit_min_cu"]), float(endpoint["autoscaling_limit_max_cu"])
    new_max = min(old_max + block.scale_step_cu, block.max_cu_ceiling)
    if new_max <= old_max:
        return ScaleResult(status="at_max", before=old_max, after=old_max, summary=(
            f"{block.label} autoscaling_limit_max_cu is {old_max:g} CU, already at the configured ceiling "
            f"{block.max_cu_ceiling:g} CU."))
    new_min = max(old_min, new_max - CU_MAX_SPREAD)
    if problems := cu_problems(new_min, new_max, block.max_cu_ceiling):
        raise InvalidScaling(f"{block.label}: refusing to send {new_min:g}-{new_max:g} CU: " + "; ".join(problems))
    body: dict[str, Any] = {"autoscaling_limit_min_cu": new_min, "autoscaling_limit_max_cu": new_max}
    if block.suspend_timeout_seconds is not None:
        body["suspend_timeout_seconds"] = block.suspend_timeout_seconds
    request = ApiRequest(service="neon", operation=f"PATCH {api.endpoint_path}", params={"endpoint": body})
    what = f"raise {block.label} autoscaling_limit_max_cu {old_max:g} -> {new_max:g} CU"
    if new_min != old_min:
        what += f" (and min {old_min:g} -> {new_min:g}: Neon allows max - min <= {CU_MAX_SPREAD:g})"
    if dry_run:
        return ScaleResult(status="planned", before=old_max, after=new_max, request=request.render(),
                           summary=f"dry run: would {what}: {request.render()}.")
    answer = api.send(request)
    ops = api.wait_operations(answer.get("operations", []))
    got = api.endpoint()
    if (float(got["autoscaling_limit_min_cu"]), float(got["autoscaling_limit_max_cu"])) != (new_min, new_max):
        raise ProviderError(f"{block.label}: after the PATCH the range reads {got['autoscaling_limit_min_cu']}-"
                            f"{got['autoscaling_limit_max_cu']} CU, expected {new_min:g}-{new_max:g}")
    return ScaleResult(status="scaled", before=old_max, after=new_max, request=request.render(),
                       summary=f"{what[0].upper()}{what[1:]}: done, read back {new_max:g} CU after "
                               f"{len(ops)} operation(s) finished.")


def restart_request(api: NeonApi) -> ApiRequest:
    return ApiRequest(service="neon", operation=f"POST {api.endpoint_path}/restart")


def restart(api: NeonApi, dry_run: bool) -> dict:
    """Neon has no promote: its 'failover' restarts the compute (new compute, same storage). Waits for the
    operations; {'request', 'operations', 'detail'}."""
    request = restart_request(api)
    if dry_run:
        return {"request": request.render(), "operations": [],
                "detail": f"dry run: would restart the compute (Neon has no standby to promote): {request.render()}"}
    ops = api.wait_operations(api.send(request).get("operations", []))
    return {"request": request.render(), "operations": ops,
            "detail": f"restarted {api.block.label} ({request.render()}; {len(ops)} operation(s) finished)"}


def is_idle(endpoint: dict) -> bool:
    """Neon suspended the compute (scale to zero): a SQL connection would start it."""
    return endpoint.get("current_state") == "idle"
