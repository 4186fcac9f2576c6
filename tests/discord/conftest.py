"""Discord test harness: the fake Discord API, a core on the sandbox gateway, and the real discord.py
client connected to the fake as ``imagine-bot run`` connects (REST login, then the gateway websocket:
HELLO, IDENTIFY, READY). Interactions are raw Discord payloads sent as the gateway's
``INTERACTION_CREATE`` dispatches over that websocket, so discord.py's own parsing, CommandTree and
dynamic items run, and nothing here reaches into discord.py's internals.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import discord
import pytest
from discord.gateway import DiscordWebSocket

from imagine_bot.bots.discord import DiscordService
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.settings import Settings
from tests.fakes.discord_api import Call, FakeDiscord, InteractionFactory

#: status edits at most this often in tests (1 s in production), so throttling is visible but quick
EDIT_INTERVAL = 0.25

ALICE = "111111111111111111"
BOB = "222222222222222222"
CAROL = "333333333333333333"


@pytest.fixture(autouse=True)
def _restore_discord_globals() -> Any:
    """discord.py keeps the API base and gateway URL on classes: put them back after each test."""
    base, gateway = discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    yield
    discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = base, gateway


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
def discord_settings(make_settings: Callable[..., Settings], fake: FakeDiscord) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values = {"DISCORD_TOKEN": fake.token, "DISCORD_API_BASE": fake.api_base,
                  "DISCORD_GATEWAY_URL": fake.gateway_url, **overrides}
        return make_settings(**values)

    return make


def discord_user(user_id: str) -> UserRef:
    return UserRef("discord", "-", user_id)


@dataclass
class Bot:
    """One running bot process: core + Discord service, connected to the fake's REST API and gateway."""

    fake: FakeDiscord
    core: ImagineCore
    service: DiscordService
    interactions: InteractionFactory

    @property
    def client(self) -> discord.Client:
        return self.service.client

    async def send(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send an interaction as Discord does, an ``INTERACTION_CREATE`` dispatch on the gateway websocket;
        returns it (its ``token`` names its webhook; ``_sent_at``, added after sending, is when it went)."""
        sent_at = time.monotonic()
        await self.fake.dispatch("INTERACTION_CREATE", payload)
        payload["_sent_at"] = sent_at
        return payload

    async def imagine(self, user: str, prompt: str, **kw: Any) -> dict[str, Any]:
        options = [{"name": "prompt", "type": 3, "value": prompt}]
        for name in ("aspect_ratio", "quality"):
            if name in kw:
                options.append({"name": name, "type": 3, "value": kw.pop(name)})
        return await self.send(self.interactions.command("imagine", user, options, **kw))

    async def command(self, name: str, user: str, options: list[dict[str, Any]] | None = None,
                      **kw: Any) -> dict[str, Any]:
        return await self.send(self.interactions.command(name, user, options, **kw))

    async def admin(self, sub: str, user: str, options: list[dict[str, Any]] | None = None,
                    resolved_users: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
        resolved = {"users": {u: {"id": u, "username": f"user{u[-4:]}", "discriminator": "0", "avatar": None,
                                  "global_name": None} for u in resolved_users}} if resolved_users else None
        return await self.send(self.interactions.command(
            "imagine-admin", user, [{"name": sub, "type": 1, "options": options or []}], resolved=resolved, **kw))

    async def press(self, custom_id: str, user: str, message: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return await self.send(self.interactions.component(custom_id, user, message, **kw))

    # --- what the fake saw for one interaction
    async def callback(self, payload: dict[str, Any]) -> Call:
        calls = await self.fake.wait_for("POST", rf"/interactions/{payload['id']}/")
        return calls[0]

    async def final_edit(self, payload: dict[str, Any]) -> Call:
        """The edit that put the result (buttons) or a failure in the interaction's response."""
        calls = await self.fake.wait_for("PATCH", rf"/webhooks/\d+/{payload['token']}/messages/",
                                         where=lambda c: _is_final(c))
        return calls[0]

    def edits(self, payload: dict[str, Any]) -> list[Call]:
        return self.fake.find("PATCH", rf"/webhooks/\d+/{payload['token']}/messages/")

    async def idle(self) -> None:
        await self.core.orchestrator.wait_idle()


def _is_final(call: Call) -> bool:
    body = call.json or {}
    return bool(body.get("components")) or str(body.get("content") or "").startswith("Could not make")


@pytest.fixture
def open_bot(fake: FakeDiscord, discord_settings: Callable[..., Settings]):
    """``async with open_bot(**settings) as bot``: a bot process; open it again for a restart."""

    @asynccontextmanager
    async def open_(*, guild_id: str | None = "999999999999999999", nsfw: bool = False,
                    edit_interval: float = EDIT_INTERVAL, **overrides: Any) -> AsyncIterator[Bot]:
        settings = discord_settings(**overrides)
        async with ImagineCore.open(settings) as core:
            service = DiscordService(core, settings, edit_interval=edit_interval, sync=False,
                                     guild_ready_timeout=0.0)
            bot = Bot(fake, core, service, InteractionFactory(fake.app_id, guild_id=guild_id, nsfw=nsfw,
                                                              channel_id="555555555555555555"))
            try:
                await service.start()
                await core.start()
                yield bot
            finally:
                await core.orchestrator.stop()
                await service.stop()

    return open_


def old_interaction_time(minutes: float) -> float:
    return time.time() - minutes * 60
