"""Where alert state lives between runs: one Prefect Variable per cluster, behind a lock per cluster.

A restarted or different worker reads the same pending timers. Two monitor runs for the same
cluster serialise on a global concurrency limit of one slot per cluster (`alert-state-<cluster>`)
held around re-read, notify, act and write; the state's `revision` tells a run that another one
moved the state on since it first read it (it then re-evaluates), so neither overwrites the other. If the
store cannot be read or written the run fails with StateStoreError: silently starting from
empty state would reset every pending timer and re-send every firing alert.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.types import MAX_VARIABLE_VALUE_LENGTH

from tasks.alerts.evaluate import ClusterAlertState

STATE_PREFIX = "alert-state-"
PAGE = 200


class StateStoreError(RuntimeError):
    """The alert state store could not be read, written or locked."""

    def __init__(self, what: str, detail: str):
        self.what, self.detail = what, detail
        super().__init__(
            f"alert state store: {what}: {detail} — the monitor stops instead of resetting alert timers; "
            "check that the Prefect API is reachable and retry")


def slug(cluster: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", cluster.lower()).strip("-")[:200] or "cluster"


def variable_name(cluster: str) -> str:
    return STATE_PREFIX + slug(cluster)


def lock_name(cluster: str) -> str:
    return variable_name(cluster)


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
                page = client.read_global_concurrency_limits(limit=PAGE, offset=offset)
                existing |= {lim.name for lim in page}
                if len(page) < PAGE:
                    break
                offset += PAGE
            from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
            from prefect.exceptions import ObjectAlreadyExists

            missing = sorted(wanted - existing)
            for name in missing:
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return len(missing)
    except Exception as exc:  # noqa: BLE001 - any API failure is a store failure
        raise StateStoreError("creating the per-cluster locks", _short(exc)) from exc


LOCK_CHUNK = 90  # one acquisition call per 90 clusters (Prefect events carry at most 100 related resources)


@contextlib.contextmanager
def locked(clusters: list[str], timeout_seconds: float = 30) -> Iterator[None]:
    """Hold the state lock of every cluster, acquired in sorted chunks (two runs cannot deadlock)."""
    names = sorted({lock_name(c) for c in clusters})
    if names:
        ensure_limits(names)
    with contextlib.ExitStack() as stack:
        for start in range(0, len(names), LOCK_CHUNK):
            chunk = names[start:start + LOCK_CHUNK]
            try:
                stack.enter_context(concurrency(chunk, occupy=1, timeout_seconds=timeout_seconds, strict=True,
                                                lease_duration=120))
            except TimeoutError as exc:
                raise StateStoreError("locking", f"another monitor run held the state of some of {len(names)} "
                                                 f"cluster(s) for more than {timeout_seconds:.0f} s") from exc
            except Exception as exc:  # noqa: BLE001
                raise StateStoreError("locking", _short(exc)) from exc
        yield


def load_states(clusters: list[str]) -> dict[str, ClusterAlertState]:
    """The stored state of each cluster (empty state for a cluster never evaluated)."""
    by_name = {variable_name(c): c for c in clusters}
    found: dict[str, ClusterAlertState] = {}
    names = sorted(by_name)
    try:
        with get_client(sync_client=True) as client:
            for start in range(0, len(names), PAGE):
                chunk = names[start:start + PAGE]
                response = client.request("POST", "/variables/filter", json={
                    "variables": {"name": {"any_": chunk}}, "limit": PAGE})
                for var in response.json():
                    cluster = by_name[var["name"]]
                    found[cluster] = ClusterAlertState.model_validate(var["value"])
    except Exception as exc:  # noqa: BLE001
        raise StateStoreError("reading", _short(exc)) from exc
    return {c: found.get(c) or ClusterAlertState(cluster=c) for c in clusters}


def encode(state: ClusterAlertState) -> dict:
    """The Variable value of `state`. Too large: the oldest undelivered resolved messages are dropped
    (counted, and said in the next message) until it fits; only the alerts themselves can make it fail."""
    import json

    state = state.model_copy(deep=True)
    value = state.model_dump(mode="json", exclude_none=True)
    size = len(json.dumps(value))
    while size > MAX_VARIABLE_VALUE_LENGTH and state.outbox:
        state.outbox.pop(0)
        state.outbox_dropped += 1
        value = state.model_dump(mode="json", exclude_none=True)
        size = len(json.dumps(value))
    if size > MAX_VARIABLE_VALUE_LENGTH:
        raise StateStoreError("writing", f"the state of {state.cluster} is {size} characters; a Prefect Variable "
                                         f"holds {MAX_VARIABLE_VALUE_LENGTH} (too many firing alerts at once)")
    return value


def save_state(state: ClusterAlertState) -> None:
    """Write one cluster's state (create or overwrite its Variable)."""
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    name = variable_name(state.cluster)
    value = encode(state)
    try:
        with get_client(sync_client=True) as client:
            try:
                client.create_variable(VariableCreate(name=name, value=value, tags=["alert-state"]))
            except ObjectAlreadyExists:
                client.update_variable(VariableUpdate(name=name, value=value))
    except StateStoreError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StateStoreError("writing", _short(exc)) from exc


def _short(exc: BaseException) -> str:
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
            if not _slot_taken(exc):
                raise
            yield False
            return
        yield True


def _slot_taken(exc: BaseException) -> bool:
    """Did the server answer 423 LOCKED: the limit exists and its slot is held?"""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423
