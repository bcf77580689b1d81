"""Patroni's REST API: GET /cluster and /patroni, POST /switchover and /failover, and what their answers mean.

Plain HTTP(S) through urllib with the block's CA / verify option and basic auth; the password is read only
by `PatroniApi.auth_headers` and never appears in a message. Every call is bounded by the block's timeout.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from blocks.failover_adapters import PatroniApi


class PatroniUnreachable(RuntimeError):
    """No answer from a Patroni REST API (connection refused, timeout, TLS); the message names node and URL.
    `refused`: the connection was refused, so the request surely never reached Patroni."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass
class Answer:
    status: int
    body: dict | str

    @property
    def text(self) -> str:
        return self.body if isinstance(self.body, str) else json.dumps(self.body)


def _base(api: PatroniApi, node: str) -> str:
    try:
        return api.urls[node].rstrip("/")
    except KeyError:
        raise PatroniUnreachable(f"the Patroni settings have no REST API URL for node {node!r}") from None


def call(api: PatroniApi, node: str, method: str, path: str, body: dict | None = None,
         timeout: float | None = None) -> Answer:
    """One request to the node's REST API; any HTTP status is an Answer, no answer at all is PatroniUnreachable."""
    url = _base(api, node) + path
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {}),
               **(api.auth_headers() if method != "GET" else {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - http(s) only
    context = api.ssl_context() if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout or api.timeout_seconds, context=context) as resp:
            return Answer(resp.status, _decode(resp.read()))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, _decode(exc.read()))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PatroniUnreachable(f"Patroni REST API of {node} ({url}) did not answer: {reason}",
                                 refused=isinstance(reason, ConnectionRefusedError)) from None


def _decode(raw: bytes) -> dict | str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return text[:500]
    return value if isinstance(value, dict) else {"value": value}


def first_answer(api: PatroniApi, path: str, prefer: list[str] | None = None) -> tuple[str, Answer]:
    """GET `path` from the first node whose REST API answers (the preferred nodes first)."""
    errors = []
    for node in [*(prefer or []), *[n for n in api.urls if n not in (prefer or [])]]:
        try:
            return node, call(api, node, "GET", path)
        except PatroniUnreachable as exc:
            errors.append(str(exc))
    raise PatroniUnreachable("; ".join(errors) or "no Patroni REST API configured")


def leader_of(cluster: dict) -> str | None:
    """The member holding the leader lock in a GET /cluster answer."""
    return next((m.get("name") for m in cluster.get("members", []) if m.get("role") in ("leader", "standby_leader")),
                None)


def member(cluster: dict, name: str) -> dict | None:
    return next((m for m in cluster.get("members", []) if m.get("name") == name), None)
