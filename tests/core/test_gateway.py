"""The database gateway: session settings, typed errors, retry decisions by SQLSTATE."""

import threading

import pytest
from psycopg import errors as pgerr
from psycopg import sql
from pydantic import BaseModel, SecretStr

from sandbox.blocks import sandbox_cluster_block
from sandbox.cluster import free_port
from tasks.core import errors
from tasks.core.db import connect
from tests.helpers import psql, wait_for


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


NOEXT_DB = "gw_noext_db"


@pytest.fixture(scope="module")
def noext_db(sandbox):
    """A database where neither pgstattuple nor pg_stat_statements is created."""
    with sandbox.connect("primary") as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(NOEXT_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(NOEXT_DB)))
    yield NOEXT_DB
    with sandbox.connect("primary") as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(NOEXT_DB)))


@pytest.mark.parametrize("query", [
    "SELECT * FROM pgstattuple('pg_catalog.pg_class')",
    "SELECT * FROM public.pgstatindex('pg_catalog.pg_class_oid_index')",
    "SELECT * FROM pgstattuple_approx('pg_catalog.pg_class'::regclass)",
])
def test_missing_pgstattuple_function_is_a_missing_extension(sandbox, noext_db, query):
    with pytest.raises(errors.MissingExtension) as info:
        with connect(target(sandbox, database=noext_db)) as db:
            db.execute(query)
    err = info.value
    assert err.sqlstate == "42883" and not err.transient
    assert "CREATE EXTENSION pgstattuple" in err.action and "CREATE EXTENSION pgstattuple" in str(err)


def test_missing_pg_stat_statements_view_says_how_to_enable_it(sandbox, noext_db):
    with pytest.raises(errors.MissingExtension) as info:
        with connect(target(sandbox, database=noext_db)) as db:
            db.execute("SELECT calls FROM pg_stat_statements")
    err = info.value
    assert err.sqlstate == "42P01" and not err.transient
    assert "shared_preload_libraries" in err.action and "CREATE EXTENSION pg_stat_statements" in err.action


def test_other_undefined_functions_and_tables_keep_their_types(sandbox, noext_db):
    with pytest.raises(errors.RunbookDBError) as info:
        with connect(target(sandbox, database=noext_db)) as db:
            db.execute("SELECT no_such_function_here(1)")
    assert type(info.value) is errors.RunbookDBError and info.value.sqlstate == "42883"
    with pytest.raises(errors.UnknownObject):
        with connect(target(sandbox, database=noext_db)) as db:
            db.execute("SELECT * FROM pg_stat_statements_not_a_view")


def test_extension_not_preloaded_is_a_missing_extension():
    # A server without pg_stat_statements in shared_preload_libraries answers 55000 with this text
    # (PG16+ quotes the setting); the sandbox preloads it, so the driver error is built here.
    for text in ('pg_stat_statements must be loaded via shared_preload_libraries',
                 'pg_stat_statements must be loaded via "shared_preload_libraries"'):
        err = errors.classify(pgerr.ObjectNotInPrerequisiteState(text), "primary (h:1)")
        assert isinstance(err, errors.MissingExtension) and err.sqlstate == "55000"
        assert "shared_preload_libraries" in err.action and "restart" in err.action
    other = errors.classify(pgerr.ObjectNotInPrerequisiteState("cannot do that now"), "primary (h:1)")
    assert type(other) is errors.RunbookDBError


def test_operator_cancel_is_its_own_error_and_never_retried(sandbox):
    outcome = {}

    def run():
        try:
            with connect(target(sandbox), purpose="gw-cancel-probe", statement_timeout_ms=30_000) as db:
                db.scalar("SELECT pg_sleep(20)")
        except errors.RunbookDBError as exc:
            outcome["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    try:
        pid = wait_for(lambda: psql(sandbox, "primary",
                                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                                    "AND state = 'active'", ("pg-runbooks/gw-cancel-probe",)), what="the probe")
        assert psql(sandbox, "primary", "SELECT pg_cancel_backend(%s)", (pid[0][0],))[0][0]
    finally:
        t.join(25)
    err = outcome["error"]
    assert isinstance(err, errors.QueryCancelled) and err.sqlstate == "57014"
    assert "user request" in err.detail and "pg_cancel_backend" in err.action
    assert not err.transient and errors.retry_if_transient(None, None, _State(err)) is False


def test_statement_timeout_and_user_cancel_are_told_apart_by_message():
    timeout = errors.classify(pgerr.QueryCanceled("canceling statement due to statement timeout"), "n")
    cancel = errors.classify(pgerr.QueryCanceled("canceling statement due to user request"), "n")
    other = errors.classify(pgerr.QueryCanceled("annulation de la requête à la demande de l'utilisateur"), "n")
    lock = errors.classify(pgerr.LockNotAvailable("canceling statement due to lock timeout"), "n")
    assert type(timeout) is errors.QueryTimeout and timeout.transient
    assert type(cancel) is errors.QueryCancelled and not cancel.transient
    assert type(other) is errors.QueryCancelled  # unknown wording: never retried
    assert type(lock) is errors.LockTimeout and lock.transient


class _State:
    def __init__(self, exc):
        self.data = exc


@pytest.mark.parametrize("exc, expected", [
    (errors.NodeUnreachable("n", "refused"), True),
    (errors.ConnectionLost("n", "terminated"), True),
    (errors.QueryTimeout("n", "canceled"), True),
    (errors.LockTimeout("n", "lock"), True),
    (errors.QueryCancelled("n", "canceling statement due to user request"), False),
    (errors.MissingExtension("n", "function pgstattuple(unknown) does not exist"), False),
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
