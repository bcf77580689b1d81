"""Session fixtures: one real sandbox (primary, streaming replica, pgbouncer), one Prefect
test harness, one fake Slack Web API. Everything is started once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

from sandbox.blocks import sandbox_cluster_block  # noqa: E402
from sandbox.cluster import Sandbox  # noqa: E402
from tests.slack_server import start_fake_slack  # noqa: E402


@pytest.fixture(scope="session")
def sandbox():
    box = Sandbox.ephemeral("pgrb-test-")
    box.start()
    yield box
    box.destroy()


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def cluster_block(sandbox, prefect_api) -> str:
    """Name of a saved PostgresCluster block for the sandbox (superuser)."""
    sandbox_cluster_block(sandbox, name="test-sandbox").save("test-sandbox", overwrite=True)
    return "test-sandbox"


@pytest.fixture(scope="session")
def monitor_cluster_block(sandbox, prefect_api) -> str:
    """The same cluster seen by a role that has only pg_monitor."""
    sandbox_cluster_block(sandbox, superuser=False, name="test-sandbox-monitor").save(
        "test-sandbox-monitor", overwrite=True)
    return "test-sandbox-monitor"


@pytest.fixture(scope="session")
def moto():
    """moto's real HTTP server as the AWS stand-in (RDS, CloudWatch) of the Aurora tests (tests/aws_stand_in.py)."""
    from tests.aws_stand_in import MotoStandIn

    stand_in = MotoStandIn()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="session")
def neon():
    """The stateful Neon API v2 stand-in of the Neon tests (tests/neon_server.py)."""
    from tests.neon_server import start_neon_server

    stand_in = start_neon_server()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="session")
def fake_slack():
    fake = start_fake_slack()
    yield fake
    fake.stop()


@pytest.fixture
def slack(fake_slack):
    fake_slack.clear()
    return fake_slack
