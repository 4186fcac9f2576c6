"""The discord.py client: the slash commands, the buttons, where the API lives, and command sync.

Commands (choices come from the model catalog)::

    /imagine prompt:<text> [aspect_ratio:<choice>] [quality:<choice>]
    /credits
    /help
    /imagine-admin grant user:<user> credits:<n> [note:<text>]
    /imagine-admin allowance user:<user> [credits:<n>]     empty: back to the default
    /imagine-admin report

Slash commands need no privileged intent: only ``guilds`` is asked for (to know channels and their
NSFW flag). Messages never ping anyone by default (``AllowedMentions.none()``).

The client is sharded (``discord.AutoShardedClient``): Discord refuses a bot in more than 2,500 servers
on one connection. By default it asks Discord how many shards to run (``GET /gateway/bot``) and runs them
all; ``DISCORD_SHARD_COUNT`` and ``DISCORD_SHARD_IDS`` split them over processes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from imagine_bot.core.app import ImagineCore
from imagine_bot.core.catalog import ModelSpec
from imagine_bot.core.errors import ConfigError, ImagineError
from imagine_bot.core.settings import Settings

from . import wording
from .buttons import DeleteButton, RerollButton
from .handlers import Handlers, reply_private

log = logging.getLogger(__name__)

# the bot never joins voice: don't warn at every start that the voice libraries are missing
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False


def configure_endpoints(settings: Settings) -> None:
    """Point discord.py at ``DISCORD_API_BASE`` and ``DISCORD_GATEWAY_URL`` (proxies, tests).

    discord.py keeps both on classes, so this is process-wide.
    """
    discord.http.Route.BASE = settings.DISCORD_API_BASE.rstrip("/")
    if settings.DISCORD_GATEWAY_URL:
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.DISCORD_GATEWAY_URL)


def intents() -> discord.Intents:
    wanted = discord.Intents.none()
    wanted.guilds = True
    return wanted


class ImagineTree(app_commands.CommandTree["ImagineClient"]):
    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.guild_id is None and not self.client.settings.DISCORD_ALLOW_DMS:
            await reply_private(interaction, wording.DMS_REFUSED)
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError, /) -> None:
        if isinstance(error, app_commands.CheckFailure):
            return  # already answered (DMs)
        log.error("command %s failed", getattr(interaction.command, "qualified_name", "?"),
                  exc_info=getattr(error, "original", error))
        try:
            await reply_private(interaction, ImagineError().user_message)
        except discord.HTTPException:
            pass


class ImagineClient(discord.AutoShardedClient):
    """The bot. ``core`` is None for the command line (``discord sync``), which never runs handlers."""

    def __init__(self, settings: Settings, model: ModelSpec, core: ImagineCore | None = None,
                 **options: Any) -> None:
        bad = [g for g in settings.DISCORD_GUILD_IDS if not g.isdigit()]
        if bad:
            raise ConfigError("DISCORD_GUILD_IDS", f"{bad[0]!r} is not a server ID (copy it with Developer Mode on)")
        options.setdefault("shard_count", settings.DISCORD_SHARD_COUNT)
        options.setdefault("shard_ids", settings.discord_shard_ids)
        super().__init__(intents=intents(), allowed_mentions=discord.AllowedMentions.none(), **options)
        self.settings = settings
        self.core = core
        self.handlers = Handlers(core) if core is not None else None
        self.ready_event = asyncio.Event()
        dms = settings.DISCORD_ALLOW_DMS
        self.tree = ImagineTree(self, allowed_contexts=app_commands.AppCommandContext(
            guild=True, dm_channel=dms, private_channel=dms))
        for command in build_commands(model):
            self.tree.add_command(command)
        for guild_id in settings.DISCORD_GUILD_IDS:
            self.tree.copy_global_to(guild=discord.Object(int(guild_id)))

    async def setup_hook(self) -> None:
        self.add_dynamic_items(RerollButton, DeleteButton)

    async def on_shard_ready(self, shard_id: int) -> None:
        log.info("Discord shard %d of %s ready", shard_id, self.shard_count)

    async def on_ready(self) -> None:
        log.info("connected to Discord as %s (application %s), shards %s of %s", self.user, self.application_id,
                 sorted(self.shards), self.shard_count)
        self.ready_event.set()

    def shard_status(self) -> dict[str, Any]:
        """For ``/healthz``: each shard this process runs, connected or not, and its heartbeat latency."""
        shards = []
        for shard_id, info in sorted(self.shards.items()):
            latency = info.latency
            shards.append({"id": shard_id, "connected": not info.is_closed(),
                           "latency_ms": round(latency * 1000, 1) if math.isfinite(latency) else None})
        return {"ready": self.is_ready(), "shard_count": self.shard_count,
                "shard_ids": list(self.shard_ids or range(self.shard_count or 0)), "shards": shards}


def _handlers(interaction: discord.Interaction) -> Handlers:
    handlers = interaction.client.handlers  # type: ignore[attr-defined]
    assert handlers is not None, "this client has no core"
    return handlers


def build_commands(model: ModelSpec) -> list[app_commands.Command[Any, ..., Any] | app_commands.Group]:
    """The slash commands, with the aspect ratio and quality choices of ``model``."""
    ratio, quality = model.input("aspect_ratio"), model.input("quality")

    @app_commands.command(name="imagine", description=f"Make an image with {model.label} ({model.cost} credits)")
    @app_commands.describe(
        prompt="What to draw. Flags work too: --ar 16:9 --quality high (a flag wins over the options)",
        aspect_ratio=f"{ratio.help or 'shape of the image'} (default {ratio.default})",
        quality=f"{quality.help or 'quality'} (default {quality.default})",
    )
    @app_commands.choices(
        aspect_ratio=[app_commands.Choice(name=c, value=c) for c in ratio.choices],
        quality=[app_commands.Choice(name=c, value=c) for c in quality.choices],
    )
    async def imagine(interaction: discord.Interaction, prompt: str, aspect_ratio: str | None = None,
                      quality: str | None = None) -> None:
        await _handlers(interaction).imagine(interaction, prompt, aspect_ratio, quality)

    @app_commands.command(name="credits", description="Your image credits")
    async def credits_(interaction: discord.Interaction) -> None:
        await _handlers(interaction).credits(interaction)

    @app_commands.command(name="help", description="How to make images")
    async def help_(interaction: discord.Interaction) -> None:
        await _handlers(interaction).help(interaction)

    admin = app_commands.Group(name="imagine-admin", description="Image bot admins: credits and usage")

    @admin.command(name="grant", description="Grant credits to someone (negative to revoke)")
    @app_commands.describe(user="who gets them", credits="how many (negative to revoke)", note="why, for the log")
    async def grant(interaction: discord.Interaction, user: discord.User, credits: int,
                    note: str | None = None) -> None:
        await _handlers(interaction).admin_grant(interaction, user, credits, note)

    @admin.command(name="allowance", description="Set someone's allowance per period")
    @app_commands.describe(user="whose allowance", credits="credits per period; leave empty for the default")
    async def allowance(interaction: discord.Interaction, user: discord.User,
                        credits: app_commands.Range[int, 0, 1_000_000] | None = None) -> None:
        await _handlers(interaction).admin_allowance(interaction, user, credits)

    @admin.command(name="report", description="Usage report as CSV")
    async def report(interaction: discord.Interaction) -> None:
        await _handlers(interaction).admin_report(interaction)

    return [imagine, credits_, help_, admin]


# ---------------------------------------------------------------------- command sync
_SHAPE_KEYS = {"name", "description", "type", "options", "choices", "value", "required", "min_value",
               "max_value", "min_length", "max_length", "contexts"}


def _shape(value: Any) -> Any:
    """The parts of a command payload that matter, in a form that compares (Discord adds and omits)."""
    if isinstance(value, list):
        items = [_shape(v) for v in value]
        return sorted(items, key=repr) if all(isinstance(v, dict) for v in items) else items
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k in _SHAPE_KEYS and v not in (None, False, [], {})}
    return value


async def sync_commands(client: ImagineClient, *, force: bool = True) -> dict[str, int]:
    """Sync to ``DISCORD_GUILD_IDS`` (instant) or globally; with ``force=False`` only what changed.

    Returns how many commands were synced where (``"global"`` or the guild id); empty if nothing changed.
    """
    assert client.application_id is not None
    guilds: list[discord.Object | None] = [discord.Object(int(g)) for g in client.settings.DISCORD_GUILD_IDS]
    synced: dict[str, int] = {}
    for guild in guilds or [None]:
        where = "global" if guild is None else str(guild.id)
        if not force:
            local = [c.to_dict(client.tree) for c in client.tree.get_commands(guild=guild)]
            if guild is None:
                remote = await client.http.get_global_commands(client.application_id)
            else:
                remote = await client.http.get_guild_commands(client.application_id, guild.id)
            if _shape(local) == _shape(remote):
                log.info("Discord commands (%s) are up to date", where)
                continue
        done = await client.tree.sync(guild=guild)
        log.info("synced %d Discord command(s) (%s)", len(done), where)
        synced[where] = len(done)
    return synced
