#!/usr/bin/env python3
"""Start a runbook deployment from incident tooling (PagerDuty webhooks, scripts) via Prefect's REST API.

Standard library only, so any host with Python 3 can call it:

    python3 tools/trigger_runbook.py failover/failover --cluster orders --mode failover \\
        --idempotency-key "$INCIDENT_ID" --api-url http://127.0.0.1:4200/api --wait 900

    python3 tools/trigger_runbook.py high-load-response/high-load-response --cluster orders \\
        --param 'params={"dry_run": false}'

--cluster names the PostgresCluster block; for the failover flow it (with --mode) goes into the
flow's `request`, and an automatic trigger requires a human approval in the Prefect UI unless
--no-approval is given (the flow waits approval_timeout_seconds, then refuses: nothing changes).

The idempotency key makes a retried webhook start one run, not two: the server returns the
same flow run for the same key. Parameters are validated by the server against the flow's
schema (HTTP 409 on a bad value; nothing is started). Exit status: 0 started (or completed
with --wait), 1 the run ended in a non-completed state, 2 refused or unreachable.
With PREFECT_API_AUTH_STRING set, it authenticates like Prefect's own client.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# Final states only: CANCELLING is on its way to CANCELLED (the run may still be stopping its work).
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class TriggerError(RuntimeError):
    pass


RETRYABLE = {429, 502, 503, 504}  # a busy server (SQLite "database is locked" answers 503)


def _request(api_url: str, method: str, path: str, body: dict | None = None, timeout: float = 15,
             attempts: int = 5) -> dict:
    """One API call; busy answers and connection errors are retried with backoff when it is safe:
    reads always, a create only with an idempotency key (the server then returns the same run)."""
    safe = method == "GET" or bool(body and body.get("idempotency_key"))
    for attempt in range(1, attempts + 1):
        try:
            return _request_once(api_url, method, path, body, timeout)
        except _Busy as busy:
            if not safe or attempt == attempts:
                raise TriggerError(str(busy)) from None
            time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


class _Busy(Exception):
    pass


def _request_once(api_url: str, method: str, path: str, body: dict | None, timeout: float) -> dict:
    headers = {"Content-Type": "application/json"}
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api_url.rstrip("/") + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:1000]
        message = f"{method} {path} -> HTTP {exc.code}: {detail}"
        if exc.code in RETRYABLE:
            raise _Busy(message) from None
        raise TriggerError(message) from None
    except OSError as exc:
        raise _Busy(f"Prefect API at {api_url} unreachable: {exc}") from None


def read_deployment(api_url: str, name: str) -> dict:
    """Deployment 'flow-name/deployment-name' as the API describes it (id, parameter schema, ...)."""
    flow_name, _, deployment_name = name.partition("/")
    if not deployment_name:
        raise TriggerError(f"deployment must be 'flow-name/deployment-name', got {name!r}")
    quoted = f"{urllib.parse.quote(flow_name, safe='')}/{urllib.parse.quote(deployment_name, safe='')}"
    return _request(api_url, "GET", f"/deployments/name/{quoted}")


def deployment_id(api_url: str, name: str) -> str:
    return read_deployment(api_url, name)["id"]


def runbook_parameters(schema: dict | None, params: dict, cluster: str | None, mode: str | None,
                       approval: bool | None = None) -> dict:
    """The flow's parameters from --param plus --cluster/--mode, shaped by the deployment's schema:
    a flow taking one `request` model (failover) gets them inside it, and `approval` (when given)
    becomes its require_approval unless --param set it explicitly. --cluster also confirms the cluster
    (confirm_cluster, which a real failover needs): naming it on the command line is the deliberate act,
    and the approval in the UI stays on unless --no-approval."""
    params = dict(params)
    properties = (schema or {}).get("properties", {})
    if "request" in properties:
        request = dict(params.get("request") or {})
        if cluster:
            request["cluster_block"] = cluster
            request.setdefault("confirm_cluster", cluster)
        if mode:
            request["mode"] = mode
        if approval is not None:
            request.setdefault("require_approval", approval)
        params["request"] = request
        return params
    if mode:
        raise TriggerError("--mode applies to the failover runbook only")
    if cluster:
        if "cluster_block" not in properties:
            raise TriggerError("this deployment takes no cluster_block parameter; pass --param instead")
        params["cluster_block"] = cluster
    return params


def create_run(api_url: str, deployment: str, parameters: dict, idempotency_key: str | None,
               tags: list[str] | None = None, cluster: str | None = None, mode: str | None = None,
               approval: bool | None = None) -> dict:
    found = read_deployment(api_url, deployment)
    parameters = runbook_parameters(found.get("parameter_openapi_schema"), parameters, cluster, mode, approval)
    body: dict = {"parameters": parameters, "tags": tags or ["incident-tooling"]}
    if idempotency_key:
        body["idempotency_key"] = idempotency_key
    return _request(api_url, "POST", f"/deployments/{found['id']}/create_flow_run", body)


def wait_for(api_url: str, run_id: str, timeout: float, poll: float = 1.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = _request(api_url, "GET", f"/flow_runs/{run_id}")
        state = (run.get("state") or {}).get("type")
        if state in TERMINAL or time.monotonic() > deadline:
            return run
        time.sleep(poll)


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param needs key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("deployment", help="flow-name/deployment-name, e.g. failover/failover")
    parser.add_argument("--param", action="append", type=_param, default=[], help="key=value (JSON values allowed)")
    parser.add_argument("--cluster", help="PostgresCluster block name (failover: request.cluster_block)")
    parser.add_argument("--mode", choices=["switchover", "failover"], help="failover runbook: which mode")
    parser.add_argument("--no-approval", action="store_true",
                        help="failover runbook: do not wait for a human approval in the Prefect UI")
    parser.add_argument("--idempotency-key", help="same key -> same flow run (use the incident id)")
    parser.add_argument("--api-url", default=os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api"))
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for a terminal state")
    args = parser.parse_args(argv)
    try:
        run = create_run(args.api_url, args.deployment, dict(args.param), args.idempotency_key,
                         cluster=args.cluster, mode=args.mode, approval=not args.no_approval)
        print(json.dumps({"flow_run_id": run["id"], "name": run.get("name"),
                          "state": (run.get("state") or {}).get("type")}))
        if args.wait:
            run = wait_for(args.api_url, run["id"], args.wait)
            state = (run.get("state") or {}).get("type")
            print(json.dumps({"flow_run_id": run["id"], "state": state,
                              "message": (run.get("state") or {}).get("message")}))
            return 0 if state == "COMPLETED" else 1
    except TriggerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
