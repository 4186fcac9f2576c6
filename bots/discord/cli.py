"""``imagine-bot discord sync`` and ``imagine-bot discord invite-url``.

    imagine-bot discord sync                     register the slash commands now (DISCORD_GUILD_IDS: in those
                                                 servers at once; otherwise globally)
    imagine-bot discord invite-url [--client-id ID]
                                                 the URL that adds the bot to a server, with the least
                                                 permissions it needs (the id is read from the token's
                                                 application unless given)
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from imagine_bot.core.errors import ConfigError
from imagine_bot.core.settings import Settings

if TYPE_CHECKING:
    import discord

SCOPES = ("bot", "applications.commands")
#: what the bot needs in a channel: see it (View Channel 1 << 10), post (Send Messages 1 << 11), show the
#: result card (Embed Links 1 << 14), attach the image (Attach Files 1 << 15) and see its own earlier
#: messages, whose buttons users press (Read Message History 1 << 16)
INVITE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16)
PERMISSION_NAMES = "View Channel, Send Messages, Embed Links, Attach Files, Read Message History"
AUTHORIZE_URL = "https://discord.com/oauth2/authorize"


def add_discord_parsers(sub: Any) -> None:
    p = sub.add_parser("discord", help="Discord: register the slash commands, print the invite URL")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("sync", help="register the slash commands (DISCORD_GUILD_IDS: in those servers at once)")
    a = actions.add_parser("invite-url", help="print the URL that adds the bot to a server")
    a.add_argument("--client-id", help="the application id (otherwise read with DISCORD_TOKEN)")
    p.set_defaults(func=discord_cmd)


def discord_cmd(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "sync":
        return asyncio.run(sync(settings))
    return asyncio.run(invite_url(settings, args.client_id))


def _token(settings: Settings) -> str:
    if settings.DISCORD_TOKEN is None or not settings.DISCORD_TOKEN.get_secret_value():
        raise ConfigError("DISCORD_TOKEN", "is not set: copy the bot token from the Discord Developer Portal")
    return settings.DISCORD_TOKEN.get_secret_value()


async def _login(client: discord.Client, settings: Settings) -> None:
    import discord

    from imagine_bot.bots.discord.client import configure_endpoints

    configure_endpoints(settings)
    try:
        await client.login(_token(settings))
    except discord.LoginFailure as error:
        raise ConfigError("DISCORD_TOKEN", "Discord refused the token (reset it in the Developer Portal, "
                          "Bot page, and copy it again)") from error


async def sync(settings: Settings) -> int:
    from imagine_bot.bots.discord.client import ImagineClient, sync_commands
    from imagine_bot.core.gateway.catalog import get_model

    _token(settings)  # say what is missing before starting anything
    model = get_model(settings.MODKIE_MODEL, settings.MODKIE_ASPECT_RATIOS)
    client = ImagineClient(settings, model)
    try:
        await _login(client, settings)
        synced = await sync_commands(client, force=True)
    finally:
        await client.close()
    for where, count in synced.items():
        scope = "globally (may take up to an hour to appear)" if where == "global" else f"in server {where}"
        print(f"synced {count} commands {scope}")
    return 0


def invite(client_id: str | int) -> str:
    """The OAuth2 URL that adds the bot (the same as ``discord.utils.oauth_url``)."""
    query = {"client_id": client_id, "scope": " ".join(SCOPES), "permissions": INVITE_PERMISSIONS}
    return f"{AUTHORIZE_URL}?{urlencode(query)}"


async def invite_url(settings: Settings, client_id: str | None = None) -> int:
    if client_id is None:
        _token(settings)
        import discord

        client = discord.Client(intents=discord.Intents.none())
        try:
            await _login(client, settings)
            client_id = str(client.application_id)
        finally:
            await client.close()
    print(f"permissions: {INVITE_PERMISSIONS} ({PERMISSION_NAMES})")
    print(invite(client_id))
    return 0
