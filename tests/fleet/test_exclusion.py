"""One exclusion per cluster: maintenance runs exclude each other (wait or skip, and say which); a failover or a
high-load response takes priority (maintenance never starts under one and stops before its next table); the locks
of two clusters are independent. Real Prefect global concurrency limits, a real sandbox."""

from __future__ import annotations

import asyncio
import tempfile
import threading

import pytest
from psycopg import sql

from tasks.core import exclusion
from tasks.core.exclusion import StopCheck, maintenance_lock_name, maintenance_turn, urgent_marker
from tasks.core.limits import exclusive, failover_lock_name
from tests.helpers import psql, wait_horizon

TABLES = ["excl_a", "excl_b", "excl_c"]


@pytest.fixture(scope="module")
def tables(sandbox, cluster_block):
    for t in TABLES:
        table = sql.Identifier("public", t)
        psql(sandbox, "primary", sql.SQL("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int); INSERT INTO {t} "
                                         "SELECT generate_series(1, 100); DELETE FROM {t};").format(t=table))
    return [f"public.{t}" for t in TABLES]


def test_maintenance_skips_or_waits_for_another_maintenance_run_and_says_which(prefect_api):
    with exclusive(maintenance_lock_name("excl-1")) as first:
        assert first
        with maintenance_turn("excl-1", "index maintenance", on_busy="skip") as turn:
            assert not turn.held
            assert turn.sentence == ("index maintenance of excl-1 skipped: another maintenance run of excl-1 holds "
                                     "maintenance-excl-1; nothing was done.")
        with maintenance_turn("excl-1", "vacuum", on_busy="wait", wait_seconds=0.3, poll_seconds=0.1) as turn:
            assert not turn.held and "gave up after waiting" in turn.sentence
        with maintenance_turn("excl-2", "vacuum", on_busy="skip") as other:  # another cluster: independent
            assert other.held

    release = threading.Event()

    def holder():
        with exclusive(maintenance_lock_name("excl-1")) as mine:
            assert mine
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        def free_soon():
            release.set()

        threading.Timer(0.5, free_soon).start()
        with maintenance_turn("excl-1", "vacuum", on_busy="wait", wait_seconds=60, poll_seconds=0.2) as turn:
            assert turn.held and turn.sentence.startswith("vacuum took the maintenance lock maintenance-excl-1")
    finally:
        release.set()
        thread.join()


def test_a_failover_or_a_high_load_response_has_priority(prefect_api):
    check = StopCheck("excl-3", every_seconds=0)
    assert check.reason() is None
    with exclusive(failover_lock_name("excl-3")) as mine:  # what a running failover holds
        assert mine
        with maintenance_turn("excl-3", "vacuum", on_busy="skip") as turn:
            assert not turn.held
            assert "a failover of excl-3 is running (it has priority)" in turn.sentence
        assert check.reason() == "stopped: a failover of excl-3 started and has priority"
    assert check.reason() is not None  # once stopped, the run stays stopped
    with urgent_marker("excl-4") as marked:
        assert marked
        assert StopCheck("excl-4").reason() == "stopped: a high-load response of excl-4 started and has priority"
        with urgent_marker("excl-4") as second:  # two responses: neither waits nor is refused
            assert second
        assert StopCheck("excl-5").reason() is None
    assert StopCheck("excl-4").reason() is None
    with urgent_marker("excl-4", active=False) as dry:  # a dry run marks nothing
        assert not dry and StopCheck("excl-4").reason() is None


def test_an_unreachable_api_never_stops_maintenance_on_its_own():
    def down(_cluster):
        raise OSError("connection refused")

    assert StopCheck("c", every_seconds=0, probe=down).reason() is None


def test_vacuum_stops_before_its_next_table_when_a_failover_starts(sandbox, cluster_block, tables):
    from blocks.postgres_cluster import PostgresCluster
    from tasks.maintenance.vacuum import VacuumOptions, resolve_tables, vacuum_tables

    target = PostgresCluster.load(cluster_block).primary_target()
    refs = resolve_tables.fn(target, tables)
    answers = iter([[], ["failover"]])  # the failover starts while the first table is vacuumed
    stop = StopCheck("test-sandbox", every_seconds=0, probe=lambda _c: next(answers, ["failover"]))
    out = vacuum_tables.fn(target, refs, VacuumOptions(), 2000, 60_000, stop=stop)
    assert [r.status for r in out] == ["vacuumed", "skipped-stopped", "skipped-stopped"]
    assert out[1].summary == ("public.excl_b not vacuumed: stopped: a failover of test-sandbox started and has "
                              "priority.")


def test_the_vacuum_flow_skips_under_a_failover_and_says_so(sandbox, cluster_block, tables):
    from flows.vacuum import vacuum
    from tasks.maintenance.vacuum_plan import VacuumParams

    params = VacuumParams(tables=tables, log_dir=tempfile.mkdtemp(prefix="pgrb-excl-log-"))
    with exclusive(failover_lock_name("test-sandbox")) as mine:
        assert mine
        report = asyncio.run(vacuum(cluster_block=cluster_block, params=params, if_busy="skip"))
    assert report.status == "warning" and report.results == []
    assert report.summary == ("vacuum of test-sandbox skipped: a failover of test-sandbox is running (it has "
                              "priority); nothing was done.")
    done = asyncio.run(vacuum(cluster_block=cluster_block, params=params, if_busy="skip"))
    assert {r.status for r in done.results} == {"vacuumed"}, done.summary
    assert done.exclusion == "vacuum took the maintenance lock maintenance-test-sandbox at once."


def test_index_actions_not_started_are_skipped_stopped_with_the_reason():
    from tasks.maintenance.indexes import IndexActionResult, run_index_actions

    actions = [IndexActionResult(index="public.i1", action="reindex", status="planned", statement="REINDEX ..."),
               IndexActionResult(index="public.i2", action="drop", status="refused", statement="DROP ...")]
    out = run_index_actions(None, actions, {}, 1000, 1000, None, StopCheck.already("stopped: a failover of x"))
    assert [a.status for a in out] == ["skipped-stopped", "refused"]
    assert out[0].summary == "public.i1 reindex not started: stopped: a failover of x."


def test_urgent_limits_are_the_failover_and_high_load_ones():
    assert exclusion.urgent_lock_names("Prod EU") == {"failover": "failover-prod-eu",
                                                      "high-load response": "high-load-prod-eu"}


def test_the_maintenance_lease_is_one_slot_created_if_missing_and_freed_on_release(prefect_api):
    from tasks.core.limits import leased_slot

    name = maintenance_lock_name("excl-lease")  # no such limit yet: created, then held
    with leased_slot(name) as first:
        assert first is not None and first.lost is None
        with leased_slot(name) as second:  # the server's 423: taken
            assert second is None
        with exclusive(name) as other:  # what concurrency() callers see: the same slot
            assert not other
    with leased_slot(name) as again:  # released on exit
        assert again is not None


def test_a_lease_that_cannot_be_renewed_stops_the_run_before_its_next_table(prefect_api):
    import time
    import uuid

    from tasks.core.exclusion import MaintenanceTurn
    from tasks.core.limits import Lease

    lease = Lease("maintenance-excl-6", uuid.uuid4(), 0.1).keep()  # a lease the server does not know
    deadline = time.monotonic() + 30
    while lease.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.lost and lease.lost.startswith("the lease of maintenance-excl-6 could not be renewed")
    turn = MaintenanceTurn(held=True, sentence="vacuum took it.", checked_at=time.monotonic(), lease=lease)
    check = StopCheck("excl-6", probe=lambda _c: [], turn=turn)
    assert check.reason() == f"stopped: {lease.lost}"


def test_a_turn_counts_as_the_first_urgent_check(prefect_api):
    import time

    from tasks.core.exclusion import MaintenanceTurn

    asked = []
    turn = MaintenanceTurn(held=True, sentence="vacuum took it.", checked_at=time.monotonic())
    check = StopCheck("excl-7", every_seconds=3600, probe=lambda c: asked.append(c) or [], turn=turn)
    assert check.reason() is None and asked == []  # the turn has just asked: no second request at once
    assert StopCheck("excl-7", every_seconds=3600, probe=lambda c: asked.append(c) or []).reason() is None
    assert asked == ["excl-7"]  # without a turn the first check asks


def test_an_unreachable_api_is_a_typed_error_never_a_free_cluster():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sandbox.cluster import free_port
    from tasks.core.limits import LimitsUnavailable, leased_slot

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        with pytest.raises(LimitsUnavailable), maintenance_turn("excl-8", "vacuum", on_busy="skip"):
            pass
        with pytest.raises(LimitsUnavailable), leased_slot("maintenance-excl-8"):
            pass


def test_a_vacuum_that_waited_for_the_lock_plans_from_a_fresh_catalog_read(sandbox, cluster_block):
    """The catalog read overlaps the lock; a run that had to wait (another maintenance run held the lock, and
    may have vacuumed meanwhile) reads again, so it does not vacuum what no longer needs it."""
    import time

    from flows.vacuum import vacuum
    from tasks.maintenance.vacuum_plan import VacuumParams

    table = sql.Identifier("public", "excl_waited")
    psql(sandbox, "primary", sql.SQL("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int); INSERT INTO {t} "
                                     "SELECT generate_series(1, 2000); DELETE FROM {t};").format(t=table))
    out: dict = {}
    params = VacuumParams(log_dir=tempfile.mkdtemp(prefix="pgrb-excl-log-"))
    with exclusive(maintenance_lock_name("test-sandbox")) as mine:  # another maintenance run holds the cluster
        assert mine
        run = threading.Thread(target=lambda: out.update(report=asyncio.run(
            vacuum(cluster_block=cluster_block, params=params, if_busy="wait", busy_wait_minutes=2))))
        run.start()
        deadline = time.monotonic() + 60
        while not psql(sandbox, "primary", "SELECT 1 FROM pg_catalog.pg_stat_activity WHERE state = 'idle' "
                                           "AND application_name = 'pg-runbooks/vacuum'"):
            assert time.monotonic() < deadline, "the vacuum run never made its catalog read"
            time.sleep(0.1)  # its read is done: it now waits for the lock
        wait_horizon(sandbox)  # the replica's feedback xmin past the DELETE: VACUUM can remove what it deleted
        psql(sandbox, "primary", sql.SQL("VACUUM (ANALYZE) {}").format(table))  # what the other run did meanwhile
        assert psql(sandbox, "primary", "SELECT n_dead_tup FROM pg_catalog.pg_stat_user_tables "
                                        "WHERE relname = 'excl_waited'") == [(0,)]
    run.join(timeout=120)
    report = out["report"]
    assert report.exclusion.startswith("vacuum took the maintenance lock maintenance-test-sandbox after waiting")
    assert "public.excl_waited" not in report.planned, [(r.table, r.reason, r.summary) for r in report.results]
