"""Helpers shared by the tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import psycopg.sql

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


def own_sandbox(prefix: str, defaults: bool = False):
    """A module fixture: a sandbox of the module's own (primary, replica, pgbouncer), destroyed after it."""
    import pytest

    @pytest.fixture(scope="module")
    def box():
        sb = Sandbox.ephemeral(prefix, defaults=defaults)
        sb.start()
        yield sb
        sb.destroy()

    return box


def failover_fixtures(prefix: str, block: str, defaults: bool = False):
    """The module fixtures of a failover test module on a sandbox of its own: (box, blocks, journal_dir).

    `defaults=True`: pgbouncer with its defaults and the replica as pg_basebackup -R made it (docs/sandbox.md).
    """
    import tempfile

    import pytest

    from sandbox.blocks import save_failover_blocks

    box = own_sandbox(prefix, defaults)

    @pytest.fixture(scope="module")
    def blocks(box, prefect_api):
        save_failover_blocks(box, block)
        return block

    @pytest.fixture(scope="module")
    def journal_dir():
        return tempfile.mkdtemp(prefix="pgrb-journal-")

    return box, blocks, journal_dir


def failover_request(block: str, journal_dir: str, **kw):
    """A FailoverRequest on `block` (cluster, node control and endpoint blocks alike) with short waits."""
    from tasks.failover.model import FailoverRequest

    base = dict(cluster_block=block, node_control_block=block, endpoint_block=block, journal_dir=journal_dir,
                lsn_gate_timeout_seconds=15, promote_timeout_seconds=15, confirm_cluster=block)
    return FailoverRequest(**{**base, **kw})


def seed_report_history(state_dir: str | Path, cluster: str, days: int = 2) -> list[Path]:
    """Turn the one stored daily report of `cluster` into `days` daily reports, 1..days days before now (same
    figures; each counts from the one before it), latest.json being the newest: the history the next report's
    trend charts read. Returns the stored copies, oldest first."""
    import json
    from datetime import UTC, datetime, timedelta

    folder = Path(state_dir) / cluster
    (original,) = [p for p in folder.glob("*.json") if p.name != "latest.json"]
    data = json.loads(original.read_text())
    original.unlink()
    now = datetime.now(UTC).replace(microsecond=0)
    written = []
    for back in range(days, 0, -1):
        at = now - timedelta(days=back)
        data.update(started_at=at.isoformat(), finished_at=at.isoformat(),
                    previous_at=(at - timedelta(days=1)).isoformat() if back < days else None)
        if data.get("statements_delta") and back < days:
            data["statements_delta"]["since"] = "previous report"
        path = folder / f"{at:%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(data))
        written.append(path)
    (folder / "latest.json").write_text(written[-1].read_text())
    return written


class Writer(threading.Thread):
    """Commits numbered rows through pgbouncer and records which commits were acknowledged."""

    def __init__(self, box, table: str = "fo_writes"):
        super().__init__(daemon=True)
        self.box, self.stop_event = box, threading.Event()
        self.insert = psycopg.sql.SQL("INSERT INTO {} (n) VALUES (%s)").format(psycopg.sql.Identifier("public", table))
        self.acked: list[int] = []
        self.acked_at: list[float] = []  # perf_counter of each acknowledged commit
        self.errors: list[str] = []

    def run(self):
        conn = None
        n = 0
        while not self.stop_event.is_set():
            n += 1
            try:
                conn = conn or self.box.connect("pgbouncer")
                conn.execute(self.insert, (n,))
                self.acked.append(n)
                self.acked_at.append(time.perf_counter())
            except psycopg.Error as exc:
                self.errors.append(f"{n}: {type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()


def wait_table_stats(box: Sandbox, condition: str, dbname: str = "postgres", timeout: float = 10) -> None:
    """Wait until `condition` (SQL over pg_stat_user_tables) holds: before PG15 the statistics collector
    applies counts asynchronously (~0.5 s late), so what a test just did may not show yet."""
    import psycopg
    from psycopg import sql

    query = sql.SQL("SELECT {} FROM pg_catalog.pg_stat_user_tables").format(sql.SQL(condition))  # test-written SQL

    def holds() -> bool:
        with psycopg.connect(box.conninfo("primary", dbname=dbname), autocommit=True) as conn:
            return bool(conn.execute(query).fetchone()[0])
    wait_for(holds, timeout=timeout, what=f"statistics: {condition}")
