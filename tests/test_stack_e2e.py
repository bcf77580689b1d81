"""End to end against a real `prefect server` and a real process worker (the slower tier).

The stack is brought up by the same code as `./run stack up`, on free ports, with its own
sandbox cluster, then driven only through the REST API and a real browser.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
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
    # The scale-out configuration: the Prefect server on its own PostgreSQL, two workers, a fleet of three clusters
    # (the sandbox and two more cluster blocks over its servers).
    s = LocalStack(state_dir=Path(tempfile.mkdtemp(prefix="pgrb-stack-")), port=free_port(),
                   sandbox_dir=Path(tempfile.mkdtemp(prefix="pgrb-stack-sbx-")), sandbox_ports=ports,
                   fleet=2, workers=2, server_db="postgres")
    try:
        s.up()
        _hold_schedules(s)
        yield s
    finally:
        s.down()
        s.sandbox.destroy()


def api(stack, path):
    from tools.trigger_runbook import _request

    return _request(stack.api_url, "GET", path)


def post(stack, path, body):
    """Filters (reads) and resumes are retried on a busy SQLite server's 503 (its transaction rolled back, so
    nothing happened; a resume of a run no longer paused is refused, not repeated). Other POSTs go once."""
    from tools.trigger_runbook import _request

    if path.endswith(("/filter", "/resume")):
        return _filter(stack, path, body)
    return _request(stack.api_url, "POST", path, body)


def _filter(stack, path, body, method="POST"):
    """A call that is safe to repeat (a filter, a delete), retried while the SQLite server answers busy."""
    import time
    import urllib.error

    for attempt in range(5):
        req = urllib.request.Request(stack.api_url + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 4:
                raise
            time.sleep(0.5 * 2 ** attempt)


ACTIVE = ["PENDING", "RUNNING", "CANCELLING"]


def _hold_schedules(stack) -> None:
    """The e2e tier starts every run itself: the scheduled deployments are paused (their schedules stay
    deployed, and checked below; their auto-scheduled runs are deleted by the server), and a scheduled run
    already picked up is let finish. Otherwise the every-minute monitor holds its deployment's one slot
    (CANCEL_NEW) at random moments and cancels the runs the tests start, as seen on a slow CI machine."""
    scheduled = [d["id"] for d in post(stack, "/deployments/filter", {"limit": 200}) if d["schedules"]]
    for deployment_id in scheduled:
        _filter(stack, f"/deployments/{deployment_id}/pause_deployment", None)
    _wait_quiet(stack, scheduled)


def _wait_quiet(stack, deployment_ids: list[str], timeout: float = 360) -> None:
    """Until no run of these deployments is pending or running (a deployment slot lease is 300 s at most)."""
    import time

    deadline = time.monotonic() + timeout
    query = {"flow_runs": {"deployment_id": {"any_": deployment_ids}, "state": {"type": {"any_": ACTIVE}}}}
    while post(stack, "/flow_runs/filter", query):
        assert time.monotonic() < deadline, "scheduled runs still active after pausing their deployments"
        time.sleep(1)


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


def test_every_runbook_runs_from_its_deployment_on_the_worker(stack):
    """Each deployment of prefect.yaml, with its own default parameters, completes on the real worker.

    Failover and rejoin change the topology and have their own tests below.
    """
    declared = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
                if d["name"] not in {"failover", "rejoin"}]
    ended = {}
    for batch in (declared[i:i + 4] for i in range(0, len(declared), 4)):  # SQLite server: modest load
        runs = {name: create_run(stack.api_url, f"{_flow_of(stack, name)}/{name}", {}, f"every-runbook-{name}")["id"]
                for name in batch}
        ended.update({name: wait_for(stack.api_url, run_id, timeout=300)["state"] for name, run_id in runs.items()})
    for name in [n for n, state in ended.items() if _cancelled_by_schedule(state)]:  # alert-monitor, every minute
        ended[name] = _run_to_end(stack, f"{_flow_of(stack, name)}/{name}", {}, f"every-runbook-{name}")["state"]
    failed = {name: (state["type"], state.get("message")) for name, state in ended.items()
              if state["type"] != "COMPLETED"}
    assert not failed, failed


SLOT_TAKEN = "Deployment concurrency limit reached."


def _cancelled_by_schedule(state: dict) -> bool:
    """A deployment with one slot (CANCEL_NEW) whose scheduled run held the slot: not the runbook's doing."""
    return state["type"] == "CANCELLED" and (state.get("message") or "").startswith(SLOT_TAKEN)


def _run_to_end(stack, deployment: str, parameters: dict, key: str) -> dict:
    """One deployment run to its end; a run cancelled because a scheduled run held the deployment's one
    slot is triggered again (a new key), as incident tooling would."""
    for attempt in range(1, 5):
        run = create_run(stack.api_url, deployment, parameters, f"{key}-retry{attempt}")
        done = wait_for(stack.api_url, run["id"], timeout=300)
        if not _cancelled_by_schedule(done["state"]):
            return done
        _wait_quiet(stack, [run["deployment_id"]])  # the run holding the slot ends (or its lease expires)
    raise AssertionError(f"every run of {deployment} was cancelled by a scheduled one")


def _flow_of(stack, deployment_name: str) -> str:
    (match,) = [d for d in post(stack, "/deployments/filter", {"limit": 200}) if d["name"] == deployment_name]
    return api(stack, f"/flows/{match['flow_id']}")["name"]


def test_stack_created_the_concurrency_limits_the_runbooks_hold(stack):
    from sandbox.stack import global_limits

    names = {lim["name"] for lim in post(stack, "/v2/concurrency_limits/filter", {"limit": 200})}
    assert set(global_limits("sandbox")) <= names, names


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


VAC_SCHEMA = "e2e_vac"


def _dead_tables(stack, n: int) -> list[str]:
    """n small tables on the primary, half their rows dead (autovacuum off on them): a nightly vacuum's workload."""
    from psycopg import sql

    with stack.sandbox.connect(_primary_in_block(stack)) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(VAC_SCHEMA)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(VAC_SCHEMA)))
        for i in range(n):
            table = sql.Identifier(VAC_SCHEMA, f"t{i}")
            conn.execute(sql.SQL("CREATE TABLE {} (id int, pad text) WITH (autovacuum_enabled = off)").format(table))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'padding' FROM generate_series(1, 200) g").format(table))
            conn.execute(sql.SQL("DELETE FROM {} WHERE id % 2 = 0").format(table))
    return [f"{VAC_SCHEMA}.t{i}" for i in range(n)]


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed (./run install)")
def test_a_vacuum_of_hundreds_of_tables_moves_its_progress_artifact(stack):
    """300 tables, one at a time on the worker: the run's progress artifact moves while it runs (read from the API
    and seen on the run's page in the browser) and ends at 100 % with what was done."""
    from psycopg import sql

    tables = _dead_tables(stack, 300)
    # The held connections vacuum 300 small tables in about a second: throttle VACUUM with the server's own
    # cost-based delay (as production vacuums often are) so the run lasts several of the bar's 1 s updates.
    with stack.sandbox.connect(_primary_in_block(stack)) as conn:
        database = sql.Identifier(conn.info.dbname)
        conn.execute(sql.SQL("ALTER DATABASE {} SET vacuum_cost_delay = '5ms'").format(database))
        conn.execute(sql.SQL("ALTER DATABASE {} SET vacuum_cost_limit = 10").format(database))
    try:
        _watch_vacuum_progress(stack, tables)
    finally:
        with stack.sandbox.connect(_primary_in_block(stack)) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET vacuum_cost_delay").format(database))
            conn.execute(sql.SQL("ALTER DATABASE {} RESET vacuum_cost_limit").format(database))


def _watch_vacuum_progress(stack, tables: list[str]) -> None:
    run = create_run(stack.api_url, "vacuum/vacuum", {"cluster_block": "sandbox", "params": {
        "tables": tables, "concurrency": 1, "batch_tables": 10,
        "log_dir": tempfile.mkdtemp(prefix="pgrb-e2e-vaclog-")}}, "e2e-vacuum-progress")
    query = {"artifacts": {"flow_run_id": {"any_": [run["id"]]}, "key": {"any_": ["vacuum-progress-sandbox"]}}}
    seen: list[float] = []
    in_browser: list[int] = []  # tables done, as the run's Artifacts tab says
    pw, browser, context = _browser()
    try:
        page = context.new_page()
        shot = 0
        deadline = time.monotonic() + 300
        while (state := api(stack, f"/flow_runs/{run['id']}")["state"]["type"]) not in ACTIVE_DONE:
            assert time.monotonic() < deadline, "the vacuum run never ended"
            bars = post(stack, "/artifacts/filter", query)
            if bars and (not seen or bars[0]["data"] != seen[-1]):
                seen.append(bars[0]["data"])
                if 0 < bars[0]["data"] < 100 and shot < 2:  # the bar on the run's page, mid-run
                    page.goto(f"http://127.0.0.1:{stack.port}/v2/runs/flow-run/{run['id']}?tab=Artifacts",
                              wait_until="networkidle")
                    card = page.get_by_text(re.compile(r"\d+ of 300 tables")).first
                    card.wait_for(timeout=30_000)
                    in_browser.append(int(re.search(r"(\d+) of 300 tables", card.inner_text())[1]))
                    shot += 1
                    page.screenshot(path=str(SHOTS / f"vacuum-progress-{shot}.png"), full_page=True)
            time.sleep(0.2)
        page.goto(f"http://127.0.0.1:{stack.port}/v2/runs/flow-run/{run['id']}?tab=Artifacts",
                  wait_until="networkidle")
        page.get_by_text("300 of 300 tables").first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "vacuum-progress-done.png"), full_page=True)
    finally:
        context.close()
        browser.close()
        pw.stop()
    assert state == "COMPLETED", state
    (bar,) = post(stack, "/artifacts/filter", query)
    assert bar["data"] == 100.0 and "300 of 300 tables" in bar["description"], bar
    assert "finished: 300 vacuumed" in bar["description"], bar["description"]
    moving = [v for v in seen if 0 < v < 100]
    assert len(moving) >= 2 and moving == sorted(moving), seen  # it moved, forward, before the end
    # the browser read the card while the API showed the run mid-way; on a fast machine the run may finish while
    # the page loads, so the card may already say 300 (the API's `moving` above proves the mid-run movement)
    assert in_browser and all(0 < n <= 300 for n in in_browser), in_browser


ACTIVE_DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed (./run install)")
def test_the_report_page_shows_trend_charts_from_two_stored_days(stack):
    """The performance-report deployment on the worker, with two stored days of history (seeded from its own first
    report): the report page in the browser shows the charts as images that load."""
    from tests.helpers import seed_report_history

    state_dir = tempfile.mkdtemp(prefix="pgrb-e2e-reports-")
    parameters = {"cluster_block": "sandbox", "params": {"state_dir": state_dir}}
    first = _run_to_end(stack, "performance-report/performance-report", parameters, "e2e-report-first")
    assert first["state"]["type"] == "COMPLETED", first["state"]
    seed_report_history(state_dir, "sandbox", days=2)
    done = _run_to_end(stack, "performance-report/performance-report", parameters, "e2e-report-trends")
    assert done["state"]["type"] == "COMPLETED", done["state"]
    (report,) = post(stack, "/artifacts/filter", {"artifacts": {
        "flow_run_id": {"any_": [done["id"]]}, "key": {"any_": ["performance-sandbox"]}}})
    assert report["data"].count("](data:image/svg+xml;base64,") >= 6
    pw, browser, context = _browser()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{stack.port}/v2/artifacts/artifact/{report['id']}", wait_until="networkidle")
        # every chart an <img> the browser decoded (the page renders the markdown after loading the artifact)
        page.wait_for_function("""() => {
            const imgs = [...document.querySelectorAll("img[src^='data:image/svg+xml']")];
            return imgs.length >= 6 && imgs.every(img => img.complete && img.naturalWidth > 0);
        }""", timeout=60_000)
        page.get_by_text("Trends over the last 90 days").first.wait_for(timeout=30_000)
        page.get_by_text("Trends over the last 90 days").first.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "performance-report-trends.png"))  # the charts as the on-call sees them
        page.screenshot(path=str(SHOTS / "performance-report-charts.png"), full_page=True)
    finally:
        context.close()
        browser.close()
        pw.stop()


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


def _submit(page) -> None:
    """Submit a run form and wait for the deployment's Runs tab. The busy SQLite server may refuse the create
    (503, the UI shows a toast and stays on the form, as seen once on CI): still on the form after a minute, the
    form is submitted once more. The tests take the runs created after they opened the form."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_role("button", name="Submit").click()
    try:
        page.wait_for_url("**/deployments/deployment/**tab=Runs", timeout=60_000)
    except PlaywrightTimeout:
        page.screenshot(path=str(SHOTS / "submit-retried.png"), full_page=True)
        assert page.url.endswith("/run"), page.url
        page.get_by_role("button", name="Submit").click()
        page.wait_for_url("**/deployments/deployment/**tab=Runs", timeout=60_000)


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed (./run install)")
def test_ui_lists_runbooks_and_a_run_from_the_form_completes(stack):
    SHOTS.mkdir(parents=True, exist_ok=True)
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    pw, browser, context = _browser()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{stack.port}/v2/deployments", wait_until="networkidle")
        page.get_by_text("health-check", exact=True).first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "deployments.png"), full_page=True)
        search = page.get_by_placeholder("Search deployments")
        for d in declared:  # the list pages by 10: find each runbook through the search box
            search.fill(d["name"])
            page.get_by_role("link", name=d["name"], exact=True).first.wait_for(timeout=30_000)

        dep = api(stack, "/deployments/name/health-check/health-check")
        before = {r["id"] for r in post(stack, "/flow_runs/filter", {"limit": 200})}
        page.goto(f"http://127.0.0.1:{stack.port}/v2/deployments/deployment/{dep['id']}/run",
                  wait_until="networkidle")
        field = page.get_by_label("Long Query Seconds (Optional)")
        field.wait_for(timeout=30_000)  # the params model renders as typed fields
        assert page.get_by_text("A non-idle session running longer is a warning.").count() == 1
        field.fill("120")
        page.screenshot(path=str(SHOTS / "health-check-run-form.png"), full_page=True)
        _submit(page)
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


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed (./run install)")
def test_ui_failover_form_shows_typed_parameters_and_a_dry_run_completes(stack):
    def fill(page):
        for label in ("Candidate (Optional)", "Cluster Block (Optional)", "Mode (Optional)", "Force (Optional)",
                      "Require Approval (Optional)", "Confirm Cluster (Optional)"):
            assert page.get_by_text(label, exact=True).count() >= 1, label
        # the form opens as a dry run (the deployment's default) and says what a dry run shows
        assert page.get_by_role("switch", name="Dry Run (Optional)").get_attribute("aria-checked") == "true"
        assert page.get_by_text("a dry run shows the candidate it would promote", exact=False).count() >= 1
        assert page.get_by_role("switch", name="Force (Optional)").get_attribute("aria-checked") == "false"
        page.screenshot(path=str(SHOTS / "failover-run-form.png"), full_page=True)

    new = _submit_failover_form(stack, fill)
    assert new and new[0]["parameters"]["request"]["dry_run"] is True
    done = wait_for(stack.api_url, new[0]["id"], timeout=120)
    assert done["state"]["type"] == "COMPLETED", done["state"]


def _submit_failover_form(stack, fill) -> list[dict]:
    """Open the failover deployment's run form in a real browser, let `fill` set it, submit; the new runs."""
    dep = api(stack, "/deployments/name/failover/failover")
    before = {r["id"] for r in post(stack, "/flow_runs/filter", {"limit": 200})}
    pw, browser, context = _browser()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{stack.port}/v2/deployments/deployment/{dep['id']}/run",
                  wait_until="networkidle")
        page.get_by_label("Max Lag Bytes (Optional)").wait_for(timeout=30_000)
        fill(page)
        _submit(page)
    finally:
        context.close()
        browser.close()
        pw.stop()
    return [r for r in post(stack, "/flow_runs/filter", {"limit": 200}) if r["id"] not in before]


def _failover_params(**request):
    """A failover request as incident tooling sends it: the cluster named, and confirmed (as --cluster does)."""
    return {"request": {"cluster_block": "sandbox", "mode": "switchover", "confirm_cluster": "sandbox", **request}}


def test_a_second_failover_of_one_cluster_is_refused_while_the_first_runs(stack):
    """The deployment has no one-at-a-time limit (failovers of two clusters run at once): the run's own per-cluster
    locks refuse a second failover of the same cluster while the first one waits for its approval."""
    first = create_run(stack.api_url, "failover/failover",
                       _failover_params(dry_run=False, require_approval=True, approval_timeout_seconds=30), "dup-a")
    _wait_state(stack, first["id"], "PAUSED")
    second = create_run(stack.api_url, "failover/failover", _failover_params(dry_run=True), "dup-b")
    refused = wait_for(stack.api_url, second["id"], timeout=120)["state"]
    assert refused["type"] == "FAILED" and "already running" in (refused.get("message") or ""), refused
    assert wait_for(stack.api_url, first["id"], timeout=120)["state"]["type"] == "FAILED"  # unanswered: closed
    assert _primary_in_block(stack) == "primary"


def _wait_state(stack, run_id, wanted, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api(stack, f"/flow_runs/{run_id}")["state"]["type"]
        if state == wanted:
            return
        assert state not in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, state
        time.sleep(0.5)
    raise AssertionError(f"run never reached {wanted}")


def _primary_in_block(stack):
    doc = api(stack, "/block_types/slug/postgres-cluster/block_documents/name/sandbox")
    return doc["data"]["primary_node"]


def test_unanswered_approval_fails_closed(stack):
    # incident tooling's way in: the CLI with --cluster/--mode; approval is required unless --no-approval
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "trigger_runbook.py"), "failover/failover", "--cluster", "sandbox",
         "--mode", "switchover", "--param", 'request={"approval_timeout_seconds": 10}',
         "--idempotency-key", "approval-timeout", "--api-url", stack.api_url], capture_output=True, text=True,
        timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = {"id": json.loads(proc.stdout.splitlines()[0])["flow_run_id"]}
    params = api(stack, f"/flow_runs/{run['id']}")["parameters"]["request"]
    assert params["require_approval"] is True and params["cluster_block"] == "sandbox"
    _wait_state(stack, run["id"], "PAUSED")
    done = wait_for(stack.api_url, run["id"], timeout=120)
    assert done["state"]["type"] == "FAILED"
    message = done["state"]["message"] or ""
    assert "no approval" in message or "never resumed" in message, message  # ours, or Prefect's own pause timeout
    assert _primary_in_block(stack) == "primary"
    with stack.sandbox.connect("primary") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False


def test_switchover_via_rest_with_approval_moves_the_cluster_block(stack):
    assert _primary_in_block(stack) == "primary"
    run = create_run(stack.api_url, "failover/failover",
                     _failover_params(require_approval=True, approval_timeout_seconds=300), "incident-switch-1")
    _wait_state(stack, run["id"], "PAUSED")
    post(stack, f"/flow_runs/{run['id']}/resume", {"run_input": {"approve": True, "approver": "e2e-oncall"}})
    done = wait_for(stack.api_url, run["id"], timeout=180)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert _primary_in_block(stack) == "replica"
    with stack.sandbox.connect("replica") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    with stack.sandbox.connect("pgbouncer") as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == stack.sandbox.config.replica_port


ACTION_RULES = """\
rules:
  - {name: connection_limit, metric: connection_usage_percent, threshold: 0, for: 1m, action: scale_connections}
"""


def _monitor_run(stack, parameters: dict, key: str) -> dict:
    """One alert-monitor run to its end (evaluated_at makes a retried run the same evaluation)."""
    return _run_to_end(stack, "alert-monitor/alert-monitor", parameters, key)


def _delete(stack, path: str) -> None:
    """Delete what a test created; already gone is fine."""
    import urllib.error

    try:
        _filter(stack, path, None, method="DELETE")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise


def _delete_block(stack, slug: str, name: str) -> None:
    from tools.trigger_runbook import TriggerError

    try:
        doc = api(stack, f"/block_types/slug/{slug}/block_documents/name/{name}")
    except TriggerError:
        return
    _delete(stack, f"/block_documents/{doc['id']}")


def test_monitor_on_the_worker_starts_its_action_as_a_deployment_run(stack):
    """connection_limit fires in a monitor run on the worker, which starts connection-remediation as its own
    deployment run (tags, alert context, the cluster's own scaler from prefect.yaml's template); the worker
    runs it to COMPLETED in dry run. A cluster block of its own keeps the scheduled monitor of `sandbox` and
    this test's alert state apart."""
    from datetime import UTC, datetime, timedelta

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sandbox.blocks import sandbox_cluster_block, sandbox_pool_scaler_block
    from tasks.alerts.state import variable_name

    cluster = "e2e-alert-action"
    with temporary_settings({PREFECT_API_URL: stack.api_url}):  # the stack sandbox under a name of its own
        block = sandbox_cluster_block(stack.sandbox, name=cluster)  # primary as now (after the switchover test)
        block.model_copy(update={"primary_node": _primary_in_block(stack)}).save(cluster, overwrite=True)
        sandbox_pool_scaler_block(stack.sandbox).save(cluster, overwrite=True)  # pgbouncer-pool-scaler/<cluster>
    rules = Path(tempfile.mkdtemp(prefix="pgrb-e2e-rules-")) / "rules.yaml"
    rules.write_text(ACTION_RULES)
    t0 = datetime.now(UTC)
    params = {"cluster_blocks": [cluster], "fleet_block": None,  # this cluster only, not the deployment's fleet
              "params": {"rules_file": str(rules)}}  # scaler_block: the deployment's
    try:
        first = _monitor_run(stack, {**params, "evaluated_at": t0.isoformat()}, "e2e-action-t0")
        assert first["state"]["type"] == "COMPLETED", first["state"]
        state = api(stack, f"/variables/name/{variable_name(cluster)}")["value"]
        assert state["alerts"]["connection_limit{}"]["status"] == "pending"
        second = _monitor_run(stack, {**params, "evaluated_at": (t0 + timedelta(seconds=61)).isoformat()},
                              "e2e-action-t61")
        assert second["state"]["type"] == "COMPLETED", second["state"]
        alert = api(stack, f"/variables/name/{variable_name(cluster)}")["value"]["alerts"]["connection_limit{}"]
        assert alert["status"] == "firing" and alert["action_run"], alert

        action = api(stack, f"/flow_runs/{alert['action_run']}")
        deployment = api(stack, f"/deployments/{action['deployment_id']}")
        assert deployment["name"] == "connection-remediation"  # its own deployment run, not a subflow
        assert action["parent_task_run_id"] is not None  # linked to the monitor run in the UI
        assert "alert" in action["tags"] and "connection_limit" in action["tags"]
        assert action["parameters"]["cluster_block"] == cluster
        assert action["parameters"]["alert"]["rule"] == "connection_limit"
        assert action["parameters"]["alert"]["cluster"] == cluster and action["parameters"]["alert"]["value"] > 0
        assert action["parameters"]["alert"]["monitor_flow_run"] == second["id"]
        assert action["parameters"]["scaler_block"] == f"pgbouncer-pool-scaler/{cluster}"  # its own pool
        assert action["parameters"]["params"]["dry_run"] is True  # the deployment's default
        done = wait_for(stack.api_url, action["id"], timeout=120)
        assert done["state"]["type"] == "COMPLETED", done["state"]
        (artifact,) = post(stack, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [action["id"]]}}})
        summary = artifact["description"]
        assert "dry run" in summary and "nothing was terminated" in summary, summary
        assert "scaler: dry run: would raise" in summary or "already at the" in summary, summary  # asked, not raised
    finally:
        _delete(stack, f"/variables/name/{variable_name(cluster)}")
        for slug in ("postgres-cluster", "pgbouncer-pool-scaler"):
            _delete_block(stack, slug, cluster)


def _block_data(stack):
    return api(stack, "/block_types/slug/postgres-cluster/block_documents/name/sandbox")["data"]


def _timeline(box, node) -> int:
    """The timeline a writable node writes WAL on, from its current WAL file name (the server's word)."""
    with box.connect(node) as conn:
        return conn.execute("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
                            ).fetchone()[0]


def _rejoin_via_rest(stack, key):
    """Run the rejoin deployment for the block's fenced node; (that node, the run's summary) once it streams."""
    (node,) = _block_data(stack)["fenced_nodes"]
    run = create_run(stack.api_url, "rejoin/rejoin", {"request": {"cluster_block": "sandbox"}}, key)
    done = wait_for(stack.api_url, run["id"], timeout=180)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    primary = _primary_in_block(stack)
    stack.sandbox.wait_streaming(primary)
    with stack.sandbox.connect(node) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        assert conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()[0] == "streaming"
    assert _block_data(stack)["fenced_nodes"] == []
    (artifact,) = post(stack, "/artifacts/filter", {"artifacts": {
        "flow_run_id": {"any_": [run["id"]]}, "key": {"any_": ["rejoin-sandbox"]}}})
    return node, artifact["description"]


def test_failover_after_a_crash_via_the_cli_then_rejoin_restores_streaming(stack):
    """The incident path: the primary dies (immediate stop), incident tooling triggers mode=failover without
    approval; the standby is promoted, pgbouncer follows, the block fences the dead node, the report gives the
    LSN gap; then the rejoin deployment (pg_rewind if needed) makes the dead node a streaming standby again."""
    from tasks.failover.plan import lsn_int

    box = stack.sandbox
    if _block_data(stack)["fenced_nodes"]:  # the switchover above left its old primary fenced and stopped
        node, summary = _rejoin_via_rest(stack, "rejoin-after-switchover")
        assert node != _primary_in_block(stack) and "no rewind needed" in summary, summary
    old = _primary_in_block(stack)
    cand = next(n for n in ("primary", "replica") if n != old)
    with box.connect(old) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.e2e_failover (n int)")
        conn.execute("INSERT INTO public.e2e_failover VALUES (1)")
        seen_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    tli_before = _timeline(box, old)
    with box.connect(cand) as conn:  # the standby has everything we saw committed before the crash
        for _ in range(100):
            replayed = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0]
            if lsn_int(replayed) >= lsn_int(seen_lsn):
                break
            time.sleep(0.05)
    box.stop_node(old, "immediate")

    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "trigger_runbook.py"), "failover/failover", "--cluster", "sandbox",
         "--mode", "failover", "--no-approval", "--idempotency-key", "crash-failover-1", "--api-url", stack.api_url,
         "--wait", "180"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = json.loads(proc.stdout.splitlines()[0])["flow_run_id"]
    params = api(stack, f"/flow_runs/{run_id}")["parameters"]["request"]
    assert params["mode"] == "failover" and params["require_approval"] is False

    with box.connect(cand) as conn:  # writable on a new timeline, with what was committed before the crash
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        assert conn.execute("SELECT count(*) FROM public.e2e_failover").fetchone()[0] >= 1
        conn.execute("INSERT INTO public.e2e_failover VALUES (2)")
    assert _timeline(box, cand) > tli_before
    with box.connect("pgbouncer") as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == box.node_port(cand)
    data = _block_data(stack)
    assert data["primary_node"] == cand and data["fenced_nodes"] == [old]

    (artifact,) = post(stack, "/artifacts/filter", {"artifacts": {
        "flow_run_id": {"any_": [run_id]}, "key": {"any_": ["failover-sandbox"]}}})
    gap = re.search(r"LSN gap (\d+) bytes \([^)]*\): the old primary's WAL ended at ([0-9A-F]+/[0-9A-F]+), "
                    r"the candidate was promoted at ([0-9A-F]+/[0-9A-F]+)", artifact["data"])
    assert gap, artifact["data"][:2000]
    gap_bytes, wal_end, promoted_at = int(gap[1]), lsn_int(gap[2]), lsn_int(gap[3])
    assert wal_end - promoted_at == gap_bytes
    assert promoted_at >= lsn_int(seen_lsn)  # the candidate was promoted past every commit we saw
    assert f"{cand} is the new primary" in artifact["description"]

    node, summary = _rejoin_via_rest(stack, "rejoin-after-crash-failover")
    assert node == old and "rewound: timelines diverged" in summary, summary
    with box.connect(old) as conn:  # the rejoined node replays the new primary's writes
        for _ in range(100):
            if conn.execute("SELECT count(*) FROM public.e2e_failover WHERE n = 2").fetchone()[0]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"{old} never replayed the write made on {cand}")


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed (./run install)")
def test_ui_form_without_the_typed_cluster_is_refused_and_changes_nothing(stack):
    """An on-call engineer turns the dry run off and submits without typing the cluster again: the run is refused
    before phase 1 (no lock, no journal) and the primary stays where it was."""
    old = _primary_in_block(stack)

    def real_run_unconfirmed(page):
        page.get_by_role("switch", name="Dry Run (Optional)").click()
        assert page.get_by_role("switch", name="Dry Run (Optional)").get_attribute("aria-checked") == "false"
        page.screenshot(path=str(SHOTS / "failover-form-unconfirmed.png"), full_page=True)

    new = _submit_failover_form(stack, real_run_unconfirmed)
    assert new and new[0]["parameters"]["request"]["dry_run"] is False
    assert not new[0]["parameters"]["request"].get("confirm_cluster")
    done = wait_for(stack.api_url, new[0]["id"], timeout=120)
    assert done["state"]["type"] == "FAILED", done["state"]
    assert "needs the cluster typed again in confirm_cluster" in (done["state"]["message"] or ""), done["state"]
    assert _primary_in_block(stack) == old and _block_data(stack)["fenced_nodes"] == []
    with stack.sandbox.connect(old) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed (./run install)")
def test_ui_form_runs_a_real_switchover_then_rejoin(stack):
    """An on-call engineer turns the dry run off and types the cluster again on the failover form: a real switchover
    on the worker; the primary moves, pgbouncer follows, and the rejoin deployment makes the old primary a standby
    again. The progress artifact went through every step."""
    old = _primary_in_block(stack)
    cand = next(n for n in ("primary", "replica") if n != old)
    stack.sandbox.wait_streaming(old)

    def real_run_confirmed(page):
        page.get_by_role("switch", name="Dry Run (Optional)").click()
        page.get_by_label("Confirm Cluster (Optional)").fill("sandbox")
        page.screenshot(path=str(SHOTS / "failover-form-confirmed.png"), full_page=True)

    new = _submit_failover_form(stack, real_run_confirmed)
    assert new and new[0]["parameters"]["request"]["dry_run"] is False
    assert new[0]["parameters"]["request"]["confirm_cluster"] == "sandbox"
    done = wait_for(stack.api_url, new[0]["id"], timeout=180)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert _primary_in_block(stack) == cand and _block_data(stack)["fenced_nodes"] == [old]
    with stack.sandbox.connect("pgbouncer") as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == stack.sandbox.node_port(cand)
    (bar,) = post(stack, "/artifacts/filter", {"artifacts": {
        "flow_run_id": {"any_": [new[0]["id"]]}, "key": {"any_": ["failover-progress-sandbox"]}}})
    assert bar["type"] == "progress" and bar["data"] == 100.0 and "completed" in bar["description"], bar
    node, summary = _rejoin_via_rest(stack, "rejoin-after-ui-switchover")
    assert node == old and "no rewind needed" in summary, summary


def _flow_run_pids(run_id: str) -> list[int]:
    """The processes running this flow run (the process worker passes its id in their environment)."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


def _start_hung_failover(stack, key: str, **request) -> dict:
    """A real switchover run of `sandbox` (no approval) that blocks right after its phase-2 CHECKPOINT (HANG_ENV), once
    it is there: its journal on the workers' disk says the checkpoint is done, it sent a heartbeat, its process runs."""
    from tasks.failover.journal import JournalStore
    from tasks.failover.run import HANG_ENV

    dep = api(stack, "/deployments/name/failover/failover")
    body = {"parameters": _failover_params(require_approval=False, **request), "idempotency_key": key,
            "job_variables": {"env": {HANG_ENV: "checkpoint", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}}
    run = post(stack, f"/deployments/{dep['id']}/create_flow_run", body)
    started = time.monotonic()

    def heartbeats() -> list:
        found = post(stack, "/events/filter", {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                                                          "resource": {"id": [f"prefect.flow-run.{run['id']}"]}},
                                               "limit": 5})
        return found.get("events", [])

    def checkpointed() -> bool:
        journal = JournalStore(stack.state / "runbooks" / "failover").load("sandbox")
        return journal is not None and journal.run_id == run["id"] and any(
            s.step == "checkpoint" and s.status == "done" for s in journal.steps)

    while not (heartbeats() and checkpointed() and _flow_run_pids(run["id"])):
        assert time.monotonic() - started < 180, "the failover never reached its hang after the checkpoint"
        time.sleep(1)
    return run


def _backstop_runs(stack, run_id: str, count: int, timeout: float) -> list[dict]:
    """The failover-crash-alert runs the server started for this failover run, once `count` of them ended."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in post(stack, "/flow_runs/filter", {"limit": 50, "flow_runs": {"tags": {"all_": ["backstop"]}},
                                                             "sort": "EXPECTED_START_TIME_ASC"})
                if run_id in json.dumps(r["parameters"])]
        if len(runs) >= count and all(r["state"]["type"] in ACTIVE_DONE for r in runs):
            return runs
        assert time.monotonic() < deadline, f"the server started {len(runs)} failover-crash-alert run(s) for {run_id}"
        time.sleep(1)


def _run_logs(stack, run_id: str, wanted: str, timeout: float = 60) -> list[str]:
    """A run's log lines, once one contains `wanted` (they reach the API in batches, after its final state)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = [e["message"] for e in post(stack, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}},
                                                                   "limit": 200})]
        if any(wanted in line for line in logs):
            return logs
        assert time.monotonic() < deadline, f"no log line of {run_id} says {wanted!r}: {logs}"
        time.sleep(1)


def _rerun_to_completion_then_rejoin(stack, key: str, old: str, cand: str) -> None:
    """Rerun the failover (it resumes from the journal) to COMPLETED, then rejoin the old primary as a standby."""
    again = create_run(stack.api_url, "failover/failover", _failover_params(require_approval=False), key)
    done = wait_for(stack.api_url, again["id"], timeout=180)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert _primary_in_block(stack) == cand and _block_data(stack)["fenced_nodes"] == [old]
    node, _ = _rejoin_via_rest(stack, f"rejoin-after-{key}")
    assert node == old


def test_a_failover_killed_mid_phase_is_alerted_by_the_server_then_a_rerun_resumes(stack):
    """SIGKILL the failover run's process in phase 2: its worker marks it Crashed and runs its on_crashed hook,
    the server's trigger in prefect.yaml starts the failover-crash-alert deployment, which finds the alert already
    sent (journal) and stays quiet; a rerun resumes from the journal and completes; the rejoin deployment restores
    streaming. (A whole worker lost is the proactive trigger's case: the next test.)"""
    import signal

    old = _primary_in_block(stack)
    cand = next(n for n in ("primary", "replica") if n != old)
    stack.sandbox.wait_streaming(old)
    run = _start_hung_failover(stack, "worker-dies-1")
    for pid in _flow_run_pids(run["id"]):
        os.kill(pid, signal.SIGKILL)  # the worker's flow-run process dies: no hook runs

    crashed = wait_for(stack.api_url, run["id"], timeout=300)
    assert crashed["state"]["type"] == "CRASHED", crashed["state"]
    alert = _backstop_runs(stack, run["id"], 1, timeout=240)[0]
    assert alert["state"]["type"] == "COMPLETED", alert["state"]
    # its worker runs the run's on_crashed hook, so the backstop stays quiet
    lines = _run_logs(stack, alert["id"], "already CRASHED")
    assert any("already CRASHED" in line and ("already alerted by its own hook" in line or "alert:" in line)
               for line in lines), lines

    _rerun_to_completion_then_rejoin(stack, "worker-dies-rerun", old, cand)


def test_a_worker_lost_mid_fleet_run_and_mid_failover_the_fleet_reports_it_and_the_backstop_alerts(stack):
    """A whole worker is lost (SIGKILL of its process group and of the runs it started) while it runs a failover
    hung after its phase-2 CHECKPOINT and the first cluster of a fleet run (a cluster whose server accepts TCP and
    never answers); the fleet's other clusters run on the other worker.

    The fleet run still ends: the lost worker's cluster `timed-out`, linked to its run, every other cluster ok. No hook
    of the failover run can act and the run stays Running: the server's proactive trigger (prefect.yaml: no heartbeat
    for 90 s) starts failover-crash-alert on the surviving worker, which marks the run Crashed and replies in the run's
    Slack thread with its last journaled step; the Crashed it set fires the reactive trigger, whose run finds the alert
    sent. A rerun resumes from the journal and completes; the rejoin deployment restores streaming; the lost worker is
    restarted."""
    import signal
    import socket
    import threading

    from prefect.settings import PREFECT_API_URL, temporary_settings
    from pydantic import SecretStr

    from blocks.postgres_cluster import PostgresCluster, PostgresNode
    from flows.fleet import fleet
    from sandbox.stack import WORK_POOL
    from tasks.failover.journal import JournalStore
    from tests.helpers import save_slack_block
    from tests.slack_server import start_fake_slack

    victim, survivor = stack.worker_names[:2]
    old = _primary_in_block(stack)
    cand = next(n for n in ("primary", "replica") if n != old)
    stack.sandbox.wait_streaming(old)
    slack, token, timeout = start_fake_slack(), "xoxb-ok-worker-lost", 90
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    outcome: dict = {}
    try:
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            save_slack_block(slack, "e2e-worker-lost", token)
            for name in ("fleet-001", "fleet-002"):  # cheap clusters over the sandbox's servers: its primary now
                PostgresCluster.load(name).model_copy(update={"primary_node": old, "fenced_nodes": []}).save(
                    name, overwrite=True)
            PostgresCluster(cluster_name="zz-hangs", nodes=[PostgresNode(name="pg-1", host="127.0.0.1",
                            port=listener.getsockname()[1])], primary_node="pg-1", password=SecretStr("x"),
                            sslmode="disable", connect_timeout=60).save("zz-hangs", overwrite=True)
        stack._stop(survivor)  # until the kill, the victim alone takes runs: the failover and the fleet's first cluster
        run = _start_hung_failover(stack, "worker-lost-1", slack_block="e2e-worker-lost")

        def run_fleet():  # settings are a context variable: a new thread needs its own
            with temporary_settings({PREFECT_API_URL: stack.api_url}):
                outcome["report"] = fleet(runbook="health-check", fleet_block="fleet", cluster_blocks=["zz-hangs"],
                                          max_parallel=1, cluster_timeout_seconds=timeout,
                                          deployment="health-check/health-check")

        thread = threading.Thread(target=run_fleet)
        thread.start()
        owner, hung_pids = _worker_of_the_run_named(stack, "health-check · zz-hangs", timeout=240)
        assert owner == victim
        _restart_and_wait_polling(stack, survivor, WORK_POOL)  # it runs the fleet's other clusters, and the backstop
        failover_pids = _flow_run_pids(run["id"])
        os.killpg(stack._pid(victim), signal.SIGKILL)  # the worker, then the flow-run processes it started
        for pid in failover_pids + hung_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        thread.join(timeout=timeout + 300)
        assert not thread.is_alive(), "the fleet run never ended"

        report = outcome["report"]
        by = {m.cluster: m for m in report.members}
        assert set(by) == {"sandbox", "fleet-001", "fleet-002", "zz-hangs"}, report.summary
        assert {by[c].status for c in ("sandbox", "fleet-001", "fleet-002")} == {"ok"}, [m.summary for m in by.values()]
        hung = by["zz-hangs"]
        assert hung.status == "timed-out" and hung.flow_run_id and f"Not finished after {timeout} s" in hung.summary
        assert report.status == "critical" and "1 timed-out" in report.summary
        (art,) = post(stack, "/artifacts/filter", {"artifacts": {"key": {"any_": ["fleet-health-check-fleet"]}},
                                                   "sort": "CREATED_DESC", "limit": 1})
        assert "| zz-hangs | timed-out |" in art["data"]
        assert api(stack, f"/flow_runs/{hung.flow_run_id}")["state"]["type"] == "RUNNING"  # nobody left to say

        backstops = _backstop_runs(stack, run["id"], 2, timeout=300)  # the proactive trigger's, then the reactive's
        crashed = api(stack, f"/flow_runs/{run['id']}")["state"]
        assert crashed["type"] == "CRASHED" and "no heartbeat for 90 s" in crashed["message"], crashed
        assert {r["state"]["type"] for r in backstops} == {"COMPLETED"}, [r["state"] for r in backstops]
        lines = _run_logs(stack, backstops[0]["id"], "marked CRASHED")
        assert any("marked CRASHED (it was RUNNING, silent for 90 s); alert: 1 Slack message(s) delivered" in line
                   for line in lines), lines
        journal = JournalStore(stack.state / "runbooks" / "failover").load("sandbox")
        assert journal.run_id == run["id"] and journal.slack_parent_ts
        replies = [c for c in slack.calls("chat.postMessage", token=token) if "Failover CRASHED" in str(c.body)]
        # once: the two backstop runs take the cluster's alert slot in turn, and the second finds it in the journal
        assert len(replies) == 1 and replies[0].body.get("thread_ts") == journal.slack_parent_ts, replies
        for needle in ("Failover CRASHED (worker lost)", "after step `checkpoint` (done)", f"writable: {old}",
                       "rerun the failover"):
            assert needle in str(replies[0].body), (needle, replies[0].body)
    finally:
        listener.close()
        for name in stack.worker_names:
            stack.start_worker(name)
        slack.stop()
        _delete_block(stack, "slack-notifier", "e2e-worker-lost")
        _delete_block(stack, "postgres-cluster", "zz-hangs")

    _rerun_to_completion_then_rejoin(stack, "worker-lost-rerun", old, cand)


def _restart_and_wait_polling(stack, name: str, pool: str, timeout: float = 120) -> None:
    """Start a stack worker and wait until the server saw it poll (a worker heartbeat after the start)."""
    from datetime import UTC, datetime

    since = datetime.now(UTC)
    stack.start_worker(name)
    deadline = time.monotonic() + timeout
    while True:
        seen = [w for w in post(stack, f"/work_pools/{pool}/workers/filter", {})
                if w["name"] == f"pg-runbooks-{name}" and w.get("last_heartbeat_time")
                and datetime.fromisoformat(w["last_heartbeat_time"]) > since]
        if seen:
            return
        assert time.monotonic() < deadline, f"worker {name} never polled its pool"
        time.sleep(0.5)


def _worker_of_the_run_named(stack, name: str, timeout: float) -> tuple[str, list[int]]:
    """Which of the stack's workers runs the flow run of this name (an ancestor of its process), once it runs, and
    the run's processes."""
    workers = {stack._pid(w): w for w in stack.worker_names}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = post(stack, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]},
                                                               "state": {"type": {"any_": ["RUNNING"]}}}})
        for run in runs:
            pids = _flow_run_pids(run["id"])
            for pid in pids:
                while pid > 1:
                    if pid in workers:
                        return workers[pid], pids
                    try:
                        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    except (OSError, ValueError, IndexError):
                        break
        time.sleep(0.5)
    raise AssertionError(f"no worker runs {name}")
