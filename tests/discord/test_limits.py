"""Discord's limits: the 15-minute interaction token and the attachment size limit."""

from __future__ import annotations

import io

from PIL import Image

from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.sandbox import render_png
from tests.fakes.discord_api import invalid_webhook_token

from .conftest import ALICE, discord_user, old_interaction_time


def _assert_channel_post_mentions_only_the_requester(call, user_id: str) -> None:
    assert call.json["content"].startswith(f"<@{user_id}>")
    mentions = call.json["allowed_mentions"]
    assert mentions["parse"] == [] and [str(u) for u in mentions["users"]] == [user_id]


async def test_a_job_finishing_after_the_token_expired_is_posted_in_the_channel(open_bot, sandbox):
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, "a late owl", created=old_interaction_time(16))
        post = (await bot.fake.wait_for("POST", rf"/channels/{sent['channel']['id']}/messages"))[0]
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.DELIVERED
        assert job.reply.data["delivered_in"] == "channel"
        # the old token was never used again: no status edits, no result edit
        assert bot.edits(sent) == []
    _assert_channel_post_mentions_only_the_requester(post, ALICE)
    assert post.files[0].data == sandbox.tasks[job.task_id].images[0]
    buttons = [c["custom_id"] for row in post.json["components"] for c in row["components"]]
    assert buttons == [f"imagine:{verb}:{job.id}" for verb in ("reroll", "vary", "remix", "delete")]


async def test_a_refused_token_falls_back_to_the_channel(open_bot):
    async with open_bot() as bot:
        bot.fake.fail("PATCH", r"/webhooks/.*/messages/@original", 401, invalid_webhook_token(), times=None)
        sent = await bot.imagine(ALICE, "an expired token")
        post = (await bot.fake.wait_for("POST", rf"/channels/{sent['channel']['id']}/messages"))[0]
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.DELIVERED
        assert bot.core.ledger.balance(discord_user(ALICE)).balance == 180 - 18
    _assert_channel_post_mentions_only_the_requester(post, ALICE)
    assert post.files


async def test_a_failure_after_the_token_expired_is_said_in_the_channel(open_bot):
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, "late and broken sandbox:fail", created=old_interaction_time(20))
        post = (await bot.fake.wait_for("POST", rf"/channels/{sent['channel']['id']}/messages"))[0]
        await bot.idle()
    _assert_channel_post_mentions_only_the_requester(post, ALICE)
    assert "Could not make" in post.json["content"]


async def test_when_nothing_can_be_posted_the_job_is_refunded(open_bot):
    async with open_bot() as bot:
        bot.fake.fail("PATCH", r"/webhooks/.*/messages/@original", 401, invalid_webhook_token(), times=None)
        bot.fake.fail("POST", r"/channels/\d+/messages", 403, {"message": "Missing Access", "code": 50001},
                      times=None)
        await bot.imagine(ALICE, "nowhere to go")
        await bot.fake.wait_for("POST", r"/channels/\d+/messages", count=2)  # the result, then the failure
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.FAILED and job.error_code == "delivery_failed"
        balance = bot.core.ledger.balance(discord_user(ALICE))
        assert (balance.balance, balance.held) == (180, 0)


async def test_an_image_over_the_attachment_limit_is_re_encoded_to_fit(open_bot):
    prompt = "a very detailed tapestry"
    png = render_png(prompt, "1:1", "basic", 0.125)
    limit = len(png) - 1
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, prompt, size_limit=limit)
        final = await bot.final_edit(sent)
        await bot.idle()
    (upload,) = final.files
    assert len(upload.data) <= limit
    assert upload.filename.endswith((".jpg", ".webp"))
    with Image.open(io.BytesIO(upload.data)) as img:
        assert img.format in ("JPEG", "WEBP")
    assert final.json["embeds"][0]["image"]["url"] == f"attachment://{upload.filename}"


async def test_an_image_that_cannot_fit_is_linked(open_bot, sandbox):
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, "a huge mural", size_limit=200)
        final = await bot.final_edit(sent)
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.DELIVERED
    assert final.files == []
    url = job.result_urls[0]
    assert url.startswith(sandbox.base_url)
    assert url in final.json["content"] and "expires" in final.json["content"]
    assert final.json["embeds"][0]["image"]["url"] == url
