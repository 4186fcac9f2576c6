"""DISCORD_ALLOWED_GUILDS: the bot leaves any other server it is invited to, and answers no one there."""

from __future__ import annotations

import discord

from imagine_bot.bots.discord import wording

from .conftest import ALICE

ALLOWED = "999999999999999999"  # the harness's server
ELSEWHERE = "777777777777777777"


async def test_the_bot_leaves_a_server_that_is_not_allowed(open_bot, caplog):
    async with open_bot(DISCORD_ALLOWED_GUILDS=ALLOWED) as bot:
        state = bot.client._connection
        guild = discord.Guild(data={"id": ELSEWHERE, "name": "Somebody's server"}, state=state)
        bot.client.dispatch("guild_join", guild)  # as discord.py does on GUILD_CREATE after an invite
        await bot.fake.wait_for("DELETE", rf"/users/@me/guilds/{ELSEWHERE}")
        assert bot.fake.left_guilds == [ELSEWHERE]
        assert "not in DISCORD_ALLOWED_GUILDS" in caplog.text

        ours = discord.Guild(data={"id": ALLOWED, "name": "Ours"}, state=state)
        assert await bot.client.leave_if_not_allowed(ours) is False
        assert bot.fake.left_guilds == [ELSEWHERE]


async def test_commands_from_a_server_that_is_not_allowed_are_refused(open_bot):
    async with open_bot(DISCORD_ALLOWED_GUILDS=ALLOWED, guild_id=ELSEWHERE) as bot:
        sent = bot.imagine(ALICE, "a lighthouse")
        callback = await bot.callback(sent)
        assert callback.json["data"]["content"] == wording.SERVER_REFUSED
        assert callback.json["data"]["flags"] & 64
        await bot.idle()
        assert bot.core.jobs.recent() == []
