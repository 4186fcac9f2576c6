"""``imagine-bot doctor``: every check of an install, in order, printed as a checklist.

    settings -> database, migrations, spool -> gateway key, balance, model -> Slack -> Discord -> PUBLIC_URL
    -> the account webhook

Exit status 0 only when no check failed (warnings are fine).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from imagine_bot.core import __version__
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.gateway import GatewayClient
from imagine_bot.core.ops.doctor import (
    Check,
    check_account_webhook,
    check_gateway,
    check_public_url,
    check_spool,
    check_storage,
    fail,
    ok,
)
from imagine_bot.core.settings import ENV_FILE, Settings


def settings_source(env_file: Path = Path(ENV_FILE)) -> str:
    """Where the settings came from: the environment, and ``.env`` only when there is one."""
    if env_file.is_file():
        return f"parsed (the environment, then {env_file.resolve()})"
    return f"parsed (the environment only: there is no {env_file.name} in {Path.cwd()})"


def settings_failed(error: ConfigError) -> list[Check]:
    return [fail("settings", error.admin_message,
                 "fix that line in .env or the environment (.env.example documents each setting)")]


async def run_checks(settings: Settings) -> list[Check]:
    checks = [ok("settings", settings_source())]
    checks += check_storage(settings)
    checks.append(check_spool(settings.spool_dir))
    async with httpx.AsyncClient(headers={"User-Agent": f"imagine-bot/{__version__} (doctor)"}) as http:
        key = settings.MODKIE_API_KEY.get_secret_value() if settings.MODKIE_API_KEY else None
        gateway = None if settings.sandbox or not key else GatewayClient(
            http, base_url=settings.MODKIE_BASE_URL, api_key=key, retries=1,
            request_timeout=min(settings.MODKIE_TIMEOUT_S, 15.0))
        checks += await check_gateway(settings, gateway)
        from imagine_bot.bots.slack.doctor import slack_checks

        checks += await slack_checks(settings, http)
        from imagine_bot.bots.discord.doctor import discord_checks

        checks += await discord_checks(settings, http)
        if settings.SLACK_BOT_TOKEN is None and not settings.SLACK_CLIENT_ID and settings.DISCORD_TOKEN is None:
            checks.append(fail("front ends", "neither SLACK_BOT_TOKEN (or SLACK_CLIENT_ID) nor DISCORD_TOKEN is set",
                               "set one of them (see docs/slack.md, docs/discord.md); `imagine-bot chat` "
                               "needs neither"))
        checks += await check_public_url(settings, http)
        checks += await check_account_webhook(settings, gateway)
    return checks
