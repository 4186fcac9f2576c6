"""``imagine-bot doctor``, the Discord part: the token logs in, the application and its commands, and for
each server the bot is in, the permissions it lacks there."""

from __future__ import annotations

from typing import Any

import httpx

from imagine_bot.core.gateway.catalog import get_model
from imagine_bot.core.ops.doctor import Check, fail, ok, warn
from imagine_bot.core.settings import Settings

ADMINISTRATOR = 1 << 3
#: the permissions a server must give the bot for it to post images there
NEEDED = {"View Channel": 1 << 10, "Send Messages": 1 << 11, "Embed Links": 1 << 14, "Attach Files": 1 << 15}


def missing_permissions(permissions: int) -> list[str]:
    if permissions & ADMINISTRATOR:
        return []
    return [name for name, bit in NEEDED.items() if not permissions & bit]


def expected_commands(settings: Settings) -> set[str]:
    from imagine_bot.bots.discord.client import build_commands

    return {c.name for c in build_commands(get_model(settings.MODKIE_MODEL, settings.MODKIE_ASPECT_RATIOS))}


async def discord_checks(settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    if settings.DISCORD_TOKEN is None:
        return []
    base = settings.DISCORD_API_BASE.rstrip("/")
    headers = {"Authorization": f"Bot {settings.DISCORD_TOKEN.get_secret_value()}"}

    async def get(path: str) -> Any:
        response = await http.get(base + path, headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()

    try:
        me = await get("/users/@me")
    except httpx.HTTPStatusError as exc:
        return [fail("Discord", f"the token does not log in (HTTP {exc.response.status_code})",
                     "Developer Portal -> your application -> Bot -> Reset Token, and copy it into DISCORD_TOKEN")]
    except (httpx.HTTPError, ValueError) as exc:
        return [fail("Discord", f"{base} did not answer ({type(exc).__name__})",
                     "check DISCORD_API_BASE and that this machine reaches Discord")]
    checks = [ok("Discord", f"logged in as {me.get('username')} ({me.get('id')})")]
    try:
        app = await get("/oauth2/applications/@me")
        app_id = str(app["id"])
        checks.append(ok("Discord application", f"id {app_id}"))
        checks.append(await _commands(settings, get, app_id))
        guilds = await get("/users/@me/guilds")
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        checks.append(fail("Discord application", f"could not be read ({type(exc).__name__})",
                           "check that DISCORD_TOKEN is a bot token of an application you own"))
        return checks
    if not guilds:
        checks.append(warn("Discord servers", "the bot is in no server yet",
                           "open the link `imagine-bot discord invite-url` prints and add the bot to a server"))
    for guild in guilds:
        lacking = missing_permissions(int(guild.get("permissions") or 0))
        label = f"server {guild.get('name')} ({guild.get('id')})"
        if lacking:
            checks.append(fail("Discord permissions", f"{label} lacks {', '.join(lacking)}",
                               "give the bot's role these permissions in Server Settings -> Roles, or re-invite "
                               "it with the link `imagine-bot discord invite-url` prints"))
        else:
            checks.append(ok("Discord permissions", f"{label}: View Channel, Send Messages, Embed Links, "
                             "Attach Files"))
    return checks


async def _commands(settings: Settings, get: Any, app_id: str) -> Check:
    wanted = expected_commands(settings)
    places = [(f"in server {g}", f"/applications/{app_id}/guilds/{g}/commands") for g in settings.DISCORD_GUILD_IDS]
    for where, path in places or [("globally", f"/applications/{app_id}/commands")]:
        missing = sorted(wanted - {c.get("name") for c in await get(path)})
        if missing:
            return fail("Discord commands", f"not registered {where}: /{', /'.join(missing)}",
                        "run `imagine-bot discord sync` (set DISCORD_GUILD_IDS for servers where they must "
                        "appear at once)")
    where = "in " + ", ".join(settings.DISCORD_GUILD_IDS) if settings.DISCORD_GUILD_IDS else "globally"
    return ok("Discord commands", f"/{', /'.join(sorted(wanted))} registered {where}")
