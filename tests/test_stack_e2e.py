"""End to end against a real `prefect server` and a real process worker (the slower tier).

The stack is brought up by the same code as `./run stack up`, on free ports, with its own
sandbox cluster, then driven only through the REST API and a real browser.
"""

import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from sandbox.cluster import free_port
from sandbox.stack import ROOT, LocalStack
from tools.trigger_runbook import create_run, wait_for

pytestmark = pytest.mark.e2e
SHOTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def stack():
    ports = {"primary_port": free_port(), "replica_port": free_port(), "pgbouncer_port": free_port()}
    s = LocalStack(state_dir=Path(tempfile.mkdtemp(prefix="pgrb-stack-")), port=free_port(),
                   sandbox_dir=Path(tempfile.mkdtemp(prefix="pgrb-stack-sbx-")), sandbox_ports=ports)
    try:
        s.up()
        yield s
    finally:
        s.down()
        s.sandbox.destroy()


def api(stack, path):
    with urllib.request.urlopen(stack.api_url + path, timeout=10) as resp:
        return json.loads(resp.read())


def post(stack, path, body):
    req = urllib.request.Request(stack.api_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_every_deployment_of_prefect_yaml_is_deployed_with_its_schedule(stack):
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    deployed = post(stack, "/deployments/filter", {"limit": 200})
    by_name = {d["name"]: d for d in deployed}
    for d in declared:
        assert d["name"] in by_name, d["name"]
        assert len(by_name[d["name"]]["schedules"]) == len(d.get("schedules") or [])
        assert by_name[d["name"]]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"][
            "directory"] == "{{ $PG_RUNBOOKS_HOME }}"


def test_health_check_via_rest_with_idempotency_key(stack):
    first = create_run(stack.api_url, "health-check/health-check", {"cluster_block": "sandbox"}, "incident-42")
    again = create_run(stack.api_url, "health-check/health-check", {"cluster_block": "sandbox"}, "incident-42")
    assert first["id"] == again["id"]  # a retried webhook starts one run, not two
    done = wait_for(stack.api_url, first["id"], timeout=120)
    assert done["state"]["type"] == "COMPLETED", done["state"]


def test_bad_parameters_are_refused_by_the_server(stack):
    from tools.trigger_runbook import TriggerError

    with pytest.raises(TriggerError, match="409"):
        create_run(stack.api_url, "health-check/health-check",
                   {"cluster_block": "sandbox", "thresholds": {"long_query_seconds": -5}}, None)


def test_trigger_script_cli(stack):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "trigger_runbook.py"), "health-check/health-check",
         "--param", "cluster_block=sandbox", "--idempotency-key", "cli-1", "--api-url", stack.api_url,
         "--wait", "120"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"state": "COMPLETED"' in proc.stdout


def _browser():
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(
        executable_path="/usr/bin/chromium", headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"])
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # the UI calls an outside analytics host even with analytics off: keep traffic local
    context.route("**/*", lambda route: route.continue_() if "127.0.0.1" in route.request.url
                  or route.request.url.startswith("data:") else route.abort())
    return pw, browser, context


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed (./run install)")
def test_ui_lists_runbooks_and_a_run_from_the_form_completes(stack):
    SHOTS.mkdir(parents=True, exist_ok=True)
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    pw, browser, context = _browser()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{stack.port}/v2/deployments", wait_until="networkidle")
        for d in declared:
            page.get_by_text(d["name"], exact=True).first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "deployments.png"), full_page=True)

        dep = api(stack, "/deployments/name/health-check/health-check")
        before = {r["id"] for r in post(stack, "/flow_runs/filter", {"limit": 200})}
        page.goto(f"http://127.0.0.1:{stack.port}/v2/deployments/deployment/{dep['id']}/run",
                  wait_until="networkidle")
        field = page.get_by_label("Long Query Seconds (Optional)")
        field.wait_for(timeout=30_000)  # the params model renders as typed fields
        assert page.get_by_text("A non-idle session running longer is a warning.").count() == 1
        field.fill("120")
        page.screenshot(path=str(SHOTS / "health-check-run-form.png"), full_page=True)
        page.get_by_role("button", name="Submit").click()
        page.wait_for_url("**/deployments/deployment/**tab=Runs", timeout=30_000)
        page.screenshot(path=str(SHOTS / "health-check-run-submitted.png"), full_page=True)
        page.screenshot(path=str(SHOTS / "health-check-run-submitted.png"), full_page=True)
    finally:
        context.close()
        browser.close()
        pw.stop()
    new = [r for r in post(stack, "/flow_runs/filter", {"limit": 200}) if r["id"] not in before]
    assert new, "the form created no flow run"
    assert new[0]["parameters"]["thresholds"]["long_query_seconds"] == 120
    done = wait_for(stack.api_url, new[0]["id"], timeout=120)
    assert done["state"]["type"] == "COMPLETED"


def test_block_types_register_with_the_prefect_cli(stack):
    proc = subprocess.run([str(Path(sys.executable).parent / "prefect"), "block", "register", "-m", "blocks"],
                          cwd=ROOT, env=stack.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    slugs = {b["slug"] for b in post(stack, "/block_types/filter", {})}
    assert {"postgres-cluster", "slack-notifier"} <= slugs
