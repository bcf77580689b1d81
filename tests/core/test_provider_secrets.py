"""The AWS secret key and the Neon API key never reach Prefect's logs, artifacts, run records, Slack or results:
the high-load response scaling through each provider (Slack thread on), a health check of a paused managed
cluster and one whose provider answers an error, all with the keys in their blocks."""

from __future__ import annotations

import asyncio
import logging

from pydantic import SecretStr

from blocks.neon import NeonEndpoint
from flows.health_check import health_check
from flows.high_load_response import high_load_response
from sandbox.blocks import sandbox_cluster_block
from tasks.emergency.high_load_plan import HighLoadParams
from tests.aws_stand_in import SECRET_KEY
from tests.core.test_secrets import _everything_the_api_stored
from tests.helpers import save_slack_block
from tests.neon_server import API_KEY

TOKEN = "xoxb-ok-provider-secrets-5151"


def test_provider_keys_never_leak(sandbox, prefect_api, moto, neon, slack, caplog):
    caplog.set_level(logging.DEBUG)
    save_slack_block(slack, "slack-provider-leak", TOKEN)
    cid = moto.seed_cluster()
    moto.aurora_block(cid).save("leak-aurora", overwrite=True)
    neon.add_endpoint("proj-leak", "ep-leak", 0.25, 1, "idle")
    key = SecretStr(API_KEY)
    NeonEndpoint(api_key=key, project_id="proj-leak", endpoint_id="ep-leak", base_url=neon.url,
                 poll_seconds=0.01).save("leak-neon", overwrite=True)
    NeonEndpoint(api_key=key, project_id="proj-leak", endpoint_id="ep-missing", base_url=neon.url).save(
        "leak-neon-missing", overwrite=True)
    results = []
    for scaler in ("aurora-cluster/leak-aurora", "neon-endpoint/leak-neon"):
        results.append(high_load_response(
            cluster_block=_cluster(sandbox, "leak-hl", None), scaler_block=scaler,
            slack_block="slack-provider-leak", params=HighLoadParams(dry_run=False, long_query_seconds=3600,
                                                                      only_roles=["pgrb_nobody"])))
    assert [r.scale.status for r in results] == ["scaled", "scaled"]
    paused = health_check(cluster_block=_cluster(sandbox, "leak-paused", "neon-endpoint/leak-neon"),
                          slack_block="slack-provider-leak", always_notify=True)
    assert paused.checks[0].details["paused"]
    broken = health_check(cluster_block=_cluster(sandbox, "leak-broken", "neon-endpoint/leak-neon-missing"),
                          slack_block="slack-provider-leak", always_notify=True)
    assert broken.checks[0].status == "warning" and "HTTP 404" in broken.checks[0].summary
    haystacks = {
        "prefect api (logs, artifacts, runs)": "\n".join(asyncio.run(_everything_the_api_stored())),
        "slack payloads": "\n".join(r.raw for r in slack.calls()),
        "flow results": "".join(r.model_dump_json() for r in [*results, paused, broken]),
        "python logs": caplog.text,
    }
    for where, text in haystacks.items():
        assert text, where
        for secret in (SECRET_KEY, API_KEY):
            assert secret not in text, f"a provider key leaked into {where}"


def _cluster(sandbox, name: str, provider: str | None) -> str:
    sandbox_cluster_block(sandbox, name=name).model_copy(update={"provider_block": provider}).save(name, overwrite=True)
    return name
