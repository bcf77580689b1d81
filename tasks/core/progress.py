"""A progress bar in the Prefect UI for a long run: a progress artifact that follows the work without slowing it.

`track_progress(key, total, title, unit)` opens a `Progress`; the run calls `advance()` (or `set()`) as each
item completes, from any thread. Those calls only change counters under a lock: a background thread sends
the artifact (create, then update) at most once every `min_interval` seconds, and never while nothing
changed. The run never waits for the API, and an API failure never fails it (the bar just stops moving; a
warning is logged once). Closing sends the final state at once: what was done, and where and why it stopped
(maintenance window, cancellation, failure). `PG_RUNBOOKS_PROGRESS=off` turns every progress artifact off
(benchmarks compare with and without).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

PROGRESS_ENV = "PG_RUNBOOKS_PROGRESS"
MIN_INTERVAL_SECONDS = 1.0

# send(state) creates or updates the artifact; the default talks to the Prefect API.
Sender = Callable[["ProgressState"], None]

logger = logging.getLogger("pg_runbooks.progress")


class ProgressState:
    """What the bar says at one moment (a copy: the sender never sees it change)."""

    __slots__ = ("key", "title", "unit", "total", "done", "current", "counts", "outcome")

    def __init__(self, key: str, title: str, unit: str, total: int, done: int, current: str,
                 counts: dict[str, int], outcome: str | None):
        self.key, self.title, self.unit, self.total, self.done = key, title, unit, total, done
        self.current, self.counts, self.outcome = current, counts, outcome

    @property
    def percent(self) -> float:
        if self.total <= 0:
            return 100.0 if self.outcome else 0.0
        return round(min(100.0, 100.0 * self.done / self.total), 1)

    def description(self) -> str:
        """One markdown line: how far, the last item, the tally, and (at the end) how it ended."""
        head = f"**{self.title}**: {self.done} of {self.total} {self.unit} ({self.percent:.0f} %)"
        tally = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        parts = [head]
        if tally:
            parts.append(tally)
        if self.outcome:
            parts.append(self.outcome)
        elif self.current:
            parts.append(f"last: {self.current}")
        return " · ".join(parts)


def progress_enabled() -> bool:
    return os.environ.get(PROGRESS_ENV, "on").strip().lower() not in {"0", "off", "false", "no"}


class Progress:
    """Counters of one run's work and the thread that shows them in the Prefect UI, throttled."""

    def __init__(self, key: str, total: int, title: str, unit: str = "items",
                 send: Sender | None = None, min_interval: float = MIN_INTERVAL_SECONDS,
                 flow_run_id: Any = None, first_after: float = 0.0, client: Any = None):
        """`first_after`: seconds before the bar first shows (a run closed sooner sends only its final state:
        one API call); `client`: a Prefect sync client to send with (default: one of the bar's own)."""
        self.key, self.title, self.unit, self.total = key, title, unit, max(0, int(total))
        self.min_interval, self.first_after = min_interval, first_after
        self._send = send or PrefectSender(flow_run_id, client)
        self._lock = threading.Lock()
        self._done = 0
        self._current = ""
        self._counts: dict[str, int] = {}
        self._outcome: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_once = False
        self.sent = 0  # how many times the artifact was sent (the benchmark and tests read it)

    # ------------------------------------------------------------ called by the run (never blocks on I/O)
    def start(self) -> Progress:
        self._wake.set()  # the bar appears at 0 % straight away (from the thread)
        self._thread = threading.Thread(target=self._loop, name=f"progress-{self.key}", daemon=True)
        self._thread.start()
        return self

    def advance(self, n: int = 1, current: str = "", status: str | None = None) -> None:
        """`n` more items done (`current`: the last one; `status`: counted in the tally, e.g. 'failed')."""
        with self._lock:
            self._done += n
            if current:
                self._current = current
            if status:
                self._counts[status] = self._counts.get(status, 0) + n
        self._wake.set()

    def set(self, done: int, current: str = "") -> None:
        """Exactly `done` items done (for a loop that may be retried from its start)."""
        with self._lock:
            self._done = done
            if current:
                self._current = current
        self._wake.set()

    @property
    def done(self) -> int:
        with self._lock:
            return self._done

    def close(self, outcome: str, wait: bool = True) -> None:
        """The final state, sent at once (not throttled): `outcome` says what was done or where it stopped.
        With `wait` (the default) it returns once that state is sent (at most ~10 s if the API hangs);
        without, the background thread sends it and the caller goes on (a failover undoing a failed step)."""
        with self._lock:
            if self._outcome is not None:
                return
            self._outcome = outcome
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            self._deliver()
        elif wait:
            self.join()

    def join(self, timeout: float = 10) -> None:
        """Wait until the final state is sent (or the API has hung for `timeout` seconds)."""
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    # ------------------------------------------------------------ the background thread
    def _snapshot(self) -> ProgressState:
        with self._lock:
            return ProgressState(self.key, self.title, self.unit, self.total, self._done, self._current,
                                 dict(self._counts), self._outcome)

    def _deliver(self) -> bool:
        """Send the current state; True when it was the final one."""
        state = self._snapshot()
        try:
            self._send(state)
            self.sent += 1
        except Exception as exc:  # noqa: BLE001 - a progress bar never fails the run
            if not self._failed_once:
                self._failed_once = True
                logger.warning("progress artifact %s not updated: %s: %s", self.key, type(exc).__name__, exc)
        return state.outcome is not None

    def _loop(self) -> None:
        if self.first_after > 0:
            self._stop.wait(self.first_after)  # closing cuts it short: then only the final state is sent
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._deliver():
                return  # the final state is sent
            if not self._stop.is_set():
                self._stop.wait(self.min_interval)  # at most one update per interval; closing cuts it short


class PrefectSender:
    """Creates the progress artifact on first use, then updates it (one API call each, sync client)."""

    def __init__(self, flow_run_id: Any = None, client: Any = None):
        self.flow_run_id = flow_run_id
        self.artifact_id = None
        self._client = client

    def __call__(self, state: ProgressState) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

        if self._client is None:
            self._client = get_client(sync_client=True)
        if self.artifact_id is None:
            created = self._client.create_artifact(ArtifactCreate(
                type="progress", key=state.key, description=state.description(), data=state.percent,
                flow_run_id=self.flow_run_id))
            self.artifact_id = created.id
        else:
            self._client.update_artifact(self.artifact_id, ArtifactUpdate(
                data=state.percent, description=state.description()))


def stopped_by(exc: BaseException) -> str:
    """How a run that raised ended, for the bar's last line."""
    if not isinstance(exc, Exception):  # TerminationSignal (cancellation), KeyboardInterrupt, SystemExit
        return f"stopped: the run was cancelled or interrupted ({type(exc).__name__})"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"stopped: the run failed ({type(exc).__name__}: {text[:200]})"


def _current_flow_run_id() -> Any:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx and ctx.flow_run else None


def _current_sync_client() -> Any:
    from prefect.context import SyncClientContext

    ctx = SyncClientContext.get()
    return ctx.client if ctx else None


@contextlib.contextmanager
def track_progress(key: str, total: int, title: str, unit: str = "items",
                   send: Sender | None = None, min_interval: float = MIN_INTERVAL_SECONDS,
                   first_after: float = 0.0, flow_client: bool = False) -> Iterator[Progress | None]:
    """A started Progress for the block's work, closed at its end: `done(...)` names the outcome, or the
    exception that left the block says where it stopped (then re-raised). None when progress is turned off
    (PG_RUNBOOKS_PROGRESS=off) or there is nothing to count. `first_after`: see Progress; `flow_client`: send
    through the flow run's own sync API client (the caller then joins the bar before that client closes)."""
    if total <= 0 or not progress_enabled():
        yield None
        return
    bar = Progress(key, total, title, unit, send=send, min_interval=min_interval,
                   flow_run_id=None if send else _current_flow_run_id(), first_after=first_after,
                   client=_current_sync_client() if flow_client and not send else None).start()
    try:
        yield bar
    except BaseException as exc:
        bar.close(f"{stopped_by(exc)} after {bar.done} of {total} {unit}")
        raise
    bar.close(f"finished: {bar.done} of {total} {unit}")


def finish(bar: Progress | None, outcome: str) -> None:
    """Close the bar (if any) with the run's own words for how it ended (e.g. the window ended)."""
    if bar is not None:
        bar.close(outcome)
