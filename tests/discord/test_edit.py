"""Edits on Discord through the real discord.py stack and the fake API: /imagine with attachments, the
"Remix with imagine" message menu and its modal, and the Vary and Remix buttons (after a restart)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from PIL import Image

from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.web.server import build_web_app, start_web

from .conftest import ALICE, CAROL, Bot, discord_user

EDIT = "seedream/4.5-edit"


def png(colour: tuple[int, int, int], size: tuple[int, int] = (80, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


@asynccontextmanager
async def serving_refs(bot: Bot) -> AsyncIterator[None]:
    """The bot's web server with /refs/ on loopback, as `imagine-bot run --sandbox` has it."""
    runner, port = await start_web(build_web_app(bot.core), "127.0.0.1", 0)
    bot.core.serve_refs_at(f"http://127.0.0.1:{port}")
    try:
        yield
    finally:
        await runner.cleanup()


async def imagine_with(bot: Bot, user: str, prompt: str, attachments: list[dict]) -> dict:
    options = [{"name": "prompt", "type": 3, "value": prompt}]
    resolved: dict = {"attachments": {}}
    for name, attachment in zip(("image", "image2", "image3", "image4"), attachments, strict=False):
        options.append({"name": name, "type": 11, "value": attachment["id"]})
        resolved["attachments"][attachment["id"]] = attachment
    return await bot.send(bot.interactions.command("imagine", user, options, resolved=resolved))


def buttons(call) -> list[str]:
    return [c["custom_id"] for row in call.json["components"] for c in row["components"]]


async def test_imagine_with_one_attachment_is_an_edit_of_it(open_bot, sandbox):
    async with open_bot() as bot:
        attachment = bot.fake.add_attachment("cat.png", png((200, 40, 40)))
        sent = await imagine_with(bot, ALICE, "make it winter", [attachment])
        final = await bot.final_edit(sent)
        await bot.idle()
        (job,) = bot.core.jobs.recent(discord_user(ALICE).key)
        assert job.state is JobState.DELIVERED and job.model == EDIT
        task = sandbox.tasks[job.task_id]
        assert task.model == EDIT and task.input["image_urls"] == [attachment["url"]]  # the CDN URL as it is
        assert (attachment["url"], 200) in sandbox.fetched
        assert final.files[0].data == task.images[0]
        assert buttons(final) == [f"imagine:{verb}:{job.id}" for verb in ("reroll", "vary", "remix", "delete")]
        assert bot.core.ledger.balance(discord_user(ALICE)).balance == 180 - 18


async def test_four_attachments_go_to_the_gateway_in_order(open_bot, sandbox):
    async with open_bot() as bot:
        attachments = [bot.fake.add_attachment(f"{n}.png", png((60 * n, 90, 30))) for n in range(4)]
        sent = await imagine_with(bot, ALICE, "a collage --ar 16:9", attachments)
        await bot.final_edit(sent)
        await bot.idle()
        (job,) = bot.core.jobs.recent(discord_user(ALICE).key)
        task = sandbox.tasks[job.task_id]
        assert task.model == EDIT and task.input["aspect_ratio"] == "16:9"
        assert task.input["image_urls"] == [a["url"] for a in attachments]


async def test_a_text_file_attachment_is_refused_before_any_charge(open_bot, sandbox):
    async with open_bot() as bot:
        attachment = bot.fake.add_attachment("notes.png", b"not an image at all, only words\n" * 20, "image/png")
        sent = await imagine_with(bot, ALICE, "make it winter", [attachment])
        followup = (await bot.fake.wait_for("POST", rf"/webhooks/\d+/{sent['token']}$"))[0]
        assert "`notes.png` is text, not a JPEG, PNG or WebP image" in followup.json["content"]
        assert followup.json["flags"] & 64  # only the requester sees it
        assert sandbox.requests["createTask"] == 0
        assert bot.core.ledger.balance(discord_user(ALICE)).available == 180


async def test_remix_with_imagine_on_a_message_runs_an_edit_in_that_channel(open_bot, sandbox):
    async with open_bot() as bot:
        photo = bot.fake.add_attachment("photo.png", png((30, 160, 60)))
        message = bot.fake.user_message(bot.interactions.channel_id, CAROL, [photo], content="our product shot")
        menu = await bot.send(bot.interactions.message_command("Remix with imagine", ALICE, message))
        opened = await bot.callback(menu)
        assert opened.json["type"] == 9  # a modal
        modal = opened.json["data"]
        ids = [row["component"]["custom_id"] for row in modal["components"]]
        assert ids == ["imagine:remix:prompt", "imagine:remix:aspect_ratio", "imagine:remix:quality"]

        submitted = await bot.send(bot.interactions.modal_submit(modal["custom_id"], ALICE, {
            "imagine:remix:prompt": "as a neon sign", "imagine:remix:aspect_ratio": ["9:16"],
            "imagine:remix:quality": [],
        }))
        assert (await bot.callback(submitted)).json["type"] == 5  # a public placeholder in the channel
        final = await bot.final_edit(submitted)
        await bot.idle()
        (job,) = bot.core.jobs.recent(discord_user(ALICE).key)
        assert job.prompt == "as a neon sign" and job.reply.channel == bot.interactions.channel_id
        assert job.params["aspect_ratio"] == "9:16" and job.params["quality"] == "basic"
        assert sandbox.tasks[job.task_id].input["image_urls"] == [photo["url"]]
        assert final.files[0].data == sandbox.tasks[job.task_id].images[0]


async def test_a_remix_form_left_without_a_ratio_keeps_the_image_shape(open_bot, sandbox):
    """The form preselects no aspect ratio for a message's images (it would square a wide photo): left
    empty, the edit takes the supported ratio nearest to the image's."""
    async with open_bot() as bot:
        photo = bot.fake.add_attachment("wide.png", png((30, 160, 60), size=(192, 100)))
        message = bot.fake.user_message(bot.interactions.channel_id, CAROL, [photo], content="a wide shot")
        menu = await bot.send(bot.interactions.message_command("Remix with imagine", ALICE, message))
        modal = (await bot.callback(menu)).json["data"]
        ratio = next(row for row in modal["components"]
                     if row["component"]["custom_id"] == "imagine:remix:aspect_ratio")
        assert not any(option.get("default") for option in ratio["component"]["options"])
        assert "keep the image's shape" in ratio["description"]
        submitted = await bot.send(bot.interactions.modal_submit(modal["custom_id"], ALICE, {
            "imagine:remix:prompt": "as a neon sign", "imagine:remix:aspect_ratio": [],
            "imagine:remix:quality": []}))
        await bot.final_edit(submitted)
        await bot.idle()
        (job,) = bot.core.jobs.recent(discord_user(ALICE).key)
        assert job.params["aspect_ratio"] == "16:9" and sandbox.tasks[job.task_id].input["aspect_ratio"] == "16:9"


async def test_remix_menu_on_a_message_without_images_says_so(open_bot, sandbox):
    async with open_bot() as bot:
        message = bot.fake.user_message(bot.interactions.channel_id, CAROL, [], content="just words")
        menu = await bot.send(bot.interactions.message_command("Remix with imagine", ALICE, message))
        answer = await bot.callback(menu)
        assert answer.json["type"] == 4 and answer.json["data"]["flags"] & 64
        assert "no image I can remix" in answer.json["data"]["content"]


async def test_vary_and_remix_work_after_a_restart_for_the_requester_only(open_bot, sandbox):
    async with open_bot() as first:
        sent = await first.imagine(ALICE, "a red kite over hills --ar 16:9")
        await first.final_edit(sent)
        await first.idle()
        (original,) = first.core.jobs.recent(discord_user(ALICE).key)
        message = dict(first.fake.messages[original.reply.data["message_id"]])

    async with open_bot() as bot, serving_refs(bot):  # a new process, same database and spool
        stranger = await bot.press(f"imagine:vary:{original.id}", CAROL, message)
        refusal = await bot.callback(stranger)
        assert refusal.json["type"] == 4 and refusal.json["data"]["flags"] & 64
        assert "Only the person who asked for this image" in refusal.json["data"]["content"]

        pressed = await bot.press(f"imagine:vary:{original.id}", ALICE, message)
        assert (await bot.callback(pressed)).json["type"] == 5
        await bot.final_edit(pressed)
        await bot.idle()
        varied = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert varied.state is JobState.DELIVERED and varied.parent_id == original.id and varied.model == EDIT
        assert varied.prompt == original.prompt and varied.params["aspect_ratio"] == "16:9"
        (url,) = sandbox.tasks[varied.task_id].input["image_urls"]
        assert "/refs/" in url and (url, 200) in sandbox.fetched  # our own result, served signed

        remix = await bot.press(f"imagine:remix:{original.id}", ALICE, message)
        modal = (await bot.callback(remix)).json
        assert modal["type"] == 9
        prompt_input = modal["data"]["components"][0]["component"]
        assert prompt_input["value"] == original.prompt  # the original prompt, to change
        submitted = await bot.send(bot.interactions.modal_submit(modal["data"]["custom_id"], ALICE, {
            "imagine:remix:prompt": "a red kite over hills in winter", "imagine:remix:aspect_ratio": ["16:9"],
            "imagine:remix:quality": ["basic"],
        }))
        await bot.final_edit(submitted)
        await bot.idle()
        remixed = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert remixed.prompt == "a red kite over hills in winter" and remixed.parent_id == original.id
        assert remixed.state is JobState.DELIVERED and remixed.model == EDIT
        # three paid jobs, each with its own reservation and capture
        assert bot.core.ledger.balance(discord_user(ALICE)).balance == 180 - 3 * 18
        assert bot.core.ledger.balance(discord_user(CAROL)).balance == 180


async def test_a_remix_form_opened_before_a_restart_works_after_it(open_bot, sandbox):
    async with open_bot() as first:
        photo = first.fake.add_attachment("photo.png", png((90, 30, 160)))
        message = first.fake.user_message(first.interactions.channel_id, CAROL, [photo])
        modal = (await first.callback(await first.send(first.interactions.message_command(
            "Remix with imagine", ALICE, message)))).json["data"]
        assert modal["custom_id"] == f"imagine:remix-msg:{first.interactions.channel_id}:{message['id']}"

    async with open_bot() as bot:  # a new process: it never saw the modal
        submitted = await bot.send(bot.interactions.modal_submit(modal["custom_id"], ALICE, {
            "imagine:remix:prompt": "in the snow", "imagine:remix:aspect_ratio": ["1:1"]}))
        await bot.final_edit(submitted)
        await bot.idle()
        (job,) = bot.core.jobs.recent(discord_user(ALICE).key)
        assert job.state is JobState.DELIVERED and job.prompt == "in the snow"
        assert sandbox.tasks[job.task_id].input["image_urls"] == [photo["url"]]  # read from the message again


async def test_a_12_mb_attachment_is_refused_before_any_charge(open_bot, sandbox):
    async with open_bot() as bot:  # no PUBLIC_URL: the bot cannot serve a shrunk copy
        big = bot.fake.add_attachment("huge.png", b"\x89PNG\r\n\x1a\n" + bytes(12 * 1024 * 1024))
        sent = await imagine_with(bot, ALICE, "make it winter", [big])
        followup = (await bot.fake.wait_for("POST", rf"/webhooks/\d+/{sent['token']}$"))[0]
        assert "`huge.png` is 12.0 MB; the limit is 10.0 MB" in followup.json["content"]
        assert followup.json["flags"] & 64 and sandbox.requests["createTask"] == 0
        assert bot.core.ledger.balance(discord_user(ALICE)).available == 180


async def test_a_message_with_fifteen_images_is_remixed_with_the_first_fourteen(open_bot, sandbox):
    async with open_bot() as bot:
        photos = [bot.fake.add_attachment(f"{n}.png", png((n * 10, 0, 0))) for n in range(15)]
        message = bot.fake.user_message(bot.interactions.channel_id, CAROL, photos)
        modal = (await bot.callback(await bot.send(bot.interactions.message_command(
            "Remix with imagine", ALICE, message)))).json["data"]
        submitted = await bot.send(bot.interactions.modal_submit(modal["custom_id"], ALICE, {
            "imagine:remix:prompt": "all of them"}))
        await bot.final_edit(submitted)
        await bot.idle()
        (job,) = bot.core.jobs.recent(discord_user(ALICE).key)
        # Discord's message had 15: the first 14 (the most an edit takes) are used, in order
        assert sandbox.tasks[job.task_id].input["image_urls"] == [p["url"] for p in photos[:14]]
