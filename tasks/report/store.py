"""Where daily reports are kept between runs: JSON files in a Prefect filesystem block.

Either a named block (LocalFileSystem, RemoteFileSystem for s3/gcs/...) or a local directory;
both go through the same WritableFileSystem API. Layout per cluster:
`<cluster>/latest.json` (read by the next run) and `<cluster>/<UTC timestamp>.json` (history).
"""

from __future__ import annotations

import posixpath
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from pydantic import BaseModel, ValidationError

# A stored copy: <cluster>/<UTC timestamp>.json (latest.json and any other file are never pruned).
HISTORY_FILE = re.compile(r"^(\d{8}T\d{6}Z)\.json$")

# How a baseline note starts when a previous report exists (or may) but could not be read.
UNREADABLE = "the previous report could not be read"


class ReportStoreError(RuntimeError):
    """The report store cannot be used; the message says what to fix."""


def _slug(cluster: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", cluster).strip("-") or "cluster"


def open_store(state_dir: str, storage_block: str | None) -> WritableFileSystem:
    """The filesystem block named `storage_block`, else a LocalFileSystem at `state_dir`."""
    if storage_block:
        try:
            # "<block-type-slug>/<name>" (e.g. remote-file-system/reports) or a LocalFileSystem's name.
            block = Block.load(storage_block) if "/" in storage_block else LocalFileSystem.load(storage_block)
        except (ValueError, KeyError) as exc:
            raise ReportStoreError(f"cannot load the filesystem block {storage_block!r}: {exc}") from None
        if not isinstance(block, WritableFileSystem):
            raise ReportStoreError(f"block {storage_block!r} is a {type(block).__name__}, not a writable filesystem")
        return block
    base = Path(state_dir).expanduser()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportStoreError(f"cannot create the report directory {base}: {exc.strerror}") from None
    return LocalFileSystem(basepath=str(base))


@task(name="load-previous-report", cache_policy=NO_CACHE)
def load_previous(state_dir: str, storage_block: str | None, cluster: str, model: type[BaseModel]) -> tuple[
        BaseModel | None, str | None]:
    """(the previous report, None) or (None, why there is none): a missing or unreadable one is not fatal,
    nor is a store that cannot be opened (the report runs without deltas and says why)."""
    try:
        store = open_store(state_dir, storage_block)
        raw = store.read_path(f"{_slug(cluster)}/latest.json")
    except FileNotFoundError:
        return None, "no previous report: figures are totals since the statistics were last reset"
    except ValueError as exc:  # LocalFileSystem: the path does not exist (or escapes the base path)
        if "does not exist" in str(exc):
            return None, "no previous report: figures are totals since the statistics were last reset"
        return None, _unreadable(exc)
    except (ReportStoreError, OSError) as exc:
        return None, _unreadable(exc)
    except Exception as exc:  # noqa: BLE001 - any storage backend failure; the report still runs
        return None, _unreadable(exc)
    try:
        return model.model_validate_json(raw), None
    except ValidationError as exc:
        return None, f"{UNREADABLE} ({exc.error_count()} errors); starting afresh"


def _unreadable(exc: BaseException) -> str:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return (f"{UNREADABLE} ({type(exc).__name__}: {why}): no deltas in this report, "
            "figures are totals since the statistics were last reset")


@task(name="store-report", cache_policy=NO_CACHE)
def store_report(state_dir: str, storage_block: str | None, cluster: str, report: BaseModel,
                 taken_at: datetime) -> str:
    """Write the report as latest.json and as a timestamped copy; returns the copy's path."""
    store = open_store(state_dir, storage_block)
    data = report.model_dump_json().encode()
    history = f"{_slug(cluster)}/{taken_at:%Y%m%dT%H%M%SZ}.json"
    store.write_path(history, data)
    store.write_path(f"{_slug(cluster)}/latest.json", data)
    return history


@task(name="prune-report-history", cache_policy=NO_CACHE)
def prune_history(state_dir: str, storage_block: str | None, cluster: str, keep_days: int, now: datetime) -> str:
    """Delete this cluster's timestamped copies older than `keep_days` (0 keeps all); says what it did.

    Only files named like a stored copy are touched, never latest.json. Local directories and fsspec-backed
    RemoteFileSystem blocks can list their files; other filesystem blocks are left as they are (said).
    """
    if keep_days <= 0:
        return "history kept: history_days is 0"
    store = open_store(state_dir, storage_block)
    cutoff = (now - timedelta(days=keep_days)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    listed = _history_files(store, _slug(cluster))
    if listed is None:
        return f"history not pruned: a {type(store).__name__} block cannot list its files (prune it by its own rules)"
    names, folder = listed
    old = sorted(n for n in names if (m := HISTORY_FILE.match(n)) and m.group(1) < cutoff)
    for name in old:
        _remove(store, folder, name)
    kept = sum(1 for n in names if HISTORY_FILE.match(n)) - len(old)
    return f"{len(old)} stored report(s) older than {keep_days} days removed, {kept} kept"


def _history_files(store: WritableFileSystem, folder: str) -> tuple[list[str], str] | None:
    """The file names in a cluster's folder and the folder's path in the store; None if it cannot list."""
    if isinstance(store, LocalFileSystem):
        root = Path(store.basepath or ".").expanduser() / folder
        return ([p.name for p in root.iterdir()] if root.is_dir() else []), str(root)
    if isinstance(store, RemoteFileSystem):
        fs, root = store.filesystem, f"{store.basepath.rstrip('/')}/{folder}"
        return ([posixpath.basename(n.rstrip("/")) for n in fs.ls(root, detail=False)] if fs.exists(root) else []), root
    return None


def _remove(store: WritableFileSystem, root: str, name: str) -> None:
    if isinstance(store, LocalFileSystem):
        (Path(root) / name).unlink(missing_ok=True)
    else:
        store.filesystem.rm(f"{root}/{name}")


@task(name="load-report-history", cache_policy=NO_CACHE)
def load_history(state_dir: str, storage_block: str | None, cluster: str, days: int, now: datetime,
                 model: type[BaseModel]) -> tuple[list[BaseModel], str | None]:
    """The stored reports of the last `days` days (0: all kept), oldest first, read as `model` (a slim model
    reads only the fields a chart needs); and a note when some or all could not be read. Never raises: the
    report runs without trends and says why."""
    try:
        store = open_store(state_dir, storage_block)
        listed = _history_files(store, _slug(cluster))
    except Exception as exc:  # noqa: BLE001 - any storage backend failure; the report still runs
        return [], f"history not read ({type(exc).__name__}: {exc})"[:300]
    if listed is None:
        return [], f"history not read: a {type(store).__name__} block cannot list its files"
    names, _ = listed
    cutoff = (now - timedelta(days=days)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") if days > 0 else ""
    wanted = sorted(n for n in names if (m := HISTORY_FILE.match(n)) and m.group(1) >= cutoff)
    points, unreadable = [], 0
    for name in wanted:
        try:
            points.append(model.model_validate_json(store.read_path(f"{_slug(cluster)}/{name}")))
        except Exception:  # noqa: BLE001 - one damaged copy never hides the others
            unreadable += 1
    return points, (f"{unreadable} stored report(s) could not be read and are not in the charts"
                    if unreadable else None)
