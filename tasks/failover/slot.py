"""One failover per cluster through Prefect: the single slot of the global concurrency limit
`failover-<cluster>` (tasks.core.limits.failover_lock_name), held for the whole run.

A worker killed with SIGKILL keeps its slot until the lease expires; a resume must not wait for
that. The holder writes its lease id next to the journal's lock file, and only a run that holds
that file lock may release a lease found there: the kernel released the flock, so its writer is
dead. A run of the same cluster from another journal directory (another host) is never released:
it is refused instead. Lease renewal failures never interrupt a run in the middle of phase 2.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.concurrency._sync import acquire_concurrency_slots_with_lease, release_concurrency_slots_with_lease
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

from tasks.core.limits import ensure_limits, failover_lock_name, short_error, slot_taken
from tasks.failover.journal import JournalStore, _slug
from tasks.failover.model import FailoverRefused

log = logging.getLogger("pg_runbooks.failover")
LEASE_SECONDS = 120  # renewed every 90 s while the run lives; the server's minimum is 60


def lease_file(store: JournalStore, cluster: str) -> Path:
    return store.dir / f"{_slug(cluster)}.lease"


def _acquire(name: str) -> UUID | None:
    """The lease of the limit's one slot, or None when the server answers 423 (another holder has it)."""
    try:
        return acquire_concurrency_slots_with_lease([name], 1, timeout_seconds=30, max_retries=0, strict=True,
                                                    lease_duration=LEASE_SECONDS).lease_id
    except ConcurrencySlotAcquisitionError as exc:
        if slot_taken(exc):
            return None
        raise


def _reclaim(path: Path, name: str) -> UUID | None:
    """Release the lease a dead run of this journal directory left behind, then try once more."""
    try:
        stale = UUID(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    with contextlib.suppress(Exception):  # already expired or released: the retry tells
        release_concurrency_slots_with_lease(stale)
    log.warning("released the Prefect slot %s left by a dead failover run (lease %s)", name, stale)
    return _acquire(name)


@contextlib.contextmanager
def cluster_slot(cluster: str, store: JournalStore) -> Iterator[str]:
    """Hold the cluster's failover slot (yields the limit's name) or refuse at once.

    Call it while holding the journal's file lock (JournalStore.exclusive): that is what makes a
    lease found in the lease file provably stale.
    """
    name = failover_lock_name(cluster)
    path = lease_file(store, cluster)
    try:
        ensure_limits([name])
        lease = _acquire(name) or _reclaim(path, name)
    except Exception as exc:  # noqa: BLE001 - no slot, no failover: nothing has changed yet
        raise FailoverRefused([f"could not take the failover slot {name} (Prefect global concurrency limit): "
                               f"{short_error(exc.__cause__ or exc)}; check that the Prefect API is reachable and "
                               "rerun"]) from exc
    if lease is None:
        raise FailoverRefused([f"another failover of cluster {cluster} is already running (it holds the Prefect "
                               f"concurrency limit {name}): at most one per cluster; wait for it to finish"])
    try:
        path.write_text(str(lease))
        with maintain_concurrency_lease(lease, LEASE_SECONDS, raise_on_lease_renewal_failure=False):
            yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        try:
            release_concurrency_slots_with_lease(lease)
        except Exception:  # noqa: BLE001 - the lease expires on its own
            log.warning("could not release the Prefect slot %s; it frees itself within %s s", name, LEASE_SECONDS)
