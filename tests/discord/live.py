"""A bot as ``imagine-bot run`` starts it against the fake Discord: the service connects to the fake gateway
websocket and every interaction arrives there as an ``INTERACTION_CREATE`` dispatch (no private discord.py
attribute is touched). Open it again on the same database for a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from imagine_bot.bots.discord import DiscordService
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.settings import Settings
from tests.fakes.discord_api import Call, FakeDiscord, InteractionFactory

GUILD = "999999999999999999"
CHANNEL = "555555555555555555"
MANAGE_GUILD = 0x20


@dataclass
class LiveBot:
    fake: FakeDiscord
    core: ImagineCore
    service: DiscordService
    interactions: InteractionFactory

    async def send(self, payload: dict[str, Any]) -> dict[str, Any]:
        await self.fake.dispatch("INTERACTION_CREATE", payload)
        return payload

    async def imagine(self, user: str, prompt: str, **options: Any) -> dict[str, Any]:
        sent = [{"name": "prompt", "type": 3, "value": prompt}]
        sent += [{"name": k, "type": 3, "value": v} for k, v in options.items()]
        return await self.send(self.interactions.command("imagine", user, sent))

    async def admin(self, path: list[str], user: str, options: list[dict[str, Any]] | None = None,
                    **kw: Any) -> dict[str, Any]:
        """``/imagine-admin <path...>`` (a subcommand, or a group and its subcommand) with these options."""
        inner: list[dict[str, Any]] = options or []
        for depth, name in reversed(list(enumerate(path))):
            inner = [{"name": name, "type": 1 if depth == len(path) - 1 else 2, "options": inner}]
        return await self.send(self.interactions.command("imagine-admin", user, inner, **kw))

    async def autocomplete(self, user: str, options: list[dict[str, Any]], command: str = "imagine") -> list[dict]:
        """An autocomplete interaction (type 4) for the focused option; returns the choices the bot offered."""
        payload = self.interactions.command(command, user, options)
        payload["type"] = 4
        await self.send(payload)
        return list((await self.callback(payload)).json["data"]["choices"])

    async def press(self, custom_id: str, user: str, message: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return await self.send(self.interactions.component(custom_id, user, message, **kw))

    async def submit(self, custom_id: str, user: str, values: dict[str, str], **kw: Any) -> dict[str, Any]:
        return await self.send(self.interactions.modal_submit(custom_id, user, values, **kw))

    async def callback(self, payload: dict[str, Any]) -> Call:
        return (await self.fake.wait_for("POST", rf"/interactions/{payload['id']}/"))[0]

    async def private_answer(self, payload: dict[str, Any]) -> str:
        """The text of an answer only the user sees: the callback itself, or a followup after a defer."""
        callback = await self.callback(payload)
        if callback.json["type"] == 4:
            assert callback.json["data"]["flags"] & 64
            return str(callback.json["data"]["content"])
        followup = (await self.fake.wait_for("POST", rf"/webhooks/\d+/{payload['token']}$"))[0]
        assert followup.json["flags"] & 64
        return str(followup.json["content"])

    async def idle(self) -> None:
        await self.core.orchestrator.wait_idle()


@asynccontextmanager
async def live_bot(fake: FakeDiscord, settings: Settings, *, guild_id: str | None = GUILD,
                   channel_id: str = CHANNEL) -> AsyncIterator[LiveBot]:
    async with ImagineCore.open(settings) as core:
        service = DiscordService(core, settings, guild_ready_timeout=0.0, edit_interval=0.1)
        try:
            await service.start()
            await core.start()
            yield LiveBot(fake, core, service, InteractionFactory(fake.app_id, guild_id=guild_id,
                                                                  channel_id=channel_id))
        finally:
            await core.orchestrator.stop()
            await service.stop()
    await fake.wait_gateway_closed()
