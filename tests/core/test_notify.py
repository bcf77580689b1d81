"""The Slack notifier against a local HTTP server at slack-sdk's base_url."""

import time

from pydantic import SecretStr

from blocks.slack_notifier import SlackNotifier
from tasks.core.notify import SlackThread, section_blocks


def notifier(slack, token, channel="#db-ops", timeout=2):
    return SlackNotifier(bot_token=SecretStr(token), channel=channel, base_url=slack.base_url,
                         timeout_seconds=timeout)


def test_parent_then_thread_reply_then_update_in_place(slack):
    thread = SlackThread(notifier(slack, "xoxb-ok-1"))
    thread.post("parent", section_blocks("Title", ["line"]))
    thread.reply("detail")
    thread.update("parent v2")
    calls = slack.calls(token="xoxb-ok-1")
    assert [c.method for c in calls] == ["chat.postMessage", "chat.postMessage", "chat.update"]
    parent_ts = thread.outcome.parent_ts
    assert calls[1].body["thread_ts"] == parent_ts
    assert calls[2].body["ts"] == parent_ts
    assert calls[0].body["text"] == "parent" and calls[0].body["blocks"]  # fallback text with blocks
    assert thread.outcome.ok and thread.outcome.delivered == 3


def test_rate_limited_once_is_retried_after_retry_after(slack):
    thread = SlackThread(notifier(slack, "xoxb-ratelimit-once"))
    started = time.monotonic()
    thread.post("hello")
    assert thread.outcome.ok and thread.outcome.delivered == 1
    assert [c.status for c in slack.calls(token="xoxb-ratelimit-once")] == [429, 200]
    assert time.monotonic() - started >= 1.0


def test_server_error_is_recorded_not_raised(slack):
    thread = SlackThread(notifier(slack, "xoxb-server-error"))
    thread.post("hello")
    thread.reply("detail")
    assert thread.outcome.failed == 2 and thread.outcome.delivered == 0
    assert "HTTP 500" in thread.outcome.errors[0] or "internal_error" in thread.outcome.errors[0]
    assert len(slack.calls(token="xoxb-server-error")) == 4  # each call retried once


def test_not_in_channel_and_invalid_auth(slack):
    t1 = SlackThread(notifier(slack, "xoxb-ok-2", channel="not-in-channel"))
    t1.post("hello")
    assert "not_in_channel" in t1.outcome.errors[0]
    t2 = SlackThread(notifier(slack, "xoxb-invalid"))
    t2.post("hello")
    assert "invalid_auth" in t2.outcome.errors[0]


def test_hanging_server_times_out(slack):
    thread = SlackThread(notifier(slack, "xoxb-hang", timeout=1))
    started = time.monotonic()
    thread.post("hello")
    assert thread.outcome.failed == 1
    assert time.monotonic() - started < 4.5


def test_unreachable_slack(slack):
    from sandbox.cluster import free_port

    n = SlackNotifier(bot_token=SecretStr("xoxb-ok-3"), channel="#x",
                      base_url=f"http://127.0.0.1:{free_port()}/api/", timeout_seconds=1)
    thread = SlackThread(n)
    thread.post("hello")
    assert thread.outcome.failed == 1 and "xoxb-ok-3" not in " ".join(thread.outcome.errors)


def test_no_notifier_means_nothing_attempted():
    thread = SlackThread(None)
    thread.post("x")
    assert not thread.outcome.attempted and thread.outcome.ok
