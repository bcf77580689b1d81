"""The database-side guard of "at most one failover per cluster": a session advisory lock on every
reachable node, held for the whole run.

The journal directory's file lock protects runs that share that directory; this one protects
runs from any worker on any host, because every run must take it on the same servers. Advisory
locks work on hot standbys too, and the candidate's session survives its promotion. A node that
is down holds no lock (its sessions are gone), which is exactly the failover case.
"""

import contextlib
from collections.abc import Iterator
from datetime import datetime

from pydantic import BaseModel

from blocks.postgres_cluster import PostgresCluster
from tasks.core.db import connect
from tasks.core.errors import RunbookDBError
from tasks.failover.model import FailoverRefused

FAILOVER_LOCK_KEY = 0x50475242  # "PGRB": below 2**32, so pg_locks shows it as classid 0, objid KEY

# Does this session now hold the failover lock of this node (false: another session has it)?
TRY_LOCK_SQL = "SELECT pg_catalog.pg_try_advisory_lock(%(key)s) AS locked"

# Which session holds the failover lock on this node?
HOLDER_SQL = """
SELECT a.pid,
       a.application_name,
       a.client_addr::text AS client_addr,
       a.backend_start
  FROM pg_catalog.pg_locks AS l
  JOIN pg_catalog.pg_stat_activity AS a USING (pid)
 WHERE l.locktype = 'advisory'
   AND l.classid = 0
   AND l.objid = %(key)s
   AND l.granted
 LIMIT 1
"""


class LockHolder(BaseModel):
    pid: int
    application_name: str | None
    client_addr: str | None
    backend_start: datetime | None


@contextlib.contextmanager
def database_lock(cluster: PostgresCluster) -> Iterator[list[str]]:
    """Hold the failover lock on every reachable node (yields their names) or refuse at once."""
    with contextlib.ExitStack() as held:
        locked: list[str] = []
        for target in cluster.targets():
            try:
                db = held.enter_context(connect(target, purpose="failover-lock"))
                got = db.scalar(TRY_LOCK_SQL, {"key": FAILOVER_LOCK_KEY})
            except RunbookDBError:
                continue  # unreachable or refusing: it holds no lock either
            if not got:
                holder = db.fetch_one(HOLDER_SQL, {"key": FAILOVER_LOCK_KEY}, LockHolder)
                who = (f"pid {holder.pid} ({holder.application_name or 'unknown'} from "
                       f"{holder.client_addr or 'local'}, since {holder.backend_start:%H:%M:%S})"
                       if holder else "a session that just ended")
                raise FailoverRefused([
                    f"another failover of cluster {cluster.cluster_name} holds the database-side lock on "
                    f"{target.node}: {who}; at most one per cluster, wait for it to finish"])
            locked.append(target.node)
        yield locked
