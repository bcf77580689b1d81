"""The SlackNotifier block: bot token, channel and retry policy for Slack's Web API."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)


class SlackNotifier(Block):
    """Where runbook notifications go. A bot token (not a webhook) is needed for threads."""

    _block_type_name = "Slack Notifier"
    _block_type_slug = "slack-notifier"
    _description = "Slack channel, bot token and retry policy used by pg-runbooks notifications."
    _documentation_url = "https://github.com/pg-runbooks/pg-runbooks#slack"
    _code_example = """
```python
from blocks.slack_notifier import SlackNotifier

notifier = SlackNotifier.load("BLOCK_NAME")
client = notifier.get_client()
```
"""

    bot_token: SecretStr = Field(description="Slack bot token (xoxb-...) with chat:write.")
    channel: str = Field(description="Channel ID or name, e.g. C0123456 or #db-ops.")
    base_url: str | None = Field(
        default=None, description="Slack Web API base URL; set only for a proxy or a test server."
    )
    timeout_seconds: int = Field(default=10, ge=1, le=120, description="HTTP timeout per request.")
    rate_limit_retries: int = Field(default=2, ge=0, le=10, description="Retries on HTTP 429 (waits Retry-After).")
    server_error_retries: int = Field(default=1, ge=0, le=10, description="Retries on HTTP 500/503.")
    connection_error_retries: int = Field(default=1, ge=0, le=10, description="Retries on connection errors.")
    mention_groups: dict[str, str] = Field(
        default_factory=dict,
        description="Mentions per audience, e.g. {'notify_dba': '<!subteam^S123>', 'notify_team': '<!here>'}.",
    )

    def get_client(self) -> WebClient:
        """A WebClient with rate-limit, server-error and connection retry handlers.

        The only place the bot token is read.
        """
        kwargs = {}
        if self.base_url:
            kwargs["base_url"] = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        return WebClient(
            token=self.bot_token.get_secret_value(),
            timeout=self.timeout_seconds,
            retry_handlers=[
                RateLimitErrorRetryHandler(max_retry_count=self.rate_limit_retries),
                ServerErrorRetryHandler(max_retry_count=self.server_error_retries),
                ConnectionErrorRetryHandler(max_retry_count=self.connection_error_retries),
            ],
            **kwargs,
        )
