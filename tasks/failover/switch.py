"""One interface for "switch the primary": how phase 2 fences the old primary and promotes the candidate.

Phase 2 of the failover holds the clients, lets the backend switch the primary, verifies the promotion on a
fresh SQL connection, repoints and releases the clients. What differs between backends (native pg_ctl, Patroni,
Aurora, Neon) is only the switch itself and what it needs just before and after:

- `preflight`: phase 1's checks of the backend's own view (refusals) and the steps it will take;
- `before_hold`: work on the old primary while it still serves (the native path CHECKPOINTs it);
- `switch`: fence and promote; returns what the old primary's shutdown left (state, checkpoint, timeline);
- `after_verify`: what is read once the new primary writes (the native path reads a crashed primary's WAL end);
- `settle`: phase 3, the other members follow the new primary (native: we repoint them; Patroni: it does, we wait).

A backend may also plan phase 1 itself (`decide`): Neon has one compute and no standby, which the shared
planner refuses. Every method runs its steps through `run_step`, so each is journaled and a rerun resumes. The
backend is chosen from the NodeControl block's configuration (`backend_for`); a flow never branches on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from blocks.aurora import AuroraCluster
from blocks.failover_adapters import NodeControl
from blocks.neon import NeonEndpoint
from tasks.failover.model import FailoverPlan, FailoverRefused, NodeState
from tasks.failover.switch_aurora import AuroraSwitch
from tasks.failover.switch_native import NativeSwitch
from tasks.failover.switch_neon import NeonSwitch
from tasks.failover.switch_patroni import PatroniSwitch

if TYPE_CHECKING:
    from tasks.failover.run import RunContext


class SwitchBackend(Protocol):
    """How the primary is switched: one implementation per way of controlling the nodes."""

    name: str

    def preflight(self, ctx: RunContext, plan: FailoverPlan, states: dict[str, NodeState]) -> FailoverPlan:
        """Phase 1, beside our SQL checks: the backend's own view; FailoverRefused (nothing changed) or the plan
        with the backend's steps. Keeps what it read in ctx.backend_view (the pre-failover backup)."""

    def before_hold(self, ctx: RunContext, plan: FailoverPlan, promoted: bool) -> None:
        """Before the clients are held: the old primary still serves."""

    def switch(self, ctx: RunContext, plan: FailoverPlan, candidate: NodeState) -> dict:
        """Fence the old primary and promote the candidate; {'state', 'checkpoint', 'timeline'} of the shutdown."""

    def after_verify(self, ctx: RunContext, plan: FailoverPlan, shutdown: dict) -> None:
        """After the new primary was verified, before the clients are released."""

    def settle(self, ctx: RunContext, plan: FailoverPlan) -> None:
        """Phase 3: the other members follow the new primary (journal facts 'followers': node -> status)."""


def backend_for(control: NodeControl) -> SwitchBackend:
    """The switch backend the NodeControl block configures."""
    if control.kind == "patroni" and control.patroni is not None:
        return PatroniSwitch(control.patroni)
    if control.kind == "aurora" and control.aurora_block:
        try:
            return AuroraSwitch(AuroraCluster.load(control.aurora_block))
        except ValueError as exc:
            raise FailoverRefused([f"cannot load the AuroraCluster block {control.aurora_block!r}: {exc}"]) from None
    if control.kind == "neon" and control.neon_block:
        try:
            return NeonSwitch(NeonEndpoint.load(control.neon_block))
        except ValueError as exc:
            raise FailoverRefused([f"cannot load the NeonEndpoint block {control.neon_block!r}: {exc}"]) from None
    return NativeSwitch()
