"""Bloat decisions (runbook 2.2): the statistical estimate, its reliability guards, the measured
tiers, recommendations and the report. Pure functions: no connection, no cursor.

The estimate packs the live rows (reltuples × average row width from pg_statistic) into pages at
the table's fillfactor, as VACUUM FULL would, and calls the rest of relpages bloat. It is wrong when
statistics are stale, rows are wide or mostly TOASTed, a btree deduplicates, the relation is tiny,
or the role cannot read some columns' statistics: those are flagged, never silently reported.
Page layout: https://www.postgresql.org/docs/current/storage-page-layout.html
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tasks.core.findings import Status, human_bytes, md_cell
from tasks.core.notify import NotificationOutcome
from tasks.core.server_capabilities import capabilities
from tasks.maintenance.bloat import CatalogInfo, IndexSize, IndexStats, Measured, TableStats

MAXALIGN = 8
PAGE_HEADER = 24
ITEM_ID = 4
HEAP_TUPLE_HEADER = 23
INDEX_TUPLE_HEADER = 8
BTREE_OPAQUE = 16
MAX_HEAP_TUPLES_PER_PAGE = 291
MiB = 1024 * 1024

Method = Literal["estimate", "pgstattuple_approx", "pgstattuple", "pgstatindex", "none"]
NO_ESTIMATE = ("no statistical estimate: this role cannot read pg_statistic "
               "(superuser or GRANT SELECT ON pg_catalog.pg_statistic)")


class BloatParams(BaseModel):
    """How deep to measure and what counts (the Prefect UI renders this as the run form)."""

    min_pages: int = Field(default=128, ge=1, description="Size floor: relations smaller than this many pages "
                                                          "(8 kB each) are not estimated (no reliable figure, "
                                                          "little to reclaim).")
    ratio_threshold: float = Field(default=0.20, ge=0, le=1, description="Bloat ratio that makes a finding.")
    min_bloat_bytes: int = Field(default=8 * MiB, ge=0, description="...and at least this many wasted bytes.")
    top_n: int = Field(default=20, ge=0, le=1000, description="Top candidates measured with pgstattuple_approx / "
                                                              "pgstatindex when the extension is installed.")
    exact_max_bytes: int = Field(default=256 * MiB, ge=0, description="Top tables up to this size are measured "
                                 "with pgstattuple (a full scan: exact) even without `exact`; larger ones with "
                                 "pgstattuple_approx. 0: only with `exact`.")
    exact: bool = Field(default=False, description="Use pgstattuple (a full scan of each top table) "
                                                   "instead of pgstattuple_approx.")
    stale_fraction: float = Field(default=0.10, ge=0, le=1, description="Statistics are stale when rows modified "
                                                                         "since the last analyze exceed this fraction.")
    max_report_rows: int = Field(default=50, ge=1, le=10_000, description="Rows in the markdown artifact.")


class BloatFinding(BaseModel):
    """One relation's bloat: bytes and ratio, how it was obtained, whether to trust it, what to do."""

    kind: Literal["table", "index"]
    oid: int
    relation: str = Field(description="schema.name")
    table: str = Field(description="schema.table (the table itself for a table).")
    size_bytes: int
    bloat_bytes: int
    bloat_ratio: float
    method: Method = Field(description="How the figure was obtained; 'none': not estimated and not measured.")
    reliable: bool
    caveats: list[str] = Field(default_factory=list)
    dead_bytes: int | None = None
    estimate_ratio: float | None = Field(default=None, description="The tier-1 estimate, kept when measured.")
    recommendation: str = ""
    summary: str = ""


class BloatReport(BaseModel):
    cluster: str
    database: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Status = "ok"
    summary: str = ""
    tiers: list[str] = Field(default_factory=list, description="Which tiers ran, and why others did not.")
    tables_estimated: int = 0
    indexes_estimated: int = 0
    indexes_measured_unestimated: int = Field(
        default=0, description="Btree indexes measured with pgstatindex without an estimate (no pg_statistic).")
    estimate_seconds: float = 0.0
    findings: list[BloatFinding] = Field(default_factory=list, description="Every relation over the thresholds.")
    artifact_key: str | None = None
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)


def maxalign(n: float) -> int:
    return int(math.ceil(n / MAXALIGN) * MAXALIGN)


def heap_tuple_bytes(t: TableStats) -> int:
    """Average heap tuple size on the page: aligned header (with null bitmap) plus aligned data."""
    header = HEAP_TUPLE_HEADER + (math.ceil(t.columns / 8) if t.max_null_frac > 0 else 0)
    return maxalign(header) + maxalign(t.data_width)


def estimated_table_pages(t: TableStats, block_size: int) -> int:
    """Pages the live rows need when packed at the table's fillfactor (what VACUUM FULL would leave)."""
    usable = block_size - PAGE_HEADER - block_size * (100 - t.fillfactor) / 100
    per_page = max(1, min(MAX_HEAP_TUPLES_PER_PAGE, math.floor(usable / (heap_tuple_bytes(t) + ITEM_ID))))
    return math.ceil(max(t.reltuples, 0) / per_page)


def table_caveats(t: TableStats, p: BloatParams, block_size: int) -> list[str]:
    """Why a table's estimate cannot be trusted (empty: it can)."""
    caveats = []
    if t.relpages < p.min_pages:
        caveats.append(f"below the size floor ({t.relpages} < {p.min_pages} pages)")
    if not t.analyzed or t.reltuples < 0:
        caveats.append("never analyzed")
    if t.columns_with_stats < t.columns:
        caveats.append(f"no statistics for {t.columns - t.columns_with_stats} of {t.columns} columns "
                       "(not analyzed, or the role cannot read them)")
    if t.reltuples > 0 and t.n_mod_since_analyze > p.stale_fraction * t.reltuples:
        caveats.append(f"stale statistics ({t.n_mod_since_analyze:,} rows modified since the last analyze)")
    live = t.n_live_tup
    if t.reltuples > 0 and live > 0 and abs(live - t.reltuples) > p.stale_fraction * max(live, t.reltuples):
        caveats.append(f"stale reltuples ({t.reltuples:,.0f} in pg_class, {live:,} live tuples counted)")
    if heap_tuple_bytes(t) + ITEM_ID > block_size / 16:
        caveats.append(f"wide rows (~{heap_tuple_bytes(t)} bytes: few per page, the estimate's rounding dominates)")
    if t.toast_pages > t.relpages:
        caveats.append(f"mostly TOAST ({t.toast_pages} TOAST pages, outside this heap estimate)")
    if t.dropped_columns:
        caveats.append(f"{t.dropped_columns} dropped column(s) still occupy space in old rows")
    return caveats


def estimate_table(t: TableStats, p: BloatParams, block_size: int) -> BloatFinding:
    est = estimated_table_pages(t, block_size)
    bloat_pages = max(t.relpages - est, 0)
    ratio = bloat_pages / t.relpages if t.relpages else 0.0
    caveats = table_caveats(t, p, block_size)
    dead = int(t.n_dead_tup * (heap_tuple_bytes(t) + ITEM_ID))
    rel = f"{t.schema_name}.{t.name}"
    return BloatFinding(kind="table", oid=t.oid, relation=rel, table=rel, size_bytes=t.relpages * block_size,
                        bloat_bytes=bloat_pages * block_size, bloat_ratio=round(ratio, 4), method="estimate",
                        reliable=not caveats, caveats=caveats, dead_bytes=dead)


def index_tuple_bytes(i: IndexStats) -> int:
    header = INDEX_TUPLE_HEADER + (4 if i.max_null_frac > 0 else 0)
    return maxalign(maxalign(header) + i.data_width)


def estimated_index_pages(i: IndexStats, block_size: int) -> int:
    """Leaf pages at the index's fillfactor, the internal levels above them, and the metapage."""
    usable = (block_size - PAGE_HEADER - BTREE_OPAQUE)
    per_leaf = max(1, math.floor(usable * i.fillfactor / 100 / (index_tuple_bytes(i) + ITEM_ID)))
    leaves = math.ceil(max(i.reltuples, 0) / per_leaf)
    per_internal = max(2, math.floor(usable * 0.7 / (index_tuple_bytes(i) + ITEM_ID)))
    pages, level = leaves, leaves
    while level > 1:
        level = math.ceil(level / per_internal)
        pages += level
    return pages + 1


def index_caveats(i: IndexStats, p: BloatParams, server_version_num: int) -> list[str]:
    caveats = []
    if i.relpages < p.min_pages:
        caveats.append(f"below the size floor ({i.relpages} < {p.min_pages} pages)")
    if i.columns_with_stats < i.columns:
        caveats.append(f"no statistics for {i.columns - i.columns_with_stats} of {i.columns} columns")
    if i.reltuples < 0:
        caveats.append("never vacuumed or analyzed")
    duplicates = i.leading_distinct is not None and (
        0 < i.leading_distinct < 0.9 * max(i.table_reltuples, 1) or -0.9 < i.leading_distinct < 0)
    if capabilities(server_version_num).btree_deduplication and not i.dedup_off and not i.is_unique and duplicates:
        caveats.append("deduplicated btree (PG13+): duplicates share one tuple, so the index is smaller than "
                       "the estimate assumes")
    return caveats


def estimate_index(i: IndexStats, p: BloatParams, info: CatalogInfo) -> BloatFinding:
    est = estimated_index_pages(i, info.block_size)
    bloat_pages = max(i.relpages - est, 0)
    ratio = bloat_pages / i.relpages if i.relpages else 0.0
    caveats = index_caveats(i, p, info.server_version_num)
    return BloatFinding(kind="index", oid=i.oid, relation=f"{i.schema_name}.{i.name}",
                        table=f"{i.schema_name}.{i.table_name}", size_bytes=i.relpages * info.block_size,
                        bloat_bytes=bloat_pages * info.block_size, bloat_ratio=round(ratio, 4), method="estimate",
                        reliable=not caveats, caveats=caveats)


def can_measure_without_estimate(info: CatalogInfo, p: BloatParams) -> bool:
    """No index estimate for this role, but pgstatindex may still measure the largest indexes."""
    return not info.can_read_pg_statistic and info.can_pgstatindex and p.top_n > 0


def unestimated_index(i: IndexSize, block_size: int) -> BloatFinding:
    """A btree index with no estimate (the role cannot read pg_statistic): a candidate for pgstatindex,
    unreliable with bloat unknown until measured."""
    return BloatFinding(kind="index", oid=i.oid, relation=f"{i.schema_name}.{i.name}",
                        table=f"{i.schema_name}.{i.table_name}", size_bytes=i.relpages * block_size,
                        bloat_bytes=0, bloat_ratio=0.0, method="none", reliable=False, caveats=[NO_ESTIMATE])


def fillfactor_of(f: BloatFinding, tables: dict[int, TableStats], indexes: dict[int, IndexSize]) -> int:
    if f.kind == "index":
        return indexes[f.oid].fillfactor if f.oid in indexes else 90
    return tables[f.oid].fillfactor if f.oid in tables else 100


def packed_heap_pages(tuples: int, tuple_bytes: int, fillfactor: int, block_size: int) -> int:
    """Pages VACUUM FULL writes for `tuples` rows of `tuple_bytes` (t_len) each: it fills a page while a tuple
    (MAXALIGNed) plus the fillfactor reserve fits in the page's free space less one line pointer
    (rewriteheap.c raw_heap_insert), i.e. floor((block - header - reserve) / (MAXALIGN(len) + 4)) rows a page."""
    if tuples <= 0:
        return 0
    reserve = block_size * (100 - fillfactor) // 100
    per_page = max(1, min(MAX_HEAP_TUPLES_PER_PAGE,
                          (block_size - PAGE_HEADER - reserve) // (maxalign(max(tuple_bytes, 1)) + ITEM_ID)))
    return math.ceil(tuples / per_page)


def apply_measurement(f: BloatFinding, m: Measured, fillfactor: int, block_size: int) -> BloatFinding:
    """Replace the estimate with a measurement, converted into bytes VACUUM FULL (or REINDEX) would free.

    Table: table_len minus the pages its live rows need once packed at the fillfactor (`packed_heap_pages`).
    That counts what pgstattuple's free space does not: the line pointers deleted rows leave behind, page
    headers, and the fillfactor reserve (which pgstattuple counts as free). Rows are taken as equally long
    (the measured average). pgstattuple_approx estimates all-visible pages from the free space map, so the
    average row there includes page overhead and old line pointers: it is corrected for the page header and
    one line pointer per row, and the finding says it is approximate.
    Index: leaf pages below the fillfactor density, plus empty and deleted pages (what REINDEX frees)."""
    if m.error:
        f.caveats.append(f"not measured: {m.error}")
        return f
    if f.method == "estimate":
        f.estimate_ratio = f.bloat_ratio
    approximate = None
    if m.table is not None:
        a = m.table
        per_row = a.tuple_len / a.tuple_count if a.tuple_count else 0.0
        if a.scanned_percent < 100 and a.tuple_count:
            pages = a.table_len / block_size
            per_row = max(1.0, per_row - ITEM_ID - PAGE_HEADER * pages / a.tuple_count)
            approximate = (f"approximate: pgstattuple_approx read {a.scanned_percent:.0f} % of the pages and "
                           "estimated the rest from the free space map (exact=true measures exactly)")
        after = packed_heap_pages(a.tuple_count, math.floor(per_row), fillfactor, block_size) * block_size
        wasted = max(0, a.table_len - after)
        f.size_bytes, f.bloat_bytes = a.table_len, min(wasted, a.table_len)
        f.bloat_ratio = round(f.bloat_bytes / a.table_len, 4) if a.table_len else 0.0
        f.dead_bytes = a.dead_tuple_len
        f.method = "pgstattuple" if a.exact else "pgstattuple_approx"
    elif m.index is not None:
        x = m.index
        pages = max(x.index_size // block_size, 1)
        loose_pages = x.leaf_pages * max(0.0, 1 - x.avg_leaf_density / fillfactor) if x.leaf_pages else 0.0
        wasted_pages = min(pages, int(loose_pages) + x.empty_pages + x.deleted_pages)
        f.size_bytes, f.bloat_bytes = x.index_size, wasted_pages * block_size
        f.bloat_ratio = round(wasted_pages / pages, 4)
        f.method = "pgstatindex"
    f.caveats = [c for c in f.caveats if c.startswith("below the size floor")] + ([approximate] if approximate else [])
    f.reliable = not f.caveats
    return f


def recommend(f: BloatFinding, p: BloatParams) -> str:
    """What to do about one relation, with the disk and lock cost."""
    if f.bloat_ratio < p.ratio_threshold or f.bloat_bytes < p.min_bloat_bytes:
        return "nothing: below the thresholds."
    live = human_bytes(f.size_bytes - f.bloat_bytes)
    if f.kind == "index":
        return (f"REINDEX INDEX CONCURRENTLY {f.relation}: online (SHARE UPDATE EXCLUSIVE), needs about {live} "
                "of free disk for the new copy; frees about " + human_bytes(f.bloat_bytes) + ".")
    if (f.dead_bytes or 0) >= 0.5 * f.bloat_bytes:
        return (f"VACUUM {f.table}: dead tuples dominate; a plain VACUUM makes the space reusable without "
                "an exclusive lock (it does not shrink the file).")
    return (f"free space dominates: pg_repack {f.table} online (needs free disk about the size of the table "
            f"and its indexes, {live}+; a brief ACCESS EXCLUSIVE lock at the swap), or VACUUM FULL in a "
            "maintenance window (ACCESS EXCLUSIVE for the whole rewrite: blocks reads and writes; needs "
            f"about {live} of free disk); frees about {human_bytes(f.bloat_bytes)}.")


def is_finding(f: BloatFinding, p: BloatParams) -> bool:
    return f.bloat_ratio >= p.ratio_threshold and f.bloat_bytes >= p.min_bloat_bytes


def top_candidates(findings: list[BloatFinding], p: BloatParams, kind: str) -> list[BloatFinding]:
    """The relations worth measuring: biggest estimated waste first, above the size floor; relations with
    no estimate (method 'none') by size after them."""
    pool = [f for f in findings if f.kind == kind and f.size_bytes >= p.min_pages * 8192
            and (f.bloat_bytes > 0 or f.method == "none")]
    return sorted(pool, key=lambda f: (-f.bloat_bytes, -f.size_bytes))[: p.top_n]


def finish_report(report: BloatReport, all_findings: list[BloatFinding], p: BloatParams) -> BloatReport:
    for f in all_findings:
        f.recommendation = recommend(f, p)
        trust = "" if f.reliable else f" (unreliable: {'; '.join(f.caveats)})"
        f.summary = (f"{f.kind} {f.relation}: {human_bytes(f.bloat_bytes)} of {human_bytes(f.size_bytes)} "
                     f"({f.bloat_ratio:.0%}) bloat by {f.method}{trust}.")
    over = [f for f in all_findings if is_finding(f, p)]
    over.sort(key=lambda f: (not f.reliable, -f.bloat_bytes))
    report.findings = over
    reliable = [f for f in over if f.reliable]
    report.status = "warning" if reliable else "ok"
    total = sum(f.bloat_bytes for f in reliable)
    report.summary = (f"{len(reliable)} relation(s) on {report.cluster}/{report.database} over "
                      f"{p.ratio_threshold:.0%} bloat with a reliable figure ({human_bytes(total)} reclaimable), "
                      f"{len(over) - len(reliable)} more flagged unreliable; {report.tables_estimated} tables and "
                      f"{report.indexes_estimated} btree indexes of at least {p.min_pages} pages estimated in "
                      f"{report.estimate_seconds:.2f} s" + (
                          f"; {report.indexes_measured_unestimated} largest btree indexes measured with pgstatindex "
                          "instead of estimated (this role cannot read pg_statistic)"
                          if report.indexes_measured_unestimated else "") + ".")
    return report


def render_markdown(report: BloatReport, p: BloatParams) -> str:
    lines = [f"# Bloat of {report.cluster}/{report.database}: {report.status.upper()}", "", report.summary, "",
             *[f"- {t}" for t in report.tiers], "",
             "| relation | kind | size | bloat | ratio | method | reliable | recommendation |",
             "|---|---|---|---|---|---|---|---|"]
    for f in report.findings[: p.max_report_rows]:
        lines.append(f"| {md_cell(f.relation)} | {f.kind} | {human_bytes(f.size_bytes)} | "
                     f"{human_bytes(f.bloat_bytes)} | {f.bloat_ratio:.0%} | {f.method} | "
                     f"{'yes' if f.reliable else 'no: ' + md_cell('; '.join(f.caveats))} | "
                     f"{md_cell(f.recommendation)} |")
    lines += ["", f"**What was done:** {md_cell(report.summary)} (read-only: nothing was changed)"]
    return "\n".join(lines) + "\n"


def index_estimate_note(info: CatalogInfo, p: BloatParams | None = None) -> str:
    """Why btree indexes have no estimate for this role, and what is measured instead."""
    cause = NO_ESTIMATE.removeprefix("no statistical estimate: ")
    if p is not None and can_measure_without_estimate(info, p):
        return (f"btree index estimate unavailable ({cause}): the {p.top_n} largest btree indexes of at least "
                f"{p.min_pages} pages are measured with pgstatindex instead (needs only pg_stat_scan_tables, "
                "part of pg_monitor)")
    why = ("top_n is 0" if p is not None and info.can_pgstatindex else
           "this role may not execute pgstatindex (GRANT pg_stat_scan_tables)" if info.has_pgstattuple
           else "the pgstattuple extension is not installed")
    return f"btree indexes neither estimated nor measured: {cause}, and {why}"


def tier_notes(info: CatalogInfo, p: BloatParams | None = None) -> list[str]:
    """Which tiers run here, and why the others do not."""
    notes = ["tier 1: statistical estimate from " + ("pg_statistic" if info.can_read_pg_statistic else
             "pg_stats (this role cannot read pg_statistic: only columns it may SELECT have statistics; "
             "btree indexes are not estimated)")]
    if not info.can_read_pg_statistic:
        notes.append(index_estimate_note(info, p))
    if info.has_pgstattuple:
        notes.append(f"tier 2: pgstattuple {info.pgstattuple_version} on the top candidates")
    else:
        notes.append("tier 2 skipped: the pgstattuple extension is not installed in this database "
                     "(statistical tier only; CREATE EXTENSION pgstattuple to measure)")
    return notes


def apply_measurements(findings: list[BloatFinding], measured: list[Measured], tables: list[TableStats],
                       indexes: list[IndexStats], block_size: int) -> None:
    by_oid = {f.oid: f for f in findings}
    t_map, i_map = {t.oid: t for t in tables}, {i.oid: i for i in indexes}
    for m in measured:
        f = by_oid.get(m.oid)
        if f is not None:
            apply_measurement(f, m, fillfactor_of(f, t_map, i_map), block_size)
