"""Disk pressure (runbook 5.2, disk_usage): what is using the space, and what to do about it.

Reads only (pg_monitor suffices): WAL retained by replication slots, the archiver, the WAL and
temp directories, database sizes, the largest relations with their dead rows. The one
destructive step, dropping an inactive slot, happens only for slots the operator listed in the
retention policy, with dry_run off, re-checked (still inactive) in the same statement.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from pydantic import BaseModel, Field

from blocks.postgres_cluster import ConnectionTarget
from tasks.core.db import DB_TASK, connect
from tasks.core.findings import human_bytes
from tasks.core.replication import SLOTS_SQL, SlotRow


class RetentionPolicy(BaseModel):
    """What the operator explicitly allows this runbook to remove. Empty: it only recommends."""

    drop_inactive_slots: list[str] = Field(
        default_factory=list, description="Replication slots that may be dropped when inactive (exact names).")


class DiskPressureParams(BaseModel):
    dry_run: bool = Field(default=True, description="Only recommend, even for what the policy allows.")
    top_relations: int = Field(default=10, ge=1, le=100, description="How many of the largest relations to list.")
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)


class ArchiverRow(BaseModel):
    archive_mode: str
    archived_count: int
    failed_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    last_failed_wal: str | None
    last_failed_time: datetime | None
    failing: bool


class DirUsage(BaseModel):
    wal_files: int
    wal_bytes: int
    temp_files: int
    temp_bytes: int


class DatabaseSize(BaseModel):
    datname: str
    size_bytes: int
    temp_bytes_total: int


class RelationSize(BaseModel):
    relation: str
    total_bytes: int
    table_bytes: int
    dead_rows: int | None
    live_rows: int | None


class SpaceSurvey(BaseModel):
    slots: list[SlotRow]
    archiver: ArchiverRow
    dirs: DirUsage
    databases: list[DatabaseSize]
    relations: list[RelationSize]


# Is archiving failing (a failure after the last success keeps WAL on disk)?
ARCHIVER_SQL = """
SELECT current_setting('archive_mode')                                      AS archive_mode,
       archived_count,
       failed_count,
       last_archived_wal,
       last_archived_time,
       last_failed_wal,
       last_failed_time,
       coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) AS failing
  FROM pg_catalog.pg_stat_archiver
"""

# How much is in pg_wal and in the temporary-file directory right now?
DIRS_SQL = """
SELECT (SELECT count(*) FROM pg_catalog.pg_ls_waldir())::int                   AS wal_files,
       (SELECT coalesce(sum(size), 0) FROM pg_catalog.pg_ls_waldir())::bigint  AS wal_bytes,
       (SELECT count(*) FROM pg_catalog.pg_ls_tmpdir())::int                   AS temp_files,
       (SELECT coalesce(sum(size), 0) FROM pg_catalog.pg_ls_tmpdir())::bigint  AS temp_bytes
"""

# How big is each database, and how much temp-file volume has it written since the stats reset?
DATABASES_SQL = """
SELECT d.datname::text                                AS datname,
       pg_catalog.pg_database_size(d.oid)::bigint     AS size_bytes,
       coalesce(s.temp_bytes, 0)::bigint              AS temp_bytes_total
  FROM pg_catalog.pg_database AS d
  LEFT JOIN pg_catalog.pg_stat_database AS s ON s.datid = d.oid
 WHERE d.datallowconn
 ORDER BY size_bytes DESC
"""

# Which relations of this database are the largest, and how many dead rows do they carry?
RELATIONS_SQL = """
SELECT format('%%I.%%I', n.nspname, c.relname)                AS relation,
       pg_catalog.pg_total_relation_size(c.oid)::bigint      AS total_bytes,
       pg_catalog.pg_table_size(c.oid)::bigint               AS table_bytes,
       s.n_dead_tup                                          AS dead_rows,
       s.n_live_tup                                          AS live_rows
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_stat_all_tables AS s ON s.relid = c.oid
 WHERE c.relkind IN ('r', 'm', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY total_bytes DESC
 LIMIT %(limit)s
"""

# Drop this slot only if it exists and is still inactive (re-checked in the same statement).
DROP_SLOT_SQL = """
SELECT pg_catalog.pg_drop_replication_slot(slot_name) IS NULL AS dropped
  FROM pg_catalog.pg_replication_slots
 WHERE slot_name = %(slot)s
   AND NOT active
"""


@task(name="survey-disk-space", **DB_TASK)
def survey_space(target: ConnectionTarget, top_relations: int) -> SpaceSurvey:
    with connect(target, purpose="disk-pressure") as db:
        return SpaceSurvey(
            slots=db.fetch_all(SLOTS_SQL, None, SlotRow),
            archiver=db.fetch_one(ARCHIVER_SQL, None, ArchiverRow),
            dirs=db.fetch_one(DIRS_SQL, None, DirUsage),
            databases=db.fetch_all(DATABASES_SQL, None, DatabaseSize),
            relations=db.fetch_all(RELATIONS_SQL, {"limit": top_relations}, RelationSize),
        )


@task(name="drop-inactive-slot", retries=0)
def drop_inactive_slot(target: ConnectionTarget, slot: str) -> bool:
    """Drop one slot the retention policy lists, only if still inactive. True when dropped."""
    with connect(target, purpose="disk-pressure", statement_timeout_ms=10_000, lock_timeout_ms=2_000) as db:
        return db.execute(DROP_SLOT_SQL, {"slot": slot}) == 1


def recommendations(survey: SpaceSurvey, policy: RetentionPolicy) -> list[str]:
    """What an operator should do, most space first. Pure."""
    out: list[tuple[int, str]] = []
    for slot in survey.slots:
        if not slot.active and (slot.retained_bytes or 0) > 0:
            allowed = "the retention policy allows dropping it" if slot.slot_name in policy.drop_inactive_slots \
                else "drop it only after confirming its consumer is gone (not in the retention policy)"
            out.append((slot.retained_bytes or 0,
                        f"inactive slot {slot.slot_name} retains {human_bytes(slot.retained_bytes)} of WAL; "
                        f"{allowed}."))
    if survey.archiver.failing:
        out.append((survey.dirs.wal_bytes,
                    f"archiving is failing (last failed WAL {survey.archiver.last_failed_wal}, "
                    f"{survey.archiver.failed_count} failures): WAL accumulates in pg_wal "
                    f"({human_bytes(survey.dirs.wal_bytes)}); fix archive_command."))
    if survey.dirs.temp_bytes > 0:
        out.append((survey.dirs.temp_bytes,
                    f"{survey.dirs.temp_files} temporary file(s) use {human_bytes(survey.dirs.temp_bytes)} now: "
                    "look for large sorts/hashes (work_mem) in running queries."))
    for rel in survey.relations[:3]:
        dead = rel.dead_rows or 0
        live = rel.live_rows or 0
        if dead > 10_000 and dead > 0.2 * (dead + live):
            out.append((rel.table_bytes * dead // max(dead + live, 1),
                        f"{rel.relation} ({human_bytes(rel.total_bytes)}) has {dead} dead rows "
                        f"({100 * dead / (dead + live):.0f}%): VACUUM, or pg_repack to return space."))
    if survey.relations:
        top = survey.relations[0]
        out.append((0, f"largest relation: {top.relation} ({human_bytes(top.total_bytes)}); "
                       "purge or archive old rows only as your retention policy says."))
    return [text for _, text in sorted(out, key=lambda item: -item[0])]
