"""The text commands behind ``/imagine``, shared by every front end that takes free text.

    /imagine <prompt> [--ar 16:9] [--quality high]     make an image
    /imagine <prompt> --image <url> [--image <url>]     edit images (the edit model)
    /imagine help | credits                             help, your balance (and this place's budget)

``admin``, ``credits``, ``balance`` and ``help`` are reserved as the first word: followed by anything this
module does not know (``admin grnt``, ``credits please``) they get a usage answer, never a paid image.

Operators (``ADMINS``) only, never community admins::

    /imagine admin grant <user> <n> [note]              grant (negative n revokes)
    /imagine admin allowance <user> <n|default>         per-user allowance
    /imagine admin show|history <user>                  a user's balance or ledger
    /imagine admin report all                           every account as CSV
    /imagine admin budget set <here|scope> <n|default|unlimited> [--period month]

Community admins of this server or workspace (and operators)::

    /imagine admin ban|unban <user>                     turn the bot off (on) for a member here
    /imagine admin channels [here|all|#chan ...]        the channels the bot answers in
    /imagine admin defaults [--ar R] [--quality Q|reset] this place's default options
    /imagine admin member-cap <n|none>                  most one member may spend of the budget per period
    /imagine admin budget [scope]                       this place's budget
    /imagine admin report [scope]                       this place's spend per member and channel (CSV)
    /imagine admin dashboard                            a one-time link to the /admin dashboard (this place)
    /imagine admin preset set NAME "TEMPLATE with {prompt}" [--ar R] [--quality Q] [--image URL ...] [--global]
    /imagine admin preset list | remove NAME [--global] | default NAME|none     brand presets (``--global``:
                                                        operators, for every place)

    /imagine admin approvals on @reviewer [@reviewer2 ...] | off    in this channel, images go to a reviewer first

Users pick a preset with ``/imagine --preset NAME <prompt>``; a channel's default applies unless ``--preset none``.

The core decides who may do what (``ImagineCore`` and ``core.access.authority``); a front end passes an ``Actor``
with the platform facts it vouches for. User mentions are resolved by the front end's ``resolve_user``;
everything else, wording included, is here. Errors come back as a private reply, never as an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import admin, messages, presets
from imagine_bot.core.chat.admin import CommandReply
from imagine_bot.core.chat.parsing import take_images, whole_number
from imagine_bot.core.credits.budgets import MAX_CREDITS_CHANGE
from imagine_bot.core.credits.periods import PERIODS
from imagine_bot.core.errors import ImagineError, PermissionDenied, UserInputError
from imagine_bot.core.jobs.model import ReplyTo
from imagine_bot.core.media.references import Reference

ResolveUser = Callable[[str], UserRef | None]
#: turns what followed ``--image`` into a reference (front ends that know local files pass their own)
ResolveImage = Callable[[str], Reference]


def url_reference(raw: str) -> Reference:
    """``--image`` in chat takes a public http(s) URL."""
    if not raw.lower().startswith(("http://", "https://")):
        raise UserInputError(f"`--image` takes the URL of an image (https://...), not `{raw[:60]}`.")
    return Reference(name=raw, url=raw)


ADMIN_USAGE = (
    "Admin commands: `admin ban|unban <user>`, `admin channels [here|all|#channel ...]`, "
    "`admin defaults [--ar R] [--quality Q|reset]`, `admin member-cap <credits|none>`, `admin budget`, "
    "`admin report`, `admin dashboard`, `admin preset set|list|remove|default`, "
    "`admin approvals on @reviewer ...|off`; "
    "operators also `admin grant <user> <credits> [note]`, `admin allowance <user> <credits|default>`, "
    "`admin show|history <user>`, `admin budget set <here|scope> <credits|default|unlimited> [--period month]`, "
    "`admin report all`."
)

CHANNEL_MENTION = re.compile(r"^<#([A-Za-z0-9]+)(?:\|[^>]*)?>$")

Handler = Callable[[ImagineCore, Actor, list[str], ResolveUser], CommandReply]


async def dispatch(core: ImagineCore, requester: UserRef | Actor, text: str, reply: ReplyTo, *,
                   resolve_user: ResolveUser, dedupe_key: str | None = None,
                   command: str = "/imagine", resolve_image: ResolveImage = url_reference) -> CommandReply:
    actor = Actor.of(requester, reply.channel)
    if actor.channel is None:
        actor = Actor(actor.user, actor.place, reply.channel, actor.community_admin, actor.nsfw_channel)
    words = text.split()
    first = words[0].lower() if words else ""
    try:
        if (first == "help" and len(words) == 1) or not words:
            return CommandReply(messages.help_text(core.model, command=command, admin=core.is_admin(actor)))
        if first in ("credits", "balance") and len(words) == 1:
            info = core.credits(actor)
            return CommandReply(messages.credits(info.balance, len(info.active), core.now(), info.budget))
        if first == "admin" and len(words) >= 2 and words[1].lower() in _ADMIN:
            if not core.is_admin(actor):
                raise PermissionDenied(f"{actor.key} tried admin {words[1]}")
            return _ADMIN[words[1].lower()](core, actor, words[2:], resolve_user)
        if first in messages.COMMAND_WORDS:  # `admin grnt`, `credits please`: never a paid image
            return CommandReply(messages.command_word_usage(words, command=command, admin=core.is_admin(actor)))
        text, images = take_images(text)
        references = [resolve_image(raw) for raw in images]
        job = await core.imagine(actor, reply, text, dedupe_key=dedupe_key, references=references,
                                 channel_preset=True)
        return CommandReply("", job=job)  # its Accepted event tells the user (issue 22: not built for each ack)
    except ImagineError as error:
        return CommandReply(error.user_message)


def _target(raw: str, resolve_user: ResolveUser) -> UserRef:
    user = resolve_user(raw)
    if user is None:
        raise UserInputError(f"I don't know who `{raw[:40]}` is. Mention the user, like @name.")
    return user


def _amount(raw: str, *, signed: bool = False) -> int:
    """Credits as typed: a grant may be negative (a revoke), an allowance, budget or cap may not."""
    return whole_number(raw, "Credits", -MAX_CREDITS_CHANGE if signed else 0, MAX_CREDITS_CHANGE)


def _need(args: list[str], count: int, usage: str) -> None:
    if len(args) < count:
        raise UserInputError(f"Usage: {usage}")


# ---------------------------------------------------------------------- operators
def _grant(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 2, "admin grant <user> <credits> [note]")
    return admin.grant(core, actor, _target(args[0], resolve), _amount(args[1], signed=True),
                       " ".join(args[2:]) or None, shown=args[0])


def _allowance(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 2, "admin allowance <user> <credits|default>")
    value = None if args[1].lower() == "default" else _amount(args[1])
    return admin.allowance(core, actor, _target(args[0], resolve), value, shown=args[0])


def _show(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 1, "admin show <user>")
    return admin.show(core, actor, _target(args[0], resolve), shown=args[0])


def _history(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 1, "admin history <user>")
    return admin.history(core, actor, _target(args[0], resolve), shown=args[0])


def _report(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    return admin.report(core, actor, args[0] if args else None)


def _budget(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    if args and args[0].lower() == "set":
        usage = "admin budget set <here|channel|scope> <credits|default|unlimited> [--period day|week|month|never]"
        _need(args, 3, usage)
        raw = args[2].lower()
        period = None
        rest = args[3:]
        if rest:
            flag = rest[0].split("=", 1)
            value = flag[1] if len(flag) == 2 else (rest[1] if len(rest) > 1 else "")
            if flag[0] not in ("--period", "period") or value not in PERIODS:
                raise UserInputError(f"Usage: {usage}")
            period = value
        amount = None if raw in ("default", "unlimited") else _amount(raw)
        return admin.budget_set(core, actor, args[1], amount, period=period, unlimited=raw == "unlimited")
    return admin.budget_show(core, actor, args[0] if args else None)


# ---------------------------------------------------------------------- community admins (and operators)
def _ban(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser, *, ban: bool = True) -> CommandReply:
    _need(args, 1, f"admin {'ban' if ban else 'unban'} <user>")
    return admin.ban(core, actor, _target(args[0], resolve), shown=args[0], banned=ban)


def _unban(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    return _ban(core, actor, args, resolve, ban=False)


def _channels(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    if not args:
        return admin.channels(core, actor, None)
    if args[0].lower() == "all":
        chosen: tuple[str, ...] = ()
    elif args[0].lower() == "here":
        chosen = admin.this_channel(actor)
    else:
        found = [CHANNEL_MENTION.match(a) for a in args]
        if not all(found):
            raise UserInputError("Name channels as #mentions, or say `here` or `all`.")
        chosen = tuple(m.group(1) for m in found if m)
    return admin.channels(core, actor, chosen)


def _defaults(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    if args and args[0].lower() == "reset":
        return admin.defaults(core, actor, dict(admin.RESET_DEFAULTS))
    unset = {"aspect_ratio": "", "quality": ""}  # tells the flags given from those not given
    parsed = core.parse("defaults " + " ".join(args), unset)
    return admin.defaults(core, actor, {k: v for k, v in parsed.params.items() if k in unset and v})


def _member_cap(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 1, "admin member-cap <credits|none>")
    return admin.member_cap(core, actor, None if args[0].lower() in ("none", "off") else _amount(args[0]))


def _dashboard(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    return admin.dashboard(core, actor)


def _preset(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    action = args[0].lower() if args else ""
    rest = args[1:]
    everywhere = any(a.lower() == "--global" for a in rest)
    named = [a for a in rest if a.lower() != "--global"]
    if action == "set":
        spec = presets.read_set(rest)
        defaults: dict[str, str] = {}
        if spec.flags:
            unset = {"aspect_ratio": "", "quality": ""}  # tells the flags given from those not given
            defaults = {k: v for k, v in core.parse("preset " + spec.flags, unset).params.items() if k in unset and v}
        return admin.preset_set(core, actor, spec.name, spec.template, defaults, spec.images,
                                everywhere=spec.everywhere)
    if action == "list" and not named:
        return admin.preset_list(core, actor)
    if action == "remove" and len(named) == 1:
        return admin.preset_remove(core, actor, named[0], everywhere=everywhere)
    if action == "default" and len(named) == 1 and not everywhere:
        return admin.preset_default(core, actor, named[0])
    raise UserInputError(admin.PRESET_USAGE)


def _approvals(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    usage = "Usage: `admin approvals on @reviewer [@reviewer2 ...]` or `admin approvals off`, in the channel."
    action = args[0].lower() if args else ""
    if action == "on" and len(args) >= 2:
        return admin.approvals(core, actor, [_target(raw, resolve) for raw in args[1:]])
    if action == "off" and len(args) == 1:
        return admin.approvals(core, actor, None)
    if not args:
        return admin.approvals(core, actor, None, show=True)
    raise UserInputError(usage)


_ADMIN: dict[str, Handler] = {
    "grant": _grant, "allowance": _allowance, "show": _show, "history": _history, "report": _report,
    "budget": _budget, "ban": _ban, "unban": _unban, "channels": _channels, "defaults": _defaults,
    "member-cap": _member_cap, "dashboard": _dashboard, "preset": _preset, "presets": _preset,
    "approvals": _approvals,
}
