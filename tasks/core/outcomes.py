"""Collecting submitted task runs so that one failed check is a finding, not a crash of the flow."""

from typing import Any


def gather(futures: list) -> list[tuple[Any, BaseException | None]]:
    """(result, None) or (None, the exception) for each submitted task run, in order."""
    outcomes: list[tuple[Any, BaseException | None]] = []
    for future in futures:
        try:
            outcomes.append((future.result(), None))
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, the others still count
            outcomes.append((None, exc))
    return outcomes
