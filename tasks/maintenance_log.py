"""The persisted maintenance log (the runbook's log_maintenance): one JSON line per action.

Written to `<log_dir>/maintenance-log.jsonl` (log_dir: the flow parameter, else
$PG_RUNBOOKS_LOG_DIR, else ./maintenance-log). Appending never loses earlier runs.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

LOG_FILE = "maintenance-log.jsonl"


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


def read_maintenance_log(log_dir: str | None = None) -> list[dict]:
    path = log_directory(log_dir) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
