"""Records a run returns by the thousand, kept cheap for Prefect to hand back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel


class FlatRecord(BaseModel):
    """A record of plain values (no future, no state: nothing for Prefect to resolve), one per table or row.

    At a flow's end Prefect walks its return value looking for futures to resolve, field by field of every
    model (`visit_collection` iterates `dict(model)`): 20-40 ms on this kind of machine for a vacuum report of
    1,000 tables, one in twenty of that run's whole time. A flat record iterates as empty, so the walk stops at
    it. Everything else reads the fields themselves and is unchanged (attributes, `model_dump`, JSON, equality,
    copies, pickling, repr); only `dict(record)` is empty: use `model_dump()`.
    """

    def __iter__(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        return iter(())
