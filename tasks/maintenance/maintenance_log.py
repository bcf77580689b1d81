"""The persisted maintenance log (the runbook's log_maintenance): one JSON line per action.

Written to `<log_dir>/maintenance-log.jsonl` (log_dir: the flow parameter, else
$PG_RUNBOOKS_LOG_DIR, else ./maintenance-log). Appending never loses earlier runs.
`MaintenanceLogWriter` appends a run's records batch by batch as the work is done (the vacuum), so a
run that dies keeps what it logged; `write_maintenance_log` appends them all at the end (index maintenance).
A log that cannot be written is recorded in the run's report (`log_error`); the flow still publishes
and notifies, then ends Failed with `MaintenanceLogFailed` carrying that report.
"""

from __future__ import annotations

import json
import os
import threading
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


def _append(runbook: str, cluster: str, run_id: str | None, rows: list[dict], log_dir: str | None) -> Path:
    """Append one JSON line per row, in one write; the file's path. Raises OSError."""
    directory = log_directory(log_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOG_FILE
    at = datetime.now(UTC).isoformat()
    text = "".join(json.dumps({"logged_at": at, "runbook": runbook, "cluster": cluster, "flow_run_id": run_id, **row},
                              ensure_ascii=False, default=str) + "\n" for row in rows)
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
    return path


def _not_written(path: Path, exc: Exception, records: int) -> str:
    why = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
    return (f"the maintenance log was NOT written to {path} ({type(exc).__name__}: {why}); "
            f"{records} record(s) are only in this report")


@task(name="persist-maintenance-log", cache_policy=NO_CACHE)
def persist_maintenance_log(runbook: str, cluster: str, run_id: str | None, rows: list[dict],
                            log_dir: str | None = None) -> str:
    """Append one record per action; the file's path."""
    return str(_append(runbook, cluster, run_id, rows, log_dir))


class MaintenanceLogWriter:
    """One run's maintenance log, appended batch by batch from any thread as the work is done. Never raises: the
    first failure and how many records were not written are kept for the report (`error`)."""

    def __init__(self, runbook: str, cluster: str, run_id: str | None, log_dir: str | None = None):
        self.runbook, self.cluster, self.run_id, self.log_dir = runbook, cluster, run_id, log_dir
        self.written = 0
        self.unwritten = 0
        self._failure: Exception | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return log_directory(self.log_dir) / LOG_FILE

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self._lock:
            try:
                _append(self.runbook, self.cluster, self.run_id, rows, self.log_dir)
                self.written += len(rows)
            except Exception as exc:  # noqa: BLE001 - recorded in the report; the flow fails after notifying
                self._failure = self._failure or exc
                self.unwritten += len(rows)

    @property
    def log_path(self) -> str | None:
        """The file, once a record is in it."""
        return str(self.path) if self.written else None

    @property
    def error(self) -> str | None:
        """Why records are missing from the log (None: every record appended so far is in it)."""
        with self._lock:
            failure, unwritten = self._failure, self.unwritten
        return _not_written(self.path, failure, unwritten) if failure else None


def write_maintenance_log(runbook: str, cluster: str, run_id: str | None, rows: list[dict],
                          log_dir: str | None = None) -> tuple[str | None, str | None]:
    """(the log's path, None), or (None, why it was not written): never raises, so the run still
    publishes its report and sends its alert."""
    state = persist_maintenance_log(runbook, cluster, run_id, rows, log_dir, return_state=True)
    try:
        return state.result(raise_on_failure=True), None
    except Exception as exc:  # noqa: BLE001 - recorded in the report; the flow fails after notifying
        return None, _not_written(log_directory(log_dir) / LOG_FILE, exc, len(rows))


def read_maintenance_log(log_dir: str | None = None) -> list[dict]:
    path = log_directory(log_dir) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
