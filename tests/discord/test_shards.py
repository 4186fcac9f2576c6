"""Sharding: the real discord.py AutoShardedClient against the fake gateway. ``GET /gateway/bot``
recommends two shards; each IDENTIFYs as [id, 2], gets READY and its own servers (Discord's
``(guild_id >> 22) % 2``), and interactions arrive on each shard and are answered. Shards split over two
processes (``DISCORD_SHARD_COUNT``/``DISCORD_SHARD_IDS``) each serve only their own servers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagine_bot.bots.discord import DiscordService
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.settings import Settings
from imagine_bot.core.web.server import build_web_app, start_web
from tests.fakes.discord_api import DISCORD_EPOCH_MS, FakeDiscord, InteractionFactory

from .conftest import ALICE, BOB

GUILDS_INTENT = 1 << 0


def guild_on_shard(shard: int, count: int = 2) -> str:
    """A server id that Discord routes to ``shard`` of ``count``: ``(id >> 22) % count == shard``."""
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    ms -= (ms - shard) % count
    return str((ms << 22) | 4242)


G0, G1 = guild_on_shard(0), guild_on_shard(1)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(shards=2, guilds=(G0, G1)) as server:
        yield server


@asynccontextmanager
async def bot_process(settings: Settings) -> AsyncIterator[tuple[ImagineCore, DiscordService, str]]:
    """``imagine-bot run``'s Discord part: the core, the web server (for /healthz) and the connected client."""
    async with AsyncExitStack() as stack:
        core = await stack.enter_async_context(ImagineCore.open(settings))
        web_app = build_web_app(core)
        service = DiscordService(core, settings, web_app, guild_ready_timeout=2.0, edit_interval=0.1, sync=False)
        runner, port = await start_web(web_app, "127.0.0.1", 0)
        stack.push_async_callback(runner.cleanup)
        stack.push_async_callback(service.stop)
        stack.push_async_callback(core.orchestrator.stop)
        await service.start()
        await core.start()
        yield core, service, f"http://127.0.0.1:{port}"


async def imagine_in(fake: FakeDiscord, guild_id: str, user: str, prompt: str) -> int:
    """An /imagine from a server; waits for the image; returns the shard it arrived on."""
    payload = InteractionFactory(fake.app_id, guild_id=guild_id).command(
        "imagine", user, [{"name": "prompt", "type": 3, "value": prompt}])
    shard = await fake.dispatch("INTERACTION_CREATE", payload)
    await fake.wait_for("PATCH", rf"/webhooks/\d+/{payload['token']}/messages/@original",
                        where=lambda c: bool(c.files))
    return shard


async def healthz(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(base + "/healthz")
    assert answer.status_code == 200
    return answer.json()


async def test_two_shards_in_one_process(fake: FakeDiscord, discord_settings: Callable[..., Settings]):
    async with bot_process(discord_settings()) as (core, service, base):
        # Discord's recommendation was followed: two connections, each identified as its shard
        assert fake.find("GET", r"/gateway/bot$")
        assert sorted(fake.identifies) == [0, 1]
        for shard, identify in fake.identifies.items():
            assert identify["shard"] == [shard, 2] and identify["intents"] == GUILDS_INTENT
        client = service.client
        assert client.shard_count == 2 and sorted(client.shards) == [0, 1]
        assert client.get_guild(int(G0)).shard_id == 0 and client.get_guild(int(G1)).shard_id == 1
        # an interaction arrives on each shard, and each is answered with its image
        assert await imagine_in(fake, G0, ALICE, "a gull over shard zero") == 0
        assert await imagine_in(fake, G1, BOB, "a gull over shard one") == 1
        await core.orchestrator.wait_idle()
        assert ("INTERACTION_CREATE", 0) in fake.dispatched and ("INTERACTION_CREATE", 1) in fake.dispatched
        status = (await healthz(base))["discord"]
        assert status["shard_count"] == 2 and status["shard_ids"] == [0, 1] and status["ready"] is True
        assert [(s["id"], s["connected"]) for s in status["shards"]] == [(0, True), (1, True)]
    await fake.wait_gateway_closed()


@pytest.mark.slow
async def test_shards_split_over_two_processes(fake: FakeDiscord, discord_settings: Callable[..., Settings],
                                               tmp_path: Path):
    settings = [discord_settings(DISCORD_SHARD_COUNT="2", DISCORD_SHARD_IDS=str(shard),
                                 IMAGINE_DB_PATH=tmp_path / f"shard{shard}" / "imagine.db") for shard in (0, 1)]
    async with bot_process(settings[0]) as (core0, service0, _base0), \
            bot_process(settings[1]) as (core1, service1, base1):
        # the shard count was given: Discord was not asked for one
        assert not fake.find("GET", r"/gateway/bot$")
        assert fake.identifies[0]["shard"] == [0, 2] and fake.identifies[1]["shard"] == [1, 2]
        assert sorted(service0.client.shards) == [0] and sorted(service1.client.shards) == [1]
        assert service0.client.get_guild(int(G1)) is None and service1.client.get_guild(int(G0)) is None
        assert await imagine_in(fake, G0, ALICE, "a heron in process zero") == 0
        assert await imagine_in(fake, G1, BOB, "a heron in process one") == 1
        # each process ran the job of its own shard, and only that one
        assert [j.prompt for j in core0.jobs.recent(f"discord:{ALICE}", limit=5)] == ["a heron in process zero"]
        assert core0.jobs.recent(f"discord:{BOB}", limit=5) == []
        assert [j.prompt for j in core1.jobs.recent(f"discord:{BOB}", limit=5)] == ["a heron in process one"]
        assert (await healthz(base1))["discord"]["shard_ids"] == [1]
