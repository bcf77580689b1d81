"""A local HTTP server standing in for a scaling webhook: records each JSON POST, answers `status`."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class WebhookServer:
    server: ThreadingHTTPServer
    status: int = 200
    requests: list[tuple[dict, dict]] = field(default_factory=list)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/scale"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_webhook_server(status: int = 200) -> WebhookServer:
    hook: WebhookServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.requests.append((json.loads(raw or b"{}"), dict(self.headers)))
            data = json.dumps({"accepted": hook.status < 300}).encode()
            self.send_response(hook.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook = WebhookServer(server=server, status=status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hook
