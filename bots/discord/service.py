"""``DiscordService``: the Discord front end as ``imagine-bot run`` starts it.

Built with the core (it registers its front end there), it logs in, connects to the gateway in a
background task, waits for READY, and syncs the slash commands if they changed (to
``DISCORD_GUILD_IDS`` at once, or globally).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import discord
from aiohttp import web

from imagine_bot.bots.discord.client import ImagineClient, configure_endpoints, sync_commands
from imagine_bot.bots.discord.frontend import DiscordFrontEnd
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.settings import Settings
from imagine_bot.core.web.server import add_status

log = logging.getLogger(__name__)


class DiscordService:
    name = "discord"

    def __init__(self, core: ImagineCore, settings: Settings, web_app: web.Application | None = None, *,
                 ready_timeout: float = 60.0, edit_interval: float = 1.0, sync: bool = True,
                 **client_options: Any) -> None:
        if settings.DISCORD_TOKEN is None or not settings.DISCORD_TOKEN.get_secret_value():
            raise ConfigError("DISCORD_TOKEN", "is not set: copy the bot token from the Discord Developer Portal")
        self.settings = settings
        self.ready_timeout = ready_timeout
        self.sync = sync
        configure_endpoints(settings)
        self.client = ImagineClient(settings, core.model, core=core, **client_options)
        self.frontend = DiscordFrontEnd(self.client, core, edit_interval=edit_interval)
        core.register(self.frontend)
        if web_app is not None:
            add_status(web_app, "discord", self.client.shard_status)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        assert self.settings.DISCORD_TOKEN is not None
        token = self.settings.DISCORD_TOKEN.get_secret_value()
        self._task = asyncio.create_task(self.client.start(token), name="discord-client")
        ready = asyncio.create_task(self.client.ready_event.wait(), name="discord-ready")
        done, _ = await asyncio.wait({self._task, ready}, timeout=self.ready_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if self._task in done:
                error = self._task.exception()
                await self.stop()
                if isinstance(error, discord.LoginFailure):
                    raise ConfigError("DISCORD_TOKEN", "Discord refused the token (reset it in the Developer "
                                      "Portal, Bot page, and copy it again)") from error
                if isinstance(error, discord.PrivilegedIntentsRequired):
                    raise ConfigError("DISCORD_TOKEN", str(error)) from error
                raise RuntimeError(f"the Discord client stopped while connecting: {error!r}") from error
            await self.stop()
            raise TimeoutError(f"Discord did not become ready within {self.ready_timeout:.0f}s")
        if self.sync:
            try:
                await sync_commands(self.client, force=False)
            except discord.HTTPException as error:
                log.warning("could not sync the slash commands (%s); try `imagine-bot discord sync`", error)

    async def stop(self) -> None:
        await self.frontend.close()
        if not self.client.is_closed():
            await self.client.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
