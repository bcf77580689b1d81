"""The high-load response's Slack thread: verdict, what was found, what was done to whom, the 5.2 checklist."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.notify import NotificationOutcome, open_thread, section_blocks
from tasks.emergency import high_load_report as rules
from tasks.emergency.high_load_report import HighLoadReport

VERDICT = {"ok": ":large_green_circle: OK", "failed": ":red_circle: STEPS FAILED"}


def _title(report: HighLoadReport) -> str:
    mode = "DRY RUN " if report.dry_run else ""
    return f"High-load response {report.cluster}: {mode}{VERDICT[report.status]}"


@task(name="notify-team", cache_policy=NO_CACHE)
def notify_high_load(slack_block: str | None, report: HighLoadReport, link: str | None) -> NotificationOutcome:
    """One parent message with the verdict; found / done / checklist as thread replies; parent updated last.

    Never raises: a failure is in the returned outcome.
    """
    thread = open_thread(slack_block)
    if not thread.enabled:
        return thread.outcome
    title = _title(report)
    persistent = report.remaining and report.remaining.persistent
    mention = thread.notifier.mention_groups.get("notify_team", "") if persistent else ""
    thread.post(f"{title}: {report.summary}", section_blocks(title, [f"{mention} {report.summary}".strip()]))
    thread.reply("What was found", section_blocks("What was found", rules.slack_found(report)))
    thread.reply("What was done", section_blocks("What was done" if not report.dry_run else "The plan",
                                                 rules.slack_done(report)))
    # The checklist's last item is evidenced by this thread itself: mark it before posting.
    report = report.model_copy(update={"notification": thread.outcome})
    report.checklist = rules.checklist(report)
    thread.reply("Response checklist (5.2)", section_blocks("Response checklist (runbook 5.2)",
                                                            rules.slack_checklist(report)))
    footer = f"<{link}|Flow run in Prefect>" if link else None
    failed = [f":x: {s.summary}" for s in report.failed_steps()]
    thread.update(f"{title}: {report.summary}", section_blocks(title, [report.summary, *failed], footer))
    return thread.outcome
