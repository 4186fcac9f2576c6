"""The discord.py client: the slash commands, the buttons, where the API lives, and command sync.

Commands (choices come from the model catalog)::

    /imagine prompt:<text> [aspect_ratio:<choice>] [quality:<choice>] [preset:<name>] [image..image4:<attachment>]
    message context menu "Remix with imagine"             an edit of the message's images (a modal asks)
    /credits
    /help
    /imagine-admin grant user:<user> credits:<n> [note:<text>]     operators only
    /imagine-admin allowance user:<user> [credits:<n>]             operators only; empty: the default
    /imagine-admin budget [credits:<n> period:<p> scope:<s>]       show; operators set
    /imagine-admin report [scope:<s>|all]                          this server's spend (CSV)
    /imagine-admin ban|unban user:<user>                           this server only
    /imagine-admin channels [which:here|all] · defaults · member-cap
    /imagine-admin preset set name:<word> template:<text with {prompt}> [aspect_ratio] [quality] [image_url..]
    /imagine-admin preset list · remove name:<name> · default name:<name|none>    brand presets
    /imagine-admin approvals [mode:on|off] [reviewer..reviewer3:<user>]    review before this channel

The admin group is guild-only and hidden from members without Manage Server (``default_permissions``);
that only hides it: the core decides, and Manage Server never lets anyone mint credits.

Slash commands need no privileged intent: only ``guilds`` is asked for (to know channels and their
NSFW flag). Messages never ping anyone by default (``AllowedMentions.none()``).

The client is sharded (``discord.AutoShardedClient``): Discord refuses a bot in more than 2,500 servers
on one connection. By default it asks Discord how many shards to run (``GET /gateway/bot``) and runs them
all; ``DISCORD_SHARD_COUNT`` and ``DISCORD_SHARD_IDS`` split them over processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from imagine_bot.bots.discord import wording
from imagine_bot.bots.discord.buttons import DYNAMIC_ITEMS
from imagine_bot.bots.discord.handlers import Handlers, reply_private, user_ref
from imagine_bot.core.access.authority import Actor
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import admin as admin_ops
from imagine_bot.core.credits.budgets import MAX_CREDITS_CHANGE
from imagine_bot.core.errors import ConfigError, ImagineError
from imagine_bot.core.gateway.catalog import ModelSpec
from imagine_bot.core.settings import Settings

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
        if interaction.guild_id is not None and not self.client.guild_allowed(interaction.guild_id):
            await reply_private(interaction, wording.SERVER_REFUSED)
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
        self.add_dynamic_items(*DYNAMIC_ITEMS)

    async def on_shard_ready(self, shard_id: int) -> None:
        log.info("Discord shard %d of %s ready", shard_id, self.shard_count)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Remix and rejection forms are answered here, from their custom id (no modal object is kept:
        restart-proof)."""
        data: dict[str, Any] = dict(interaction.data) if isinstance(interaction.data, dict) else {}
        custom_id = str(data.get("custom_id") or "")
        if interaction.type is not discord.InteractionType.modal_submit or self.handlers is None:
            return
        if custom_id.startswith("imagine:remix-"):
            await self.handlers.remix_submitted(interaction, custom_id)
        elif custom_id.startswith("imagine:reject-form:"):
            await self.handlers.reject_submitted(interaction, custom_id)

    async def on_ready(self) -> None:
        log.info("connected to Discord as %s (application %s), shards %s of %s", self.user, self.application_id,
                 sorted(self.shards), self.shard_count)
        for guild in list(self.guilds):
            await self.leave_if_not_allowed(guild)
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

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.leave_if_not_allowed(guild)

    def guild_allowed(self, guild_id: int) -> bool:
        """``DISCORD_ALLOWED_GUILDS``: an empty list allows every server."""
        allowed = self.settings.DISCORD_ALLOWED_GUILDS
        return not allowed or str(guild_id) in allowed

    async def leave_if_not_allowed(self, guild: discord.Guild) -> bool:
        """Leave a server that is not in ``DISCORD_ALLOWED_GUILDS``, saying why (in its system channel, if
        the bot may post there) and in the log. True if it left."""
        if self.guild_allowed(guild.id):
            return False
        log.warning("leaving Discord server %s (%s): it is not in DISCORD_ALLOWED_GUILDS", guild.name, guild.id)
        channel = guild.system_channel
        if channel is not None:
            try:
                await channel.send(wording.SERVER_LEAVING)
            except discord.HTTPException as error:
                log.info("could not say goodbye in %s: %s", guild.id, error)
        try:
            await guild.leave()
        except discord.HTTPException as error:
            log.error("could not leave Discord server %s: %s", guild.id, error)
            return False
        return True


def _handlers(interaction: discord.Interaction) -> Handlers:
    handlers: Handlers | None = interaction.client.handlers  # type: ignore[attr-defined]
    assert handlers is not None, "this client has no core"
    return handlers


REMIX_MENU = "Remix with imagine"


def build_commands(model: ModelSpec) -> list[app_commands.Command[Any, ..., Any] | app_commands.Group
                                             | app_commands.ContextMenu]:
    """The slash commands, with the aspect ratio and quality choices of ``model``."""
    ratio, quality = model.input("aspect_ratio"), model.input("quality")

    @app_commands.command(name="imagine", description=f"Make an image with {model.label} ({model.cost} credits)")
    @app_commands.describe(
        prompt="What to draw. Flags work too: --ar 16:9 --quality high (a flag wins over the options)",
        aspect_ratio=f"{ratio.help or 'shape of the image'} (default {ratio.default})",
        quality=f"{quality.help or 'quality'} (default {quality.default})",
        image="An image to edit: the job uses the edit model with your images as references",
        preset="A brand preset of this server (none: not even this channel's default)",
        image2="Another reference image", image3="Another reference image", image4="Another reference image",
    )
    @app_commands.choices(
        aspect_ratio=[app_commands.Choice(name=c, value=c) for c in ratio.choices],
        quality=[app_commands.Choice(name=c, value=c) for c in quality.choices],
    )
    @app_commands.autocomplete(preset=_preset_choices)
    async def imagine(interaction: discord.Interaction, prompt: str, aspect_ratio: str | None = None,
                      quality: str | None = None, preset: str | None = None, image: discord.Attachment | None = None,
                      image2: discord.Attachment | None = None, image3: discord.Attachment | None = None,
                      image4: discord.Attachment | None = None) -> None:
        images = [a for a in (image, image2, image3, image4) if a is not None]
        await _handlers(interaction).imagine(interaction, prompt, aspect_ratio, quality, images, preset=preset)

    async def remix_message(interaction: discord.Interaction, message: discord.Message) -> None:
        await _handlers(interaction).remix_message(interaction, message)

    remix_menu = app_commands.ContextMenu(name=REMIX_MENU, callback=remix_message)

    @app_commands.command(name="credits", description="Your image credits")
    async def credits_(interaction: discord.Interaction) -> None:
        await _handlers(interaction).credits(interaction)

    @app_commands.command(name="help", description="How to make images")
    async def help_(interaction: discord.Interaction) -> None:
        await _handlers(interaction).help(interaction)

    # hidden from members without Manage Server and outside servers; the core's check is what protects
    admin = app_commands.Group(name="imagine-admin", description="Image bot admins: this server, and operators",
                               guild_only=True, default_permissions=discord.Permissions(manage_guild=True))

    @admin.command(name="grant", description="Operators: grant credits to someone (negative to revoke)")
    @app_commands.describe(user="who gets them", credits="how many (negative to revoke)", note="why, for the log")
    async def grant(interaction: discord.Interaction, user: discord.User,
                    credits: app_commands.Range[int, -MAX_CREDITS_CHANGE, MAX_CREDITS_CHANGE],
                    note: str | None = None) -> None:
        target, shown = user_ref(user), f"<@{user.id}>"
        await _handlers(interaction).admin(interaction, "grant", lambda core, actor: admin_ops.grant(
            core, actor, target, credits, note, shown=shown))

    @admin.command(name="allowance", description="Operators: set someone's allowance per period")
    @app_commands.describe(user="whose allowance", credits="credits per period; leave empty for the default")
    async def allowance(interaction: discord.Interaction, user: discord.User,
                        credits: app_commands.Range[int, 0, 1_000_000] | None = None) -> None:
        target, shown = user_ref(user), f"<@{user.id}>"
        await _handlers(interaction).admin(interaction, "allowance", lambda core, actor: admin_ops.allowance(
            core, actor, target, credits, shown=shown))

    @admin.command(name="report", description="This server's spend per member and channel (CSV)")
    @app_commands.describe(scope="operators: another scope (discord:ID, slack:TEAM) or 'all' for every account")
    async def report(interaction: discord.Interaction, scope: str | None = None) -> None:
        await _handlers(interaction).admin(interaction, "report",
                                          lambda core, actor: admin_ops.report(core, actor, scope or None))

    @admin.command(name="budget", description="This server's image budget; operators may set it")
    @app_commands.describe(credits="operators: the budget per period (empty: just show it)",
                           period="how often it resets", scope="operators: another scope (default: this server)")
    @app_commands.choices(period=[app_commands.Choice(name=p, value=p) for p in ("day", "week", "month", "never")])
    async def budget(interaction: discord.Interaction, credits: app_commands.Range[int, 0, 100_000_000] | None = None,
                     period: str | None = None, scope: str | None = None) -> None:
        def operation(core: ImagineCore, actor: Actor) -> admin_ops.CommandReply:
            if credits is None:
                return admin_ops.budget_show(core, actor, scope or None)
            return admin_ops.budget_set(core, actor, scope or "here", credits, period=period)

        await _handlers(interaction).admin(interaction, "budget", operation)

    @admin.command(name="ban", description="Turn the image bot off for a member in this server")
    async def ban(interaction: discord.Interaction, user: discord.User) -> None:
        target, shown = user_ref(user), f"<@{user.id}>"
        await _handlers(interaction).admin(interaction, "ban", lambda core, actor: admin_ops.ban(
            core, actor, target, shown=shown))

    @admin.command(name="unban", description="Turn the image bot back on for a member in this server")
    async def unban(interaction: discord.Interaction, user: discord.User) -> None:
        target, shown = user_ref(user), f"<@{user.id}>"
        await _handlers(interaction).admin(interaction, "unban", lambda core, actor: admin_ops.ban(
            core, actor, target, shown=shown, banned=False))

    @admin.command(name="channels", description="The channels the bot answers in, in this server")
    @app_commands.choices(which=[app_commands.Choice(name="only this channel", value="here"),
                                 app_commands.Choice(name="every channel", value="all")])
    async def channels(interaction: discord.Interaction, which: str | None = None) -> None:
        def operation(core: ImagineCore, actor: Actor) -> admin_ops.CommandReply:
            chosen = None if which is None else admin_ops.this_channel(actor) if which == "here" else ()
            return admin_ops.channels(core, actor, chosen)

        await _handlers(interaction).admin(interaction, "channels", operation)

    @admin.command(name="defaults", description="Default aspect ratio and quality in this server")
    @app_commands.choices(
        aspect_ratio=[app_commands.Choice(name=c, value=c) for c in ratio.choices],
        quality=[app_commands.Choice(name=c, value=c) for c in quality.choices],
    )
    async def defaults(interaction: discord.Interaction, aspect_ratio: str | None = None,
                       quality: str | None = None, reset: bool = False) -> None:
        chosen: dict[str, str | None] = {"aspect_ratio": aspect_ratio, "quality": quality}
        changes: dict[str, str | None] = (dict(admin_ops.RESET_DEFAULTS) if reset
                                          else {k: v for k, v in chosen.items() if v})
        await _handlers(interaction).admin(interaction, "defaults",
                                          lambda core, actor: admin_ops.defaults(core, actor, changes))

    @admin.command(name="member-cap", description="Most one member may spend of this server's budget per period")
    @app_commands.describe(credits="credits per member per period; empty: no cap")
    async def member_cap(interaction: discord.Interaction,
                         credits: app_commands.Range[int, 0, 100_000_000] | None = None) -> None:
        await _handlers(interaction).admin(interaction, "member-cap",
                                          lambda core, actor: admin_ops.member_cap(core, actor, credits))

    @admin.command(name="dashboard", description="A one-time link to the web dashboard of this server")
    async def dashboard(interaction: discord.Interaction) -> None:
        await _handlers(interaction).admin(interaction, "dashboard", admin_ops.dashboard)

    @admin.command(name="approvals", description="Images made in this channel go to reviewers before the channel")
    @app_commands.describe(mode="on (with the reviewers) or off; empty: show", reviewer="who may approve",
                           reviewer2="another reviewer", reviewer3="another reviewer")
    @app_commands.choices(mode=[app_commands.Choice(name="on", value="on"),
                                app_commands.Choice(name="off", value="off")])
    async def approvals(interaction: discord.Interaction, mode: str | None = None,
                        reviewer: discord.User | None = None, reviewer2: discord.User | None = None,
                        reviewer3: discord.User | None = None) -> None:
        chosen = [user_ref(u) for u in (reviewer, reviewer2, reviewer3) if u is not None]
        await _handlers(interaction).admin(interaction, "approvals", lambda core, actor: admin_ops.approvals(
            core, actor, None if mode == "off" else chosen, show=mode is None))

    presets = app_commands.Group(name="preset", description="Brand presets: prompt templates of this server",
                                 parent=admin)

    @presets.command(name="set", description="Create or replace a brand preset of this server")
    @app_commands.describe(name="one short word, like brand", template="the prompt, with {prompt} where the "
                           "user's words go", aspect_ratio="default aspect ratio (a user's flag wins)",
                           quality="default quality (a user's flag wins)",
                           image_url="a brand style image (public https URL): jobs become edits of it",
                           image_url2="another style image", everywhere="operators: a preset of every server")
    @app_commands.rename(everywhere="global")
    @app_commands.choices(
        aspect_ratio=[app_commands.Choice(name=c, value=c) for c in ratio.choices],
        quality=[app_commands.Choice(name=c, value=c) for c in quality.choices],
    )
    async def preset_set(interaction: discord.Interaction, name: str, template: str, aspect_ratio: str | None = None,
                         quality: str | None = None, image_url: str | None = None, image_url2: str | None = None,
                         everywhere: bool = False) -> None:
        defaults = {k: v for k, v in (("aspect_ratio", aspect_ratio), ("quality", quality)) if v}
        images = [u for u in (image_url, image_url2) if u]
        await _handlers(interaction).admin(interaction, "preset set", lambda core, actor: admin_ops.preset_set(
            core, actor, name, template, defaults, images, everywhere=everywhere))

    @presets.command(name="list", description="The brand presets of this server")
    async def preset_list(interaction: discord.Interaction) -> None:
        await _handlers(interaction).admin(interaction, "preset list", lambda core, actor: admin_ops.preset_list(
            core, actor, usage="Add one with `/imagine-admin preset set`."))

    @presets.command(name="remove", description="Remove a brand preset")
    @app_commands.rename(everywhere="global")
    @app_commands.describe(everywhere="operators: remove the global preset of that name")
    @app_commands.autocomplete(name=_preset_choices)
    async def preset_remove(interaction: discord.Interaction, name: str, everywhere: bool = False) -> None:
        await _handlers(interaction).admin(interaction, "preset remove", lambda core, actor: admin_ops.preset_remove(
            core, actor, name, everywhere=everywhere))

    @presets.command(name="default", description="The preset every /imagine in this channel uses (none: no default)")
    @app_commands.autocomplete(name=_preset_choices)
    async def preset_default(interaction: discord.Interaction, name: str) -> None:
        await _handlers(interaction).admin(interaction, "preset default",
                                           lambda core, actor: admin_ops.preset_default(core, actor, name))

    return [imagine, credits_, help_, admin, remix_menu]


async def _preset_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete: the presets of this server (and the global ones) starting with what was typed, and
    ``none`` (no preset, not even the channel's default)."""
    handlers = interaction.client.handlers  # type: ignore[attr-defined]
    if handlers is None:
        return []
    names = handlers.preset_names(interaction, current)
    return [app_commands.Choice(name=label, value=value) for label, value in names]


# ---------------------------------------------------------------------- command sync
_SHAPE_KEYS = {"name", "description", "type", "options", "choices", "value", "required", "min_value",
               "max_value", "min_length", "max_length", "contexts"}


def _shape(value: Any) -> Any:
    """The parts of a command payload that matter, in a form that compares (Discord adds and omits)."""
    if isinstance(value, list):
        items = [_shape(v) for v in value]
        # sorted by content, whatever order each side wrote its keys in
        return (sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
                if all(isinstance(v, dict) for v in items) else items)
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k in _SHAPE_KEYS and v not in (None, False, [], {}, "")}
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
