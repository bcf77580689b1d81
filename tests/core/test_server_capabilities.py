"""Version decisions in one place (tasks/core/server_capabilities.py), and pg_stat_statements read by its
extension version, not the server's: unit tests for PG13-18, then real old extension versions in the sandbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from psycopg import sql

from sandbox.blocks import sandbox_cluster_block
from tasks.core.server_capabilities import capabilities, parse_extversion, statements_columns
from tasks.report.deltas import statements_delta
from tasks.report.performance import PerformanceReport, ReportParams, render_markdown, statements_check
from tasks.report.performance_rules import PerformanceRules, statement_rules
from tasks.report.statements import StatementCounters, StatementsSnapshot, read_statements, statements_query
from tests.helpers import psql

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# server_version_num -> the pg_stat_statements version that server's CREATE EXTENSION gives by default
DEFAULT_EXTENSION = {130000: "1.8", 140000: "1.9", 150000: "1.10", 160000: "1.10", 170000: "1.11", 180000: "1.12"}


@pytest.mark.parametrize("server, ext, total, blk_read, toplevel, info, checkpointer, wal, sessions, reserved", [
    (130000, "1.8", "total_exec_time", "blk_read_time", None, False, False, False, False, False),
    (140000, "1.9", "total_exec_time", "blk_read_time", "toplevel", True, False, True, True, False),
    (150000, "1.10", "total_exec_time", "blk_read_time", "toplevel", True, False, True, True, False),
    (160000, "1.10", "total_exec_time", "blk_read_time", "toplevel", True, False, True, True, True),
    (170000, "1.11", "total_exec_time", "shared_blk_read_time", "toplevel", True, True, True, True, True),
    (180000, "1.12", "total_exec_time", "shared_blk_read_time", "toplevel", True, True, True, True, True),
])
def test_each_server_version_with_its_default_extension(server, ext, total, blk_read, toplevel, info,
                                                        checkpointer, wal, sessions, reserved):
    assert DEFAULT_EXTENSION[server] == ext
    caps = capabilities(server, ext)
    cols = caps.statements
    assert (cols.extversion, cols.total_ms, cols.blk_read_ms, cols.toplevel, cols.info_view) == (
        ext, total, blk_read, toplevel, info)
    assert (caps.checkpointer_view, caps.wal_stats_view, caps.database_sessions, caps.lock_waitstart,
            caps.reserved_connections_setting) == (checkpointer, wal, sessions, sessions, reserved)


def test_maintenance_syntax_by_server_version():
    pg12, pg13, pg14 = capabilities(120000), capabilities(130000), capabilities(140000)
    assert (pg12.vacuum_skip_locked, pg12.vacuum_parallel, pg12.btree_deduplication) == (True, False, False)
    assert (pg13.vacuum_parallel, pg13.btree_deduplication, pg13.vacuum_index_cleanup_auto) == (True, True, False)
    assert pg14.vacuum_index_cleanup_auto and not capabilities(110000).vacuum_skip_locked


def test_columns_follow_the_extension_not_the_server():
    # a PG17 server whose extension was never updated still has the 1.10 columns
    old = capabilities(170000, "1.10").statements
    assert old.blk_read_ms == "blk_read_time" and old.toplevel == "toplevel"
    # a PG15 server with an extension created at 1.7 (or upgraded with pg_upgrade) has neither toplevel nor info
    older = capabilities(150000, "1.7").statements
    assert (older.total_ms, older.toplevel, older.info_view) == ("total_time", None, False)
    assert capabilities(150000, "1.4").statements.total_ms == "total_time"
    # versions compare as numbers: 1.10 is newer than 1.9
    assert parse_extversion("1.10") > parse_extversion("1.9")
    assert statements_columns("1.1") is None  # no queryid yet
    assert statements_columns("garbage") is None
    assert capabilities(150000).statements is None  # extension not asked about (or not created)


def test_query_uses_the_chosen_columns():
    text = statements_query(statements_columns("1.11"), "public").as_string(None)
    assert '"shared_blk_read_time"' in text and '"total_exec_time"' in text and 's."toplevel"' in text
    text = statements_query(statements_columns("1.7"), "ext").as_string(None)
    assert '"total_time"' in text and '"blk_read_time"' in text and "toplevel" not in text and '"ext"' in text


def stmt(key, calls, total_ms):
    return StatementCounters(key=key, datname="app", usename="app", query=f"SELECT {key}", calls=calls,
                             total_ms=total_ms, rows=calls, shared_blks_hit=0, shared_blks_read=0,
                             temp_blks_written=0, blk_read_ms=0.0)


def snap(dealloc, *rows, reset=T0, max_entries=5000):
    return StatementsSnapshot(available=True, stats_reset=reset, dealloc=dealloc, statements=list(rows),
                              extversion="1.10", default_version="1.10", max_entries=max_entries)


def test_evictions_since_the_previous_report_make_the_section_incomplete():
    before, after = snap(40, stmt("a", 10, 100.0)), snap(52, stmt("a", 30, 300.0))
    delta = statements_delta(after, before)
    assert delta.evicted == 12
    check = statements_check("primary", after, delta)
    assert check.status == "warning" and check.details["evicted"] == 12
    assert "evicted 12 statements" in check.summary and "pg_stat_statements.max = 5000" in check.summary
    assert "Raise pg_stat_statements.max" in check.summary
    report = PerformanceReport(cluster="c", node="primary", started_at=T0, statements=after, statements_delta=delta,
                               checks=[check])
    markdown = render_markdown(report, ReportParams())
    assert "**Incomplete:** pg_stat_statements evicted 12 statements" in markdown
    assert "From pg_stat_statements 1.10." in markdown


def test_no_eviction_is_no_note_and_unknown_dealloc_is_not_a_warning():
    delta = statements_delta(snap(52, stmt("a", 30, 300.0)), snap(52, stmt("a", 10, 100.0)))
    assert delta.evicted == 0
    check = statements_check("primary", snap(52), delta)
    assert check.status == "ok" and "evicted" not in check.summary
    unknown = statements_delta(snap(None, stmt("a", 3, 1.0)), snap(None))  # extension older than 1.9
    assert unknown.evicted is None and statements_check("primary", snap(None), unknown).status == "ok"


def test_evictions_count_from_the_reset_without_a_previous_report_or_after_a_reset():
    assert statements_delta(snap(7, stmt("a", 3, 1.0)), None).evicted == 7
    after_reset = snap(2, stmt("a", 3, 1.0), reset=T0 + timedelta(days=1))
    assert statements_delta(after_reset, snap(900, stmt("a", 50, 9.0))).evicted == 2
    # dealloc going down with the same stats_reset (pg_stat_statements_reset of the info only): from zero
    assert statements_delta(snap(3, stmt("a", 3, 1.0)), snap(900)).evicted == 3
    # a previous report taken before the extension had pg_stat_statements_info
    assert statements_delta(snap(4, stmt("a", 3, 1.0)), snap(None)).evicted == 4


PGSS_DB = "caps_pgss_db"


@pytest.fixture(scope="module")
def pgss_db(sandbox):
    """A fresh database whose pg_stat_statements each test creates at the version it needs."""
    psql(sandbox, "primary", sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(PGSS_DB)))
    psql(sandbox, "primary", sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PGSS_DB)))
    yield sandbox_cluster_block(sandbox).target("primary", database=PGSS_DB)
    psql(sandbox, "primary", sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(PGSS_DB)))


def run_probe(sandbox, marker: str, times: int = 3) -> dict:
    """Run a statement on a table of its own (aliases and constants do not change the queryid), then read
    its calls straight from the view (the ground truth)."""
    with sandbox.connect("primary", dbname=PGSS_DB) as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(marker)))
        for i in range(times):
            conn.execute(sql.SQL("SELECT id FROM {} WHERE id = %s").format(sql.Identifier(marker)), (i,))
        return conn.execute(
            "SELECT sum(calls)::bigint AS calls FROM pg_stat_statements WHERE query LIKE %s",
            (f"%{marker}%",)).fetchone()[0]


@pytest.mark.versioned
def test_old_extension_versions_are_read_with_their_own_columns_then_after_update(sandbox, pgss_db):
    default = psql(sandbox, "primary", "SELECT default_version FROM pg_available_extensions "
                                       "WHERE name = 'pg_stat_statements'")[0][0]
    seen = []
    with sandbox.connect("primary", dbname=PGSS_DB) as conn:
        conn.autocommit = True
        conn.execute("DROP EXTENSION IF EXISTS pg_stat_statements")
        conn.execute("CREATE EXTENSION pg_stat_statements VERSION '1.4'")  # the oldest install script
    versions = list(dict.fromkeys(("1.4", "1.8", "1.9", default)))  # on PG14 the default is 1.9 itself
    for version in versions:
        with sandbox.connect("primary", dbname=PGSS_DB) as conn:
            conn.autocommit = True
            conn.execute(sql.SQL("ALTER EXTENSION pg_stat_statements UPDATE TO {}").format(sql.Literal(version)))
        marker = f"caps_probe_{version.replace('.', '_')}"
        truth = run_probe(sandbox, marker)
        snap_ = read_statements.fn(pgss_db)
        assert snap_.available, snap_.reason
        assert (snap_.extversion, snap_.default_version) == (version, default)
        ours = sum(s.calls for s in snap_.statements if marker in s.query)
        assert ours == truth >= 3
        has_info = parse_extversion(version) >= (1, 9)
        assert (snap_.dealloc is not None, snap_.stats_reset is not None) == (has_info, has_info)
        delta = statements_delta(snap_, None)
        check = statements_check("primary", snap_, delta)
        report = PerformanceReport(cluster="c", node="primary", started_at=T0, statements=snap_,
                                   statements_delta=delta, checks=[check])
        markdown = render_markdown(report, ReportParams())
        assert f"From pg_stat_statements {version}." in markdown
        assert ("ALTER EXTENSION pg_stat_statements UPDATE would give" in markdown) == (version != default)
        seen.append((version, check.details["extversion"]))
    assert [v for v, _ in seen] == versions and versions[-1] == default



def test_troubleshooter_recommends_raising_max_after_evictions():
    current = snap(31, stmt("a", 3, 1.0), max_entries=100)
    (rec,) = [r for r in statement_rules(current, statements_delta(current, None), PerformanceRules())
              if r.rule == "statements-evicted"]
    assert rec.severity == "warning" and "evicted 31 statements" in rec.finding and "max = 100" in rec.finding
    assert "pg_stat_statements.max" in rec.action
    quiet = snap(0, stmt("a", 3, 1.0))
    assert not [r for r in statement_rules(quiet, statements_delta(quiet, None), PerformanceRules())
                if r.rule == "statements-evicted"]
