"""High-load response decisions as pure functions: exclusions, limits, lock-chain policy, form validation."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tasks.core.sessions import SessionRow, Survey
from tasks.emergency import high_load_plan as plan
from tasks.emergency import high_load_report as rules
from tasks.emergency.high_load_plan import HighLoadParams

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(pid, **kw) -> SessionRow:
    base = dict(pid=pid, backend_start=T0, query_start=T0 + timedelta(seconds=pid), xact_start=None,
                backend_type="client backend", usename="app", datname="shop", application_name="web",
                client_addr="10.1.2.3", state="active", wait_event_type=None, query=f"SELECT {pid}",
                query_seconds=5.0, state_seconds=5.0)
    base.update(kw)
    return SessionRow(**base)


def survey(*rows) -> Survey:
    return Survey(observed_at=T0, own_pid=1, can_signal=True, runbook_role="ops", sessions=list(rows))


def test_exclusions_name_why_a_session_is_never_touched():
    p = HighLoadParams(exclude_roles=["batch"], exclude_databases=["billing"], exclude_client_addrs=["192.168.0.0/16"])
    cases = {
        "the runbook's own backend": row(1, is_self=True),
        "walsender": row(2, backend_type="walsender"),
        "autovacuum worker": row(3, backend_type="autovacuum worker"),
        "background writer": row(4, backend_type="background writer"),
        "superuser session": row(5, is_superuser=True),
        "excluded role batch": row(6, usename="batch"),
        "excluded application pg-runbooks/maintenance": row(7, application_name="pg-runbooks/maintenance"),
        "excluded database billing": row(8, datname="billing"),
        "excluded client address 192.168.4.5": row(9, client_addr="192.168.4.5"),
        "not visible": row(10, backend_start=None),
    }
    for expected, s in cases.items():
        reason = plan.exclusion_reason(s, p)
        assert reason and expected.split()[-1] in reason, (expected, reason)
    assert plan.exclusion_reason(row(11), p) is None
    assert "not in only_roles" in plan.exclusion_reason(row(13), HighLoadParams(only_roles=["reports"]))
    assert plan.exclusion_reason(row(12, is_superuser=True), HighLoadParams(exclude_superusers=False)) is None


def test_long_queries_and_idle_transactions_oldest_first_within_the_blast_radius():
    p = HighLoadParams(long_query_seconds=60, idle_in_transaction_seconds=30, max_sessions=2)
    s = survey(
        row(20, query_seconds=61),
        row(21, query_seconds=59),                                   # under the threshold
        row(22, query_seconds=500),
        row(23, state="idle in transaction", state_seconds=31, query_seconds=900),
        row(24, state="idle", query_seconds=9999, state_seconds=9999),  # idle: never
        row(25, query_seconds=9999, usename="runbook_monitor"),      # excluded by default
    )
    step = plan.plan_long_queries(s, p, budget=p.max_sessions)
    assert [(a.pid, a.action) for a in step.actions] == [(22, "cancel_then_terminate"), (20, "cancel_then_terminate")]
    assert [(a.pid, a.action, a.step) for a in step.over_limit] == [(23, "terminate", "idle-in-transaction")]
    assert [e.pid for e in step.excluded] == [25]
    skipped = plan.over_limit_results(step, p.max_sessions)
    assert skipped[0].result == "skipped" and "limit of 2" in skipped[0].detail


def _chain_survey(root_state: str, ddl: bool = True) -> Survey:
    """root 30 <- 31 (UPDATE) <- 32 (ALTER TABLE, queued) <- 33, 34 (SELECTs behind it)."""
    wait = dict(wait_event_type="Lock", waiting_relation="orders", waiting_seconds=40.0)
    return survey(
        row(30, state=root_state, query="UPDATE orders SET x = 1", held_relation_locks=["RowExclusiveLock on orders"]),
        row(31, blocked_by=[30], waiting_mode="ShareLock", waiting_locktype="transactionid", **wait),
        row(32, blocked_by=[30, 31], waiting_mode="AccessExclusiveLock" if ddl else "RowExclusiveLock",
            waiting_locktype="relation",
            query="ALTER TABLE orders ADD COLUMN y int" if ddl else "UPDATE orders SET y = 2", **wait),
        row(33, blocked_by=[32], waiting_mode="AccessShareLock", **wait),
        row(34, blocked_by=[32], waiting_mode="AccessShareLock", **wait),
    )


def test_lock_chain_is_found_with_depths():
    s = _chain_survey("idle in transaction")
    chains = plan.find_lock_chains(s)
    assert len(chains) == 1 and chains[0].root_pid == 30
    assert [(m.pid, m.depth) for m in chains[0].members] == [(30, 0), (31, 1), (32, 1), (33, 2), (34, 2)]
    assert chains[0].waiter_count == 4 and chains[0].max_waiting_seconds == 40


@pytest.mark.parametrize("root_state, ddl, policy, expected", [
    ("idle in transaction", True, "cancel", [(30, "terminate")]),
    ("idle in transaction (aborted)", False, "report", [(30, "terminate")]),
    ("active", True, "cancel", [(32, "cancel")]),
    ("active", False, "cancel", [(30, "cancel")]),
    ("active", False, "cancel_then_terminate", [(30, "cancel_then_terminate")]),
    ("active", False, "report", []),
])
def test_root_blocker_policy(root_state, ddl, policy, expected):
    s = _chain_survey(root_state, ddl)
    chains = plan.find_lock_chains(s)
    step = plan.plan_lock_chains(chains, s, HighLoadParams(lock_wait_seconds=30, active_root_blocker=policy),
                                 budget=10, already=set())
    assert [(a.pid, a.action) for a in step.actions] == expected
    assert chains[0].resolution


def test_short_waits_and_excluded_roots_are_reported_not_acted_on():
    s = _chain_survey("idle in transaction")
    chains = plan.find_lock_chains(s)
    step = plan.plan_lock_chains(chains, s, HighLoadParams(lock_wait_seconds=41), budget=10, already=set())
    assert step.actions == [] and "left alone" in chains[0].resolution
    s.sessions[0].usename = "batch"
    chains = plan.find_lock_chains(s)
    step = plan.plan_lock_chains(chains, s, HighLoadParams(lock_wait_seconds=1, exclude_roles=["batch"]),
                                 budget=10, already=set())
    assert step.actions == [] and [e.pid for e in step.excluded] == [30]
    assert "excluded" in chains[0].resolution


def test_lock_chain_actions_respect_the_remaining_budget():
    s = _chain_survey("idle in transaction")
    chains = plan.find_lock_chains(s)
    step = plan.plan_lock_chains(chains, s, HighLoadParams(lock_wait_seconds=1), budget=0, already=set())
    assert step.actions == [] and [a.pid for a in step.over_limit] == [30]
    assert "limit" in chains[0].resolution


def test_a_session_handled_by_step_one_is_not_planned_twice():
    s = _chain_survey("idle in transaction")
    chains = plan.find_lock_chains(s)
    step = plan.plan_lock_chains(chains, s, HighLoadParams(lock_wait_seconds=1), budget=10, already={30})
    assert step.actions == [] and "already handled" in chains[0].resolution


@pytest.mark.parametrize("bad", [
    {"long_query_seconds": 0}, {"long_query_seconds": 10**9}, {"max_sessions": 0}, {"max_sessions": 5000},
    {"idle_in_transaction_seconds": -1}, {"cancel_grace_seconds": 301}, {"exclude_client_addrs": ["not-an-ip"]},
    {"active_root_blocker": "kill"}, {"terminate_timeout_seconds": 0},
])
def test_out_of_range_parameters_are_validation_errors(bad):
    with pytest.raises(ValidationError):
        HighLoadParams(**bad)


def test_remaining_load_counts_only_eligible_sessions():
    p = HighLoadParams(long_query_seconds=60, idle_in_transaction_seconds=60, lock_wait_seconds=10)
    s = survey(row(40, query_seconds=100), row(41, query_seconds=100, is_superuser=True),
               row(42, state="idle in transaction", state_seconds=100),
               row(43, blocked_by=[40], waiting_seconds=11.0))
    assert rules.remaining_load(s, p).model_dump() == {"long_queries": 1, "idle_in_transaction": 1,
                                                        "blocked_sessions": 1}
