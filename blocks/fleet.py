"""The Fleet block: a named set of PostgresCluster blocks that the scheduled runbooks run over."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, model_validator


class Fleet(Block):
    """A fleet: listed cluster blocks, plus every cluster block matching a name prefix and/or tags.

    Membership is resolved when a run starts (`tasks.core.fleet.resolve_fleet`): a cluster block saved with the
    fleet's prefix or tag joins the next run without editing the fleet.
    """

    _block_type_name = "Postgres Fleet"
    _block_type_slug = "postgres-fleet"
    _description = "A named set of PostgresCluster blocks (listed, by name prefix, by tag) run over by pg-runbooks."
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks/blob/main/docs/operations.md#fleets"
    _code_example = """
```python
from blocks.fleet import Fleet

Fleet(members=["pg-orders"], name_prefix="prod-", tags=["tier-1"]).save("production")
```
"""

    members: list[str] = Field(default_factory=list, description="PostgresCluster block names, always members.")
    name_prefix: str | None = Field(
        default=None, description="Also every PostgresCluster block whose name starts with this prefix.")
    tags: list[str] = Field(
        default_factory=list, description="Also every PostgresCluster block carrying ALL of these tags.")
    exclude: list[str] = Field(default_factory=list, description="Cluster block names never run over (e.g. retired).")
    max_parallel: int = Field(default=4, ge=1, le=256, description="How many clusters a fleet run runs at once.")
    cluster_timeout_seconds: int = Field(
        default=3600, ge=10, le=86_400,
        description="A cluster's run not finished after this long is reported timed out; the others go on.")

    @model_validator(mode="after")
    def _selects_something(self) -> Fleet:
        if not self.members and not self.name_prefix and not self.tags:
            raise ValueError("a fleet needs members, a name_prefix or tags: it would select no cluster")
        return self
