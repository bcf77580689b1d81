"""Helpers shared by the tests."""

from __future__ import annotations

import time

from sandbox.cluster import Sandbox


def save_slack_block(fake_slack, name: str, token: str, channel: str = "#db-ops", **kw) -> str:
    from pydantic import SecretStr

    from blocks.slack_notifier import SlackNotifier

    SlackNotifier(bot_token=SecretStr(token), channel=channel, base_url=fake_slack.base_url,
                  timeout_seconds=kw.pop("timeout_seconds", 2), **kw).save(name, overwrite=True)
    return name


def wait_for(predicate, timeout: float = 20, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def ensure_healthy(box: Sandbox) -> None:
    """Bring the sandbox back to primary+streaming replica after a test stopped a node."""
    box.start_node("primary")
    box.start_node("replica")
    with box.connect("replica") as conn:
        if conn.execute("SELECT pg_is_wal_replay_paused()").fetchone()[0]:
            conn.execute("SELECT pg_wal_replay_resume()")
    box.wait_streaming()


def psql(box: Sandbox, node: str, query: str, params=None):
    with box.connect(node) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else None


def wait_horizon(box) -> None:
    """Wait until the replica's hot_standby_feedback xmin (on its slot) has passed our last deletes,
    so VACUUM can remove those dead tuples (otherwise they are still 'recently dead')."""
    xid = int(psql(box, "primary", "SELECT pg_catalog.txid_current()")[0][0])
    wait_for(lambda: psql(box, "primary",
                          "SELECT bool_and(xmin IS NULL OR xmin::text::bigint > %s) FROM pg_replication_slots",
                          (xid % 2**32,))[0][0], timeout=15, what="the replica's xmin to advance")


def wait_table_stats(box: Sandbox, condition: str, dbname: str = "postgres", timeout: float = 10) -> None:
    """Wait until `condition` (SQL over pg_stat_user_tables) holds: before PG15 the statistics collector
    applies counts asynchronously (~0.5 s late), so what a test just did may not show yet."""
    import psycopg

    def holds() -> bool:
        with psycopg.connect(box.conninfo("primary", dbname=dbname), autocommit=True) as conn:
            return bool(conn.execute(f"SELECT {condition} FROM pg_catalog.pg_stat_user_tables").fetchone()[0])  # noqa: S608
    wait_for(holds, timeout=timeout, what=f"statistics: {condition}")
