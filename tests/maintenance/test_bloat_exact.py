"""The measured bloat figure is what VACUUM FULL frees: within 1 point of pg_relation_size before minus after,
at 0, 33, 50 and 80 % of rows deleted, narrow and wide rows, vacuumed or still dead, on every server version
(`versioned`: the default suite runs it on 15, the tiers on 14 and 18, `./run test --pg N` on any)."""

from __future__ import annotations

import pytest
from psycopg import sql

from flows.bloat_analysis import bloat_analysis
from tasks.maintenance.bloat_report import BloatParams
from tests.helpers import psql, wait_horizon, wait_table_stats

pytestmark = pytest.mark.versioned

SCHEMA = "bloat_exact"
PARAMS = BloatParams(min_pages=8, min_bloat_bytes=0, ratio_threshold=0.0, top_n=100, max_report_rows=500)
ROWS = {"narrow": ("repeat('p', 10)", 30_000), "wide": ("repeat(md5(g::text), 12)", 6_000)}
CASES = [(kind, pct, ff, vacuumed) for kind in ROWS for pct in (0, 33, 50, 80) for ff in (100, 70)
         for vacuumed in (True, False) if vacuumed or (pct == 50 and ff == 100)]


def _name(kind, pct, ff, vacuumed) -> str:
    return f"{kind}_{pct}_ff{ff}{'' if vacuumed else '_dead'}"


def _size(box, name) -> int:
    return psql(box, "primary", "SELECT pg_relation_size(%s::regclass)", (f"{SCHEMA}.{name}",))[0][0]


@pytest.fixture(scope="module")
def truth(sandbox, cluster_block):
    """(report, {table: share of its size VACUUM FULL freed})."""
    ident = lambda name: sql.Identifier(SCHEMA, name)  # noqa: E731
    psql(sandbox, "primary", sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    psql(sandbox, "primary", sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    for case in CASES:
        kind, pct, ff, _ = case
        pad, rows = ROWS[kind]
        psql(sandbox, "primary", sql.SQL("CREATE TABLE {} (id int, n bigint, pad text) WITH "
                                         "(autovacuum_enabled = off, fillfactor = {})").format(
            ident(_name(*case)), sql.Literal(ff)))
        psql(sandbox, "primary", sql.SQL("INSERT INTO {} SELECT g, g * 7, " + pad +  # noqa: S608 - constant SQL
                                         " FROM generate_series(1, {}) AS g").format(ident(_name(*case)),
                                                                                    sql.Literal(rows)))
        psql(sandbox, "primary", sql.SQL("DELETE FROM {} WHERE (id * 7919) % 100 < {}").format(
            ident(_name(*case)), sql.Literal(pct)))
    wait_horizon(sandbox)
    for case in CASES:
        psql(sandbox, "primary", sql.SQL("VACUUM (ANALYZE) {}" if case[3] else "ANALYZE {}").format(
            ident(_name(*case))))
    wait_table_stats(sandbox, f"count(*) FILTER (WHERE schemaname = '{SCHEMA}' AND n_mod_since_analyze = 0) "
                              f"= {len(CASES)}")  # before PG15 the collector applies ANALYZE late
    report = bloat_analysis(cluster_block=cluster_block, params=PARAMS)
    freed = {}
    for case in CASES:
        before = _size(sandbox, _name(*case))
        psql(sandbox, "primary", sql.SQL("VACUUM FULL {}").format(ident(_name(*case))))
        freed[_name(*case)] = (before - _size(sandbox, _name(*case))) / before
    yield report, freed
    psql(sandbox, "primary", sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


@pytest.mark.parametrize("case", CASES, ids=[_name(*c) for c in CASES])
def test_measured_bloat_is_what_vacuum_full_frees(truth, case):
    report, freed = truth
    kind, pct, ff, vacuumed = case
    found = next(f for f in report.findings if f.relation == f"{SCHEMA}.{_name(*case)}")
    assert found.reliable, found
    # measured when the statistical tier sees waste (an estimated 0 is not worth a scan: then the estimate)
    assert found.method == "pgstattuple" or (pct == 0 and found.method == "estimate"), found
    assert abs(found.bloat_ratio - freed[_name(*case)]) <= 0.01, (found, freed[_name(*case)])
    if pct >= 33:
        assert freed[_name(*case)] >= pct / 100 - 0.03  # the ground truth really moved
