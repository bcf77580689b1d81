"""Run submitted tasks at most N at a time, starting none after a deadline."""

from __future__ import annotations

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
            time.sleep(poll_seconds)
    return started, not_started


def _done(future: Any) -> bool:
    """Done without asking the API: the wrapped concurrent future when there is one."""
    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is not None and hasattr(wrapped, "done"):
        return wrapped.done()
    return future.state.is_final()
