"""Vacuum decisions (runbook 2.1): which tables need it, in what order, and the report.

Pure functions over what the reads returned. Wraparound risk comes first (as flexible-freeze
orders it), then dead tuples, then modifications since the last analyze.
Thresholds follow https://www.postgresql.org/docs/current/routine-vacuuming.html.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tasks.core.db import SynchronousCommit
from tasks.core.findings import Status, human_seconds, md_cell
from tasks.core.notify import NotificationOutcome
from tasks.core.relations import RelationName, RelationRef
from tasks.maintenance.vacuum import FreezeLimits, TableVacuumState, VacuumOptions, VacuumResult


class VacuumParams(BaseModel):
    """What to vacuum and how (the Prefect UI renders this as the run form)."""

    tables: list[str | RelationName] = Field(
        default_factory=list,
        description="Tables to vacuum, in PostgreSQL's syntax: schema.table with each part as quote_ident() writes "
                    "it (public.orders, public.\"Order Lines\"; unquoted parts fold to lower case), or "
                    "{\"schema\": \"public\", \"name\": \"Order Lines\"} (exact, no quoting). "
                    "Empty = every table that needs it by the thresholds below.",
        examples=[["public.orders", 'sales."Order Lines"', {"schema": "sales", "name": "Order Lines"}]])
    dead_tuple_ratio: float = Field(
        default=0.10, ge=0, le=1, description="Needs vacuum when dead / (live + dead) tuples reaches this.")
    min_dead_tuples: int = Field(default=1000, ge=0, description="...and at least this many dead tuples.")
    modified_ratio: float = Field(
        default=0.20, ge=0, le=10, description="Needs analyze when rows modified since the last analyze / live rows "
                                               "reaches this.")
    min_modified: int = Field(default=1000, ge=0, description="...and at least this many modified rows.")
    freeze_age_fraction: float = Field(
        default=0.75, gt=0, le=2,
        description="Needs a (freeze) vacuum first when relfrozenxid/relminmxid age reaches this fraction of "
                    "autovacuum_freeze_max_age / autovacuum_multixact_freeze_max_age.")
    max_tables: int = Field(default=500, ge=1, le=100_000, description="At most this many tables per run.")
    concurrency: int = Field(default=2, ge=1, le=32,
                             description="Tables vacuumed at the same time: one connection each, held for the run.")
    batch_tables: int = Field(default=100, ge=1, le=1000,
                              description="Small tables vacuumed one after another in one task on the slot's held "
                                          "connection; a table over 256 MB always runs alone.")
    window_minutes: float | None = Field(
        default=None, gt=0, le=24 * 60,
        description="Maintenance window from the start of the run: no table starts after it ends. Empty = no limit.")
    options: VacuumOptions = Field(default_factory=VacuumOptions)
    lock_timeout_ms: int = Field(default=2_000, ge=10, le=600_000,
                                 description="lock_timeout of each VACUUM: a locked table is skipped after this.")
    statement_timeout_ms: int = Field(default=3_600_000, ge=1_000, le=86_400_000,
                                      description="statement_timeout of each VACUUM.")
    synchronous_commit: SynchronousCommit = Field(
        default="off",
        description="synchronous_commit of the run's connections. 'off': a VACUUM's commit does not wait for its "
                    "WAL flush nor for a synchronous standby (a crash can lose only the last ~0.6 s of vacuum and "
                    "statistics updates, which the next vacuum redoes; no table data is involved). 'local' as "
                    "autovacuum: flushed here, never waiting for a standby. 'on': flushed, and waiting for synchronous "
                    "standbys.")
    dry_run: bool = Field(default=False, description="Only report what would be vacuumed.")
    log_dir: str | None = Field(
        default=None, description="Directory of the persisted maintenance log (JSON lines); "
                                  "empty = $PG_RUNBOOKS_LOG_DIR or ./maintenance-log.")


class Candidate(BaseModel):
    """A table chosen for vacuum, and why."""

    state: TableVacuumState
    reasons: list[str]
    priority: Literal["wraparound", "dead-tuples", "analyze", "requested"]

    @property
    def table(self) -> str:
        return f"{self.state.schema_name}.{self.state.table_name}"


class VacuumReport(BaseModel):
    cluster: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Status = "ok"
    summary: str = ""
    dry_run: bool = False
    planned: list[str] = Field(default_factory=list, description="Tables in the order they were to be vacuumed.")
    results: list[VacuumResult] = Field(default_factory=list)
    log_path: str | None = None
    log_error: str | None = Field(default=None, description="Why the maintenance log was not written.")
    exclusion: str | None = Field(default=None, description="How the run got (or did not get) the cluster's "
                                                             "maintenance lock.")
    artifact_key: str | None = None
    notification: NotificationOutcome = Field(default_factory=NotificationOutcome)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def __repr_args__(self):
        """The per-table lists by their length: a run's repr stays one line (asyncio.run itself reprs the report,
        its main task's result, when it restores the SIGINT handler: 15 ms for 1,000 tables otherwise)."""
        for name, value in super().__repr_args__():
            yield name, (f"<{len(value)} tables>" if name in ("planned", "results") else value)


def reasons_for(t: TableVacuumState, p: VacuumParams, limits: FreezeLimits) -> tuple[list[str], str | None]:
    """Why a table needs vacuum (empty if it does not) and its priority class."""
    reasons: list[str] = []
    priority = None
    xid_limit = p.freeze_age_fraction * limits.autovacuum_freeze_max_age
    mxid_limit = p.freeze_age_fraction * limits.autovacuum_multixact_freeze_max_age
    if t.xid_age >= xid_limit:
        reasons.append(f"relfrozenxid age {t.xid_age:,} ≥ {xid_limit:,.0f}")
        priority = "wraparound"
    if t.mxid_age >= mxid_limit:
        reasons.append(f"relminmxid age {t.mxid_age:,} ≥ {mxid_limit:,.0f}")
        priority = "wraparound"
    total = t.n_live_tup + t.n_dead_tup
    ratio = t.n_dead_tup / total if total else 0.0
    if t.n_dead_tup >= max(p.min_dead_tuples, 1) and ratio >= p.dead_tuple_ratio:
        reasons.append(f"{t.n_dead_tup:,} dead tuples ({ratio:.0%})")
        priority = priority or "dead-tuples"
    mod_ratio = t.n_mod_since_analyze / max(t.n_live_tup, 1)
    if t.n_mod_since_analyze >= max(p.min_modified, 1) and mod_ratio >= p.modified_ratio:
        reasons.append(f"{t.n_mod_since_analyze:,} rows modified since the last analyze")
        priority = priority or "analyze"
    return reasons, priority


_ORDER = {"wraparound": 0, "dead-tuples": 1, "analyze": 2, "requested": 3}


def select_candidates(states: list[TableVacuumState], p: VacuumParams, limits: FreezeLimits) -> list[Candidate]:
    """Tables that need vacuum: wraparound first (closest to its own freeze limit first), then most dead
    tuples; at most max_tables."""
    chosen = []
    for t in states:
        reasons, priority = reasons_for(t, p, limits)
        if priority:
            chosen.append(Candidate(state=t, reasons=reasons, priority=priority))
    chosen.sort(key=lambda c: (_ORDER[c.priority], -wraparound_urgency(c.state, limits)
                               if c.priority == "wraparound" else -c.state.n_dead_tup, -c.state.n_mod_since_analyze))
    return chosen[: p.max_tables]


def wraparound_urgency(t: TableVacuumState, limits: FreezeLimits) -> float:
    """How close a table is to a forced anti-wraparound vacuum: the larger of its relfrozenxid age as a
    share of autovacuum_freeze_max_age and its relminmxid age as a share of
    autovacuum_multixact_freeze_max_age (xids and multixacts are consumed at unrelated rates)."""
    return max(t.xid_age / max(limits.autovacuum_freeze_max_age, 1),
               t.mxid_age / max(limits.autovacuum_multixact_freeze_max_age, 1))


def finish_report(report: VacuumReport) -> VacuumReport:
    """Status and the one-sentence summary from the per-table results."""
    failed, locked = report.count("failed"), report.count("skipped-locked")
    window, done = report.count("skipped-window"), report.count("vacuumed")
    stopped = [r for r in report.results if r.status == "skipped-stopped"]
    if report.dry_run:
        report.status = "ok"
        report.summary = (f"Dry run on {report.cluster}: {len(report.planned)} table(s) would be vacuumed"
                          + (f", first {report.planned[0]}." if report.planned else "."))
        return report
    report.status = "critical" if failed else "warning" if (locked or window or stopped) else "ok"
    parts = [f"{done} of {len(report.planned)} table(s) vacuumed on {report.cluster}"]
    if failed:
        parts.append(f"{failed} failed")
    if locked:
        parts.append(f"{locked} skipped because locked")
    if window:
        parts.append(f"{window} not started before the maintenance window ended")
    if stopped:
        parts.append(f"{len(stopped)} not started, {stopped[0].reason}")
    if not report.planned:
        parts = [f"No table on {report.cluster} needs vacuum by the thresholds"]
    if report.log_error:
        report.status = "critical"
        parts.append(report.log_error)
    report.summary = "; ".join(parts) + "."
    return report


def progress_outcome(report: VacuumReport) -> str:
    """The progress bar's last line: the tally, and where the run stopped when the window ended."""
    window = [r.table for r in report.results if r.status == "skipped-window"]
    stopped = [r for r in report.results if r.status == "skipped-stopped"]
    if stopped:
        return f"{stopped[0].reason} (before {stopped[0].table}; {len(stopped)} of {len(report.planned)} not started)"
    tally = ", ".join(f"{report.count(s)} {s}" for s in ("vacuumed", "skipped-locked", "failed") if report.count(s))
    if window:
        return (f"stopped: the maintenance window ended before {window[0]}; {len(window)} of "
                f"{len(report.planned)} tables not started ({tally or 'none done'})")
    return f"finished: {tally or 'nothing to do'}"


def log_rows(results: list[VacuumResult]) -> list[dict]:
    """The maintenance log's records (and the table artifact's rows), one per table."""
    return [r.log_row() for r in results]


def render_markdown(report: VacuumReport, candidates: list[Candidate]) -> str:
    why = {c.table: "; ".join(c.reasons) for c in candidates}
    lines = [f"# Vacuum of {report.cluster}: {report.status.upper()}", "", report.summary, "",
             "| table | status | why | duration | dead before → after | pages before → after | error |",
             "|---|---|---|---|---|---|---|"]
    for r in report.results:
        lines.append(
            f"| {md_cell(r.table)} | {r.status} | {md_cell(why.get(r.table, 'requested'))} | "
            f"{human_seconds(r.duration_s)} | {r.dead_before} → {r.dead_after} | {r.pages_before} → {r.pages_after} | "
            f"{md_cell(r.error or r.reason)} |")
    lines += ["", f"**What was done:** {md_cell(report.summary)}"]
    return "\n".join(lines) + "\n"


def slack_lines(report: VacuumReport) -> list[str]:
    lines = [f":warning: {report.log_error}"] if report.log_error else []
    return lines + [r.summary for r in report.results
                    if r.status in ("failed", "skipped-locked", "skipped-window", "skipped-stopped")][:40]


def ref_of(c: Candidate) -> RelationRef:
    return RelationRef(oid=c.state.oid, schema_name=c.state.schema_name, name=c.state.table_name)


def requested_candidates(refs: list[RelationRef], states: list[TableVacuumState]) -> list[Candidate]:
    """The operator's tables, in the order given (duplicates once)."""
    by_oid = {s.oid: s for s in states}
    seen: set[int] = set()
    out = []
    for ref in refs:
        if ref.oid in seen:
            continue
        seen.add(ref.oid)
        state = by_oid.get(ref.oid) or TableVacuumState(oid=ref.oid, schema_name=ref.schema_name,
                                                        table_name=ref.name)
        out.append(Candidate(state=state, reasons=["requested"], priority="requested"))
    return out


def planned_result(c: Candidate) -> VacuumResult:
    return VacuumResult(table=c.table, status="planned", reason="; ".join(c.reasons),
                        dead_before=c.state.n_dead_tup, pages_before=c.state.relpages,
                        summary=f"{c.table} would be vacuumed: {'; '.join(c.reasons)}.")


def window_skipped(ref: RelationRef) -> VacuumResult:
    return VacuumResult(table=ref.qualified, status="skipped-window", reason="maintenance window ended",
                        summary=f"{ref.qualified} not vacuumed: the maintenance window ended before its turn.")


def batches(candidates: list[Candidate], max_tables: int = 100, concurrency: int = 2,
            max_bytes: int = 256 * 1024 * 1024) -> list[list[RelationRef]]:
    """Consecutive candidates grouped while small (a big table is a batch of its own), in order;
    about four per lane, so that a lane that finishes early takes work the other would have had to do alone at
    the end (a batch costs two statistics queries; the task run is per lane, not per batch)."""
    max_tables = max(1, min(max_tables, math.ceil(len(candidates) / (concurrency * 4))))
    out: list[list[RelationRef]] = []
    size = 0
    for c in candidates:
        if not out or len(out[-1]) >= max_tables or size + c.state.size_bytes > max_bytes:
            out.append([])
            size = 0
        out[-1].append(ref_of(c))
        size += c.state.size_bytes
    return out
