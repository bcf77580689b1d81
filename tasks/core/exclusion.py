"""One exclusion per cluster across runbooks, in Prefect global concurrency limits (any worker, any host).

- `maintenance-<cluster>` (limit 1): vacuum and index maintenance of one cluster never overlap. A maintenance run
  waits for it or skips, and its report says which (`maintenance_turn`).
- Urgent runs, `failover-<cluster>` (limit 1, held by the failover for its whole run) and `high-load-<cluster>`
  (held by each high-load response, never waited for): they take no maintenance lock, so they never wait behind
  maintenance; a maintenance run asks `StopCheck.reason()` before each table and stops when one is running.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import Literal

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from pydantic import BaseModel, ConfigDict, Field

from tasks.core.limits import (
    Lease,
    LimitsUnavailable,
    ensure_limits,
    failover_lock_name,
    leased_slot,
    short_error,
    slug,
)

log = logging.getLogger(__name__)
OnBusy = Literal["wait", "skip"]
URGENT_SLOTS = 50  # a high-load response is never refused or queued by its own marker


def maintenance_lock_name(cluster: str) -> str:
    """The global concurrency limit held by a cluster's destructive maintenance (vacuum, index maintenance)."""
    return f"maintenance-{slug(cluster)}"


def high_load_lock_name(cluster: str) -> str:
    """The global concurrency limit a high-load response of the cluster occupies while it runs (a marker)."""
    return f"high-load-{slug(cluster)}"


def urgent_lock_names(cluster: str) -> dict[str, str]:
    """What has priority over maintenance: runbook -> the limit it holds while it runs."""
    return {"failover": failover_lock_name(cluster), "high-load response": high_load_lock_name(cluster)}


def urgent_running(cluster: str) -> list[str]:
    """The urgent runbooks running on this cluster now (their limits have an active slot)."""
    from prefect.exceptions import ObjectNotFound

    def active(client, name: str) -> bool:
        try:
            return client.read_global_concurrency_limit_by_name(name).active_slots > 0
        except ObjectNotFound:
            return False

    names = urgent_lock_names(cluster)
    with get_client(sync_client=True) as client, concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        # Both limits asked at once (each request is a round trip to the API; the run waits for the answer).
        answers = {runbook: pool.submit(contextvars.copy_context().run, active, client, name)
                   for runbook, name in names.items()}
        return [runbook for runbook, answer in answers.items() if answer.result()]


class StopCheck:
    """'Should I stop?' before each table of a maintenance run: a failover or high-load response of the cluster
    started. Asks the API at most every `every_seconds`; once it says stop, it stays stopped. An API failure is not
    a reason to stop (the urgent run cannot take its own slot then either): it is logged."""

    def __init__(self, cluster: str, every_seconds: float = 1.0,
                 probe: Callable[[str], list[str]] | None = None, turn: MaintenanceTurn | None = None):
        """`turn`: the maintenance turn the run holds: its check for urgent runs counts as the first one (a run
        shorter than `every_seconds` asks no more), and a lease it could not renew stops the run too."""
        self.cluster, self.every, self._probe = cluster, every_seconds, probe or urgent_running
        self._checked = turn.checked_at if turn is not None else 0.0
        self._lease = turn.lease if turn is not None else None
        self._reason: str | None = None

    @classmethod
    def already(cls, reason: str) -> StopCheck:
        """A check that says stop from the start (the run did not get the cluster's maintenance lock)."""
        check = cls("", probe=lambda _: [])
        check._reason = reason
        return check

    def reason(self) -> str | None:
        if self._reason is None and self._lease is not None and self._lease.lost:
            self._reason = f"stopped: {self._lease.lost}"
        if self._reason is None and time.monotonic() - self._checked >= self.every:
            self._checked = time.monotonic()
            try:
                running = self._probe(self.cluster)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not ask whether an urgent run is on %s: %s", self.cluster, short_error(exc))
                running = []
            if running:
                self._reason = f"stopped: a {' and a '.join(running)} of {self.cluster} started and has priority"
        return self._reason


class MaintenanceTurn(BaseModel):
    """Whether this maintenance run holds the cluster's maintenance lock, and what it did to get it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    held: bool
    waited_seconds: float = 0.0
    sentence: str
    checked_at: float = 0.0  # time.monotonic() when no urgent run was found (a StopCheck need not ask again at once)
    lease: Lease | None = Field(default=None, exclude=True)  # the held slot (its `lost` says a renewal failed)


@contextlib.contextmanager
def maintenance_turn(cluster: str, runbook: str, on_busy: OnBusy = "wait", wait_seconds: float = 1800,
                     poll_seconds: float = 5.0) -> Iterator[MaintenanceTurn]:
    """Hold `maintenance-<cluster>` while no urgent run is on the cluster, waiting up to `wait_seconds` (or not at
    all with on_busy='skip'). Yields the turn; when `held` is False the run must do nothing and report its sentence.
    In a flow run every call goes through the flow's own API client (the urgent limits read, the slot taken under
    a lease, renewed only if the run outlasts three quarters of it, and released): a few requests, no new client.
    """
    name = maintenance_lock_name(cluster)
    started = time.monotonic()
    while True:
        attempt = time.monotonic()  # the time spent waiting is up to the attempt that succeeds, not its requests
        try:
            urgent = urgent_running(cluster)
        except Exception as exc:  # noqa: BLE001 - an unreachable API never passes for a free cluster
            raise LimitsUnavailable(short_error(exc)) from exc
        checked = time.monotonic()
        if not urgent:
            with leased_slot(name) as lease:
                if lease is not None:
                    waited = attempt - started
                    said = (f"took the maintenance lock {name} after waiting {waited:.0f} s" if waited >= 1
                            else f"took the maintenance lock {name} at once")
                    yield MaintenanceTurn(held=True, waited_seconds=waited, sentence=f"{runbook} {said}.",
                                          checked_at=checked, lease=lease)
                    return
        busy = (f"a {' and a '.join(urgent)} of {cluster} is running (it has priority)" if urgent
                else f"another maintenance run of {cluster} holds {name}")
        waited = time.monotonic() - started
        if on_busy == "skip" or waited + poll_seconds > wait_seconds:
            verb = "skipped" if on_busy == "skip" else f"gave up after waiting {waited:.0f} s"
            yield MaintenanceTurn(held=False, waited_seconds=waited,
                                  sentence=f"{runbook} of {cluster} {verb}: {busy}; nothing was done.")
            return
        log.info("%s of %s waits: %s", runbook, cluster, busy)
        time.sleep(poll_seconds)


@contextlib.contextmanager
def urgent_marker(cluster: str, active: bool = True) -> Iterator[bool]:
    """Occupy a slot of `high-load-<cluster>` while a high-load response runs (`active`: not a dry run), so
    maintenance stops at its next table. Never waits and never fails the response: yields False (and logs) when the
    API cannot be reached."""
    name = high_load_lock_name(cluster)
    if not active:
        yield False
        return
    with contextlib.ExitStack() as stack:
        try:
            ensure_limits([name], limit=URGENT_SLOTS)
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=10, max_retries=0, strict=True,
                                            lease_duration=300, raise_on_lease_renewal_failure=False))
        except Exception as exc:  # noqa: BLE001 - an emergency response never waits for bookkeeping
            log.warning("high-load response of %s runs without its marker %s: %s", cluster, name, short_error(exc))
            yield False
            return
        yield True
