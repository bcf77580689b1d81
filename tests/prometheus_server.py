"""A local HTTP server speaking Prometheus' instant-query API (GET /api/v1/query).

The OS packages here do provide Prometheus 2.42, but a real server needs node_exporter and a
scrape interval before it has data; this answers the same JSON shapes at once. Series are
matched by metric name: `values` maps a metric name found in the query to the value returned.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class FakePrometheus:
    server: ThreadingHTTPServer
    values: dict[str, float] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    fail_with: str | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_fake_prometheus() -> FakePrometheus:
    fake: FakePrometheus

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            parsed = urlparse(self.path)
            if parsed.path != "/api/v1/query":
                self.send_response(404)
                self.end_headers()
                return
            query = parse_qs(parsed.query).get("query", [""])[0]
            fake.queries.append(query)
            fake.auth.append(self.headers.get("Authorization"))
            if fake.fail_with:
                status, body = 400, {"status": "error", "errorType": "bad_data", "error": fake.fail_with}
            else:
                # The longest metric name found in the query decides (disk queries name two metrics).
                names = sorted((n for n in fake.values if n in query), key=len, reverse=True)
                value = fake.values[names[0]] if names else None
                result = [] if value is None else [{"metric": {"instance": "db1:9100"},
                                                     "value": [1700000000.0, str(value)]}]
                status, body = 200, {"status": "success", "data": {"resultType": "vector", "result": result}}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake = FakePrometheus(server=server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake
