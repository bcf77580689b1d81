"""Is a managed cluster's compute paused? Read from the provider, never through SQL (a connection would wake it
and start billing): Aurora Serverless v2 at 0 ACU (MinCapacity 0 and CloudWatch ServerlessDatabaseCapacity 0),
a Neon endpoint in state `idle`. Used by the health check and the alert monitor before they connect."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import BaseModel

from blocks.aurora import AuroraCluster
from blocks.neon import NeonEndpoint
from blocks.postgres_cluster import PostgresCluster
from tasks.core import aurora, neon
from tasks.core.errors import ProviderError


class ProviderState(BaseModel):
    provider: str
    state: str
    paused: bool
    summary: str


def load_provider(name: str) -> AuroraCluster | NeonEndpoint:
    """The provider block '<slug>/<name>'; ProviderError when it is not one."""
    try:
        block = Block.load(name)
    except Exception as exc:  # noqa: BLE001 - any load failure is the same operator error
        raise ProviderError(f"cannot load the provider block {name!r}: {type(exc).__name__}: "
                            f"{str(exc)[:200]}") from None
    if not isinstance(block, AuroraCluster | NeonEndpoint):
        raise ProviderError(f"block {name!r} is a {type(block).__name__}, not an AuroraCluster or NeonEndpoint")
    return block


def read_state(block: AuroraCluster | NeonEndpoint) -> ProviderState:
    """The compute's state as the provider reports it."""
    if isinstance(block, NeonEndpoint):
        endpoint = neon.NeonApi(block).endpoint()
        state = endpoint.get("current_state", "unknown")
        paused = neon.is_idle(endpoint)
        return ProviderState(provider="neon", state=state, paused=paused, summary=(
            f"{block.label} is idle (suspended by Neon): not woken, no SQL connection opened" if paused else
            f"{block.label} is {state}"))
    api = aurora.AuroraApi(block)
    cluster = api.cluster()
    scaling = cluster.get("ServerlessV2ScalingConfiguration") or {}
    status = cluster.get("Status", "unknown")
    if scaling.get("MinCapacity") != 0:  # never pauses: no CloudWatch call needed
        return ProviderState(provider="aurora", state=status, paused=False, summary=f"{block.label} is {status}")
    capacity = aurora.cloudwatch_sample(api).get("capacity")
    paused = capacity == 0
    return ProviderState(provider="aurora", state="paused" if paused else status, paused=paused, summary=(
        f"{block.label} is paused (ServerlessDatabaseCapacity 0 ACU, auto-pause after "
        f"{scaling.get('SecondsUntilAutoPause', '?')} s): not woken, no SQL connection opened" if paused else
        f"{block.label} is {status} at {capacity if capacity is not None else 'unknown'} ACU"))


def provider_state(cluster: PostgresCluster, wake: bool) -> ProviderState | None:
    """The provider's state before any SQL connection; None when the cluster is not managed or `wake` asks to
    connect anyway. A provider that cannot be read is state 'unreadable' (not paused): the SQL checks then run
    and find what they find, and the caller reports the provider's error."""
    if not cluster.provider_block or wake:
        return None
    try:
        return read_state(load_provider(cluster.provider_block))
    except ProviderError as exc:
        return ProviderState(provider=cluster.provider_block.split("/")[0], state="unreadable", paused=False,
                             summary=f"the provider's state could not be read: {exc}")
