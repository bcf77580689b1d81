"""Bloat and index maintenance for a role with only pg_monitor (no pg_statistic): the largest btree
indexes are measured with pgstatindex and compared with pgstatindex run by a superuser and with what a
fresh build takes; a run that would act without the owner's privileges stops with a typed error and
changes nothing. Also the deduplicated-btree guard of the estimate."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from flows.bloat_analysis import bloat_analysis
from flows.index_maintenance import index_maintenance
from tasks.maintenance.bloat_report import BloatParams
from tasks.maintenance.index_report import IndexParams
from tasks.maintenance.indexes import MissingIndexGrant
from tests.helpers import wait_horizon

pytestmark = pytest.mark.versioned  # database-facing, version-dependent: run on 14 and 18 too

DB = "bloat_monitor_db"
TOLERANCE = 0.10


def _q(box, query, params=None, dbname=DB):
    with psycopg.connect(box.conninfo("primary", dbname=dbname), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else None


@pytest.fixture(scope="module")
def monitor_db(sandbox):
    """A database of its own (so 'the largest indexes' are known): a bloated index, two clean ones."""
    _q(sandbox, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)), dbname="postgres")
    _q(sandbox, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)), dbname="postgres")
    _q(sandbox, "CREATE EXTENSION pgstattuple")
    for name, rows in (("big", 200_000), ("mid", 100_000), ("small", 20_000)):
        _q(sandbox, sql.SQL("CREATE TABLE {} (id int) WITH (autovacuum_enabled = off)").format(sql.Identifier(name)))
        _q(sandbox, sql.SQL("INSERT INTO {} SELECT generate_series(1, %s)").format(sql.Identifier(name)), (rows,))
        _q(sandbox, sql.SQL("CREATE INDEX {} ON {} (id)").format(sql.Identifier(f"{name}_id"), sql.Identifier(name)))
    _q(sandbox, "DELETE FROM big WHERE id % 4 <> 0")
    wait_horizon(sandbox)
    _q(sandbox, "VACUUM ANALYZE big, mid, small")
    yield DB
    _q(sandbox, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)), dbname="postgres")


def _index_state(box) -> dict[str, tuple]:
    """Every index's oid, relfilenode and validity: what a REINDEX or DROP would change."""
    rows = _q(box, "SELECT c.relname, c.oid::bigint, c.relfilenode::bigint, i.indisvalid FROM pg_index i "
                   "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'public'::regnamespace")
    return {r[0]: r[1:] for r in rows}


def test_monitor_role_measures_the_largest_btree_indexes_with_pgstatindex(sandbox, monitor_db,
                                                                          monitor_cluster_block):
    params = BloatParams(min_pages=16, min_bloat_bytes=0, ratio_threshold=0.0, top_n=2, max_report_rows=100)
    report = bloat_analysis(cluster_block=monitor_cluster_block, database=DB, params=params)
    # The bound: exactly the top_n largest btree indexes (by the superuser's view of the catalog).
    largest = [r[0] for r in _q(sandbox, "SELECT relname FROM pg_class WHERE relkind = 'i' AND relpages >= 16 "
                                         "AND relnamespace = 'public'::regnamespace ORDER BY relpages DESC LIMIT 2")]
    assert largest == ["big_id", "mid_id"]
    found = {f.relation.split(".", 1)[1]: f for f in report.findings if f.kind == "index"}
    assert set(found) == set(largest), "small_id is eligible but outside the top_n bound"
    assert report.indexes_estimated == 0 and report.indexes_measured_unestimated == 2
    assert any("estimate unavailable" in t and "pg_statistic" in t and "pgstatindex" in t for t in report.tiers)
    assert "measured with pgstatindex instead of estimated" in report.summary
    for name, f in found.items():
        assert f.method == "pgstatindex" and f.reliable and f.estimate_ratio is None, f
        # Ground truth 1: pgstatindex itself, run by the superuser.
        size, leaf, empty, deleted, density = _q(
            sandbox, "SELECT index_size, leaf_pages, empty_pages, deleted_pages, avg_leaf_density "
                     "FROM pgstatindex(%s::regclass)", (f"public.{name}",))[0]
        assert f.size_bytes == size
        expected = min(size // 8192, int(leaf * max(0.0, 1 - density / 90)) + empty + deleted) / (size // 8192)
        assert abs(f.bloat_ratio - expected) <= 0.01, (name, f, expected)
    # Ground truth 2: what a fresh build of the same index takes (what REINDEX would leave).
    _q(sandbox, "CREATE INDEX fresh_big ON big (id)")
    try:
        fresh = _q(sandbox, "SELECT pg_relation_size('fresh_big')")[0][0]
    finally:
        _q(sandbox, "DROP INDEX fresh_big")
    freed = 1 - fresh / found["big_id"].size_bytes
    assert freed > 0.6 and abs(found["big_id"].bloat_ratio - freed) <= TOLERANCE, (found["big_id"], freed)
    assert found["mid_id"].bloat_ratio <= TOLERANCE


def test_monitor_role_index_maintenance_finds_the_bloated_index(sandbox, monitor_db, monitor_cluster_block):
    before = _index_state(sandbox)
    report = index_maintenance(cluster_block=monitor_cluster_block, database=DB, params=IndexParams(
        min_stats_window_days=0, unused_min_bytes=0, bloat_ratio=0.5, bloat_min_bytes=100_000))
    bloated = {f.index: f for f in report.findings if f.kind == "bloated"}
    assert set(bloated) == {"public.big_id"} and "by pgstatindex" in bloated["public.big_id"].reason
    assert any("estimate unavailable" in n and "pgstatindex" in n for n in report.notes)
    assert _index_state(sandbox) == before


def test_acting_without_the_owners_privileges_is_a_typed_error_and_changes_nothing(
        sandbox, monitor_db, monitor_cluster_block, tmp_path):
    from sandbox.cluster import MONITOR_ROLE, SUPERUSER

    before = _index_state(sandbox)
    with pytest.raises(MissingIndexGrant) as raised:
        index_maintenance(cluster_block=monitor_cluster_block, database=DB, params=IndexParams(
            min_stats_window_days=0, unused_min_bytes=0, bloat_ratio=0.5, bloat_min_bytes=100_000,
            dry_run=False, drop_indexes=["public.small_id"], log_dir=str(tmp_path)))
    err = raised.value
    assert err.sqlstate == "42501" and err.indexes == ["public.big_id", "public.small_id"]
    assert f"GRANT {SUPERUSER} TO {MONITOR_ROLE}" in str(err) and "MAINTAIN" in str(err)
    assert "nothing was changed" in str(err)
    assert _index_state(sandbox) == before
    assert not list(tmp_path.iterdir()), "no action ran, so nothing was logged"


def test_deduplicated_btree_estimate_is_flagged_unreliable(sandbox, monitor_db, cluster_block):
    """A non-unique btree on a low-cardinality column deduplicates (PG13+): its estimate is flagged.
    The same column with deduplicate_items = off, and a unique index, are not."""
    _q(sandbox, "CREATE TABLE dups (id int, k int) WITH (autovacuum_enabled = off)")
    _q(sandbox, "INSERT INTO dups SELECT g, g % 10 FROM generate_series(1, 100000) g")
    _q(sandbox, "CREATE INDEX dups_k ON dups (k)")
    _q(sandbox, "CREATE INDEX dups_k_nodedup ON dups (k) WITH (deduplicate_items = off)")
    _q(sandbox, "CREATE UNIQUE INDEX dups_id ON dups (id)")
    _q(sandbox, "ANALYZE dups")
    try:
        report = bloat_analysis(cluster_block=cluster_block, database=DB, params=BloatParams(
            min_pages=16, min_bloat_bytes=0, ratio_threshold=0.0, top_n=0, max_report_rows=100))
        est = {f.relation: f for f in report.findings if f.kind == "index"}
        dedup = est["public.dups_k"]
        assert not dedup.reliable and any("deduplicated btree" in c for c in dedup.caveats), dedup
        # Ground truth: deduplication makes it far smaller than the tuple-per-row layout the estimate assumes.
        sizes = dict(_q(sandbox, "SELECT relname, pg_relation_size(oid) FROM pg_class "
                                 "WHERE relname IN ('dups_k', 'dups_k_nodedup')"))
        assert sizes["dups_k"] < 0.5 * sizes["dups_k_nodedup"]
        for name in ("public.dups_k_nodedup", "public.dups_id"):
            assert not any("deduplicated" in c for c in est[name].caveats), est[name]
            assert est[name].reliable and est[name].bloat_ratio <= TOLERANCE, est[name]
    finally:
        _q(sandbox, "DROP TABLE dups")


def test_index_estimate_note_says_why_and_what_instead():
    from tasks.maintenance.bloat import CatalogInfo
    from tasks.maintenance.bloat_report import can_measure_without_estimate, index_estimate_note

    base = dict(block_size=8192, server_version_num=150000, can_read_pg_statistic=False, has_pgstattuple=True,
                can_pgstatindex=True, pgstattuple_version="1.5", pgstattuple_schema="public")
    p = BloatParams(top_n=7, min_pages=32)
    note = index_estimate_note(CatalogInfo(**base), p)
    assert "cannot read pg_statistic" in note and "7 largest btree indexes of at least 32 pages" in note
    denied = CatalogInfo(**{**base, "can_pgstatindex": False})
    assert not can_measure_without_estimate(denied, p)
    assert "GRANT pg_stat_scan_tables" in index_estimate_note(denied, p)
    missing = CatalogInfo(**{**base, "has_pgstattuple": False, "can_pgstatindex": False})
    assert "not installed" in index_estimate_note(missing, p)
    assert "top_n is 0" in index_estimate_note(CatalogInfo(**base), BloatParams(top_n=0))
    assert not can_measure_without_estimate(CatalogInfo(**{**base, "can_read_pg_statistic": True}), p)
