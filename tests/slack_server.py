"""A local HTTP server standing in for Slack's Web API at slack-sdk's base_url.

Scenarios are chosen by the bot token (and one by channel), like slack-sdk's own
mock_web_api_server:
  xoxb-ok-*            every call succeeds
  xoxb-ratelimit-once  the first call answers 429 Retry-After: 1, then success
  xoxb-server-error    every call answers HTTP 500
  xoxb-invalid         {"ok": false, "error": "invalid_auth"}
  xoxb-hang            the server never answers in time
  channel not-in-channel  {"ok": false, "error": "not_in_channel"}
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass
class Recorded:
    method: str
    token: str
    body: dict
    raw: str
    status: int


@dataclass
class FakeSlack:
    server: ThreadingHTTPServer
    requests: list[Recorded] = field(default_factory=list)
    seen_tokens: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hang_seconds: float = 5.0

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/api/"

    def calls(self, method: str | None = None, token: str | None = None) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and (token is None or r.token == token)]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.seen_tokens.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_fake_slack() -> FakeSlack:
    fake: FakeSlack

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            ctype = self.headers.get("Content-Type", "")
            if "json" in ctype:
                body = json.loads(raw or "{}")
            else:
                body = {k: v[0] for k, v in parse_qs(raw).items()}
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            method = self.path.rsplit("/", 1)[-1]
            status, payload, headers = self.scenario(token, method, body)
            with fake.lock:
                fake.requests.append(Recorded(method, token, body, raw, status))
            if status == -1:
                time.sleep(fake.hang_seconds)
                status, payload = 200, {"ok": True, "channel": "C1", "ts": "0.0"}
            try:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def scenario(self, token: str, method: str, body: dict):
            with fake.lock:
                first = token not in fake.seen_tokens
                fake.seen_tokens.add(token)
                n = len(fake.requests)
            if token == "xoxb-hang":
                return -1, {}, {}
            if token == "xoxb-server-error":
                return 500, {"ok": False, "error": "internal_error"}, {}
            if token == "xoxb-invalid":
                return 200, {"ok": False, "error": "invalid_auth"}, {}
            if token == "xoxb-ratelimit-once" and first:
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}
            if body.get("channel") == "not-in-channel":
                return 200, {"ok": False, "error": "not_in_channel"}, {}
            ts = body.get("ts") or f"{1700000000 + n}.{n:06d}"
            return 200, {"ok": True, "channel": "C0TEST", "ts": ts, "message": {"text": body.get("text")}}, {}

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake = FakeSlack(server=server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake
