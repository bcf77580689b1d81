"""Run submitted tasks at most N at a time, starting none after a deadline."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def run_bounded(items: Sequence[T], submit: Callable[[T], Any], concurrency: int,
                deadline_epoch: float | None, poll_seconds: float = 0.02) -> tuple[list[tuple[T, Any]], list[T]]:
    """Submit `submit(item)` for each item with at most `concurrency` in flight.

    Returns ([(item, future)] in submission order, [items never started because the deadline passed]).
    """
    pending = list(items)
    started: list[tuple[T, Any]] = []
    in_flight: list[Any] = []
    not_started: list[T] = []
    while pending or in_flight:
        in_flight = [f for f in in_flight if not _done(f)]
        while pending and len(in_flight) < concurrency:
            if deadline_epoch is not None and time.time() >= deadline_epoch:
                not_started.extend(pending)
                pending.clear()
                break
            item = pending.pop(0)
            future = submit(item)
            started.append((item, future))
            in_flight.append(future)
        if in_flight:
            _wait_any(in_flight, poll_seconds)
    return started, not_started


def _wait_any(in_flight: list[Any], poll_seconds: float) -> None:
    """Until one of the futures is done: woken by its completion when they wrap concurrent futures (a slot
    never idles for a poll interval), else one poll interval."""
    wrapped = [getattr(f, "wrapped_future", None) for f in in_flight]
    if all(isinstance(w, concurrent.futures.Future) for w in wrapped):
        concurrent.futures.wait(wrapped, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED)
    else:
        time.sleep(poll_seconds)


def _done(future: Any) -> bool:
    """Done without asking the API: the wrapped concurrent future when there is one."""
    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is not None and hasattr(wrapped, "done"):
        return wrapped.done()
    return future.state.is_final()
