"""The crashed old primary's WAL end, read on a node promoted after its last checkpoint (ground truth: the LSN
its last acknowledged commit reached). The end-of-recovery checkpoint is spread; a crash can come before it, and
then pg_controldata still names the old timeline: reading only that timeline stops at the promotion point."""

from __future__ import annotations

import pytest

from sandbox.blocks import sandbox_node_control_block
from sandbox.cluster import Sandbox
from tasks.failover.node_control import _wal_end_on, controldata, wal_end
from tasks.failover.plan import lsn_int

pytestmark = pytest.mark.versioned


@pytest.fixture(scope="module")
def box():
    sb = Sandbox.ephemeral("pgrb-walend-", defaults=True)
    sb.start()
    yield sb
    sb.destroy()


def test_wal_end_follows_the_timelines_the_node_switched_to(box):
    control = sandbox_node_control_block(box)
    with box.connect("primary", autocommit=True) as conn:
        conn.execute("CREATE TABLE public.walend (n int)")
        conn.execute("INSERT INTO public.walend SELECT g FROM generate_series(1, 100) g")
    box.wait_streaming("primary")
    with box.connect("replica", autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # a restartpoint on timeline 1: the checkpoint the crash will leave behind
    box.stop_node("replica", "fast")
    before = controldata(control, "replica", "127.0.0.1")
    box.start_node("replica")
    assert before["Latest checkpoint's TimeLineID"] == "1"
    box.stop_node("primary", "fast")
    with box.connect("replica", autocommit=True) as conn:
        conn.execute("SELECT pg_promote()")
        promoted = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        conn.execute("INSERT INTO public.walend SELECT g FROM generate_series(101, 2100) g")  # acknowledged
    box.stop_node("replica", "immediate")
    start = before["Latest checkpoint location"]
    only_timeline_1 = _wal_end_on(control, "replica", "127.0.0.1", start, 1, 30)
    assert only_timeline_1 and lsn_int(only_timeline_1) <= lsn_int(promoted)  # the old reading stops there
    end = wal_end(control, "replica", "127.0.0.1", start, 1)
    assert end and lsn_int(end) - lsn_int(promoted) > 2000 * 40, (end, promoted)  # 2,000 heap inserts later
    box.start_node("replica")  # ground truth: crash recovery replays exactly that WAL, the rows are there
    with box.connect("replica") as conn:
        assert conn.execute("SELECT count(*) FROM public.walend").fetchone()[0] == 2100
