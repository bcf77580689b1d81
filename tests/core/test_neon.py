"""The Neon backend's provider side (tasks/core/neon.py) against a stateful stand-in of the Neon API v2
(tests/neon_server.py): ranges validated by us, dry run first with the exact request, PATCH then every returned
operation polled from running to finished, the range read back; restart as Neon's "failover"; 423 and 429 retried
with backoff; the API key never in a log line or a result."""

from __future__ import annotations

import itertools
import logging

import pytest
from pydantic import SecretStr

from blocks.neon import NeonEndpoint
from tasks.core import neon as api_mod
from tasks.core.errors import InvalidScaling, ProviderError
from tests.neon_server import API_KEY

_ids = itertools.count(1)


def endpoint(neon, min_cu: float = 0.25, max_cu: float = 2, state: str = "active", **kw):
    """A fresh endpoint in the stand-in and the (block, api, sleeps) acting on it."""
    project, eid = f"proj-{next(_ids)}", f"ep-{next(_ids)}"
    neon.add_endpoint(project, eid, min_cu, max_cu, state)
    block = NeonEndpoint(api_key=SecretStr(API_KEY), project_id=project, endpoint_id=eid, base_url=neon.url,
                         **{"poll_seconds": 0.01, **kw})
    sleeps: list[float] = []
    return block, api_mod.NeonApi(block, sleep=sleeps.append), sleeps


@pytest.mark.parametrize(("low", "high", "ceiling", "problem"), [
    (0.25, 2, None, None),
    (1, 9, None, None),
    (0.25, 16, None, "more than Neon's 8"),
    (8, 16, None, None),
    (8, 16.25, None, "outside 0.25-16 CU"),
    (0.25, 2.1, None, "not a multiple of 0.25 CU"),
    (0, 2, None, "outside 0.25-16 CU"),
    (3, 2, None, "above autoscaling_limit_max_cu"),
    (1, 5, 4, "above the configured ceiling 4"),
])
def test_cu_ranges_are_validated_by_us(low, high, ceiling, problem):
    problems = api_mod.cu_problems(low, high, ceiling)
    assert problems == [] if problem is None else any(problem in p for p in problems), problems


def test_scale_up_dry_run_first_then_operations_waited_and_read_back(neon):
    block, api, sleeps = endpoint(neon, 0.25, 2, scale_step_cu=1, max_cu_ceiling=4, suspend_timeout_seconds=300)
    path = f"/projects/{block.project_id}/endpoints/{block.endpoint_id}"
    planned = api_mod.scale_up(api, dry_run=True)
    assert planned.status == "planned" and planned.request == (
        f'neon PATCH {path} {{"endpoint": {{"autoscaling_limit_max_cu": 3.0, "autoscaling_limit_min_cu": 0.25, '
        '"suspend_timeout_seconds": 300}}')
    assert not [r for r in neon.requests if r["method"] == "PATCH" and block.endpoint_id in r["path"]]
    neon.polls_to_finish = 3
    done = api_mod.scale_up(api, dry_run=False)
    assert (done.status, done.before, done.after) == ("scaled", 2, 3) and done.request == planned.request
    ops = [r for r in neon.requests if "/operations/" in r["path"] and block.project_id in r["path"]]
    assert len(ops) == 3 and len(sleeps) == 3  # running, running, finished
    assert neon.endpoints[(block.project_id, block.endpoint_id)]["autoscaling_limit_max_cu"] == 3
    assert api_mod.scale_up(api, dry_run=False).after == 4
    assert api_mod.scale_up(api, dry_run=False).status == "at_max"


def test_minimum_follows_when_the_spread_would_pass_8(neon):
    _, api, _ = endpoint(neon, 0.25, 8, scale_step_cu=2, max_cu_ceiling=16)
    done = api_mod.scale_up(api, dry_run=False)
    assert (done.after, done.status) == (10, "scaled") and "min 0.25 -> 2" in done.summary


def test_423_and_429_are_retried_with_backoff(neon):
    block, api, sleeps = endpoint(neon)
    neon.inject[:] = [423, 429, 423]
    assert api.endpoint()["id"] == block.endpoint_id
    assert api.retries == [423, 429, 423] and sleeps == [0.25, 1.0, 1.0]  # Retry-After: 1 for 429
    neon.inject[:] = [429] * 3
    _, api, _ = endpoint(neon, api_attempts=3)
    with pytest.raises(ProviderError, match=r"HTTP 429: injected .* \(after 3 attempts\)") as raised:
        api.endpoint()
    assert raised.value.transient
    neon.inject.clear()


def test_unknown_endpoint_and_bad_key_are_typed(neon):
    block, _, _ = endpoint(neon)
    gone = api_mod.NeonApi(block.model_copy(update={"endpoint_id": "ep-nope"}))
    with pytest.raises(ProviderError, match="check project_id and endpoint_id"):
        gone.endpoint()
    bad = api_mod.NeonApi(block.model_copy(update={"api_key": SecretStr("wrong")}))
    with pytest.raises(ProviderError, match="check the API key") as raised:
        bad.endpoint()
    assert "wrong" not in str(raised.value)


def test_restart_is_neons_failover(neon):
    block, api, _ = endpoint(neon, state="idle")
    planned = api_mod.restart(api, dry_run=True)
    assert planned["detail"].startswith("dry run: would restart the compute (Neon has no standby to promote)")
    assert planned["request"] == f"neon POST /projects/{block.project_id}/endpoints/{block.endpoint_id}/restart {{}}"
    assert api_mod.is_idle(api.endpoint())  # the dry run and a GET woke nothing
    done = api_mod.restart(api, dry_run=False)
    assert [o.split()[0] for o in done["operations"]] == ["suspend_compute", "start_compute"]


def test_invalid_range_is_never_sent(neon):
    block, api, _ = endpoint(neon, 0.3, 2)  # a minimum off the 0.25 grid
    with pytest.raises(InvalidScaling, match="not a multiple of 0.25 CU"):
        api_mod.scale_up(api, dry_run=False)
    assert not [r for r in neon.requests if r["method"] == "PATCH" and block.endpoint_id in r["path"]]


def test_neon_key_never_logged_through_the_scaler(neon, prefect_api, caplog):
    from tasks.emergency.scale import ScaleRequest, ScalerError, scale_up

    block, _, _ = endpoint(neon)
    block.save("neon-secret", overwrite=True)
    block.model_copy(update={"endpoint_id": "ep-gone"}).save("neon-gone", overwrite=True)
    caplog.set_level(logging.DEBUG)
    request = ScaleRequest(cluster="c", reason="t", dry_run=False, active_sessions=1, waiting_sessions=0)
    outcome = scale_up("neon-endpoint/neon-secret", request)
    assert outcome.kind == "neon" and outcome.status == "scaled"
    with pytest.raises(ScalerError) as raised:
        scale_up.fn("neon-endpoint/neon-gone", request)
    assert API_KEY not in " ".join([caplog.text, outcome.model_dump_json(), str(raised.value)])
