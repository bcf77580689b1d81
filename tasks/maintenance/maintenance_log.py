"""The persisted maintenance log (the runbook's log_maintenance): one JSON line per action.

Written to `<log_dir>/maintenance-log.jsonl` (log_dir: the flow parameter, else
$PG_RUNBOOKS_LOG_DIR, else ./maintenance-log). Appending never loses earlier runs.
A log that cannot be written is recorded in the run's report (`log_error`); the flow still publishes
and notifies, then ends Failed with `MaintenanceLogFailed` carrying that report.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

LOG_FILE = "maintenance-log.jsonl"


class MaintenanceLogFailed(Exception):
    """The maintenance ran, was published and notified, but its log was not written; `report` has it all."""

    def __init__(self, report):
        self.report = report
        super().__init__(report.summary)

    def __reduce__(self):
        return (MaintenanceLogFailed, (self.report,))


def log_directory(log_dir: str | None) -> Path:
    return Path(log_dir or os.environ.get("PG_RUNBOOKS_LOG_DIR") or "maintenance-log")


@task(name="persist-maintenance-log", cache_policy=NO_CACHE)
def persist_maintenance_log(runbook: str, cluster: str, run_id: str | None, rows: list[dict],
                            log_dir: str | None = None) -> str:
    """Append one record per action; the file's path."""
    directory = log_directory(log_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOG_FILE
    at = datetime.now(UTC).isoformat()
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            record = {"logged_at": at, "runbook": runbook, "cluster": cluster, "flow_run_id": run_id, **row}
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    return str(path)


def write_maintenance_log(runbook: str, cluster: str, run_id: str | None, rows: list[dict],
                          log_dir: str | None = None) -> tuple[str | None, str | None]:
    """(the log's path, None), or (None, why it was not written): never raises, so the run still
    publishes its report and sends its alert."""
    state = persist_maintenance_log(runbook, cluster, run_id, rows, log_dir, return_state=True)
    try:
        return state.result(raise_on_failure=True), None
    except Exception as exc:  # noqa: BLE001 - recorded in the report; the flow fails after notifying
        why = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, (f"the maintenance log was NOT written to {log_directory(log_dir) / LOG_FILE} "
                      f"({type(exc).__name__}: {why}); {len(rows)} record(s) are only in this report")


def read_maintenance_log(log_dir: str | None = None) -> list[dict]:
    path = log_directory(log_dir) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
