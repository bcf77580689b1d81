"""Never fight Patroni: tell whether Patroni manages a node, and refuse native fencing, promotion and rejoin there.

Evidence, in order: the NodeControl block configures the Patroni backend; Patroni's REST API (configured URL)
answers for that node; Patroni's own sessions ('Patroni heartbeat', 'Patroni restapi') are connected to it.
A native stop would be undone by Patroni (it restarts the node), a native promotion demoted.
"""

from __future__ import annotations

from pydantic import BaseModel

from blocks.failover_adapters import NodeControl
from blocks.postgres_cluster import ConnectionTarget
from tasks.core import patroni_api as api
from tasks.core.db import connect
from tasks.core.errors import RunbookDBError
from tasks.failover.model import FailoverStepFailed

# Which of Patroni's own sessions are connected to this node (Patroni names them 'Patroni <purpose>')?
PATRONI_SESSIONS_SQL = """
SELECT DISTINCT a.application_name
  FROM pg_catalog.pg_stat_activity AS a
 WHERE a.application_name LIKE 'Patroni %'
 ORDER BY a.application_name
"""

BACKEND_HINT = ("use the Patroni backend (NodeControl kind 'patroni' with each node's REST API URL), which lets "
                "Patroni switch the primary, or patronictl")


class _Session(BaseModel):
    application_name: str


class PatroniManaged(FailoverStepFailed):
    """A native action was refused because Patroni manages the node; the message names the evidence."""


def evidence(control: NodeControl, target: ConnectionTarget) -> str | None:
    """Why we know Patroni manages this node, in one clause; None when nothing shows it."""
    if control.kind == "patroni":
        return "the NodeControl block configures the Patroni backend (kind 'patroni')"
    if control.patroni is not None and target.node in control.patroni.urls:
        try:
            answer = api.call(control.patroni, target.node, "GET", "/patroni")
        except api.PatroniUnreachable:
            answer = None
        if answer is not None and isinstance(answer.body, dict) and "patroni" in answer.body:
            info = answer.body["patroni"]
            return (f"Patroni's REST API at {control.patroni.urls[target.node]} answers for {target.node} "
                    f"(Patroni {info.get('version', '?')}, scope {info.get('scope', '?')})")
    try:
        with connect(target, purpose="failover", statement_timeout_ms=5_000) as db:
            names = [r.application_name for r in db.fetch_all(PATRONI_SESSIONS_SQL, None, _Session)]
    except RunbookDBError:
        return None
    if names:
        return f"Patroni is connected to {target.node} (sessions {', '.join(repr(n) for n in names)})"
    return None


def refusal(action: str, node: str, why: str) -> str:
    return (f"refusing to {action} {node} with native pg_ctl: {why}; Patroni would undo it (restart a fenced "
            f"node, demote a promoted one): {BACKEND_HINT}")


def refuse_native(control: NodeControl, targets: list[ConnectionTarget], action: str, node: str) -> None:
    """Raise PatroniManaged when any of the targets shows that Patroni manages the cluster."""
    for target in targets:
        if why := evidence(control, target):
            raise PatroniManaged(refusal(action, node, why))
