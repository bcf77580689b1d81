"""Named global concurrency limits: the locks runbooks share across workers and hosts.

One failover per cluster (`failover-<cluster>`), one alert action per cluster and action
(`alert-action-<cluster>-<action>`), one alert-state writer per cluster. A `concurrency()` call on a
limit that does not exist excludes nothing, so every holder creates its limit first (`ensure_limits`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator

import httpx
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency

_PAGE = 200
log = logging.getLogger(__name__)


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


def crash_alert_lock_name(cluster: str) -> str:
    """The global concurrency limit that lets one backstop run at a time alert a cluster's crashed failover."""
    return f"failover-crash-alert-{slug(cluster)}"


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


@contextlib.contextmanager
def in_turn(name: str, timeout_seconds: float = 120) -> Iterator[bool]:
    """Wait (up to `timeout_seconds`) for the single slot of limit `name`, then hold it; yields whether it is held.

    For work that must happen once but never be lost (an alert): an API failure, or a wait that runs out, is
    logged and yields False, and the caller goes on without the slot (twice beats never).
    """
    held = contextlib.ExitStack()
    try:
        ensure_limits([name])
        held.enter_context(concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True,
                                       lease_duration=300))
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("%s not held (%s): going on without it", name, short_error(exc))
        yield False
        return
    with held:
        yield True


def slot_taken(exc: BaseException) -> bool:
    """Did the server answer 423 LOCKED: the limit exists and its slot is held?"""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


class Lease:
    """One slot of a global concurrency limit, held under a lease the server expires unless it is renewed.

    `lost` says why the slot may no longer be ours (the renewal failed): the holder should stop its work.
    """

    def __init__(self, name: str, lease_id, seconds: float):
        self.name, self.lease_id, self.seconds = name, lease_id, seconds
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def keep(self) -> Lease:
        """Renew the lease at three quarters of its duration until released (a thread that sleeps until then:
        a run shorter than that makes no renewal call)."""
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        client = None
        try:
            while not self._stop.wait(self.seconds * 0.75):
                try:
                    client = client or get_client(sync_client=True).__enter__()
                    client.renew_concurrency_lease(lease_id=self.lease_id, lease_duration=self.seconds)
                except Exception as exc:  # noqa: BLE001 - the server expires the slot: the holder must know
                    self.lost = f"the lease of {self.name} could not be renewed ({short_error(exc)})"
                    log.warning("%s: stop before the next step", self.lost)
                    return
        finally:
            if client is not None:
                client.__exit__(None, None, None)

    def release(self, client) -> None:
        """Give the slot back (an API failure is logged: the server frees it when the lease expires)."""
        self._stop.set()
        try:
            client.release_concurrency_slots_with_lease(lease_id=self.lease_id)
        except Exception as exc:  # noqa: BLE001 - the work is done; its report must not be lost to bookkeeping
            log.warning("could not release %s (%s); the server frees it within %.0f s", self.name,
                        short_error(exc), self.seconds)


@contextlib.contextmanager
def leased_slot(name: str, lease_seconds: float = 300) -> Iterator[Lease | None]:
    """The single slot of limit `name` under a lease, through the caller's Prefect client (the flow's own, in a
    flow run: no client built per call, unlike `concurrency()`); one attempt. Yields None (holding nothing) when
    the server answers 423, the slot is taken. A limit that does not exist is created, then asked again; any other
    API failure raises LimitsUnavailable (a busy server never passes for a busy slot)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            for attempt in (1, 2):
                answer = ConcurrencyLimitWithLeaseResponse.model_validate(client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=lease_seconds).json())
                if answer.limits or attempt == 2:
                    break
                with contextlib.suppress(ObjectAlreadyExists):  # it did not exist: it excluded nothing
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:
                raise LimitsUnavailable(short_error(exc)) from exc
            answer = None
        except Exception as exc:  # noqa: BLE001 - any other API failure is a store failure
            raise LimitsUnavailable(short_error(exc)) from exc
        if answer is None:
            yield None
            return
        if not answer.limits:
            raise LimitsUnavailable(f"the limit {name} could not be created")
        lease = Lease(name, answer.lease_id, lease_seconds).keep()
        try:
            yield lease
        finally:
            lease.release(client)
