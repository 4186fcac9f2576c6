"""Brand presets through the real discord.py stack, every interaction over the fake gateway websocket:
``/imagine-admin preset ...``, the ``preset`` option with its autocomplete, a channel's default."""

from __future__ import annotations

from imagine_bot.core.access.authority import Actor
from imagine_bot.core.chat import messages
from imagine_bot.core.jobs.model import JobState

from .conftest import ALICE, BOB, discord_user
from .live import GUILD, MANAGE_GUILD, LiveBot, live_bot

TEMPLATE = "{prompt}, isometric 3D render, soft shadows, brand purple"


def _opt(name: str, value: object, kind: int = 3) -> dict:
    return {"name": name, "type": kind, "value": value}


async def _made(bot: LiveBot, sandbox, user: str, prompt: str, **options: str) -> tuple[dict, dict]:
    """``/imagine`` by ``user``: what createTask got and the result's embed."""
    payload = await bot.imagine(user, prompt, **options)
    final = (await bot.fake.wait_for("PATCH", rf"/webhooks/\d+/{payload['token']}/messages/@original",
                                     where=lambda c: bool((c.json or {}).get("components"))))[0]
    await bot.idle()
    job = bot.core.jobs.by_dedupe_key(f"discord:{payload['id']}")
    assert job is not None and job.state is JobState.DELIVERED
    return dict(sandbox.tasks[job.task_id].input), final.json["embeds"][0]


async def test_presets_through_discord(fake, discord_settings, sandbox):
    async with live_bot(fake, discord_settings()) as bot:
        # a member with Manage Server defines a preset for this server
        answer = await bot.private_answer(await bot.admin(
            ["preset", "set"], ALICE, [_opt("name", "Brand"), _opt("template", TEMPLATE), _opt("aspect_ratio", "9:16"),
                                      _opt("quality", "high")], permissions=MANAGE_GUILD))
        assert answer == messages.preset_saved("brand", f"discord:{GUILD}")
        # a member without it may not
        refused = await bot.private_answer(await bot.admin(["preset", "set"], BOB, [
            _opt("name", "mine"), _opt("template", "{prompt}, mine")]))
        assert "only image-bot admins" in refused.lower()

        # autocomplete offers the presets here, and none
        offered = await bot.autocomplete(BOB, [_opt("prompt", "a cat"), {**_opt("preset", "b"), "focused": True}])
        assert offered == [{"name": "brand", "value": "brand"}]
        offered = await bot.autocomplete(BOB, [_opt("prompt", "a cat"), {**_opt("preset", ""), "focused": True}])
        assert [c["value"] for c in offered] == ["brand", "none"]

        # the option applies the preset; the option aspect_ratio (the user's) wins over the preset's
        sent, embed = await _made(bot, sandbox, BOB, "a robot barista", preset="brand", aspect_ratio="1:1")
        assert sent["prompt"] == TEMPLATE.replace("{prompt}", "a robot barista")
        assert (sent["aspect_ratio"], sent["quality"]) == ("1:1", "high")
        assert {"name": "Preset", "value": "brand", "inline": True} in embed["fields"]

        # a channel default, and `none`
        answer = await bot.private_answer(await bot.admin(["preset", "default"], ALICE, [_opt("name", "brand")],
                                                          permissions=MANAGE_GUILD))
        assert answer == messages.preset_default_set("brand")
        sent, _ = await _made(bot, sandbox, BOB, "a tea pot")
        assert (sent["prompt"], sent["aspect_ratio"]) == (TEMPLATE.replace("{prompt}", "a tea pot"), "9:16")
        sent, embed = await _made(bot, sandbox, BOB, "a tea pot", preset="none")
        assert (sent["prompt"], sent["aspect_ratio"]) == ("a tea pot", "1:1")
        assert not [f for f in embed["fields"] if f["name"] == "Preset"]

        # an unknown preset: refused privately before anything public, nothing charged
        before = sandbox.requests["createTask"]
        unknown = await bot.imagine(BOB, "a tea pot", preset="brnd")
        callback = await bot.callback(unknown)
        assert callback.json["type"] == 4 and callback.json["data"]["flags"] & 64
        assert callback.json["data"]["content"] == messages.unknown_preset("brnd", ["brand"])
        assert sandbox.requests["createTask"] == before
        assert bot.core.ledger.balance(discord_user(BOB)).available == 180 - 3 * 18

        listed = await bot.private_answer(await bot.admin(["preset", "list"], ALICE, permissions=MANAGE_GUILD))
        assert "`brand`" in listed and "default in <#555555555555555555>" in listed
        removed = await bot.private_answer(await bot.admin(["preset", "remove"], ALICE, [_opt("name", "brand")],
                                                           permissions=MANAGE_GUILD))
        assert removed == messages.preset_removed("brand", ["555555555555555555"])
        assert bot.core.presets_here(Actor(discord_user(BOB), place=f"discord:{GUILD}")) == []
