"""Bloat reads (runbook 2.2), in tiers.

1. A statistical estimate of every table and btree index from the catalog (pg_class and
   pg_statistic, joined by (starelid, staattnum): ~0.1 s at 5,000 tables). Roles that cannot read
   pg_statistic fall back to pg_stats, which only shows columns the role may SELECT.
2. pgstattuple_approx / pgstatindex on the top candidates, when the extension is installed. A role
   that cannot read pg_statistic gets no index estimate: the largest btree indexes are then measured
   with pgstatindex directly (it needs only pg_stat_scan_tables, which pg_monitor includes).
3. pgstattuple (a full scan) only on request.

Every read here is catalog-only or takes at most ACCESS SHARE under lock_timeout.
"""

from __future__ import annotations

from prefect import task
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.core.errors import LockTimeout, RunbookDBError
from tasks.core.progress import Progress


class TableStats(BaseModel):
    """What the catalog says about one table: the inputs of the estimate."""

    oid: int
    schema_name: str
    name: str
    relpages: int
    reltuples: float
    fillfactor: int
    toast_pages: int
    columns: int
    columns_with_stats: int
    dropped_columns: int
    max_null_frac: float
    data_width: float
    n_live_tup: int
    n_dead_tup: int
    n_mod_since_analyze: int
    analyzed: bool


class IndexSize(BaseModel):
    """One btree index as pg_class alone describes it: enough to measure it with pgstatindex."""

    oid: int
    schema_name: str
    table_name: str
    name: str
    relpages: int
    fillfactor: int


class IndexStats(IndexSize):
    """What the catalog says about one btree index: the inputs of the estimate."""

    reltuples: float
    is_unique: bool
    dedup_off: bool
    columns: int
    columns_with_stats: int
    max_null_frac: float
    data_width: float
    leading_distinct: float | None
    table_reltuples: float


class CatalogInfo(BaseModel):
    block_size: int
    server_version_num: int
    can_read_pg_statistic: bool
    has_pgstattuple: bool
    can_pgstatindex: bool = False
    pgstattuple_version: str | None
    pgstattuple_schema: str | None


# Block size, version, whether this role can read pg_statistic, whether pgstattuple is installed here,
# and whether this role may execute its pgstatindex (superuser, or pg_stat_scan_tables, part of pg_monitor).
CATALOG_INFO_SQL = """
SELECT pg_catalog.current_setting('block_size')::int AS block_size,
       pg_catalog.current_setting('server_version_num')::int AS server_version_num,
       pg_catalog.has_table_privilege('pg_catalog.pg_statistic', 'SELECT') AS can_read_pg_statistic,
       (e.extversion IS NOT NULL) AS has_pgstattuple,
       coalesce(e.extversion IS NOT NULL AND pg_catalog.has_function_privilege(
           pg_catalog.quote_ident(en.nspname) || '.pgstatindex(regclass)', 'EXECUTE'), false) AS can_pgstatindex,
       e.extversion AS pgstattuple_version,
       en.nspname AS pgstattuple_schema
  FROM (SELECT 1) AS one
  LEFT JOIN pg_catalog.pg_extension AS e ON e.extname = 'pgstattuple'
  LEFT JOIN pg_catalog.pg_namespace AS en ON en.oid = e.extnamespace
"""

_TABLE_SELECT = """
SELECT c.oid::bigint AS oid,
       n.nspname AS schema_name,
       c.relname AS name,
       c.relpages::bigint AS relpages,
       c.reltuples::float8 AS reltuples,
       coalesce(substring(pg_catalog.array_to_string(c.reloptions, ',') FROM 'fillfactor=([0-9]+)')::int, 100)
           AS fillfactor,
       coalesce(t.relpages, 0)::bigint AS toast_pages,
       count(*) FILTER (WHERE NOT a.attisdropped) AS columns,
       count({stat}.{attcol}) FILTER (WHERE NOT a.attisdropped) AS columns_with_stats,
       count(*) FILTER (WHERE a.attisdropped) AS dropped_columns,
       coalesce(max({stat}.{nullfrac}), 0)::float8 AS max_null_frac,
       coalesce(sum((1 - {stat}.{nullfrac}) * {stat}.{width}), 0)::float8 AS data_width,
       coalesce(pg_catalog.pg_stat_get_live_tuples(c.oid), 0) AS n_live_tup,
       coalesce(pg_catalog.pg_stat_get_dead_tuples(c.oid), 0) AS n_dead_tup,
       coalesce(pg_catalog.pg_stat_get_mod_since_analyze(c.oid), 0) AS n_mod_since_analyze,
       (pg_catalog.pg_stat_get_last_analyze_time(c.oid) IS NOT NULL
        OR pg_catalog.pg_stat_get_last_autoanalyze_time(c.oid) IS NOT NULL
        OR c.reltuples >= 0 AND c.relpages > 0) AS analyzed
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0
  LEFT JOIN pg_catalog.pg_class AS t ON t.oid = c.reltoastrelid
"""
_TABLE_WHERE = """
 WHERE c.relkind IN ('r', 'm')
   AND c.relpages >= %(min_pages)s
   AND n.nspname <> 'information_schema'
   AND n.nspname !~ '^pg_'
 GROUP BY c.oid, n.nspname, t.relpages
"""

# Estimate inputs of every user table at or above the size floor (smaller ones cannot be estimated
# reliably and cannot hold much bloat): pages, tuples, fillfactor, and the average width and null
# fraction of its columns from pg_statistic (joined by starelid, staattnum: the fast form).
TABLE_STATS_SQL = _TABLE_SELECT.format(stat="st", attcol="staattnum", nullfrac="stanullfrac", width="stawidth") + """
  LEFT JOIN pg_catalog.pg_statistic AS st
         ON st.starelid = c.oid AND st.staattnum = a.attnum AND NOT st.stainherit""" + _TABLE_WHERE

# The same from pg_stats, for roles that cannot read pg_statistic: columns the role may not SELECT
# have no row here, which the estimate then reports as unreliable.
TABLE_STATS_PG_STATS_SQL = _TABLE_SELECT.format(
    stat="ps", attcol="attname", nullfrac="null_frac", width="avg_width") + """
  LEFT JOIN pg_catalog.pg_stats AS ps
         ON ps.schemaname = n.nspname AND ps.tablename = c.relname AND ps.attname = a.attname
        AND NOT ps.inherited""" + _TABLE_WHERE

# Estimate inputs of every valid btree index at or above the size floor: pages, tuples, fillfactor,
# deduplication, and the width and null fraction of each key and INCLUDE column (a table column's
# statistics, or the index's own for an expression).
INDEX_STATS_SQL = """
SELECT i.indexrelid::bigint AS oid,
       n.nspname AS schema_name,
       tc.relname AS table_name,
       ic.relname AS name,
       ic.relpages::bigint AS relpages,
       ic.reltuples::float8 AS reltuples,
       coalesce(substring(pg_catalog.array_to_string(ic.reloptions, ',') FROM 'fillfactor=([0-9]+)')::int, 90)
           AS fillfactor,
       coalesce(pg_catalog.array_to_string(ic.reloptions, ',') ~ 'deduplicate_items=(off|false)', false)
           AS dedup_off,
       i.indisunique AS is_unique,
       count(*) AS columns,
       count(coalesce(st.staattnum, se.staattnum)) AS columns_with_stats,
       coalesce(max(coalesce(st.stanullfrac, se.stanullfrac)), 0)::float8 AS max_null_frac,
       coalesce(sum((1 - coalesce(st.stanullfrac, se.stanullfrac, 0))
                    * coalesce(st.stawidth, se.stawidth, 0)), 0)::float8 AS data_width,
       min(coalesce(st.stadistinct, se.stadistinct)) FILTER (WHERE k.pos = 1)::float8 AS leading_distinct,
       tc.reltuples::float8 AS table_reltuples
  FROM pg_catalog.pg_index AS i
  JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
  JOIN pg_catalog.pg_am AS am ON am.oid = ic.relam AND am.amname = 'btree'
  JOIN pg_catalog.pg_class AS tc ON tc.oid = i.indrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = ic.relnamespace
 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
  LEFT JOIN pg_catalog.pg_statistic AS st
         ON k.attnum <> 0 AND st.starelid = i.indrelid AND st.staattnum = k.attnum AND NOT st.stainherit
  LEFT JOIN pg_catalog.pg_statistic AS se
         ON k.attnum = 0 AND se.starelid = i.indexrelid AND se.staattnum = k.pos AND NOT se.stainherit
 WHERE i.indisvalid
   AND ic.relpages >= %(min_pages)s
   AND n.nspname <> 'information_schema'
   AND n.nspname !~ '^pg_'
 GROUP BY i.indexrelid, n.nspname, tc.relname, ic.relname, ic.relpages, ic.reltuples, ic.reloptions,
          i.indisunique, tc.reltuples
"""

# The largest valid btree indexes at or above the size floor, from pg_class alone (no pg_statistic):
# what the measured tier looks at when the statistical estimate is unavailable to this role.
LARGEST_BTREE_INDEXES_SQL = """
SELECT i.indexrelid::bigint AS oid,
       n.nspname AS schema_name,
       tc.relname AS table_name,
       ic.relname AS name,
       ic.relpages::bigint AS relpages,
       coalesce(substring(pg_catalog.array_to_string(ic.reloptions, ',') FROM 'fillfactor=([0-9]+)')::int, 90)
           AS fillfactor
  FROM pg_catalog.pg_index AS i
  JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
  JOIN pg_catalog.pg_am AS am ON am.oid = ic.relam AND am.amname = 'btree'
  JOIN pg_catalog.pg_class AS tc ON tc.oid = i.indrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = ic.relnamespace
 WHERE i.indisvalid
   AND ic.relpages >= %(min_pages)s
   AND n.nspname <> 'information_schema'
   AND n.nspname !~ '^pg_'
 ORDER BY ic.relpages DESC, i.indexrelid
 LIMIT %(limit)s
"""


class ApproxTable(BaseModel):
    """pgstattuple_approx (or pgstattuple, exact) of one table, in bytes."""

    table_len: int
    tuple_count: int = Field(default=0, description="Live tuples (pgstattuple_approx: estimated).")
    tuple_len: int
    dead_tuple_len: int
    dead_tuple_count: int
    free_space: int
    scanned_percent: float = Field(default=100.0, description="Share of pages read; the rest (all-visible pages) "
                                                              "pgstattuple_approx estimates from the free space map.")
    exact: bool = False


class IndexPhysical(BaseModel):
    """pgstatindex of one btree index."""

    index_size: int
    leaf_pages: int
    empty_pages: int
    deleted_pages: int
    avg_leaf_density: float


# pgstattuple_approx: visibility-map-assisted scan of one table (all-visible pages are estimated).
APPROX_TABLE_SQL = """
SELECT table_len,
       approx_tuple_count::bigint AS tuple_count,
       approx_tuple_len::bigint AS tuple_len,
       dead_tuple_len,
       dead_tuple_count,
       approx_free_space AS free_space,
       scanned_percent::float8 AS scanned_percent,
       false AS exact
  FROM {fn}(%(oid)s::oid::regclass)
"""

# pgstattuple: a full scan of one table (exact; on request only).
EXACT_TABLE_SQL = """
SELECT table_len,
       tuple_count,
       tuple_len,
       dead_tuple_len,
       dead_tuple_count,
       free_space,
       true AS exact
  FROM {fn}(%(oid)s::oid::regclass)
"""

# pgstatindex: leaf density of one btree index (meaningful after VACUUM).
INDEX_PHYSICAL_SQL = """
SELECT index_size,
       leaf_pages,
       empty_pages,
       deleted_pages,
       avg_leaf_density::float8 AS avg_leaf_density
  FROM {fn}(%(oid)s::oid::regclass)
"""


@task(name="read-catalog-info", **DB_TASK)
def read_catalog_info(target: ConnectionTarget) -> CatalogInfo:
    with connect(target, purpose="bloat") as s:
        return s.fetch_one(CATALOG_INFO_SQL, None, CatalogInfo)


@task(name="read-table-estimate-inputs", **DB_TASK)
def read_table_stats(target: ConnectionTarget, use_pg_statistic: bool, min_pages: int = 1) -> list[TableStats]:
    with connect(target, purpose="bloat") as s:
        return s.fetch_all(TABLE_STATS_SQL if use_pg_statistic else TABLE_STATS_PG_STATS_SQL,
                           {"min_pages": min_pages}, TableStats)


@task(name="read-index-estimate-inputs", **DB_TASK)
def read_index_stats(target: ConnectionTarget, min_pages: int = 1) -> list[IndexStats]:
    """Needs pg_statistic (superuser or a grant on it); callers skip indexes without it."""
    with connect(target, purpose="bloat") as s:
        return s.fetch_all(INDEX_STATS_SQL, {"min_pages": min_pages}, IndexStats)


@task(name="read-largest-btree-indexes", **DB_TASK)
def read_largest_btree_indexes(target: ConnectionTarget, min_pages: int, limit: int) -> list[IndexSize]:
    """The `limit` largest btree indexes: catalog only, for roles that cannot read pg_statistic."""
    with connect(target, purpose="bloat") as s:
        return s.fetch_all(LARGEST_BTREE_INDEXES_SQL, {"min_pages": min_pages, "limit": limit}, IndexSize)


class Measured(BaseModel):
    """A tier-2/3 measurement of one relation, or why it could not be made."""

    oid: int
    table: ApproxTable | None = None
    index: IndexPhysical | None = None
    error: str | None = None


@task(name="measure-relations", **DB_TASK)
def measure_relations(target: ConnectionTarget, ext_schema: str, table_oids: list[int], index_oids: list[int],
                      exact: bool, lock_timeout_ms: int = 1_000, statement_timeout_ms: int = 300_000,
                      exact_oids: list[int] | None = None, progress: Progress | None = None) -> list[Measured]:
    """pgstattuple_approx (or pgstattuple when `exact`, or for the tables in `exact_oids`) per table,
    pgstatindex per index.

    A relation that is locked or fails is a Measured with `error`; the others go on. Each relation measured
    moves the run's `progress` bar (set, not added: a retried task starts the count again).
    """
    exact_sql = _in_schema(EXACT_TABLE_SQL, ext_schema, "pgstattuple")
    approx_sql = _in_schema(APPROX_TABLE_SQL, ext_schema, "pgstattuple_approx")
    scan_fully = set(exact_oids or [])
    index_sql = _in_schema(INDEX_PHYSICAL_SQL, ext_schema, "pgstatindex")
    out: list[Measured] = []
    with connect(target, purpose="bloat-measure", lock_timeout_ms=lock_timeout_ms,
                 statement_timeout_ms=statement_timeout_ms) as s:
        for oid in table_oids:
            table_tier = "pgstattuple" if exact or oid in scan_fully else "pgstattuple_approx"
            try:
                row = s.fetch_one(exact_sql if exact or oid in scan_fully else approx_sql, {"oid": oid}, ApproxTable)
                out.append(Measured(oid=oid, table=row))
            except LockTimeout:
                out.append(Measured(oid=oid, error="locked by another session (lock_timeout)"))
            except RunbookDBError as exc:
                out.append(Measured(oid=oid, error=exc.sentence))
            _measured(progress, out, f"table oid {oid} ({table_tier})")
        for oid in index_oids:
            try:
                out.append(Measured(oid=oid, index=s.fetch_one(index_sql, {"oid": oid}, IndexPhysical)))
            except LockTimeout:
                out.append(Measured(oid=oid, error="locked by another session (lock_timeout)"))
            except RunbookDBError as exc:
                out.append(Measured(oid=oid, error=exc.sentence))
            _measured(progress, out, f"index oid {oid} (pgstatindex)")
    return out


def _measured(progress: Progress | None, out: list[Measured], what: str) -> None:
    if progress is not None:
        progress.set(len(out), f"{what}: {'failed, ' + out[-1].error if out[-1].error else 'measured'}")


def _in_schema(template: str, schema: str, function: str) -> sql.Composed:
    """A measurement query calling the extension's function in the schema it is installed in."""
    return sql.SQL(template.replace("%(oid)s", "{oid}")).format(
        fn=sql.Identifier(schema, function), oid=sql.Placeholder("oid"))
