"""``imagine-bot run``: one asyncio process with the core, every configured front end, and one web server.

Each front end is a ``Service`` built from the core, the settings and the web app (to add its routes
before the server starts). SIGTERM or SIGINT drains: new commands get a plain "restarting" answer,
createTask calls and deliveries in flight finish (up to ``DRAIN_S``, while the front ends and the web
server still run), every other job is left with its lease released for the next process, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.gateway.webhooks import register_account_webhook
from imagine_bot.core.settings import Settings
from imagine_bot.core.web.server import build_web_app, start_web

log = logging.getLogger(__name__)


class Service(Protocol):
    """A running front end: it registers its ``FrontEnd`` with the core when built."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ServiceFactory = Callable[[ImagineCore, Settings, web.Application], Service]


def own_collector(core: ImagineCore) -> None:
    """The process is this bot's alone (``imagine-bot run``): start-up's objects frozen
    (``freeze_start_up``), and the collector off while a burst of commands is answered (``Lull._pause``)."""
    freeze_start_up()
    core.orchestrator.lull.pauses_collector = True


def freeze_start_up() -> None:
    """Start-up is over: keep what it made out of the garbage collector's sight for good.

    The modules, settings, Bolt's and discord.py's clients and the web app are most of the objects this
    process ever holds (about 117,000 in the Slack benchmark's process), and every full collection walked
    them all: some 90 ms on the 2-core test machine, due whenever enough new objects have piled up, so
    likely in a burst of commands. Frozen, a collection walks only what was made since: in the benchmark's
    burst of 200 Socket Mode slash commands (``benchmarks/ack.py``, the collector timed with ``gc.callbacks``,
    4 runs each way) its time fell from 18 to 12.5 ms (issue 22). For the
    process's own entry point only (``imagine-bot run``: ``run(freeze=True)``), not ``ImagineCore.start``:
    tests and one-shot commands start cores too, and whatever they froze would never be freed."""
    gc.collect()  # what start-up left behind goes now, not frozen with the rest
    gc.freeze()


def configured_services(settings: Settings, only: list[str] | None) -> dict[str, ServiceFactory]:
    """The front ends whose credentials are set (limited by ``--only``)."""
    wanted = set(only or ("slack", "discord"))
    factories: dict[str, ServiceFactory] = {}
    if "slack" in wanted and (settings.SLACK_BOT_TOKEN or settings.SLACK_CLIENT_ID):
        from imagine_bot.bots.slack import SlackService

        factories["slack"] = SlackService
    if "discord" in wanted and settings.DISCORD_TOKEN:
        from imagine_bot.bots.discord import DiscordService

        factories["discord"] = DiscordService
    if not factories:
        names = " or ".join(f"{n.upper()}_{'BOT_TOKEN' if n == 'slack' else 'TOKEN'}" for n in sorted(wanted))
        raise ConfigError(names.split(" or ")[0], f"no front end is configured: set {names} (see docs/slack.md, "
                          "docs/discord.md). Without one, `imagine-bot chat` is the bot in this terminal and "
                          "`imagine-bot dashboard` serves the dashboard alone")
    return factories


async def run(settings: Settings, *, only: list[str] | None = None, stop: asyncio.Event | None = None,
              ready: Callable[[int], None] | None = None, freeze: bool = False) -> int:
    """Serve until ``stop`` (or SIGTERM, SIGINT), then drain. ``freeze``: the process is this bot's alone
    (``imagine-bot run``): ``own_collector`` once everything has started."""
    factories = configured_services(settings, only)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests) or not POSIX
            pass
    if settings.create_task_timeout_s < settings.MODKIE_TIMEOUT_S:
        log.warning("MODKIE_TIMEOUT_S (%.0fs) is longer than 3/4 of DRAIN_S (%.0fs): a createTask call is cut after "
                    "%.1fs so that a drain never ends in the middle of one, and a job whose createTask is cut is "
                    "refunded although the gateway may bill it; raise DRAIN_S or lower MODKIE_TIMEOUT_S",
                    settings.MODKIE_TIMEOUT_S, settings.DRAIN_S, settings.create_task_timeout_s)
    async with ImagineCore.open(settings) as core:
        web_app = build_web_app(core)
        services = [factory(core, settings, web_app) for factory in factories.values()]
        runner, port = await start_web(web_app, settings.HTTP_HOST, settings.HTTP_PORT)
        if settings.sandbox and not settings.PUBLIC_URL:  # the in-process sandbox fetches /refs/ locally
            core.serve_refs_at(f"http://127.0.0.1:{port}")
        log.info("web server on %s:%d (/healthz, /callbacks/modkie)", settings.HTTP_HOST, port)
        try:
            for service in services:
                await service.start()
                log.info("%s front end started", service.name)
            webhook = await register_account_webhook(core.gateway, settings)
            core.orchestrator.account_webhook = webhook.registered
            resumed = await core.start()
            if freeze:
                own_collector(core)
            log.info("imagine-bot running: %s; %d job(s) resumed", ", ".join(factories), resumed)
            if ready is not None:
                ready(port)
            await stop.wait()
            log.info("draining (up to %.0fs): no new commands; jobs in flight finish or are left for the next "
                     "process", settings.DRAIN_S)
            await core.orchestrator.drain(settings.DRAIN_S)
        finally:
            await core.orchestrator.stop()
            for service in reversed(services):
                try:
                    await service.stop()
                except Exception:
                    log.exception("stopping %s", service.name)
            await runner.cleanup()
    return 0
