"""Publishing results to the Prefect UI (artifacts) and to Slack."""

from __future__ import annotations

import concurrent.futures
import contextvars
import re

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.core.notify import NotificationOutcome, open_thread, section_blocks


def artifact_key(kind: str, cluster: str) -> str:
    """A stable artifact key per runbook and cluster (lowercase letters, digits, dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{kind}-{cluster}".lower()).strip("-")
    return slug[:100] or kind


@task(name="publish-markdown-artifact", cache_policy=NO_CACHE)
def publish_markdown(key: str, markdown: str, description: str) -> str:
    """Show a report in the Prefect UI under a stable key (history per key)."""
    create_markdown_artifact(key=key, markdown=markdown, description=description)
    return key


@task(name="publish-table-artifact", cache_policy=NO_CACHE)
def publish_table(key: str, rows: list[dict], description: str) -> str:
    create_table_artifact(key=key, table=rows, description=description)
    return key


def publish_report_and_table(key: str, markdown: str, description: str, table_key: str,
                             rows: list[dict]) -> str:
    """A run's markdown report and its table artifact, sent at the same time from the flow run itself (linked
    to it, as a task's would be), without a task run each: for a run whose own work takes a second, two task
    runs cost more than the two requests. Raises as the tasks would when the API refuses either."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="publish-table") as pool:
        table = (pool.submit(contextvars.copy_context().run, create_table_artifact, key=table_key, table=rows,
                             description=description, _sync=True) if rows else None)
        # _sync: from the body of an async flow Prefect would otherwise hand back an un-awaited coroutine.
        create_markdown_artifact(key=key, markdown=markdown, description=description, _sync=True)
        if table is not None:
            table.result()
    return key


def artifact_url(run_url: str | None, key: str) -> str | None:
    """The UI page of an artifact key (its latest version and history), beside a flow run's page."""
    found = re.match(r"^(.*?)/(?:flow-)?runs/flow-run/[^/]+/?$", run_url or "")
    return f"{found[1]}/artifacts/key/{key}" if found else None


@task(name="notify-slack", cache_policy=NO_CACHE)
def notify_slack(
    slack_block: str | None,
    title: str,
    summary: str,
    detail_lines: list[str],
    link: str | None = None,
    more_links: dict[str, str | None] | None = None,
) -> NotificationOutcome:
    """Parent message with the verdict, details as a thread reply, parent updated with the link(s):
    the flow run, then `more_links` (label → URL, e.g. a report artifact).

    Never raises: failures are in the returned outcome.
    """
    thread = open_thread(slack_block)
    if not thread.enabled:
        return thread.outcome
    thread.post(f"{title}: {summary}", section_blocks(title, [summary]))
    thread.reply(f"Details of {title}", section_blocks("Details", detail_lines))
    links = [f"<{link}|Flow run in Prefect>"] if link else []
    links += [f"<{url}|{label}>" for label, url in (more_links or {}).items() if url]
    footer = " · ".join(links) or None
    thread.update(
        f"{title}: {summary}",
        section_blocks(title, [summary, f"{len(detail_lines)} finding(s) in the thread."], footer),
    )
    return thread.outcome
