"""Index maintenance decisions (runbook 2.3): unused, duplicate, redundant, invalid and bloated
indexes, the DO and UNDO statement of each finding, the plan of actions and the report.

Pure functions over what the reads returned. Never proposes dropping an index that enforces
something (primary key, unique, exclusion, replica identity, a constraint), and never drops a
unique index in favour of a non-unique one.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from psycopg import sql
from pydantic import BaseModel, Field

from tasks.core.findings import Status, human_bytes, md_cell
from tasks.core.notify import NotificationOutcome
from tasks.core.relations import RelationName, RelationRef
from tasks.maintenance.bloat_report import BloatFinding
from tasks.maintenance.indexes import IndexActionResult, IndexInfo, NodeScans, action_statement

MiB = 1024 * 1024
CCNEW = re.compile(r"_cc(new|old)[0-9]*$")

Kind = Literal["unused", "duplicate", "redundant", "invalid", "bloated"]


class IndexParams(BaseModel):
    """What counts as a finding and what to do (the Prefect UI renders this as the run form)."""

    min_stats_window_days: float = Field(
        default=14, ge=0, le=3650, description="Unused only when every node's statistics cover at least this many "
                                               "days (since stats_reset) with no scan.")
    unused_min_bytes: int = Field(default=1 * MiB, ge=0, description="Size floor for unused-index findings.")
    bloat_ratio: float = Field(default=0.30, ge=0, le=1, description="Bloat ratio that makes an index 'bloated'.")
    bloat_min_bytes: int = Field(default=8 * MiB, ge=0, description="...and at least this many wasted bytes.")
    dry_run: bool = Field(default=True, description="Only report and plan; run nothing. Default on.")
    reindex_bloated: bool = Field(default=True, description="REINDEX INDEX CONCURRENTLY bloated indexes.")
    rebuild_invalid: bool = Field(default=True, description="REINDEX INDEX CONCURRENTLY invalid indexes "
                                                            "(not _ccnew/_ccold leftovers: those are dropped "
                                                            "when listed).")
    drop_indexes: list[str | RelationName] = Field(
        default_factory=list, description="Indexes to DROP INDEX CONCURRENTLY, in PostgreSQL's syntax: schema.index "
                                          "with each part as quote_ident() writes it (public.orders_old_idx, "
                                          "public.\"Old Idx\"), or {\"schema\": \"public\", \"name\": \"Old Idx\"}. "
                                          "Only these are ever dropped, and only when they are unused/duplicate/"
                                          "redundant/invalid findings of this run.",
        examples=[["public.orders_old_idx", {"schema": "public", "name": "Old Idx"}]])
    max_actions: int = Field(default=20, ge=0, le=1000, description="At most this many actions per run.")
    lock_timeout_ms: int = Field(default=2_000, ge=10, le=600_000, description="lock_timeout of each action.")
    statement_timeout_ms: int = Field(default=3_600_000, ge=1_000, le=86_400_000,
                                      description="statement_timeout of each action.")
    log_dir: str | None = Field(default=None, description="Directory of the persisted maintenance log; "
                                                          "empty = $PG_RUNBOOKS_LOG_DIR or ./maintenance-log.")


class IndexFinding(BaseModel):
    kind: Kind
    index: str = Field(description="schema.index")
    table: str
    oid: int
    size_bytes: int
    reason: str
    do: str = Field(description="The statement that fixes it.")
    undo: str | None = Field(default=None, description="The statement that reverses the fix.")
    droppable: bool = Field(default=False, description="Dropping it is a safe fix (when listed).")
    drop_statement: str | None = Field(default=None, description="The DROP statement, when droppable.")
    drop_undo: str | None = Field(default=None, description="The UNDO of drop_statement, when it differs from undo.")


class IndexReport(BaseModel):
    cluster: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Status = "ok"
    summary: str = ""
    dry_run: bool = True
    notes: list[str] = Field(default_factory=list)
    findings: list[IndexFinding] = Field(default_factory=list)
    actions: list[IndexActionResult] = Field(default_factory=list)
    log_path: str | None = None
    log_error: str | None = Field(default=None, description="Why the maintenance log was not written.")
    exclusion: str | None = Field(default=None, description="How the run got (or did not get) the cluster's "
                                                             "maintenance lock.")
    artifact_key: str | None = None
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)


REINDEX_UNDO = "none needed: REINDEX CONCURRENTLY rebuilds in place"
LEFTOVER_UNDO = ("none needed: the invalid leftover served no query and held nothing the original index lacks; "
                 "retry the REINDEX INDEX CONCURRENTLY of the original to rebuild it")


def statement_text(statement: sql.Composable) -> str:
    """A statement as operators read and paste it: composed with psycopg.sql exactly as the action runs it
    (identifiers quoted by psycopg; no connection needed)."""
    return statement.as_string(None) + ";"


def _ref(ix: IndexInfo) -> RelationRef:
    return RelationRef(oid=ix.oid, schema_name=ix.schema_name, name=ix.name, kind="i")


def drop_sql(ix: IndexInfo) -> str:
    return statement_text(action_statement("drop", _ref(ix)))


def create_sql(ix: IndexInfo) -> str:
    """pg_get_indexdef made concurrent: the UNDO of a drop."""
    return re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY ", ix.definition, count=1) + ";"


def reindex_sql(ix: IndexInfo) -> str:
    return statement_text(action_statement("reindex", _ref(ix)))


def enforces_something(ix: IndexInfo) -> str | None:
    """Why an index must never be dropped as unused/redundant, or None."""
    for flag, why in ((ix.is_primary, "primary key"), (ix.is_exclusion, "exclusion constraint"),
                      (ix.is_replident, "replica identity"), (ix.backs_constraint, "backs a constraint"),
                      (ix.is_unique, "unique")):
        if flag:
            return why
    return None


def unused(indexes: list[IndexInfo], nodes: list[NodeScans], unreachable: list[str],
           p: IndexParams) -> tuple[list[IndexFinding], list[str]]:
    """No scan on any node over a long enough statistics window; notes on why none could be decided."""
    notes = []
    if unreachable:
        return [], [f"unused indexes not decided: no statistics from {', '.join(unreachable)} "
                    "(an index may serve only that node's queries)"]
    short = [n for n in nodes if n.window_days < p.min_stats_window_days]
    if short:
        return [], [f"unused indexes not decided: statistics of {', '.join(n.node for n in short)} cover "
                    f"{min(n.window_days for n in short):.1f} days < {p.min_stats_window_days} (stats_reset)"]
    out = []
    for ix in indexes:
        if not ix.is_valid or enforces_something(ix) or ix.size_bytes < p.unused_min_bytes:
            continue
        scans = {n.node: n.scans.get(ix.oid, 0) for n in nodes}
        if any(scans.values()):
            continue
        window = min(n.window_days for n in nodes) if nodes else 0
        out.append(IndexFinding(
            kind="unused", index=ix.qualified, table=f"{ix.schema_name}.{ix.table_name}", oid=ix.oid,
            size_bytes=ix.size_bytes, droppable=True, do=drop_sql(ix), undo=create_sql(ix),
            reason=f"no scan on {', '.join(scans)} in {window:.1f} days; {human_bytes(ix.size_bytes)}"))
    return out, notes


def _key(ix: IndexInfo, n: int | None = None) -> tuple:
    """The part of an index definition that decides what it can serve (first n key columns)."""
    n = ix.key_columns if n is None else n
    return (ix.table_oid, ix.am, tuple(ix.indkey[:n]), tuple(ix.indclass[:n]), tuple(ix.indcollation[:n]),
            tuple(ix.indoption[:n]))


def _keep_rank(ix: IndexInfo) -> tuple:
    """Which of two equivalent indexes to keep: enforcing ones first, then the older (lower oid)."""
    return (not ix.is_primary, not ix.backs_constraint, not ix.is_unique, ix.oid)


def duplicates(indexes: list[IndexInfo]) -> list[IndexFinding]:
    """Same table, access method, columns, operator classes, collations, options, expressions,
    predicate and INCLUDE columns: keep one (an enforcing one, else the oldest), report the others."""
    groups: dict[tuple, list[IndexInfo]] = {}
    for ix in indexes:
        if ix.is_valid:
            groups.setdefault((_key(ix), tuple(ix.indkey), ix.exprs, ix.pred), []).append(ix)
    out = []
    for group in groups.values():
        if len(group) < 2:
            continue
        group.sort(key=_keep_rank)
        keep = group[0]
        for ix in group[1:]:
            why = enforces_something(ix)
            if ix.is_unique and not keep.is_unique:
                continue  # never drop a unique one in favour of a non-unique one
            out.append(IndexFinding(
                kind="duplicate", index=ix.qualified, table=f"{ix.schema_name}.{ix.table_name}", oid=ix.oid,
                size_bytes=ix.size_bytes, droppable=why is None or (why == "unique" and keep.is_unique
                                                                     and not ix.backs_constraint),
                do=drop_sql(ix), undo=create_sql(ix),
                reason=f"same definition as {keep.qualified}" + (f" ({why}: drop only if you accept that)"
                                                                 if why else "")))
    return out


def redundant(indexes: list[IndexInfo]) -> list[IndexFinding]:
    """A non-unique btree whose key columns are a leading prefix of another valid btree on the same
    table (same operator classes, collations and options), with the same predicate and no expressions."""
    out = []
    btrees = [ix for ix in indexes if ix.is_valid and ix.am == "btree" and ix.exprs is None]
    for ix in btrees:
        if enforces_something(ix) or len(ix.indkey) != ix.key_columns:
            continue
        for other in btrees:
            if other.oid == ix.oid or other.table_oid != ix.table_oid or other.pred != ix.pred:
                continue
            if other.key_columns > ix.key_columns and _key(other, ix.key_columns) == _key(ix):
                out.append(IndexFinding(
                    kind="redundant", index=ix.qualified, table=f"{ix.schema_name}.{ix.table_name}", oid=ix.oid,
                    size_bytes=ix.size_bytes, droppable=True, do=drop_sql(ix), undo=create_sql(ix),
                    reason=f"its columns are a prefix of {other.qualified}"))
                break
    return out


def invalid(indexes: list[IndexInfo]) -> list[IndexFinding]:
    """Invalid indexes; a _ccnew/_ccold one is the leftover of a failed REINDEX CONCURRENTLY."""
    out = []
    for ix in indexes:
        if ix.is_valid:
            continue
        table = f"{ix.schema_name}.{ix.table_name}"
        if CCNEW.search(ix.name):
            out.append(IndexFinding(
                kind="invalid", index=ix.qualified, table=table, oid=ix.oid, size_bytes=ix.size_bytes,
                droppable=True, do=drop_sql(ix), undo=LEFTOVER_UNDO,
                reason="leftover of a failed REINDEX CONCURRENTLY (_ccnew/_ccold): it costs writes and serves "
                       "no query; drop it (list it in drop_indexes), then retry the REINDEX"))
        else:
            out.append(IndexFinding(
                kind="invalid", index=ix.qualified, table=table, oid=ix.oid, size_bytes=ix.size_bytes,
                droppable=True, do=reindex_sql(ix), undo=REINDEX_UNDO, drop_statement=drop_sql(ix),
                drop_undo=create_sql(ix),
                reason="invalid (a failed CREATE INDEX CONCURRENTLY?): maintained on writes, never used; "
                       "rebuild it, or drop it (list it)"))
    return out


def bloated(indexes: list[IndexInfo], estimates: list[BloatFinding], p: IndexParams) -> list[IndexFinding]:
    by_oid = {ix.oid: ix for ix in indexes}
    out = []
    for f in estimates:
        ix = by_oid.get(f.oid)
        if ix is None or f.kind != "index" or not f.reliable:
            continue
        if f.bloat_ratio >= p.bloat_ratio and f.bloat_bytes >= p.bloat_min_bytes:
            out.append(IndexFinding(
                kind="bloated", index=ix.qualified, table=f"{ix.schema_name}.{ix.table_name}", oid=ix.oid,
                size_bytes=f.size_bytes, do=reindex_sql(ix), undo=REINDEX_UNDO,
                reason=f"{human_bytes(f.bloat_bytes)} ({f.bloat_ratio:.0%}) bloat by {f.method}"))
    return out


def plan_actions(findings: list[IndexFinding], listed: list[str], p: IndexParams) -> list[IndexActionResult]:
    """Rebuilds (bloated, invalid) as the parameters allow, and drops only of listed indexes that are
    droppable findings; a listed index that is not one is refused with the reason."""
    actions: list[IndexActionResult] = []
    by_index: dict[str, list[IndexFinding]] = {}
    for f in findings:
        by_index.setdefault(f.index, []).append(f)
    for name in listed:
        fs = [f for f in by_index.get(name, []) if f.droppable]
        if not fs:
            kinds = ", ".join(f.kind for f in by_index.get(name, [])) or "no finding"
            actions.append(IndexActionResult(
                index=name, action="drop", status="refused", statement="",
                reason=f"not dropped: {kinds} — only unused, duplicate, redundant or invalid indexes are dropped",
                summary=f"{name}: drop refused ({kinds})."))
            continue
        f = fs[0]
        stmt = drop_sql_for(f)
        actions.append(IndexActionResult(index=name, action="drop", status="planned", statement=stmt,
                                         undo=f.drop_undo or f.undo, reason=f"{f.kind}: {f.reason}",
                                         summary=f"{name}: would drop ({f.kind})."))
    dropping = set(listed)
    for f in findings:
        if f.index in dropping:
            continue
        rebuild = (f.kind == "bloated" and p.reindex_bloated) or (
            f.kind == "invalid" and p.rebuild_invalid and not CCNEW.search(f.index))
        if rebuild and not any(a.index == f.index for a in actions):
            actions.append(IndexActionResult(index=f.index, action="reindex", status="planned", statement=f.do,
                                             reason=f"{f.kind}: {f.reason}", summary=f"{f.index}: would rebuild."))
    return actions[: p.max_actions]


def drop_sql_for(f: IndexFinding) -> str:
    return f.drop_statement or f.do


def finish_report(report: IndexReport) -> IndexReport:
    counts: dict[str, int] = {}
    for f in report.findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    found = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no index finding"
    failed = [a for a in report.actions if a.status in ("failed", "skipped-locked", "skipped-stopped")]
    done = [a for a in report.actions if a.status == "done"]
    refused = [a for a in report.actions if a.status == "refused"]
    if report.dry_run:
        acts = f"{len([a for a in report.actions if a.status == 'planned'])} action(s) planned (dry run)"
    else:
        acts = f"{len(done)} action(s) done" + (f", {len(failed)} failed or skipped" if failed else "")
    if refused:
        acts += f", {len(refused)} drop(s) refused"
    report.status = "critical" if any(a.status == "failed" for a in report.actions) else (
        "warning" if report.findings or failed or refused else "ok")
    report.summary = f"Indexes of {report.cluster}: {found}; {acts}."
    if report.log_error:
        report.status = "critical"
        report.summary = report.summary[:-1] + f"; {report.log_error}."
    return report


def slack_lines(report: IndexReport) -> list[str]:
    """What the alert says: the log failure first, then every action that failed or was skipped."""
    lines = [f":warning: {report.log_error}"] if report.log_error else []
    return lines + [a.summary for a in report.actions if a.status in ("failed", "skipped-locked", "skipped-stopped")]


def render_markdown(report: IndexReport) -> str:
    lines = [f"# Index maintenance of {report.cluster}: {report.status.upper()}", "", report.summary, "",
             *[f"- {n}" for n in report.notes], "",
             "| index | finding | size | reason | DO | UNDO |", "|---|---|---|---|---|---|"]
    for f in report.findings:
        lines.append(f"| {md_cell(f.index)} | {f.kind} | {human_bytes(f.size_bytes)} | {md_cell(f.reason)} | "
                     f"`{md_cell(f.do)}` | `{md_cell(f.undo or '—')}` |")
    if report.actions:
        lines += ["", "| index | action | status | size before → after | detail |", "|---|---|---|---|---|"]
        for a in report.actions:
            lines.append(f"| {md_cell(a.index)} | {a.action} | {a.status} | {human_bytes(a.size_before)} → "
                         f"{human_bytes(a.size_after)} | {md_cell(a.error or a.reason)} |")
    lines += ["", f"**What was done:** {md_cell(report.summary)}"]
    return "\n".join(lines) + "\n"


def log_rows(report: IndexReport) -> list[dict]:
    return [{"index": a.index, "action": a.action, "status": a.status, "statement": a.statement,
             "undo": a.undo, "size_before": a.size_before, "size_after": a.size_after, "duration_s": a.duration_s,
             "error": a.error or a.reason} for a in report.actions]
