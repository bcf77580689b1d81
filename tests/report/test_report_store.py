"""Stored report history is pruned to `history_days`: only timestamped copies, never latest.json or other files,
on a local directory and on an fsspec RemoteFileSystem block (memory://, a real fsspec filesystem)."""

from datetime import UTC, datetime, timedelta

from prefect.filesystems import RemoteFileSystem

from tasks.report.store import prune_history

NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
OLD, RECENT = "20260801T060000Z.json", "20261120T060000Z.json"
KEEP = ["latest.json", "notes.txt", "20260801T060000Z.json.bak", RECENT]


def test_local_history_keeps_recent_copies_latest_and_foreign_files(tmp_path):
    folder = tmp_path / "c-1"
    folder.mkdir()
    for name in [OLD, *KEEP]:
        (folder / name).write_text("{}")
    assert prune_history.fn(str(tmp_path), None, "c 1", 30, NOW) == \
        "1 stored report(s) older than 30 days removed, 1 kept"  # 'c 1' is stored as c-1
    assert sorted(p.name for p in folder.iterdir()) == sorted(KEEP)
    assert prune_history.fn(str(tmp_path), None, "c 1", 0, NOW) == "history kept: history_days is 0"
    assert prune_history.fn(str(tmp_path), None, "never-reported", 30, NOW).startswith("0 stored")


def test_remote_filesystem_history_is_pruned_too(prefect_api):
    store = RemoteFileSystem(basepath="memory://pgrb-history")
    store.save("pgrb-history", overwrite=True)
    for name in [OLD, *KEEP]:
        store.write_path(f"c1/{name}", b"{}")
    done = prune_history.fn("/unused", "remote-file-system/pgrb-history", "c1", 30, NOW)
    assert done == "1 stored report(s) older than 30 days removed, 1 kept"
    left = sorted(n.rsplit("/", 1)[-1] for n in store.filesystem.ls("memory://pgrb-history/c1", detail=False))
    assert left == sorted(KEEP)
    assert (NOW - timedelta(days=30)).strftime("%Y%m%d") < RECENT[:8]
