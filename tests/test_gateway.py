"""The database gateway: session settings, typed errors, retry decisions by SQLSTATE."""

import threading

import pytest
from pydantic import BaseModel, SecretStr

from sandbox.blocks import sandbox_cluster_block
from sandbox.cluster import free_port
from tasks import errors
from tasks.db import connect


class Setting(BaseModel):
    name: str
    setting: str


def target(sandbox, node="primary", **changes):
    t = sandbox_cluster_block(sandbox).target(node)
    return t.model_copy(update=changes)


def test_session_sets_application_name_and_timeouts(sandbox):
    with connect(target(sandbox), purpose="unit", statement_timeout_ms=1234, lock_timeout_ms=567) as db:
        rows = db.fetch_all(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            (["application_name", "statement_timeout", "lock_timeout", "jit"],), Setting)
    got = {r.name: r.setting for r in rows}
    assert got == {"application_name": "pg-runbooks/unit", "jit": "off",
                   "lock_timeout": "567", "statement_timeout": "1234"}


def test_pooler_sessions_get_timeouts_per_transaction(sandbox):
    block = sandbox_cluster_block(sandbox)
    with connect(block.endpoint_target(), statement_timeout_ms=4321) as db:
        assert db.scalar("SELECT current_setting('statement_timeout')") == "4321ms"
        with pytest.raises(errors.QueryTimeout):
            with connect(block.endpoint_target(), statement_timeout_ms=100) as db2:
                db2.scalar("SELECT pg_sleep(2)")


def test_unreachable_node_is_transient(sandbox):
    with pytest.raises(errors.NodeUnreachable) as info:
        with connect(target(sandbox, port=free_port())):
            pass
    assert info.value.transient
    assert "primary (127.0.0.1:" in str(info.value)


def test_wrong_password_is_not_retried_and_not_leaked(sandbox):
    wrong = "not-the-password-" + "x" * 8
    with pytest.raises(errors.AuthenticationFailed) as info:
        with connect(target(sandbox, password=SecretStr(wrong))):
            pass
    assert not info.value.transient
    assert wrong not in str(info.value) and sandbox.config.password not in str(info.value)
    assert "password" in str(info.value).lower()


def test_missing_database(sandbox):
    with pytest.raises(errors.DatabaseMissing):
        with connect(target(sandbox, database="no_such_db")):
            pass


def test_statement_timeout_is_a_typed_transient_error(sandbox):
    with pytest.raises(errors.QueryTimeout) as info:
        with connect(target(sandbox), statement_timeout_ms=100) as db:
            db.scalar("SELECT pg_sleep(2)")
    assert info.value.transient and info.value.sqlstate == "57014"


def test_lock_timeout_is_a_typed_transient_error(sandbox):
    holder_ready, release = threading.Event(), threading.Event()

    def hold():
        with sandbox.connect("primary", autocommit=False) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS gw_lock_t (id int)")
            conn.commit()
            conn.execute("LOCK TABLE gw_lock_t IN ACCESS EXCLUSIVE MODE")
            holder_ready.set()
            release.wait(10)
            conn.rollback()

    t = threading.Thread(target=hold)
    t.start()
    holder_ready.wait(10)
    try:
        with pytest.raises(errors.LockTimeout):
            with connect(target(sandbox), lock_timeout_ms=100) as db:
                db.execute("SELECT * FROM gw_lock_t")
    finally:
        release.set()
        t.join()


def test_permission_denied_for_monitor_role(sandbox):
    block = sandbox_cluster_block(sandbox, superuser=False)
    with pytest.raises(errors.PermissionDenied) as info:
        with connect(block.primary_target()) as db:
            db.execute("CREATE TABLE gw_not_allowed (id int)")
    assert not info.value.transient


def test_unknown_table(sandbox):
    with pytest.raises(errors.UnknownObject):
        with connect(target(sandbox)) as db:
            db.execute("SELECT * FROM no_such_table_here")


def test_read_only_standby(sandbox):
    with pytest.raises(errors.ReadOnlyServer):
        with connect(target(sandbox, "replica")) as db:
            db.execute("CREATE TABLE gw_on_replica (id int)")


class _State:
    def __init__(self, exc):
        self.data = exc


@pytest.mark.parametrize("exc, expected", [
    (errors.NodeUnreachable("n", "refused"), True),
    (errors.ConnectionLost("n", "terminated"), True),
    (errors.QueryTimeout("n", "canceled"), True),
    (errors.LockTimeout("n", "lock"), True),
    (errors.AuthenticationFailed("n", "bad password"), False),
    (errors.PermissionDenied("n", "denied"), False),
    (errors.UnknownObject("n", "no table"), False),
    (ValueError("bug"), False),
])
def test_retry_condition_follows_sqlstate_class(exc, expected):
    assert errors.retry_if_transient(None, None, _State(exc)) is expected


def test_prefect_task_retries_only_transient_errors(prefect_api):
    from prefect import flow, task

    attempts = {"auth": 0, "down": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=errors.retry_if_transient)
    def failing(kind: str):
        attempts[kind] += 1
        raise (errors.AuthenticationFailed if kind == "auth" else errors.NodeUnreachable)("n", kind)

    @flow
    def run_both():
        for kind in attempts:
            failing(kind, return_state=True)

    run_both()
    assert attempts == {"auth": 1, "down": 3}
