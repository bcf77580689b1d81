"""The sandbox is a real topology: primary, streaming replica on a slot, pgbouncer."""

import pytest

from sandbox.cluster import REPLICA_SLOT, Sandbox
from tests.helpers import psql


@pytest.mark.versioned
def test_primary_and_replica_roles(sandbox):
    assert psql(sandbox, "primary", "SELECT pg_is_in_recovery()") == [(False,)]
    assert psql(sandbox, "replica", "SELECT pg_is_in_recovery()") == [(True,)]


@pytest.mark.versioned
def test_replica_streams_on_its_slot(sandbox):
    rows = psql(sandbox, "primary", "SELECT state FROM pg_stat_replication")
    assert rows == [("streaming",)]
    slots = psql(sandbox, "primary", "SELECT slot_name, active FROM pg_replication_slots")
    assert (REPLICA_SLOT, True) in slots


@pytest.mark.versioned
def test_primary_settings_for_the_runbooks(sandbox):
    settings = dict(psql(sandbox, "primary", """
        SELECT name, setting FROM pg_settings
         WHERE name IN ('shared_preload_libraries', 'track_io_timing', 'wal_log_hints',
                        'listen_addresses', 'data_checksums')"""))
    assert "pg_stat_statements" in settings["shared_preload_libraries"]
    assert settings["track_io_timing"] == "on"
    assert settings["wal_log_hints"] == "on" or settings["data_checksums"] == "on"
    assert settings["listen_addresses"] == "127.0.0.1"


@pytest.mark.versioned
def test_pgbouncer_routes_to_the_primary(sandbox):
    with sandbox.connect("pgbouncer") as conn:
        port, recovery = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert (port, recovery) == (sandbox.config.primary_port, False)


@pytest.mark.versioned
def test_start_is_idempotent_and_status_reports(sandbox):
    sandbox.start()
    again = Sandbox.open(sandbox.base)
    assert again.config.primary_port == sandbox.config.primary_port
    status = again.status()
    assert status["nodes"]["primary"] == {
        "port": sandbox.config.primary_port, "running": True, "in_recovery": False}
    assert status["nodes"]["replica"]["in_recovery"] is True
    assert status["nodes"]["pgbouncer"]["running"] is True


def test_cli_lifecycle_is_idempotent_and_keeps_data_across_stop():
    """start, start, stop, stop, start (data kept), destroy, destroy: every step idempotent, via the CLI."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from sandbox.cluster import free_port

    base = Path(tempfile.mkdtemp(prefix="pgrb-cli-"))  # the server's OS user must reach it
    ports = ["--primary-port", str(free_port()), "--replica-port", str(free_port()),
             "--pgbouncer-port", str(free_port())]

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "sandbox", *args, "--dir", str(base), *ports],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    try:
        assert "primary   : " in cli("start") and "pgbouncer : " in cli("start")
        box = Sandbox.open(base)
        with box.connect("primary") as conn:
            conn.execute("CREATE TABLE kept(v int); INSERT INTO kept VALUES (42)")
        cli("stop")
        cli("stop")
        stopped = json.loads(cli("status"))
        assert not any(n["running"] for n in stopped["nodes"].values()), stopped
        cli("start")
        assert json.loads(cli("status"))["nodes"]["replica"]["in_recovery"] is True
        with box.connect("primary") as conn:
            assert conn.execute("SELECT v FROM kept").fetchone()[0] == 42
        cli("destroy")
        assert not base.exists()
        cli("destroy")
    finally:
        if base.exists():
            Sandbox.open(base).destroy()


def test_versions_are_validated_and_a_sandbox_keeps_its_own(tmp_path, monkeypatch):
    """Bad versions are refused with the supported list; a sandbox made with one version refuses another
    (nothing is downloaded for either refusal); PG_RUNBOOKS_PG picks the tests' version."""
    from sandbox.cluster import SandboxConfig, SandboxError
    from sandbox.pgversions import SUPPORTED, VersionUnavailable, parse_major, requested_version

    assert SUPPORTED == (14, 15, 16, 17, 18) and parse_major(" 17 ") == 17
    for bad in ("13", "19", "latest"):
        with pytest.raises(VersionUnavailable, match="14, 15, 16, 17, 18"):
            parse_major(bad)
    monkeypatch.setenv("PG_RUNBOOKS_PG", "18")
    assert requested_version() == 18
    monkeypatch.setenv("PG_RUNBOOKS_PG", "")
    assert requested_version() is None
    (tmp_path / "sandbox.json").write_text(SandboxConfig(base_dir=tmp_path, pg_version=None).to_json())
    with pytest.raises(SandboxError, match="destroy"):
        Sandbox.open(tmp_path, pg_version=14)
