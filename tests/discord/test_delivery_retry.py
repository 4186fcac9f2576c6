"""A Discord blip while posting a finished image (a 5xx on the post) is not a failure: the core hands
``Delivered`` again until ``DELIVERY_RETRY_S``; the image is posted once and charged once. A refusal for
good (403: the bot may not post here) is refunded at once."""

from __future__ import annotations

from imagine_bot.core.jobs.model import Job, JobState

from .conftest import ALICE, Bot, discord_user, old_interaction_time


async def test_a_5xx_on_the_result_post_is_retried_and_posted_and_charged_once(open_bot):
    async with open_bot() as bot:
        bot.core.orchestrator.delivery_backoff_s = (0.05,)
        # 503: discord.py does not retry it itself (it does 500/502/504), so the core must
        bot.fake.fail("POST", r"/channels/\d+/messages", 503, times=1)
        sent = await bot.imagine(ALICE, "post me after a blip", created=old_interaction_time(16))
        channel = sent["channel"]["id"]
        await bot.fake.wait_for("POST", rf"/channels/{channel}/messages")
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.DELIVERED
        assert len(bot.fake.find("POST", rf"/channels/{channel}/messages")) == 2  # the 503, then the post
        assert [c.status for c in bot.fake.calls if c.files] == [503, 200]
        assert [m for m, files in bot.fake.files.items() if files] == [job.receipt["message_id"]]  # one image
        assert job.receipt["delivered_in"] == "channel"
        kinds = sorted(e.kind for e in bot.core.ledger.history(job.requester) if e.job_id == job.id)
        assert kinds == ["capture", "reserve"]
        assert bot.core.ledger.verify() == []


async def test_a_forbidden_result_post_is_refunded_at_once(open_bot):
    async with open_bot() as bot:
        bot.core.orchestrator.delivery_backoff_s = (0.05,)
        bot.fake.fail("POST", r"/channels/\d+/messages", 403, {"message": "Missing Permissions", "code": 50013},
                      times=1)
        sent = await bot.imagine(ALICE, "nowhere to post", created=old_interaction_time(16))
        await bot.fake.wait_for("POST", rf"/channels/{sent['channel']['id']}/messages")
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.FAILED and job.error_code == "delivery_failed"
        account = bot.core.ledger.balance(job.requester)
        assert account.held == 0 and account.balance == 180
        assert bot.core.ledger.verify() == []


async def test_a_dropped_connection_during_the_result_edit_is_retried_on_the_same_message(open_bot):
    """Discord applied the result edit of ``@original`` but the connection dropped before its answer
    (aiohttp sees the server disconnect): a blip, not a refusal. The core hands ``Delivered`` again, which
    edits the same ``@original`` (it cannot post twice): delivered, charged once, never a failure edit."""
    async with open_bot() as bot:
        bot.core.orchestrator.delivery_backoff_s = (0.05,)
        bot.fake.drop("PATCH", r"/webhooks/\d+/[^/]+/messages/@original", where=lambda c: bool(c.files))
        sent = await bot.imagine(ALICE, "post me through a dropped connection")
        await bot.final_edit(sent)
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.DELIVERED, (job.error_code, job.error_message)
        results = [c for c in bot.edits(sent) if c.files]
        assert [c.status for c in results] == [0, 200]  # the dropped edit, then the same edit again
        assert not any(str(c.content or "").startswith("Could not make") for c in bot.edits(sent))
        assert not bot.fake.find("POST", r"/channels/\d+/messages")  # nothing posted in the channel
        [message] = [m for m, files in bot.fake.files.items() if files]  # one message shows the image
        assert job.receipt["message_id"] == message and job.receipt["delivered_in"] == "interaction"
        kinds = sorted(e.kind for e in bot.core.ledger.history(job.requester) if e.job_id == job.id)
        assert kinds == ["capture", "reserve"]
        assert bot.core.ledger.verify() == []



async def _lost_result_post(bot: Bot, prompt: str) -> tuple[Job, str]:
    """A job whose result goes to the channel (the token too old) and whose first post Discord makes but
    whose answer is lost (the connection drops): the job, once idle, and its channel."""
    bot.core.orchestrator.delivery_backoff_s = (0.05,)
    bot.fake.drop("POST", r"/channels/\d+/messages", where=lambda c: bool(c.files))
    sent = await bot.imagine(ALICE, prompt, created=old_interaction_time(16))
    channel = sent["channel"]["id"]
    await bot.fake.wait_for("POST", rf"/channels/{channel}/messages", count=2)
    await bot.idle()
    return bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0], channel


async def test_a_lost_answer_to_the_result_post_is_retried_into_the_same_message(open_bot):
    """Discord made the channel post (the token was too old to edit the response) but the connection dropped
    before its answer: the core hands ``Delivered`` again and the second request carries the same nonce
    (``enforce_nonce``), so Discord answers with the message it made. One image message in the channel, the
    job delivered and charged once."""
    async with open_bot() as bot:
        job, channel = await _lost_result_post(bot, "post me though the answer is lost")
        assert job.state is JobState.DELIVERED, (job.error_code, job.error_message)
        dropped, again = bot.fake.find("POST", rf"/channels/{channel}/messages")
        assert (dropped.status, again.status) == (0, 200)
        in_channel = [m for m in bot.fake.messages.values() if m["channel_id"] == channel and m["attachments"]]
        assert [m["id"] for m in in_channel] == [again.response["id"]] == [job.receipt["message_id"]]
        assert dropped.json["nonce"] == again.json["nonce"] and again.json["enforce_nonce"] is True
        assert bot.fake.nonce_replays == 1
        kinds = sorted(e.kind for e in bot.core.ledger.history(job.requester) if e.job_id == job.id)
        assert kinds == ["capture", "reserve"]
        assert bot.core.ledger.verify() == []


async def test_past_the_nonce_window_a_lost_answer_still_shows_the_image_twice(open_bot):
    """What remains: Discord keeps a nonce for a few minutes only. A retry after that window (a long outage,
    a restart much later) makes a second message: the image is charged once but shown twice."""
    async with open_bot() as bot:
        bot.fake.nonce_window_s = 0.0
        job, channel = await _lost_result_post(bot, "too late for the nonce")
        assert job.state is JobState.DELIVERED
        assert len([m for m in bot.fake.messages.values() if m["channel_id"] == channel and m["attachments"]]) == 2
        kinds = sorted(e.kind for e in bot.core.ledger.history(job.requester) if e.job_id == job.id)
        assert kinds == ["capture", "reserve"]
