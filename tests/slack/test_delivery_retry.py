"""A Slack blip while posting a finished image (5xx, internal_error, ratelimited) is not a failure: the core
hands ``Delivered`` again, with the receipt, until ``DELIVERY_RETRY_S``; the image is shared once and
charged once. A refusal for good (the app lacks a scope) is refunded at once; a channel that refuses the
result goes to the requester's DM instead (``test_channel_check``)."""

from __future__ import annotations

import asyncio

import pytest

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.jobs.model import Job, JobState
from tests.conftest import until

from .conftest import TEAM, SlackHarness, of_type

U1 = UserRef("slack", TEAM, "U1")

COMPLETE = "files.completeUploadExternal"
RESERVE = "files.getUploadURLExternal"


def quick_retries(slack: SlackHarness) -> None:
    slack.core.orchestrator.delivery_backoff_s = (0.05,)


@pytest.mark.parametrize(("method", "error"), [(COMPLETE, "internal_error"), (RESERVE, "service_unavailable"),
                                               (COMPLETE, "ratelimited")])
async def test_a_blip_at_upload_is_retried_and_the_image_is_shared_and_charged_once(slack: SlackHarness,
                                                                                    method, error):
    quick_retries(slack)
    slack.fake.fail(method, error)
    await slack.slash("a lighthouse at dusk")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERED
    assert len(slack.fake.calls_to(method)) == 2  # the blip, then the retry
    shared = [f["id"] for f in slack.fake.files.values() if f.get("channels") == ["C1"]]
    assert shared == job.receipt["file_ids"] and len(shared) == 1
    assert sorted(e.kind for e in slack.core.ledger.history(job.requester) if e.job_id == job.id) == [
        "capture", "reserve"]
    assert slack.core.ledger.balance(U1).held == 0
    assert slack.core.ledger.verify() == []


async def test_a_refusal_for_good_at_upload_is_not_retried(slack: SlackHarness):
    quick_retries(slack)
    slack.fake.fail(RESERVE, "missing_scope")  # the app lacks files:write: no later try can pass
    await slack.slash("a lighthouse at dusk")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.FAILED and job.error_code == "delivery_failed"
    assert len(slack.fake.calls_to(RESERVE)) == 1  # refused for good: asked once
    assert "could not post it here" in slack.fake.calls_to("chat.update")[-1].params["text"]
    account = slack.core.ledger.balance(U1)
    assert (account.balance, account.held) == (180, 0)
    assert slack.core.ledger.verify() == []


async def test_a_drain_leaves_a_retrying_delivery_for_the_next_owner(slack: SlackHarness):
    """SIGTERM while a delivery waits to try again: the job stays ``delivering`` with its credits on hold
    and its lease released (the next owner posts it), instead of being failed and refunded."""
    orchestrator = slack.core.orchestrator
    orchestrator.delivery_backoff_s = (60.0,)
    slack.fake.fail(COMPLETE, "internal_error", times=1000)
    await slack.slash("a lighthouse at dusk")
    await slack.fake.wait_for(COMPLETE)  # the first attempt fails: it will wait 60 s to try again
    await asyncio.wait_for(orchestrator.drain(30.0), 10.0)  # does not wait out the 60 s backoff
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERING and job.owner is None
    account = slack.core.ledger.balance(U1)
    assert account.held == job.cost and account.balance == 180
    assert slack.core.ledger.verify() == []


def _one_image_message(slack: SlackHarness, channel: str) -> Job:
    """The one job, delivered and charged once, and ``channel`` holding exactly one top-level message: its
    result, showing its one image (shared once)."""
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERED, (job.error_code, job.error_message)
    top = [m for m in slack.fake.posted_in(channel) if m.thread_ts in (None, m.ts)]
    assert [m.ts for m in top] == [job.reply.data["progress_ts"]]  # one message, not a second beside it
    [file_id] = job.receipt["file_ids"]
    [image] = of_type(top[0].blocks or [], "image")
    assert image["slack_file"] == {"id": file_id}
    assert [f["id"] for f in slack.fake.files.values() if f.get("channels") == [channel]] == [file_id]
    assert sorted(e.kind for e in slack.core.ledger.history(U1) if e.job_id == job.id) == ["capture", "reserve"]
    assert slack.core.ledger.balance(U1).held == 0
    assert slack.core.ledger.verify() == []
    return job


async def test_a_lost_answer_to_the_jobs_message_is_found_not_posted_twice(slack: SlackHarness):
    """Slack made the job's message (the one that becomes the image) but the connection dropped before its
    answer: the next post of it (a status, or the delivery) looks in the channel's history for the message
    carrying the job's metadata and takes it. One message in the channel, showing the image."""
    quick_retries(slack)
    slack.fake.drop_answer("chat.postMessage")
    await slack.slash("a lighthouse at dusk")
    await slack.settle()
    job = _one_image_message(slack, "C1")
    dropped = slack.fake.calls_to("chat.postMessage")[0]
    assert dropped.status == 0 and dropped.params["metadata"]["event_payload"] == {"job_id": job.id,
                                                                                  "post": "progress"}
    assert slack.fake.calls_to("conversations.history")  # looked before posting again


async def test_a_lost_answer_to_the_result_moved_to_the_dm_is_found_after_the_retry(slack: SlackHarness, sandbox):
    """The bot was removed mid-job, so the result goes to the requester's DM: Slack made that message but the
    connection dropped. The delivery fails as a blip (the ``posts`` client does not send it again blindly),
    and the core's retry finds the message in the DM's history: one message there, showing the image."""
    quick_retries(slack)
    sandbox.delays.update(generating=1.0)
    await slack.slash("a lighthouse at dusk")
    await until(lambda: [j.state for j in slack.core.jobs.recent()] == [JobState.RUNNING])
    slack.fake.remove_bot("C1")
    slack.fake.drop_answer("chat.postMessage")  # the next post: the result's message in the DM
    await slack.settle()
    job = _one_image_message(slack, "D1")
    assert job.reply.data["moved_from"] == "C1"
    assert [c.status for c in slack.fake.calls_to("chat.postMessage") if c.params["channel"] == "D1"] == [0]


async def test_without_the_history_scopes_a_lost_answer_posts_again_and_says_why(slack: SlackHarness, caplog):
    """What remains: an install without the ``*:history`` scopes cannot look, so the job's message is posted
    again (two messages; the image still shared and charged once) and the log names the scopes."""
    quick_retries(slack)
    slack.fake.scopes = [s for s in slack.fake.scopes if not s.endswith(":history")]
    slack.fake.drop_answer("chat.postMessage")
    await slack.slash("a lighthouse at dusk")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERED
    assert len([m for m in slack.fake.posted_in("C1") if m.thread_ts is None]) == 2
    assert "channels:history" in caplog.text
    assert sorted(e.kind for e in slack.core.ledger.history(U1) if e.job_id == job.id) == ["capture", "reserve"]
