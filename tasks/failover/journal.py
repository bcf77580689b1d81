"""The failover step journal and the per-cluster lock, kept in a directory outside the worker.

One JSON file per cluster, rewritten atomically (temp file, fsync, rename) at every step
transition. It records what was attempted, never what is true: a resumed run inspects every
node again. The lock is an exclusive flock on <cluster>.lock, held for the whole run and
released by the kernel when the process dies, so a crashed run can be resumed while two live
runs can never overlap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.failover.model import FailoverPlan, FailoverRefused, StepRecord


def default_dir() -> Path:
    return Path(os.environ.get("PG_RUNBOOKS_STATE_DIR") or Path.home() / ".pg-runbooks") / "failover"


def _slug(cluster: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", cluster).strip("-") or "cluster"


class Journal(BaseModel):
    cluster: str
    run_id: str
    status: str = "in_progress"  # in_progress | completed | refused | rolled_back | superseded
    plan: FailoverPlan
    started_at: datetime
    updated_at: datetime
    steps: list[StepRecord] = Field(default_factory=list)
    facts: dict = Field(default_factory=dict, description="Measured values: shutdown checkpoint, promoted LSN...")
    slack_parent_ts: str | None = None
    slack_channel: str | None = None

    def last(self, step: str) -> StepRecord | None:
        return next((s for s in reversed(self.steps) if s.step == step), None)

    def attempted(self, step: str) -> bool:
        return any(s.step == step for s in self.steps)


class JournalStore:
    def __init__(self, directory: str | Path | None):
        self.dir = Path(directory) if directory else default_dir()

    def path(self, cluster: str) -> Path:
        return self.dir / f"{_slug(cluster)}.json"

    def load(self, cluster: str) -> Journal | None:
        try:
            return Journal.model_validate_json(self.path(cluster).read_text())
        except FileNotFoundError:
            return None

    def save(self, journal: Journal) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        journal.updated_at = datetime.now(UTC)
        path = self.path(journal.cluster)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(journal.model_dump_json(indent=2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def archive(self, cluster: str) -> Path | None:
        """Move a finished journal aside (<cluster>.<timestamp>.json) so the next run starts fresh."""
        path = self.path(cluster)
        if not path.exists():
            return None
        dest = path.with_name(f"{path.stem}.{datetime.now(UTC):%Y%m%dT%H%M%S%f}.json")
        os.replace(path, dest)
        return dest

    def write_backup(self, cluster: str, run_id: str, data: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{_slug(cluster)}.backup.{run_id}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2, default=str))
        return path

    @contextlib.contextmanager
    def exclusive(self, cluster: str, run_id: str) -> Iterator[None]:
        """Hold the cluster's failover lock, or refuse at once if another live run holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{_slug(cluster)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 500, 0).decode(errors="replace").strip() or "unknown"
                raise FailoverRefused([
                    f"another failover of cluster {cluster} is already running ({holder}): "
                    "at most one per cluster; wait for it to finish"
                ]) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"run {run_id} on {socket.gethostname()} pid {os.getpid()} since "
                          f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock
