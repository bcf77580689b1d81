"""Which walsender is which standby: replicas known by identity, not by application_name = node name.

One pure decision shared by the health check and the alert monitor, so the two always agree. A standby made
the ordinary way (`pg_basebackup -R`) calls itself `walreceiver` (or its cluster_name), other tools set their
own name: the node name of the cluster block is only one clue among several. In order, a standby is matched to
a row of its upstream's pg_stat_replication by

1. what the block declares for the node: `replication_slot` (the slot the walsender holds) or
   `application_name`;
2. what the standby says itself (pg_stat_wal_receiver, read on the standby): the slot it streams on, then the
   name it gives its upstream (application_name, else the fallback), when only one row and one standby have it;
3. the address: the row's client_addr is the node's host (when no other remaining node or row shares it);
4. elimination: the one standby left that says it streams from this upstream, and the one row left. Several
   left that cannot be told apart (same name, same host, no slot) share the worst of their rows, said so.

A standby left over is missing, with why (its receiver is stopped, it is unreachable, ...); a row left over
is an unknown standby (not in the block), reported as such, never as a missing replica. The upstream of a
standby is the one the block declares, else the one its receiver streams from, else the primary.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from pydantic import BaseModel, Field

from blocks.postgres_cluster import PostgresCluster, PostgresNode
from tasks.core.replication import ReceiverRow, ReplicationRow, upstream_of


class StandbyView(BaseModel):
    """What one standby told the reader about itself, or why it could not be read."""

    node: str
    receiver: ReceiverRow | None = None
    error: str | None = Field(default=None, description="Why it could not be read (unreachable, ...).")


class ReplicaMatch(BaseModel):
    """One standby of the block and the row of its upstream's pg_stat_replication that is it, if any."""

    node: str
    upstream: str = Field(description="The node it is expected to stream from.")
    row: ReplicationRow | None = None
    how: str | None = Field(default=None, description="How the row was recognised as this standby.")
    problem: str | None = Field(default=None, description="Why no row is this standby (a missing replica).")
    shared_with: list[str] = Field(default_factory=list,
                                   description="Standbys that cannot be told apart: each shows the worst row.")


class UnknownStandby(BaseModel):
    """A row of pg_stat_replication that is none of the block's standbys."""

    sender: str
    row: ReplicationRow

    @property
    def label(self) -> str:
        """How it is named in reports and alert labels: stable across its reconnections (no client port)."""
        where = self.row.client_addr or ("an address hidden from this role" if self.row.state is None
                                         else "a local socket")
        slot = f", slot {self.row.slot_name}" if self.row.slot_name else ""
        return f"unknown standby {self.row.application_name!r} from {where}{slot} (not in the cluster block)"


class Matching(BaseModel):
    replicas: list[ReplicaMatch] = Field(default_factory=list)
    unknown: list[UnknownStandby] = Field(default_factory=list)

    def replica(self, node: str) -> ReplicaMatch | None:
        return next((m for m in self.replicas if m.node == node), None)


def expected_standbys(cluster: PostgresCluster, primary: str) -> list[PostgresNode]:
    """The block's standbys: every node but the primary and the fenced ones."""
    return [n for n in cluster.nodes if n.name != primary and n.name not in cluster.fenced_nodes]


def node_addresses(cluster: PostgresCluster) -> dict[str, set[str]]:
    """The IP addresses of every node's host (a literal address, or what the resolver answers)."""
    out: dict[str, set[str]] = {}
    for node in cluster.nodes:
        try:
            out[node.name] = {str(ipaddress.ip_address(node.host))}
        except ValueError:
            try:
                out[node.name] = {info[4][0] for info in socket.getaddrinfo(node.host, None)}
            except OSError:
                out[node.name] = set()
    return out


def upstream_for(node: PostgresNode, view: StandbyView | None, primary: str,
                 nodes: dict[str, tuple[str, int]]) -> str:
    """Declared upstream, else the node its receiver streams from, else the primary."""
    if node.upstream:
        return node.upstream
    if view is not None and view.receiver is not None:
        return upstream_of(view.receiver, nodes) or primary
    return primary


def match_replicas(cluster: PostgresCluster, primary: str, rows_by_sender: dict[str, list[ReplicationRow]],
                   views: dict[str, StandbyView], addresses: dict[str, set[str]] | None = None,
                   unread: dict[str, str] | None = None) -> Matching:
    """Match every expected standby to its upstream's rows (see the module doc). `rows_by_sender`: the
    pg_stat_replication rows of every server read; `unread`: why a sender could not be read."""
    nodes = {n.name: (n.host, n.port) for n in cluster.nodes}
    addresses = addresses if addresses is not None else {n: set() for n in nodes}
    result = Matching()
    by_upstream: dict[str, list[PostgresNode]] = {}
    for node in expected_standbys(cluster, primary):
        by_upstream.setdefault(upstream_for(node, views.get(node.name), primary, nodes), []).append(node)
    for sender, candidates in by_upstream.items():
        if sender not in rows_by_sender:
            why = (unread or {}).get(sender, "it was not read")
            result.replicas += [ReplicaMatch(node=n.name, upstream=sender,
                                             problem=f"its upstream {sender} could not be read: {why}")
                                for n in candidates]
            continue
        matched, rest = _match_sender(sender, candidates, list(rows_by_sender[sender]), views, addresses, nodes)
        result.replicas += matched
        result.unknown += [UnknownStandby(sender=sender, row=r) for r in rest]
    for sender in sorted(set(rows_by_sender) - set(by_upstream)):
        result.unknown += [UnknownStandby(sender=sender, row=r) for r in rows_by_sender[sender]]
    order = {n.name: i for i, n in enumerate(cluster.nodes)}
    result.replicas.sort(key=lambda m: order[m.node])
    return result


def _match_sender(sender: str, candidates: list[PostgresNode], rows: list[ReplicationRow],
                  views: dict[str, StandbyView], addresses: dict[str, set[str]], nodes: dict[str, tuple[str, int]]
                  ) -> tuple[list[ReplicaMatch], list[ReplicationRow]]:
    done: list[ReplicaMatch] = []
    left = list(candidates)

    def take(node: PostgresNode, row: ReplicationRow, how: str) -> None:
        done.append(ReplicaMatch(node=node.name, upstream=sender, row=row, how=how))
        left.remove(node)
        rows.remove(row)

    def receiver(node: PostgresNode) -> ReceiverRow | None:
        view = views.get(node.name)
        return view.receiver if view is not None and view.receiver and not view.receiver.receiver_hidden else None

    for node in list(left):  # 1. declared in the block
        row = next((r for r in rows if node.replication_slot and r.slot_name == node.replication_slot), None)
        if row is not None:
            take(node, row, f"slot {row.slot_name} (declared in the block)")
            continue
        row = _only(r for r in rows if node.application_name and r.application_name == node.application_name)
        if row is not None:
            take(node, row, f"application_name {row.application_name!r} (declared in the block)")
    for node in list(left):  # 2a. the slot the standby says it streams on
        slot = (receiver(node).slot_name if receiver(node) else None)
        row = next((r for r in rows if slot and r.slot_name == slot), None)
        if row is not None:
            take(node, row, f"slot {slot} (the standby's own WAL receiver)")

    def claimed(node: PostgresNode) -> set[str]:
        rec = receiver(node)
        return {rec.application_name} if rec and rec.application_name else {node.name}

    for node in list(left):  # 2b. the name it gives its upstream, when unique on both sides
        names = claimed(node)
        row = _only(r for r in rows if r.application_name in names)
        if row is not None and sum(1 for n in left if row.application_name in claimed(n)) == 1:
            take(node, row, f"application_name {row.application_name!r}")
    for node in list(left):  # 3. the address of its host, when unique on both sides
        ips = addresses.get(node.name, set())
        row = _only(r for r in rows if r.client_addr in ips)
        if row is not None and sum(1 for n in left if row.client_addr in addresses.get(n.name, set())) == 1:
            take(node, row, f"client address {row.client_addr} (its host)")
    # 4. elimination: standbys that say they stream from this sender (or whose receiver this role cannot see)
    confirmed = [n for n in left if _streams_from(views.get(n.name), sender, nodes)]
    if confirmed and len(confirmed) == len(rows):
        if len(rows) == 1:
            take(confirmed[0], rows[0], f"the only standby streaming from {sender} not otherwise identified")
        else:
            worst = max(rows, key=lambda r: (r.replay_lag_bytes or 0, r.replay_lag_seconds or 0))
            names = [n.name for n in confirmed]
            for node in confirmed:
                done.append(ReplicaMatch(node=node.name, upstream=sender, row=worst, shared_with=names,
                                         how=f"one of {len(rows)} standbys of {sender} that cannot be told apart "
                                             "(same name, same host, no slot): the worst of them is shown"))
                left.remove(node)
            rows.clear()
    for node in left:
        done.append(ReplicaMatch(node=node.name, upstream=sender, problem=_why_missing(node, sender, views)))
    return done, rows


def _only(rows) -> ReplicationRow | None:
    found = list(rows)
    return found[0] if len(found) == 1 else None


def _streams_from(view: StandbyView | None, sender: str, nodes: dict[str, tuple[str, int]]) -> bool:
    """The standby says it is streaming from `sender`, or it answered as a standby whose receiver this role
    may not see."""
    if view is None or view.receiver is None:
        return False
    return view.receiver.receiver_hidden or upstream_of(view.receiver, nodes) == sender


def _why_missing(node: PostgresNode, sender: str, views: dict[str, StandbyView]) -> str:
    view = views.get(node.name)
    if view is None:
        return f"{node.name} is not in {sender}'s pg_stat_replication as far as the monitor can tell " \
               "(the standby itself was not read)"
    if view.receiver is None:
        return f"{node.name} could not be read ({view.error or 'no answer'}) and {sender} lists no standby " \
               "that is it"
    rec = view.receiver
    if rec.receiver_hidden:
        return f"{sender} lists no standby that is {node.name}; the monitor's role cannot see {node.name}'s WAL " \
               "receiver (grant pg_monitor), so declare replication_slot or application_name for it in the block"
    if rec.receiver_status != "streaming":
        return f"{node.name} is not streaming from {sender}: its WAL receiver is " \
               f"{rec.receiver_status or 'not running'}"
    return f"{node.name} streams from {rec.sender_host}:{rec.sender_port}, and {sender} lists no standby that is " \
           "it (a server outside the cluster block?)"


Read = tuple[Any, BaseException | None]


def match_reads(cluster: PostgresCluster, primary: str, replication: dict[str, Read], receivers: dict[str, Read],
                unreachable: dict[str, BaseException | None]) -> tuple[Matching | None, BaseException | None]:
    """match_replicas over the health check's gathered reads ((result, error) per node): None and the error
    when the primary's pg_stat_replication could not be read."""
    from tasks.core.errors import describe_error

    rows, error = replication.get(primary, (None, None))
    if error is not None or rows is None:
        return None, error
    views = {n: StandbyView(node=n, error=f"{n} {describe_error(err)}") for n, err in unreachable.items()}
    views |= {n: StandbyView(node=n, receiver=row, error=f"{n} {describe_error(err)}" if err else None)
              for n, (row, err) in receivers.items()}
    read = {n: r for n, (r, err) in replication.items() if err is None and r is not None}
    unread = {n: describe_error(err) for n, (_, err) in replication.items() if err is not None}
    return match_replicas(cluster, primary, read, views, node_addresses(cluster), unread), None
