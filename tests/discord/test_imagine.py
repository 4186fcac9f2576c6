"""/imagine through the real discord.py client against the fake Discord and the sandbox gateway."""

from __future__ import annotations

import asyncio
import io
import itertools
import json

import discord
import pytest
from PIL import Image

from imagine_bot.core.chat import messages
from imagine_bot.core.jobs.model import JobState

from .conftest import ALICE, EDIT_INTERVAL, discord_user


async def test_imagine_defers_at_once_then_edits_in_the_image_with_embed_and_buttons(open_bot, sandbox):
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, "a lighthouse at dusk", aspect_ratio="16:9")

        callback = await bot.callback(sent)
        assert callback.json["type"] == 5  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE, public
        assert not (callback.json.get("data") or {}).get("flags")
        assert callback.at - sent["_sent_at"] < 3.0  # Discord's own limit for the first answer

        final = await bot.final_edit(sent)
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.DELIVERED

        # the first edit is the core's "accepted" text, in place of the "thinking" placeholder
        edits = bot.edits(sent)
        assert edits[0].json["content"] == messages.accepted(job)
        assert edits[-1] is final

        # the image: multipart files[0], the very PNG the sandbox rendered
        assert len(final.files) == 1
        png = final.files[0].data
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG"
            assert abs(img.width / img.height - 16 / 9) < 0.02
        assert png == sandbox.tasks[job.task_id].images[0]

        # the embed: prompt, parameters, requester, cost, balance left
        (embed,) = final.json["embeds"]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert "a lighthouse at dusk" in fields["Prompt"]
        assert fields["Parameters"] == messages.describe_params(job.params)
        assert fields["Requested by"] == f"<@{ALICE}>"
        assert fields["Cost"] == "18 credits"
        assert fields["Balance left"] == f"{180 - 18} credits"
        assert embed["image"]["url"] == f"attachment://{final.files[0].filename}"

        # Reroll and Delete, with the job id in their custom ids
        buttons = [c for row in final.json["components"] for c in row["components"]]
        assert [b["custom_id"] for b in buttons] == [
            f"imagine:{verb}:{job.id}" for verb in ("reroll", "vary", "remix", "delete")]

        # no message may ping anyone
        for call in edits:
            assert call.json["allowed_mentions"] == {"parse": []}

        # charged once; the reply address survives a restart
        balance = bot.core.ledger.balance(discord_user(ALICE))
        assert (balance.balance, balance.held) == (180 - 18, 0)
        data = job.reply.data
        assert data["token"] == sent["token"] and data["application_id"] == bot.fake.app_id
        assert data["channel_id"] == sent["channel"]["id"] and data["attachment_size_limit"] == 10 * 1024 * 1024
        assert data["created_at"] == discord.utils.snowflake_time(int(sent["id"])).timestamp()
        assert data["message_id"] in bot.fake.messages
        json.dumps(data)


async def test_status_edits_are_throttled_and_in_order_and_the_final_edit_is_never_dropped(open_bot):
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, "a slow sunrise sandbox:slow")
        final = await bot.final_edit(sent)
        await bot.idle()

    edits = bot.edits(sent)
    status = [e for e in edits if e is not final]
    texts = [e.json["content"] for e in status]
    assert texts[0].startswith("Got it:")
    assert any(t.startswith("Working on it: generating") for t in texts), texts
    assert len(status) >= 3
    # at most one status edit per interval (a little slack for the event loop)
    gaps = [b.at - a.at for a, b in itertools.pairwise(status)]
    assert min(gaps) >= EDIT_INTERVAL * 0.8, gaps
    # generating percentages only go up
    percents = [int(t.split("generating ")[1].split("%")[0]) for t in texts if "generating " in t and "%" in t]
    assert percents == sorted(percents)
    assert final.files and final.json["components"]


@pytest.mark.parametrize(("nsfw", "unfiltered", "checker"), [
    (False, False, True), (True, False, True),  # MODKIE_NSFW_CHECKER is on: a channel's flag alone changes nothing
    (True, True, False),  # ... unless the operator lets NSFW-marked channels go unfiltered
    (False, True, True),  # ... and only those
])
async def test_flag_in_the_prompt_wins_and_nsfw_checker_follows_the_operator(open_bot, sandbox, nsfw, unfiltered,
                                                                               checker):
    async with open_bot(nsfw=nsfw, DISCORD_NSFW_CHANNELS_UNFILTERED=unfiltered) as bot:
        sent = await bot.imagine(ALICE, "a fox in snow --ar 9:16", aspect_ratio="16:9", quality="high")
        await bot.final_edit(sent)
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
    sent_input = sandbox.tasks[job.task_id].input
    assert sent_input["aspect_ratio"] == "9:16"  # the flag typed in the prompt
    assert sent_input["quality"] == "high"  # the option
    assert sent_input["nsfw_checker"] is checker


async def test_invalid_aspect_ratio_is_refused_privately_and_nothing_is_charged(open_bot, sandbox):
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, "a fox --ar 7:3")
        callback = await bot.callback(sent)
        assert callback.json["type"] == 4  # answered at once, no public placeholder
        assert callback.json["data"]["flags"] & 64  # ephemeral
        assert "is not a valid aspect ratio" in callback.json["data"]["content"]
        assert callback.json["data"]["allowed_mentions"] == {"parse": []}
        assert bot.core.jobs.recent(discord_user(ALICE).key) == []
        balance = bot.core.ledger.balance(discord_user(ALICE))
        assert (balance.balance, balance.held) == (180, 0)
    assert sandbox.requests["createTask"] == 0


async def test_a_failed_job_is_refunded_and_the_failure_edited_in(open_bot):
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, "a broken dream sandbox:fail")
        final = await bot.final_edit(sent)
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.FAILED
        assert final.json["content"].startswith("Could not make `a broken dream sandbox:fail`")
        assert "refunded" in final.json["content"]
        assert final.json["embeds"] == [] and final.json["components"] == [] and not final.files
        balance = bot.core.ledger.balance(discord_user(ALICE))
        assert (balance.balance, balance.held) == (180, 0)
        assert bot.core.ledger.verify() == []


async def test_insufficient_credits_are_refused_privately_before_any_placeholder(open_bot, sandbox):
    async with open_bot(CREDITS_ALLOWANCE=10) as bot:
        sent = await bot.imagine(ALICE, "a castle")
        callback = await bot.callback(sent)
        assert callback.json["type"] == 4 and callback.json["data"]["flags"] & 64
        assert callback.json["data"]["content"].startswith("Not enough credits: this image costs 18 and you have 10.")
    assert sandbox.requests["createTask"] == 0


async def test_a_refusal_after_the_public_defer_removes_the_placeholder_and_answers_privately(open_bot):
    # two commands at once with room for one job: both pass the early checks, the core refuses the second
    async with open_bot(MAX_ACTIVE_JOBS_PER_USER=1) as bot:
        first = await bot.imagine(ALICE, "first sandbox:slow")
        second = await bot.imagine(ALICE, "second")
        assert (await bot.callback(first)).json["type"] == 5
        assert (await bot.callback(second)).json["type"] == 5
        deleted = await bot.fake.wait_for("DELETE", rf"/webhooks/\d+/{second['token']}/messages/@original")
        followup = (await bot.fake.wait_for("POST", rf"/webhooks/\d+/{second['token']}$"))[0]
        assert deleted[0].at <= followup.at
        assert followup.json["flags"] & 64
        assert "You already have 1 image in progress" in followup.json["content"]
        # the fake keeps Discord's rule: that followup is a new, private message
        assert followup.response["flags"] & 64
        await bot.final_edit(first)
        await bot.idle()
        assert len(bot.core.jobs.recent(discord_user(ALICE).key)) == 1


async def test_direct_messages_are_refused_unless_allowed(open_bot):
    async with open_bot(guild_id=None) as bot:
        sent = await bot.imagine(ALICE, "a fox")
        callback = await bot.callback(sent)
        assert callback.json["type"] == 4 and callback.json["data"]["flags"] & 64
        assert "server" in callback.json["data"]["content"]
        assert bot.core.jobs.recent() == []

    async with open_bot(guild_id=None, DISCORD_ALLOW_DMS=True) as bot:
        sent = await bot.imagine(ALICE, "a fox in a DM")
        final = await bot.final_edit(sent)
        await bot.idle()
        assert final.files


async def test_the_refusals_are_checked_while_the_interaction_counts_as_being_answered(open_bot, monkeypatch):
    """The work of jobs already accepted waits for commands being answered (issue 22): an /imagine is one
    from its arrival to its defer; its job is submitted after."""
    async with open_bot() as bot:
        lull = bot.core.orchestrator.lull
        checked: list[int] = []
        check = bot.core.prepare_checked  # the refusals and the prompt, the place read once

        def spy(*args, **kwargs):
            checked.append(lull.answering)
            return check(*args, **kwargs)

        monkeypatch.setattr(bot.core, "prepare_checked", spy)
        sent = await bot.imagine(ALICE, "a lighthouse at dusk")
        await bot.final_edit(sent)
        await bot.idle()
        assert checked == [1]
        assert lull.answering == 0


async def test_a_job_is_submitted_once_the_commands_arriving_with_it_are_answered(open_bot, sandbox):
    """The placeholder (the ack) goes at once; the job itself (reserve, record: work that decides no ack)
    waits until the other commands being answered are (a burst's defers first, issue 22), then is made."""
    async with open_bot() as bot:
        bot.core.orchestrator.lull.most_s = 3600.0  # only the end of the other command lets it go
        with bot.core.answering():  # another command of the burst, not answered yet
            sent = await bot.imagine(ALICE, "a lighthouse at dusk")
            assert (await bot.callback(sent)).json["type"] == 5  # the public placeholder
            for _ in range(50):
                await asyncio.sleep(0)
            await asyncio.sleep(0.2)
            assert bot.core.jobs.recent() == []  # nothing reserved or recorded yet
            assert bot.core.orchestrator.lull.waiting == 1
        await bot.final_edit(sent)
        await bot.idle()
        assert [j.state for j in bot.core.jobs.recent()] == [JobState.DELIVERED]
        assert bot.core.ledger.balance(discord_user(ALICE)).balance == 180 - 18


async def test_a_submit_held_for_the_burst_is_refused_and_told_when_a_drain_begins(open_bot, sandbox):
    """SIGTERM while a job waits for the burst's placeholders: the drain lets it go at once, the submit is
    refused (the process is stopping), the placeholder is withdrawn and the user told privately; nothing is
    reserved or sent to the gateway."""
    async with open_bot() as bot:
        bot.core.orchestrator.lull.most_s = 3600.0  # only the drain lets it go
        with bot.core.answering():  # another command of the burst, not answered yet
            sent = await bot.imagine(ALICE, "a lighthouse at dusk")
            assert (await bot.callback(sent)).json["type"] == 5
            await asyncio.sleep(0.1)
            assert bot.core.orchestrator.lull.waiting == 1
            await asyncio.wait_for(bot.core.orchestrator.drain(5), 30)
            await bot.fake.wait_for("DELETE", rf"/webhooks/\d+/{sent['token']}/messages/@original")
            told = (await bot.fake.wait_for("POST", rf"/webhooks/\d+/{sent['token']}$"))[0].json
        assert told["flags"] & 64 and told["content"].startswith("The bot is restarting")
        assert bot.core.jobs.recent() == []
        assert sandbox.requests["createTask"] == 0
        assert bot.core.ledger.balance(discord_user(ALICE)).held == 0
