"""Which per-cluster block (host-metrics source, pool scaler) each cluster of the fleet uses.

Configuration, not logic. A name containing `{cluster}` is a template filled with each cluster
block's name; the sandbox's blocks follow it (`{cluster}-host` for the host-metrics source,
`pgbouncer-pool-scaler/{cluster}` for the scaler), and a cluster without such a block has none.
`overrides` maps a cluster block to its block explicitly (an empty name: none). A plain name
without `{cluster}` means "this block" only when the fleet is one cluster: one source for many
clusters would raise one host's full disk on every cluster, so the others get none, and say why.
"""

from __future__ import annotations

from pydantic import BaseModel

CLUSTER = "{cluster}"


class BlockChoice(BaseModel):
    """The block one cluster uses for one purpose, or none and why."""

    block: str | None = None
    optional: bool = False  # named by a template: a missing block means "none for this cluster", not a failure
    note: str = "not configured"


def block_for(cluster_block: str, spec: str | None, overrides: dict[str, str] | None, fleet_size: int,
              parameter: str = "metrics_block") -> BlockChoice:
    """The block `cluster_block` uses, from the explicit mapping, then the template or single name."""
    if overrides and cluster_block in overrides:
        name = overrides[cluster_block].strip()
        return BlockChoice(block=name or None, note=f"{name!r} (mapped)" if name else "mapped to none")
    if not spec or not spec.strip():
        return BlockChoice(note="not configured")
    if CLUSTER in spec:
        name = spec.replace(CLUSTER, cluster_block)
        return BlockChoice(block=name, optional=True, note=f"{name!r} (from {spec!r})")
    if fleet_size == 1:
        return BlockChoice(block=spec, note=repr(spec))
    return BlockChoice(note=f"not configured: {parameter} {spec!r} names one block for {fleet_size} clusters; "
                            f"use a template such as '{CLUSTER}-host' or map each cluster")


def one_block_for_many(spec: str | None, overrides: dict[str, str] | None, blocks: list[str],
                       parameter: str) -> str | None:
    """The warning to log when a plain name was given for a fleet of several clusters (it is not used)."""
    if not spec or CLUSTER in spec or len(blocks) <= 1 or all(b in (overrides or {}) for b in blocks):
        return None
    return (f"{parameter} {spec!r} names one block but the fleet has {len(blocks)} clusters: it is not used "
            f"for any of them; write a template with {CLUSTER} (e.g. '{CLUSTER}-host') or map each cluster")


def block_exists(name: str, block_type_slug: str | None = None) -> bool:
    """Does block `name` (or '<type-slug>/<name>') exist? Only a 404 answers no; other errors say yes
    (loading it then fails loudly instead of passing for "not configured")."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug, _, doc = name.partition("/") if block_type_slug is None else (block_type_slug, "/", name)
    if not doc:
        return True  # not '<type>/<name>': let the loader explain
    try:
        with get_client(sync_client=True) as client:
            client.read_block_document_by_name(name=doc, block_type_slug=slug, include_secrets=False)
        return True
    except ObjectNotFound:
        return False
    except Exception:  # noqa: BLE001 - unknown: the load will say what is wrong
        return True


def usable_block(choice: BlockChoice | None) -> str | None:
    """The block of `choice`, or None when it names none or a templated block that does not exist."""
    if choice is None or not choice.block:
        return None
    if choice.optional and not block_exists(choice.block):
        return None
    return choice.block


def this_clusters_block(cluster_block: str, spec: str | None) -> tuple[str | None, str]:
    """The block a single-cluster run uses for `spec` ('<type-slug>/<name>', `{cluster}` filled with
    cluster_block), or None when the template names a block that does not exist; and why, in words."""
    choice = block_for(cluster_block, spec, None, 1)
    block = usable_block(choice)
    if choice.block and block is None:
        return None, f"no block {choice.block!r}"
    return block, choice.note
