"""Approval before an image goes public, through the real discord.py stack (every interaction over the fake
gateway websocket), across a restart: the requester sees the image privately, reviewers get DMs with Approve
and Reject, nothing reaches the channel before an approve, a second press is told, a rejection carries its
reason, and an unanswered review expires."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from imagine_bot.core.chat import messages
from imagine_bot.core.jobs.model import Job, JobState
from imagine_bot.core.storage.db import utcnow
from tests.fakes.discord_api import EPHEMERAL, InteractionFactory

from .conftest import ALICE, BOB, CAROL, discord_user
from .live import CHANNEL, MANAGE_GUILD, LiveBot, live_bot

DAVE = "444444444444444444"


def _user(user_id: str) -> dict[str, Any]:
    return {"id": user_id, "username": f"user{user_id[-4:]}", "discriminator": "0", "avatar": None,
            "global_name": None}


async def _approvals_on(bot: LiveBot, *reviewers: str) -> str:
    names = ("reviewer", "reviewer2", "reviewer3")
    options = [{"name": "mode", "type": 3, "value": "on"}]
    options += [{"name": n, "type": 6, "value": r} for n, r in zip(names, reviewers, strict=False)]
    payload = await bot.admin(["approvals"], ALICE, options, permissions=MANAGE_GUILD,
                              resolved={"users": {r: _user(r) for r in reviewers}})
    return await bot.private_answer(payload)


async def _make(bot: LiveBot, prompt: str) -> tuple[Job, dict[str, Any]]:
    payload = await bot.imagine(DAVE, prompt)
    await bot.fake.wait_for("PATCH", rf"/webhooks/\d+/{payload['token']}/messages/@original",
                            where=lambda c: bool(c.files))
    await bot.idle()
    job = bot.core.jobs.by_dedupe_key(f"discord:{payload['id']}")
    assert job is not None
    return job, payload


def _channel_posts(bot: LiveBot) -> list[Any]:
    return bot.fake.find("POST", rf"/channels/{CHANNEL}/messages$")


def _review_dm(bot: LiveBot, reviewer: str, job: Job) -> dict[str, Any]:
    """The reviewer's DM message for this job (with its Approve and Reject buttons)."""
    channel = bot.fake.dm_channels[reviewer]
    (call,) = bot.fake.find("POST", rf"/channels/{channel}/messages$",
                            where=lambda c: f"imagine:approve:{job.id}" in str(c.json))
    return dict(bot.fake.messages[call.response["id"]])


async def _press_in_dm(bot: LiveBot, button: str, job: Job, user: str, message: dict[str, Any]) -> dict[str, Any]:
    factory = InteractionFactory(bot.fake.app_id, guild_id=None, channel_id=message["channel_id"])
    return await bot.send(factory.component(f"imagine:{button}:{job.id}", user, message))


async def test_an_approval_round_across_a_restart(fake, discord_settings, sandbox):
    settings = discord_settings()
    async with live_bot(fake, settings) as bot:
        assert await _approvals_on(bot, BOB, CAROL) == messages.approvals_set(
            (f"discord:{BOB}", f"discord:{CAROL}"), 72)
        job, payload = await _make(bot, "a launch poster")
        job = bot.core.jobs.get(job.id)
        assert job.state is JobState.DELIVERED and bot.core.ledger.balance(discord_user(DAVE)).balance == 180 - 18
        # private from the start: deferred ephemerally, the image shown there with "Sent for review"
        callback = await bot.callback(payload)
        assert callback.json["type"] == 5 and callback.json["data"]["flags"] & EPHEMERAL
        message = bot.fake.messages[job.reply.data["message_id"]]
        assert message["flags"] & EPHEMERAL and message["content"].startswith("Sent for review")
        assert message["attachments"] and not message["components"]
        # each reviewer has a DM with the image and the buttons
        for reviewer in (BOB, CAROL):
            dm = _review_dm(bot, reviewer, job)
            assert dm["attachments"] and f"<@{DAVE}> asked for this image in <#{CHANNEL}>" in dm["content"]
            ids = [c["custom_id"] for row in dm["components"] for c in row["components"]]
            assert ids == [f"imagine:approve:{job.id}", f"imagine:reject:{job.id}"]
            fields = [f["name"] for f in dm["embeds"][0]["fields"]]
            assert "Requested by" in fields and "Balance left" not in fields  # not the requester's balance
        assert _channel_posts(bot) == []  # the channel saw nothing
        bob_dm, carol_dm = _review_dm(bot, BOB, job), _review_dm(bot, CAROL, job)

    async with live_bot(fake, settings) as bot:  # a restart: the buttons still work
        own = await _press_in_dm(bot, "approve", job, DAVE, bob_dm)
        assert await bot.private_answer(own) == messages.review_own_image()
        assert _channel_posts(bot) == []

        approve = await _press_in_dm(bot, "approve", job, BOB, bob_dm)
        assert await bot.private_answer(approve) == messages.review_approved(CHANNEL)
        (post,) = _channel_posts(bot)
        assert post.json["content"] == f"<@{DAVE}> " + messages.approved_by(f"discord:{BOB}")
        assert post.files and post.json["embeds"][0]["image"]["url"].startswith("attachment://")
        assert [c["custom_id"] for row in post.json["components"] for c in row["components"]] == [
            f"imagine:{b}:{job.id}" for b in ("reroll", "vary", "remix", "delete")]
        assert [str(u) for u in post.json["allowed_mentions"]["users"]] == [DAVE]

        # a second press (Reject, here) is told what was decided and by whom, without a form
        late = await _press_in_dm(bot, "reject", job, CAROL, carol_dm)
        answer = await bot.private_answer(late)
        assert answer.startswith(f"This image was already approved by <@{BOB}> on ")
        await bot.idle()
        assert len(_channel_posts(bot)) == 1
        assert bot.core.ledger.balance(discord_user(DAVE)).balance == 180 - 18


async def test_a_rejection_with_its_reason_and_an_expiry(fake, discord_settings, sandbox):
    settings = discord_settings()
    async with live_bot(fake, settings) as bot:
        await _approvals_on(bot, BOB)
        rejected, _ = await _make(bot, "a poster with the old logo")
        expiring, _ = await _make(bot, "a poster nobody reviews")
        bob_dm = _review_dm(bot, BOB, rejected)

    async with live_bot(fake, settings) as bot:
        pressed = await _press_in_dm(bot, "reject", rejected, BOB, bob_dm)
        form = await bot.callback(pressed)
        assert form.json["type"] == 9 and form.json["data"]["custom_id"] == f"imagine:reject-form:{rejected.id}"
        factory = InteractionFactory(bot.fake.app_id, guild_id=None, channel_id=bob_dm["channel_id"])
        sent = await bot.send(factory.modal_submit(f"imagine:reject-form:{rejected.id}", BOB,
                                                   {"imagine:reject:reason": "the logo is the old one"}))
        assert await bot.private_answer(sent) == messages.review_rejected(f"discord:{DAVE}")
        dave_dm = bot.fake.dm_channels[DAVE]
        (note,) = bot.fake.find("POST", rf"/channels/{dave_dm}/messages$",
                                where=lambda c: "rejected your image" in str(c.content))
        assert note.content == messages.review_rejected_to_requester(
            bot.core.jobs.get(rejected.id), CHANNEL, f"discord:{BOB}", "the logo is the old one")

        await bot.core.approvals.expire_due(utcnow() + timedelta(hours=72, minutes=1))
        await bot.idle()
        (expiry,) = bot.fake.find("POST", rf"/channels/{dave_dm}/messages$",
                                  where=lambda c: "Nobody reviewed" in str(c.content))
        assert expiry.content == messages.review_expired_to_requester(bot.core.jobs.get(expiring.id), CHANNEL, 72)
        assert _channel_posts(bot) == []


async def test_decisions_left_unposted_by_a_stopped_process_are_finished_once_at_the_next_start(
        fake, discord_settings, sandbox):
    settings = discord_settings()
    async with live_bot(fake, settings) as bot:
        await _approvals_on(bot, BOB)
        posted, _ = await _make(bot, "a poster already in the channel")
        unposted, _ = await _make(bot, "a poster approved just before a crash")
        store = bot.core.approvals.store
        # what a process that stopped at the worst moments left: both approved; the first one's post was made
        # (its receipt recorded) but not marked done, the second one's not made at all
        for job in (posted, unposted):
            assert store.decide(job.id, "approved", by=f"discord:{BOB}", reason=None, now=utcnow())
        bot.core.record_review_receipt(posted.id, post_message_id="123456789012345678")

    async with live_bot(fake, settings) as bot:
        await bot.idle()
        store = bot.core.approvals.store
        assert store.get(posted.id).posted_at is not None and store.get(unposted.id).posted_at is not None
        (post,) = _channel_posts(bot)  # the second one only, once
        assert f"imagine:reroll:{unposted.id}" in str(post.json["components"])


async def test_a_reviewer_who_cannot_be_reached_is_skipped_and_the_others_get_it(fake, discord_settings, sandbox):
    fake.dm_channels[BOB] = "777777777777777777"
    fake.fail("POST", r"/channels/777777777777777777/messages", 403,
              {"message": "Cannot send messages to this user", "code": 50007}, times=None)
    async with live_bot(fake, discord_settings()) as bot:
        await _approvals_on(bot, BOB, CAROL)
        job, _ = await _make(bot, "a poster")
        assert _review_dm(bot, CAROL, job)["attachments"]
        approval = bot.core.approvals.store.get(job.id)
        assert approval.notified_at is not None and f"review:{BOB}" not in approval.receipt
        await bot.core.approvals.run_due()  # nothing left to do: Bob is not tried again
        assert len(fake.find("POST", r"/channels/777777777777777777/messages")) == 1
