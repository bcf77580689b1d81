"""Named global concurrency limits: the locks runbooks share across workers and hosts.

One failover per cluster (`failover-<cluster>`), one alert action per cluster and action
(`alert-action-<cluster>-<action>`), one alert-state writer per cluster. A `concurrency()` call on a
limit that does not exist excludes nothing, so every holder creates its limit first (`ensure_limits`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency

_PAGE = 200


class LimitsUnavailable(RuntimeError):
    """The Prefect API could not list or create the global concurrency limits."""

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(f"global concurrency limits: {detail}")


def slug(cluster: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", cluster.lower()).strip("-")[:200] or "cluster"


def ensure_limits(names: list[str], limit: int = 1) -> int:
    """Create the global concurrency limits that do not exist yet (a missing limit excludes nothing).

    Returns how many were created.
    """
    wanted = set(names)
    try:
        with get_client(sync_client=True) as client:
            existing: set[str] = set()
            offset = 0
            while True:
                page = client.read_global_concurrency_limits(limit=_PAGE, offset=offset)
                existing |= {lim.name for lim in page}
                if len(page) < _PAGE:
                    break
                offset += _PAGE
            from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
            from prefect.exceptions import ObjectAlreadyExists

            missing = sorted(wanted - existing)
            for name in missing:
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return len(missing)
    except Exception as exc:  # noqa: BLE001 - any API failure is a store failure
        raise LimitsUnavailable(short_error(exc)) from exc


def short_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def action_lock_name(cluster: str, action: str) -> str:
    """The global concurrency limit that keeps one action from running twice for one cluster."""
    return f"alert-action-{slug(cluster)}-{action.replace('_', '-')}"


def failover_lock_name(cluster: str) -> str:
    """The global concurrency limit that allows one failover per cluster (the stack creates it, the flow holds it)."""
    return f"failover-{slug(cluster)}"


@contextlib.contextmanager
def exclusive(name: str, timeout_seconds: float = 30) -> Iterator[bool]:
    """Hold the single slot of limit `name`; yields False (and holds nothing) if another run holds it.

    One attempt, no waiting in line: only the server's 423 "slot taken" answer means "another run has it".
    A slow API is waited for (up to `timeout_seconds`) and an unreachable one raises, so a busy server never
    passes for a busy slot.
    """
    ensure_limits([name])
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=timeout_seconds, max_retries=0,
                                            strict=True, lease_duration=300))
        except ConcurrencySlotAcquisitionError as exc:
            if not slot_taken(exc):
                raise
            yield False
            return
        yield True


def slot_taken(exc: BaseException) -> bool:
    """Did the server answer 423 LOCKED: the limit exists and its slot is held?"""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423
