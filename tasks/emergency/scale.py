"""Increase resources through the configured scaler block (none, webhook, pgbouncer pool, Aurora Serverless v2)."""

from __future__ import annotations

from typing import Any, Literal

import httpx
import psycopg
from prefect import task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.aurora import AuroraCluster
from blocks.neon import NeonEndpoint
from blocks.scalers import SCALER_TYPES, NoScaler, PgBouncerPoolScaler, WebhookScaler
from tasks.core import aurora, neon
from tasks.core.errors import ProviderError, classify, raised_by

ScaleStatus = Literal["not_configured", "planned", "scaled", "at_max", "requested", "failed"]


class ScaleRequest(BaseModel):
    """What the response asks a scaler for, with the evidence (sent as the webhook's JSON body)."""

    cluster: str
    reason: str
    dry_run: bool
    active_sessions: int
    waiting_sessions: int
    flow_run_id: str | None = None
    requested_by: str = "pg-runbooks/high-load-response"


class ScaleOutcome(BaseModel):
    kind: str
    status: ScaleStatus
    summary: str = Field(description="One sentence: what was asked, what changed.")
    before: int | float | None = None
    after: int | float | None = None
    http_status: int | None = None
    request: str | None = Field(default=None, description="Provider scalers: the exact API request (sent or planned).")


class ScalerError(Exception):
    """The scaler was configured but could not do its job; `transient` decides a retry."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class ScalerBlockInvalid(ScalerError):
    pass


def load_scaler(name: str | None) -> Block | None:
    """The scaler block '<type-slug>/<name>' (e.g. 'pgbouncer-pool-scaler/prod'), or None."""
    if not name:
        return None
    if "/" not in name:
        raise ScalerBlockInvalid(
            f"scaler_block {name!r} must be '<block-type-slug>/<block-name>', one of: "
            + ", ".join(f"{t.get_block_type_slug()}/..." for t in SCALER_TYPES))
    try:
        block = Block.load(name)
    except Exception as exc:  # noqa: BLE001 - any load failure is the same operator error
        raise ScalerBlockInvalid(f"could not load scaler block {name!r}: {type(exc).__name__}: "
                                 f"{str(exc)[:200]}") from None
    if not isinstance(block, SCALER_TYPES):
        raise ScalerBlockInvalid(f"block {name!r} is a {type(block).__name__}, not a scaler")
    return block


def _retry_scaler(task, task_run, state) -> bool:
    """Retry webhook timeouts/5xx and lost console connections; never a refusal or a bad block."""
    exc = raised_by(state)
    return isinstance(exc, ScalerError) and exc.transient


@task(name="increase-resources", retries=2, retry_delay_seconds=1, retry_condition_fn=_retry_scaler,
      cache_policy=NO_CACHE)
def scale_up(scaler_block: str | None, request: ScaleRequest) -> ScaleOutcome:
    """Ask the configured scaler for more capacity (only plan it in a dry run)."""
    scaler = load_scaler(scaler_block)
    if scaler is None or isinstance(scaler, NoScaler):
        note = f" ({scaler.note})" if isinstance(scaler, NoScaler) and scaler.note else ""
        return ScaleOutcome(kind="none", status="not_configured",
                            summary=f"no scaler is configured{note}: resources were not increased.")
    if isinstance(scaler, WebhookScaler):
        return _webhook(scaler, request)
    if isinstance(scaler, AuroraCluster | NeonEndpoint):
        return _provider(scaler, request)
    return _pgbouncer(scaler, request)


def _provider(scaler: AuroraCluster | NeonEndpoint, request: ScaleRequest) -> ScaleOutcome:
    """Raise an Aurora Serverless v2 MaxCapacity or a Neon endpoint's max CU by the block's step within its
    ceiling (tasks/core/aurora.py, tasks/core/neon.py)."""
    try:
        if isinstance(scaler, AuroraCluster):
            result = aurora.scale_up(aurora.AuroraApi(scaler), request.dry_run)
        else:
            result = neon.scale_up(neon.NeonApi(scaler), request.dry_run)
    except ProviderError as exc:
        raise ScalerError(str(exc), transient=exc.transient) from None
    status = {"planned": "planned", "scaled": "scaled", "at_max": "at_max"}.get(result.status, "not_configured")
    return ScaleOutcome(kind=scaler.kind, status=status, summary=result.summary, before=result.before,
                        after=result.after, request=result.request)


def _webhook(scaler: WebhookScaler, request: ScaleRequest) -> ScaleOutcome:
    if request.dry_run:
        return ScaleOutcome(kind="webhook", status="planned",
                            summary="dry run: would POST a scale request to the webhook.")
    body: dict[str, Any] = {**scaler.extra_payload, **request.model_dump()}
    try:
        response = httpx.post(scaler.url, json=body, headers=scaler.auth_headers(), timeout=scaler.timeout_seconds)
    except httpx.HTTPError as exc:
        raise ScalerError(f"the scale webhook did not answer: {type(exc).__name__}", transient=True) from None
    if response.status_code >= 500:
        raise ScalerError(f"the scale webhook answered HTTP {response.status_code}", transient=True)
    if response.status_code >= 300:
        raise ScalerError(f"the scale webhook refused the request: HTTP {response.status_code} "
                          f"{response.text[:200]!r}")
    return ScaleOutcome(kind="webhook", status="requested", http_status=response.status_code,
                        summary=f"the scale webhook accepted the request (HTTP {response.status_code}).")


# pgbouncer admin console (simple query protocol only): the current pool size.
SHOW_CONFIG = "SHOW CONFIG"


def _pool_size(conn: psycopg.Connection) -> int:
    for row in conn.execute(SHOW_CONFIG).fetchall():
        if row[0] == "default_pool_size":
            return int(row[1])
    raise ScalerError("pgbouncer's SHOW CONFIG has no default_pool_size")


def _pgbouncer(scaler: PgBouncerPoolScaler, request: ScaleRequest) -> ScaleOutcome:
    try:
        with psycopg.connect(autocommit=True, prepare_threshold=None, **scaler.connect_kwargs()) as conn:
            before = _pool_size(conn)
            wanted = min(before + scaler.step, scaler.max_pool_size)
            if before >= scaler.max_pool_size:
                return ScaleOutcome(kind="pgbouncer", status="at_max", before=before, after=before,
                                    summary=f"{scaler.label} default_pool_size is {before}, already at the "
                                            f"configured maximum {scaler.max_pool_size}.")
            if request.dry_run:
                return ScaleOutcome(kind="pgbouncer", status="planned", before=before, after=wanted,
                                    summary=f"dry run: would raise {scaler.label} default_pool_size "
                                            f"{before} -> {wanted} (max {scaler.max_pool_size}).")
            conn.execute(sql.SQL("SET default_pool_size = {}").format(sql.Literal(wanted)))
            after = _pool_size(conn)
    except psycopg.Error as exc:
        error = classify(exc, scaler.label)
        raise ScalerError(f"{scaler.label} {error.sentence}", transient=error.transient) from None
    if after != wanted:
        raise ScalerError(f"{scaler.label} default_pool_size is {after} after SET, expected {wanted}")
    return ScaleOutcome(kind="pgbouncer", status="scaled", before=before, after=after,
                        summary=f"raised {scaler.label} default_pool_size {before} -> {after} "
                                f"(max {scaler.max_pool_size}; runtime only: a RELOAD returns to pgbouncer.ini).")
