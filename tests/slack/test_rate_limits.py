"""Slack's rate limits and slow answers never hold up a job: status edits go through the core's outbox.

The issue's scenario: ``MAX_ACTIVE_JOBS=1``, three short jobs, and a fake Slack whose chat.update is slow
(5 s) or answers 429 with Retry-After. Before the outbox the jobs were delivered at 0.3, 5.3 and 10.3 s.
"""

from __future__ import annotations

from imagine_bot.core.jobs.model import JobState
from tests.conftest import until

from .conftest import SlackHarness

USERS = ("U1", "U2", "U3")


async def three_jobs(slack: SlackHarness) -> list[str]:
    for n, user in enumerate(USERS):
        response, _ = await slack.slash(f"short job {n}", user=user)
        assert response.status_code == 200
    await until(lambda: len(slack.core.jobs.recent()) == 3)  # the first is taken just after its ack
    jobs = slack.core.jobs.recent()
    return [job.id for job in jobs]


async def jobs_done(slack: SlackHarness, job_ids: list[str], within: float) -> None:
    """Wait for the jobs only (not for the outbox): every one delivered or failed."""
    await until(lambda: all(slack.core.jobs.get(j).state.final for j in job_ids), within)


async def test_jobs_are_delivered_while_a_slow_chat_update_is_still_blocked(slack_settings, fake_slack):
    fake_slack.slow("chat.update", 5)
    async with SlackHarness.open(slack_settings(MAX_ACTIVE_JOBS=1), fake_slack, min_edit_interval=0.0) as slack:
        job_ids = await three_jobs(slack)
        await fake_slack.wait_for("files.completeUploadExternal", count=3, timeout=4)
        await jobs_done(slack, job_ids, 4)
        # all three delivered and charged, one after the other through the single gateway slot ...
        assert [slack.core.jobs.get(j).state for j in job_ids] == [JobState.DELIVERED] * 3
        assert slack.core.ledger.verify() == []
        # ... while the first status edit is still waiting for Slack's answer
        updates = fake_slack.calls_to("chat.update")
        assert updates, "a status edit was sent"
        assert all(u.done_at is None for u in updates)


async def test_a_429_on_chat_update_holds_up_no_job_and_the_workspace_waits_retry_after(slack_settings, fake_slack):
    fake_slack.rate_limit("chat.update", retry_after=2)
    async with SlackHarness.open(slack_settings(MAX_ACTIVE_JOBS=1), fake_slack, min_edit_interval=0.0) as slack:
        job_ids = await three_jobs(slack)
        await slack.settle()
        assert [slack.core.jobs.get(j).state for j in job_ids] == [JobState.DELIVERED] * 3
        updates = fake_slack.calls_to("chat.update")
        limited = updates[0]
        assert limited.status == 429
        uploads = fake_slack.calls_to("files.completeUploadExternal")
        assert len(uploads) == 3
        # every image was posted before the workspace's next edit (which waited out Retry-After): nothing
        # slept inside a job on the 429
        retried = next(u for u in updates if u.status == 200 and u.at > limited.at)
        assert all(u.done_at is not None and u.done_at < retried.at for u in uploads)
        # the workspace waited: Slack said 429 only to the edit that hit the limit and to the edits already on
        # their way with it (statuses held while the commands were answered go out together, within the
        # workspace's burst); every later edit came after Retry-After
        refused = [u for u in updates if u.status == 429]
        assert all(u.at - limited.at < 0.5 for u in refused), [(u.at - limited.at, u.params["text"]) for u in updates]
        assert all(u.at - limited.at >= 1.9 for u in updates if u.status == 200 and u.at > limited.at + 0.5)
        # the final edits were not dropped: each progress message ends with its caption and buttons
        for job_id in job_ids:
            job = slack.core.jobs.get(job_id)
            message = fake_slack.messages[job.reply.data["progress_ts"]]
            assert "credits" in message.text and message.blocks and message.blocks[-1]["type"] == "actions"

