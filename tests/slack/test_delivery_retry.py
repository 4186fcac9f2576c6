"""A Slack blip while posting a finished image (5xx, internal_error, ratelimited) is not a failure: the core
hands ``Delivered`` again, with the receipt, until ``DELIVERY_RETRY_S``; the image is shared once and
charged once. A refusal for good (the app lacks a scope) is refunded at once; a channel that refuses the
result goes to the requester's DM instead (``test_channel_check``)."""

from __future__ import annotations

import asyncio

import pytest

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.jobs.model import JobState

from .conftest import TEAM, SlackHarness

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
