"""Work shared by N lanes: each lane takes the next item when it is free, none is taken after a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """Items in order for lanes that each take the next one when they are free (a lane slowed by the machine
    never holds work another lane could do). Nothing is taken once `deadline_epoch` has passed: what is left
    is `not_started()`. Thread-safe."""

    def __init__(self, items: Sequence[T], deadline_epoch: float | None = None):
        self._items = list(items)
        self._next = 0
        self._deadline = deadline_epoch
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> tuple[int, T] | None:
        """(index, item) of the next item, or None when none is left or the deadline has passed."""
        with self._lock:
            if self._next >= len(self._items):
                return None
            if self._deadline is not None and time.time() >= self._deadline:
                return None
            self._next += 1
            return self._next - 1, self._items[self._next - 1]

    def __iter__(self) -> Iterator[tuple[int, T]]:
        """What one lane takes, item after item."""
        while (taken := self.take()) is not None:
            yield taken

    def not_started(self) -> list[T]:
        """The items no lane took (the deadline passed first)."""
        with self._lock:
            return self._items[self._next:]
