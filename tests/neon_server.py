"""A small stateful stand-in for the Neon API v2 (the paths and fields pg-runbooks uses): projects with compute
endpoints, operations that stay `running` for `polls_to_finish` GETs before `finished`, 423 (another operation in
progress) and 429 (rate limit, with Retry-After) injected on demand, every request recorded (method, path, JSON
body, Authorization header); `on_restart` plays what Neon does to the compute on a restart (the failover tests
restart a sandbox PostgreSQL). It binds port 0 on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_KEY = "neon-api-key-never-logged-4b1d2e"  # tests assert it never reaches logs, artifacts or Slack


@dataclass
class NeonStandIn:
    server: ThreadingHTTPServer
    polls_to_finish: int = 3
    endpoints: dict[tuple[str, str], dict] = field(default_factory=dict)
    operations: dict[str, dict] = field(default_factory=dict)
    inject: list[int] = field(default_factory=list)  # statuses answered to the next requests, in order
    requests: list[dict] = field(default_factory=list)
    on_restart: Callable[[], None] | None = None  # what Neon does to the compute on a restart (run in a thread)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/api/v2"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_endpoint(self, project: str, endpoint: str, min_cu: float = 0.25, max_cu: float = 2,
                     state: str = "active") -> None:
        self.endpoints[(project, endpoint)] = {
            "id": endpoint, "project_id": project, "autoscaling_limit_min_cu": min_cu,
            "autoscaling_limit_max_cu": max_cu, "current_state": state, "suspend_timeout_seconds": 0,
            "type": "read_write"}

    def _operation(self, project: str, endpoint: str, action: str) -> dict:
        op = {"id": f"op-{next(self._ids)}", "project_id": project, "endpoint_id": endpoint, "action": action,
              "status": "running", "_polls": 0}
        self.operations[op["id"]] = op
        return _public(op)

    def handle(self, method: str, path: str, body: dict, auth: str | None) -> tuple[int, dict, dict]:
        with self.lock:
            self.requests.append({"method": method, "path": path, "body": body, "auth": auth})
            if self.inject:
                status = self.inject.pop(0)
                headers = {"Retry-After": "1"} if status == 429 else {}
                return status, {"message": "injected", "code": str(status)}, headers
            if auth != f"Bearer {API_KEY}":
                return 401, {"message": "authentication required"}, {}
            if m := re.fullmatch(r"/api/v2/projects/([^/]+)/operations/([^/]+)", path):
                op = self.operations.get(m.group(2))
                if op is None:
                    return 404, {"message": "operation not found"}, {}
                op["_polls"] += 1
                if op["_polls"] >= self.polls_to_finish:
                    op["status"] = "finished"
                return 200, {"operation": _public(op)}, {}
            m = re.fullmatch(r"/api/v2/projects/([^/]+)/endpoints/([^/]+)(/restart)?", path)
            if not m or (m.group(1), m.group(2)) not in self.endpoints:
                return 404, {"message": "not found"}, {}
            project, eid, restart = m.groups()
            ep = self.endpoints[(project, eid)]
            if method == "GET" and not restart:
                return 200, {"endpoint": dict(ep)}, {}
            if method == "PATCH" and not restart:
                ep.update({k: v for k, v in body.get("endpoint", {}).items() if k in ep})
                return 200, {"endpoint": dict(ep), "operations": [self._operation(project, eid, "apply_config")]}, {}
            if method == "POST" and restart:
                ep["current_state"] = "active"
                ops = [self._operation(project, eid, "suspend_compute"), self._operation(project, eid, "start_compute")]
                if self.on_restart is not None:
                    threading.Thread(target=self.on_restart, daemon=True).start()
                return 200, {"endpoint": dict(ep), "operations": ops}, {}
            return 405, {"message": "method not allowed"}, {}


def _public(op: dict) -> dict:
    return {k: v for k, v in op.items() if not k.startswith("_")}


def start_neon_server() -> NeonStandIn:
    stand_in: NeonStandIn

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _serve(self, method: str) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload, headers = stand_in.handle(method, self.path, json.loads(raw or b"{}"),
                                                       self.headers.get("Authorization"))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._serve("GET")

        def do_PATCH(self):  # noqa: N802
            self._serve("PATCH")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stand_in = NeonStandIn(server=server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return stand_in
