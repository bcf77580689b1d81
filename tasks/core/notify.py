"""Slack notifications: one parent message per flow run, updated in place, details in its thread.

A notification failure is recorded in a NotificationOutcome and logged; it never
raises into the runbook, so it can neither fail nor hide the runbook's result.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field
from slack_sdk.errors import SlackApiError, SlackClientError

from blocks.slack_notifier import SlackNotifier

log = logging.getLogger("pg_runbooks.notify")

STATUS_EMOJI = {"ok": ":large_green_circle:", "warning": ":large_yellow_circle:", "critical": ":red_circle:"}
MAX_SECTION_CHARS = 2900  # Block Kit section text is limited to 3000 characters


class NotificationOutcome(BaseModel):
    """What happened to the notifications of one run."""

    attempted: bool = False
    delivered: int = 0
    failed: int = 0
    errors: list[str] = Field(default_factory=list)
    parent_ts: str | None = None
    channel: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def summary(self) -> str:
        if not self.attempted:
            return "no Slack notification was needed or configured"
        if self.failed == 0:
            return f"{self.delivered} Slack message(s) delivered"
        return f"Slack notification failed ({self.failed} of {self.delivered + self.failed}): {self.errors[-1]}"


def section_blocks(title: str, lines: list[str], context: str | None = None) -> list[dict[str, Any]]:
    """Block Kit: a header, the lines as mrkdwn sections, an optional context footer."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}}
    ]
    chunk = ""
    for line in lines:
        if len(chunk) + len(line) + 1 > MAX_SECTION_CHARS:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
            chunk = ""
        chunk = f"{chunk}\n{line}" if chunk else line[:MAX_SECTION_CHARS]
    if chunk:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
    if context:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context[:2000]}]})
    return blocks[:50]


class SlackThread:
    """The Slack conversation of one flow run: a parent message and its thread."""

    def __init__(self, notifier: SlackNotifier | None, outcome: NotificationOutcome | None = None):
        self.notifier = notifier
        self.outcome = outcome or NotificationOutcome()
        self._client = None
        if notifier is not None:
            self.outcome.channel = notifier.channel

    @property
    def enabled(self) -> bool:
        return self.notifier is not None

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        if self.notifier is None:
            return None
        self.outcome.attempted = True
        try:
            if self._client is None:
                self._client = self.notifier.get_client()
            response = getattr(self._client, method)(channel=self.notifier.channel, **kwargs)
            self.outcome.delivered += 1
            return response.data if hasattr(response, "data") else dict(response)
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            status = getattr(exc.response, "status_code", "?")
            self._record(f"Slack API {method} failed: {error or 'HTTP ' + str(status)}")
        except (SlackClientError, OSError, ValueError) as exc:
            self._record(f"Slack {method} failed: {type(exc).__name__}: {_short(exc)}")
        except Exception as exc:  # noqa: BLE001 - a notification must never break a runbook
            self._record(f"Slack {method} failed unexpectedly: {type(exc).__name__}")
        return None

    def _record(self, message: str) -> None:
        self.outcome.failed += 1
        self.outcome.errors.append(message)
        log.warning("notification failed: %s", message)

    def post(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Post the parent message (or, once posted, update it in place)."""
        if self.outcome.parent_ts:
            self.update(text, blocks)
            return
        data = self._call("chat_postMessage", text=text, blocks=blocks)
        if data:
            self.outcome.parent_ts = data.get("ts")
            self.outcome.channel = data.get("channel") or self.outcome.channel

    def update(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """Rewrite the parent message (chat.update) with the run's latest state."""
        if not self.outcome.parent_ts:
            self.post(text, blocks)
            return
        self._call("chat_update", ts=self.outcome.parent_ts, text=text, blocks=blocks)

    def reply(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """A detail message in the parent's thread (top level if the parent failed)."""
        self._call("chat_postMessage", text=text, blocks=blocks, thread_ts=self.outcome.parent_ts)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


def load_notifier(block_name: str | None) -> tuple[SlackNotifier | None, str | None]:
    """Load a SlackNotifier block by name; a failure to load is a notification failure, not fatal."""
    if not block_name:
        return None, None
    try:
        return SlackNotifier.load(block_name), None
    except Exception as exc:  # noqa: BLE001
        return None, f"could not load SlackNotifier block {block_name!r}: {type(exc).__name__}: {_short(exc)}"


def open_thread(block_name: str | None) -> SlackThread:
    """The Slack thread of a run, from a SlackNotifier block name.

    A block that cannot be loaded is recorded as a notification failure; `thread.enabled` says
    whether anything will be sent.
    """
    notifier, load_error = load_notifier(block_name)
    thread = SlackThread(notifier)
    if load_error:
        thread.outcome.attempted = True
        thread._record(load_error)
    return thread
