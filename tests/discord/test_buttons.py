"""Reroll and Delete, pressed on a message posted by an earlier process (DynamicItem custom ids)."""

from __future__ import annotations

from imagine_bot.core.chat import messages
from imagine_bot.core.jobs.model import JobState

from .conftest import ALICE, BOB, CAROL, discord_user


async def test_buttons_work_after_a_restart(open_bot, sandbox):
    async with open_bot() as first:
        sent = await first.imagine(ALICE, "a red kite over hills")
        await first.final_edit(sent)
        await first.idle()
        original = first.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        message = dict(first.fake.messages[original.reply.data["message_id"]])

    # a new process: new client, new core, same database; the message is the one Discord still shows
    async with open_bot() as bot:
        # Reroll by someone else: a new job, charged to whoever pressed, with the same prompt
        pressed = await bot.press(f"imagine:reroll:{original.id}", BOB, message)
        callback = await bot.callback(pressed)
        assert callback.json["type"] == 5  # a new public placeholder for the new image
        final = await bot.final_edit(pressed)
        await bot.idle()
        (rerolled,) = bot.core.jobs.recent(discord_user(BOB).key)
        assert rerolled.state is JobState.DELIVERED and rerolled.parent_id == original.id
        assert rerolled.prompt == original.prompt and rerolled.params == original.params
        assert bot.core.ledger.balance(discord_user(BOB)).balance == 180 - 18
        assert bot.core.ledger.balance(discord_user(ALICE)).balance == 180 - 18  # unchanged by the reroll
        assert next(c["custom_id"] for row in final.json["components"] for c in row["components"]) == (
            f"imagine:reroll:{rerolled.id}")
        assert final.files[0].data == sandbox.tasks[rerolled.task_id].images[0]

        # Delete by a stranger: refused privately, the message stays
        stranger = await bot.press(f"imagine:delete:{original.id}", CAROL, message)
        refusal = await bot.callback(stranger)
        assert refusal.json["type"] == 4 and refusal.json["data"]["flags"] & 64
        assert "Only the person who asked for this image" in refusal.json["data"]["content"]
        assert message["id"] in bot.fake.messages

        # Delete by the requester: the message goes
        owner = await bot.press(f"imagine:delete:{original.id}", ALICE, message)
        ack = await bot.callback(owner)
        assert ack.json["type"] == 6  # deferred update: the component's message is the original
        await bot.fake.wait_for("DELETE", rf"/webhooks/\d+/{owner['token']}/messages/@original")
        assert message["id"] in bot.fake.deleted
        done = (await bot.fake.wait_for("POST", rf"/webhooks/\d+/{owner['token']}$"))[0]
        assert done.json["content"] == messages.deleted() and done.json["flags"] & 64


async def test_a_server_manager_may_delete_anyones_image(open_bot):
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, "a quiet pond")
        await bot.final_edit(sent)
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        message = dict(bot.fake.messages[job.reply.data["message_id"]])
        manager = await bot.press(f"imagine:delete:{job.id}", CAROL, message, permissions=0x20)  # MANAGE_GUILD
        await bot.fake.wait_for("DELETE", rf"/webhooks/\d+/{manager['token']}/messages/@original")
        assert message["id"] in bot.fake.deleted


async def test_reroll_without_credits_is_refused_privately(open_bot, sandbox):
    async with open_bot() as bot:
        sent = await bot.imagine(ALICE, "one more")
        await bot.final_edit(sent)
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        message = dict(bot.fake.messages[job.reply.data["message_id"]])
        bot.core.ledger.set_allowance(discord_user(BOB), 0, actor="test")
        bot.core.ledger.grant(discord_user(BOB), -180, actor="test")
        pressed = await bot.press(f"imagine:reroll:{job.id}", BOB, message)
        callback = await bot.callback(pressed)
        assert callback.json["type"] == 4 and callback.json["data"]["flags"] & 64
        assert callback.json["data"]["content"].startswith("Not enough credits")
    assert sandbox.requests["createTask"] == 1


async def test_a_job_resumed_by_a_new_process_edits_the_same_response(open_bot, sandbox):
    async with open_bot() as first:
        sent = await first.imagine(ALICE, "a patient heron sandbox:slow")
        await first.fake.wait_for("PATCH", rf"/webhooks/\d+/{sent['token']}/messages/@original",
                                  where=lambda c: "Working on it" in str((c.json or {}).get("content")))
        job = first.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.RUNNING  # left in flight when the first process stops

    async with open_bot() as bot:  # core.start() resumes it
        final = await bot.final_edit(sent)
        await bot.idle()
        job = bot.core.jobs.get(job.id)
        assert job.state is JobState.DELIVERED
        assert final.files[0].data == sandbox.tasks[job.task_id].images[0]
        assert bot.core.ledger.balance(discord_user(ALICE)).balance == 180 - 18
    assert sandbox.requests["createTask"] == 1
