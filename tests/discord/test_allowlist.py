"""DISCORD_ALLOWED_GUILDS: the bot leaves any other server it is in or is invited to, and answers no one there.
Servers arrive as Discord sends them: listed in READY then GUILD_CREATE, or a GUILD_CREATE after an invite."""

from __future__ import annotations

import pytest

from imagine_bot.bots.discord import wording

from .conftest import ALICE

ALLOWED = "999999999999999999"  # the harness's server
ALSO_ALLOWED = "888888888888888888"
EARLIER = "666666666666666666"  # joined before DISCORD_ALLOWED_GUILDS was set
ELSEWHERE = "777777777777777777"


@pytest.fixture
def fake(fake):
    fake.guilds = (ALLOWED, EARLIER)  # the servers the bot is in when it connects
    return fake


async def test_the_bot_leaves_a_server_that_is_not_allowed(open_bot, caplog):
    async with open_bot(DISCORD_ALLOWED_GUILDS=f"{ALLOWED},{ALSO_ALLOWED}") as bot:
        # at READY: the server it should not be in is left, the allowed one kept
        assert bot.fake.left_guilds == [EARLIER]
        assert bot.client.get_guild(int(ALLOWED)) is not None

        # invited to two more servers: it stays in the allowed one and leaves the other
        await bot.fake.join_guild(ALSO_ALLOWED)
        await bot.fake.join_guild(ELSEWHERE)
        await bot.fake.wait_for("DELETE", rf"/users/@me/guilds/{ELSEWHERE}")
        assert bot.fake.left_guilds == [EARLIER, ELSEWHERE]
        assert bot.client.get_guild(int(ALSO_ALLOWED)) is not None
        assert "not in DISCORD_ALLOWED_GUILDS" in caplog.text


async def test_commands_from_a_server_that_is_not_allowed_are_refused(open_bot):
    async with open_bot(DISCORD_ALLOWED_GUILDS=ALLOWED, guild_id=ELSEWHERE) as bot:
        sent = await bot.imagine(ALICE, "a lighthouse")
        callback = await bot.callback(sent)
        assert callback.json["data"]["content"] == wording.SERVER_REFUSED
        assert callback.json["data"]["flags"] & 64
        await bot.idle()
        assert bot.core.jobs.recent() == []
