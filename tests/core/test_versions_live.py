"""Every version decision of tasks/core/server_capabilities.py checked against the running server, and the
version-dependent reads and grants run on it for real. Marked `versioned`: `./run test` runs these on the
default server (Debian's 15) and again on PostgreSQL 14 and 18; `./run test --pg N` on any of 14-18.

What each version must show is written here, from the release notes and the extension scripts:
pg_stat_statements 1.9 / 1.10 / 1.10 / 1.11 / 1.12 on 14-18; pg_stat_io from 16 (bytes columns from 18);
pg_stat_checkpointer and MAINTAIN / pg_maintain from 17.
"""

from __future__ import annotations

import pytest
from psycopg import sql
from pydantic import SecretStr

from sandbox.blocks import sandbox_cluster_block
from tasks.core.db import connect
from tasks.core.relations import RelationRef, resolve
from tasks.core.server_capabilities import capabilities
from tasks.maintenance.indexes import MissingIndexGrant, check_index_grants
from tasks.maintenance.vacuum import VacuumOptions, vacuum_tables
from tasks.report.checkpoints import read_checkpoints
from tasks.report.io_stats import io_check, io_delta, read_io
from tasks.report.statements import read_statements
from tests.helpers import psql

pytestmark = pytest.mark.versioned

# the pg_stat_statements version each server's CREATE EXTENSION gives
EXPECTED_STATEMENTS = {14: "1.9", 15: "1.10", 16: "1.10", 17: "1.11", 18: "1.12"}
DB = "versions_live"
ROLE = "versions_maintainer"
ROLE_PASSWORD = "versions-live-pw"


@pytest.fixture(scope="module")
def server(sandbox):
    """(major, Capabilities) of the sandbox's server, with pg_stat_statements' extversion."""
    num = int(psql(sandbox, "primary", "SHOW server_version_num")[0][0])
    ext = psql(sandbox, "primary", "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'")[0][0]
    return num // 10000, capabilities(num, ext)


def _exists(sandbox, query: str, *params) -> bool:
    return bool(psql(sandbox, "primary", sql.SQL(query), params)[0][0])


def test_the_sandbox_runs_the_requested_version(sandbox, server):
    from sandbox.pgversions import requested_version

    major, _ = server
    assert requested_version() in (None, major)


def test_capabilities_match_the_live_catalogs(sandbox, server):
    major, caps = server
    assert caps.statements.extversion == EXPECTED_STATEMENTS[major]
    assert caps.checkpointer_view == (major >= 17) == _exists(
        sandbox, "SELECT to_regclass('pg_catalog.pg_stat_checkpointer') IS NOT NULL")
    assert caps.io_view == (major >= 16) == _exists(sandbox, "SELECT to_regclass('pg_catalog.pg_stat_io') IS NOT NULL")
    if caps.io_view:
        assert caps.io_bytes_columns == (major >= 18) == _exists(
            sandbox, "SELECT count(*) > 0 FROM pg_attribute WHERE attrelid = 'pg_catalog.pg_stat_io'::regclass "
                     "AND attname = 'read_bytes'")
    assert caps.maintain_privilege == (major >= 17) == _exists(
        sandbox, "SELECT count(*) > 0 FROM pg_roles WHERE rolname = 'pg_maintain'")
    assert caps.wal_stats_view == _exists(sandbox, "SELECT to_regclass('pg_catalog.pg_stat_wal') IS NOT NULL")
    assert caps.reserved_connections_setting == _exists(
        sandbox, "SELECT count(*) > 0 FROM pg_settings WHERE name = 'reserved_connections'")
    assert caps.rewind_needs_checkpoint == (major <= 15)
    # every pg_stat_statements column the capabilities name exists at this extension version
    cols = {r[0] for r in psql(sandbox, "primary", "SELECT attname FROM pg_attribute WHERE attrelid = "
                                                   "'pg_stat_statements'::regclass AND attnum > 0")}
    named = {caps.statements.total_ms, caps.statements.blk_read_ms, caps.statements.toplevel}
    assert named <= cols, named - cols
    assert ("shared_blk_read_time" in cols) == (major >= 17) and ("blk_read_time" in cols) == (major < 17)
    assert ("wal_buffers_full" in cols) == (major >= 18)


def test_version_dependent_reads_run_live(sandbox, server):
    major, _ = server
    target = sandbox_cluster_block(sandbox).target("primary")
    with sandbox.connect("primary") as conn:
        conn.execute("DROP TABLE IF EXISTS versions_io")
        conn.execute("CREATE TABLE versions_io AS SELECT g AS id, repeat('x', 200) AS pad "
                     "FROM generate_series(1, 20000) AS g")
        conn.execute("CHECKPOINT")
    checkpoints = read_checkpoints.fn(target)
    assert checkpoints.checkpoints_requested >= 1 and checkpoints.buffers_written > 0
    statements = read_statements.fn(target)
    assert statements.available and statements.extversion == EXPECTED_STATEMENTS[major] and statements.statements
    io = read_io.fn(target)
    assert io.available == (major >= 16)
    check = io_check("primary", io, io_delta(io, None))
    if major < 16:
        assert not io.rows and "needs PostgreSQL 16" in check.summary
        return
    by = {r.backend_type: r for r in io.rows}
    assert by["checkpointer"].writes > 0 and by["checkpointer"].write_bytes == by["checkpointer"].writes * 8192
    assert by["client backend"].extends > 0 and by["client backend"].extend_bytes > 0
    assert "client backends did" in check.summary
    with sandbox.connect("primary") as conn:
        conn.execute("DROP TABLE versions_io")


@pytest.fixture(scope="module")
def maintainer(sandbox):
    """A database with a table and index owned by the superuser, and a login role that owns neither."""
    psql(sandbox, "primary", sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
    psql(sandbox, "primary", sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
    psql(sandbox, "primary", sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    psql(sandbox, "primary", sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(ROLE), sql.Literal(ROLE_PASSWORD)))
    with sandbox.connect("primary", dbname=DB) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO kept SELECT g, 'v' FROM generate_series(1, 1000) AS g")
        oid = conn.execute("SELECT 'kept_pkey'::regclass::oid").fetchone()[0]
    block = sandbox_cluster_block(sandbox).model_copy(update={"user": ROLE, "password": SecretStr(ROLE_PASSWORD)})
    yield block.target("primary", database=DB), RelationRef(oid=oid, schema_name="public", name="kept_pkey", kind="i")
    psql(sandbox, "primary", sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
    psql(sandbox, "primary", sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))


def _vacuum_as_role(target) -> str:
    """The runbook's own per-table vacuum, as the role without ownership: its status."""
    with connect(target, purpose="test") as s:
        table = resolve(s, "public.kept")
    return vacuum_tables.fn(target, [table], VacuumOptions(), 2_000, 60_000)[0].status


def test_maintain_grants_reindex_and_vacuum_on_17_and_later_only(sandbox, server, maintainer):
    major, _ = server
    target, index = maintainer
    with pytest.raises(MissingIndexGrant):  # no grant at all: refused on every version
        check_index_grants.fn(target, [], [index])
    assert _vacuum_as_role(target) == "failed"  # "permission denied" / "skipping": reported, not vacuumed
    if major >= 17:
        psql(sandbox, "primary", sql.SQL("GRANT pg_maintain TO {}").format(sql.Identifier(ROLE)))
        check_index_grants.fn(target, [], [index])  # accepted: MAINTAIN through pg_maintain
        assert _vacuum_as_role(target) == "vacuumed"
        with pytest.raises(MissingIndexGrant):  # a drop still needs the owner
            check_index_grants.fn(target, [index], [])
        from psycopg import connect  # the grant is real: the server lets the role do what we accepted
        with connect(host=target.host, port=target.port, user=ROLE, password=ROLE_PASSWORD, dbname=DB,
                     autocommit=True) as conn:
            conn.execute("REINDEX INDEX CONCURRENTLY public.kept_pkey")
            notices = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary))
            conn.execute("VACUUM (ANALYZE) public.kept")
            assert not notices, notices
        psql(sandbox, "primary", sql.SQL("REVOKE pg_maintain FROM {}").format(sql.Identifier(ROLE)))
    else:
        assert not _exists(sandbox, "SELECT count(*) > 0 FROM pg_roles WHERE rolname = 'pg_maintain'")
