"""``imagine-bot doctor``, the Slack part: the bot token works, its scopes cover the manifest's, and a
way in (Socket Mode token or signing secret) is configured."""

from __future__ import annotations

import httpx

from imagine_bot.bots.slack import manifest
from imagine_bot.core.ops.doctor import Check, fail, ok, warn
from imagine_bot.core.settings import Settings

REINSTALL = ("add them under OAuth & Permissions -> Bot Token Scopes (or recreate the app from "
             "bots/slack/manifest.yml), reinstall the app to the workspace and copy the new xoxb- token")


def manifest_scopes() -> list[str]:
    """The bot scopes ``bots/slack/manifest.yml`` asks for."""
    return manifest.bot_scopes()


async def slack_checks(settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    if settings.SLACK_BOT_TOKEN is None:
        return []
    token = settings.SLACK_BOT_TOKEN.get_secret_value()
    url = settings.SLACK_API_URL.rstrip("/") + "/auth.test"
    try:
        response = await http.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return [fail("Slack", f"auth.test did not answer ({type(exc).__name__})",
                     f"check SLACK_API_URL ({settings.SLACK_API_URL}) and that this machine reaches Slack")]
    if not body.get("ok"):
        return [fail("Slack", f"auth.test refused the bot token ({body.get('error', 'unknown error')})",
                     "copy the Bot User OAuth Token (xoxb-...) from OAuth & Permissions into SLACK_BOT_TOKEN")]
    checks = [ok("Slack", f"auth.test: @{body.get('user')} in {body.get('team')} ({body.get('team_id')})")]
    header = response.headers.get("x-oauth-scopes")
    wanted = manifest_scopes()
    if header is None:
        checks.append(warn("Slack scopes", "Slack did not say which scopes the token has",
                           f"make sure the app has these bot scopes: {', '.join(wanted)}"))
    else:
        have = {s.strip() for s in header.split(",") if s.strip()}
        missing = [s for s in wanted if s not in have]
        if missing:
            checks.append(fail("Slack scopes", f"the token lacks {', '.join(missing)}", REINSTALL))
        else:
            checks.append(ok("Slack scopes", f"{', '.join(wanted)} granted"))
    if settings.SLACK_APP_TOKEN is not None:
        if settings.SLACK_APP_TOKEN.get_secret_value().startswith("xapp-"):
            checks.append(ok("Slack mode", "Socket Mode (SLACK_APP_TOKEN is set)"))
        else:
            checks.append(fail("Slack mode", "SLACK_APP_TOKEN is not an app-level token (xapp-...)",
                               "Basic Information -> App-Level Tokens: make one with connections:write"))
    elif settings.SLACK_SIGNING_SECRET is not None:
        where = f"{settings.PUBLIC_URL}/slack/events" if settings.PUBLIC_URL else "PUBLIC_URL/slack/events"
        checks.append(ok("Slack mode", f"HTTP mode: Slack posts to {where}"))
    else:
        checks.append(fail("Slack mode", "neither SLACK_APP_TOKEN nor SLACK_SIGNING_SECRET is set",
                           "set SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET and PUBLIC_URL (HTTP mode)"))
    return checks
