"""tasks.core.replica_match on rows as PostgreSQL returns them (pure: no database). The real topologies are in
tests/alerts/test_alert_plain_replicas.py."""

from __future__ import annotations

from blocks.postgres_cluster import PostgresCluster, PostgresNode
from tasks.core.replica_match import StandbyView, match_replicas
from tasks.core.replication import ReceiverRow, ReplicationRow


def cluster(*standbys: PostgresNode) -> PostgresCluster:
    return PostgresCluster(cluster_name="c", nodes=[PostgresNode(name="pg-1", host="10.0.0.1"), *standbys],
                           primary_node="pg-1")


def row(name="walreceiver", addr="10.0.0.9", slot=None, lag=0) -> ReplicationRow:
    return ReplicationRow(application_name=name, client_addr=addr, client_port=40000, slot_name=slot,
                          state="streaming", sync_state="async", sent_lsn="0/1", write_lsn="0/1", flush_lsn="0/1",
                          replay_lsn="0/1", sent_lag_bytes=0, flush_lag_bytes=0, replay_lag_bytes=lag,
                          write_lag_seconds=None, flush_lag_seconds=None, replay_lag_seconds=None)


def streaming(node: str, name="walreceiver", slot=None, host="10.0.0.1", port=5432) -> StandbyView:
    return StandbyView(node=node, receiver=ReceiverRow(
        receiver_status="streaming", application_name=name, sender_host=host, sender_port=port, slot_name=slot,
        receive_lsn="0/1", replay_lsn="0/1", replay_backlog_bytes=0, replay_paused=False,
        seconds_since_last_replay=None))


def test_declared_slot_wins_and_an_extra_row_is_unknown():
    c = cluster(PostgresNode(name="pg-2", host="10.0.0.2", replication_slot="s2"))
    m = match_replicas(c, "pg-1", {"pg-1": [row(slot="s2"), row(name="pg_receivewal", addr="10.0.0.7")]}, {})
    assert m.replica("pg-2").row.slot_name == "s2" and "declared" in m.replica("pg-2").how
    assert [u.label for u in m.unknown] == [
        "unknown standby 'pg_receivewal' from 10.0.0.7 (not in the cluster block)"]


def test_same_name_same_host_no_slot_share_the_worst_row():
    c = cluster(PostgresNode(name="pg-2", host="10.0.0.9"), PostgresNode(name="pg-3", host="10.0.0.9"))
    m = match_replicas(c, "pg-1", {"pg-1": [row(lag=0), row(lag=5000)]},
                       {"pg-2": streaming("pg-2"), "pg-3": streaming("pg-3")}, {"pg-2": {"10.0.0.9"},
                                                                              "pg-3": {"10.0.0.9"}})
    assert [r.row.replay_lag_bytes for r in m.replicas] == [5000, 5000]
    assert m.replicas[0].shared_with == ["pg-2", "pg-3"] and m.unknown == []


def test_the_address_tells_two_walreceivers_apart():
    c = cluster(PostgresNode(name="pg-2", host="10.0.0.2"), PostgresNode(name="pg-3", host="10.0.0.3"))
    m = match_replicas(c, "pg-1", {"pg-1": [row(addr="10.0.0.3", lag=7), row(addr="10.0.0.2", lag=1)]},
                       {"pg-2": streaming("pg-2"), "pg-3": streaming("pg-3")},
                       {"pg-1": {"10.0.0.1"}, "pg-2": {"10.0.0.2"}, "pg-3": {"10.0.0.3"}})
    assert {r.node: r.row.replay_lag_bytes for r in m.replicas} == {"pg-2": 1, "pg-3": 7}


def test_a_stopped_receiver_is_missing_with_why_and_a_down_upstream_is_said():
    c = cluster(PostgresNode(name="pg-2", host="10.0.0.2"),
                PostgresNode(name="pg-3", host="10.0.0.3", upstream="pg-2"))
    stopped = streaming("pg-2").model_copy(update={"receiver": streaming("pg-2").receiver.model_copy(
        update={"receiver_status": None})})
    m = match_replicas(c, "pg-1", {"pg-1": []}, {"pg-2": stopped}, unread={"pg-2": "pg-2 is unreachable"})
    assert m.replica("pg-2").problem == "pg-2 is not streaming from pg-1: its WAL receiver is not running"
    assert m.replica("pg-3").problem == "its upstream pg-2 could not be read: pg-2 is unreachable"


def test_a_base_backup_in_progress_is_not_a_replica():
    from tasks.alerts.metrics import replica_lag_samples

    c = cluster(PostgresNode(name="pg-2", host="10.0.0.2"))
    backup = row(name="pg_basebackup", addr="10.0.0.8", lag=10**9).model_copy(update={"state": "backup"})
    m = match_replicas(c, "pg-1", {"pg-1": [row(addr="10.0.0.2"), backup]}, {"pg-2": streaming("pg-2")})
    assert m.replica("pg-2").row.client_addr == "10.0.0.2"
    assert [s.labels["replica"] for s in replica_lag_samples(m)] == ["pg-2"]
