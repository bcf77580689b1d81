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
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.types import MAX_VARIABLE_VALUE_LENGTH

from tasks.alerts.evaluate import ClusterAlertState
from tasks.core.limits import LimitsUnavailable, ensure_limits, short_error, slug

STATE_PREFIX = "alert-state-"
PAGE = 200


class StateStoreError(RuntimeError):
    """The alert state store could not be read, written or locked."""

    def __init__(self, what: str, detail: str):
        self.what, self.detail = what, detail
        super().__init__(
            f"alert state store: {what}: {detail} — the monitor stops instead of resetting alert timers; "
            "check that the Prefect API is reachable and retry")


def variable_name(cluster: str) -> str:
    return STATE_PREFIX + slug(cluster)


def lock_name(cluster: str) -> str:
    return variable_name(cluster)


LOCK_CHUNK = 90  # one acquisition call per 90 clusters (Prefect events carry at most 100 related resources)


@contextlib.contextmanager
def locked(clusters: list[str], timeout_seconds: float = 30) -> Iterator[None]:
    """Hold the state lock of every cluster, acquired in sorted chunks (two runs cannot deadlock)."""
    names = sorted({lock_name(c) for c in clusters})
    if names:
        try:
            ensure_limits(names)
        except LimitsUnavailable as exc:
            raise StateStoreError("creating the per-cluster locks", exc.detail) from exc
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
                raise StateStoreError("locking", short_error(exc)) from exc
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
        raise StateStoreError("reading", short_error(exc)) from exc
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
        raise StateStoreError("writing", short_error(exc)) from exc
