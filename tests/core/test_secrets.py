"""Secrets never reach logs, artifacts, exceptions, flow-run records or Slack payloads."""

import asyncio
import logging

from pydantic import SecretStr

from blocks.postgres_cluster import PostgresCluster, PostgresNode
from flows.health_check import health_check
from sandbox.blocks import sandbox_cluster_block
from sandbox.cluster import free_port
from tests.helpers import save_slack_block

TOKEN = "xoxb-ok-SECRET-TOKEN-4242"


async def _everything_the_api_stored():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort, TaskRunSort

    # newest first: the session's server holds other tests' records too, and a page is bounded
    async with get_client() as client:
        logs = await client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC)
        artifacts = await client.read_artifacts(limit=200, sort=ArtifactSort.CREATED_DESC)
        runs = await client.read_flow_runs(limit=200, sort=FlowRunSort.EXPECTED_START_TIME_DESC)
        task_runs = await client.read_task_runs(limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
        return (
            [log.message for log in logs]
            + [str(a.data) + str(a.description) for a in artifacts]
            + [str(r.parameters) + str(r.state.message if r.state else "") for r in runs]
            + [str(t.state.message if t.state else "") + str(t.task_inputs) for t in task_runs]
        )


def test_no_secret_reaches_logs_artifacts_results_or_slack(sandbox, prefect_api, slack, caplog):
    caplog.set_level(logging.DEBUG)
    password = sandbox.config.password
    block = sandbox_cluster_block(sandbox)
    # one good node, one with a wrong password would need two passwords; instead add a
    # ghost node (unreachable) so error paths are exercised alongside the happy path.
    leaky = PostgresCluster.model_validate({
        **block.model_dump(),
        "cluster_name": "leakcheck",
        "nodes": [n.model_dump() for n in block.nodes] + [PostgresNode(name="ghost", host="127.0.0.1",
                                                                       port=free_port()).model_dump()],
        "password": SecretStr(password),
    })
    leaky.save("leakcheck", overwrite=True)
    save_slack_block(slack, "slack-leak", TOKEN)
    report = health_check(cluster_block="leakcheck", slack_block="slack-leak", always_notify=True)
    assert report.notification.delivered >= 2

    wrong = "wrong-pw-SECRET-99"
    PostgresCluster.model_validate({**leaky.model_dump(), "password": SecretStr(wrong)}).save(
        "leakcheck-wrong", overwrite=True)
    bad = health_check(cluster_block="leakcheck-wrong", slack_block="slack-leak", always_notify=True)
    assert bad.status == "critical"

    stored = asyncio.run(_everything_the_api_stored())
    slack_bodies = [r.raw for r in slack.calls()]
    haystacks = {
        "prefect api (logs, artifacts, runs)": "\n".join(stored),
        "slack payloads": "\n".join(slack_bodies),
        "flow results": report.model_dump_json() + bad.model_dump_json(),
        "python logs": caplog.text,
    }
    for where, text in haystacks.items():
        assert text, where
        for secret in (password, wrong, TOKEN, sandbox.config.monitor_password):
            assert secret not in text, f"a secret leaked into {where}"
    assert all(r.token == TOKEN for r in slack.calls())  # the token went only in the auth header
