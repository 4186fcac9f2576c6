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

The core decides who may do what (``ImagineCore`` and ``core.authority``); a front end passes an ``Actor``
with the platform facts it vouches for. User mentions are resolved by the front end's ``resolve_user``;
everything else, wording included, is here. Errors come back as a private reply, never as an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from imagine_bot.core.access.authority import Actor, parse_scope
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages, presets
from imagine_bot.core.chat.parsing import take_images
from imagine_bot.core.credits.ledger import PERIODS
from imagine_bot.core.errors import ImagineError, PermissionDenied, UserInputError
from imagine_bot.core.jobs.model import Job, ReplyTo
from imagine_bot.core.media.references import Reference

ResolveUser = Callable[[str], UserRef | None]
#: turns what followed ``--image`` into a reference (front ends that know local files pass their own)
ResolveImage = Callable[[str], Reference]


def url_reference(raw: str) -> Reference:
    """``--image`` in chat takes a public http(s) URL."""
    if not raw.lower().startswith(("http://", "https://")):
        raise UserInputError(f"`--image` takes the URL of an image (https://...), not `{raw[:60]}`.")
    return Reference(name=raw, url=raw)


@dataclass(frozen=True, slots=True)
class CommandReply:
    text: str
    #: only the requester sees it
    ephemeral: bool = True
    #: a file to attach: (filename, content)
    attachment: tuple[str, bytes] | None = None
    #: the job an ``/imagine <prompt>`` started (its progress arrives as job events)
    job: Job | None = None


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
        return CommandReply(messages.accepted(job), job=job)
    except ImagineError as error:
        return CommandReply(error.user_message)


def _target(raw: str, resolve_user: ResolveUser) -> UserRef:
    user = resolve_user(raw)
    if user is None:
        raise UserInputError(f"I don't know who `{raw[:40]}` is. Mention the user, like @name.")
    return user


def _amount(raw: str) -> int:
    try:
        return int(raw.replace(",", "").replace("_", ""))
    except ValueError:
        raise UserInputError(f"`{raw[:20]}` is not a whole number of credits.") from None


def _need(args: list[str], count: int, usage: str) -> None:
    if len(args) < count:
        raise UserInputError(f"Usage: {usage}")


def _scope(raw: str, actor: Actor) -> str:
    if raw.lower() == "here":
        if actor.place is None:
            raise UserInputError("`here` means this server or workspace: use it there, or name a scope.")
        return actor.place
    if raw.lower() == "channel":
        if actor.channel_scope is None:
            raise UserInputError("`channel` means this channel of a server or workspace: use it there.")
        return actor.channel_scope
    try:
        return parse_scope(raw)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None


# ---------------------------------------------------------------------- operators
def _grant(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 2, "admin grant <user> <credits> [note]")
    target = _target(args[0], resolve)
    amount = _amount(args[1])
    balance = core.admin_grant(actor, target, amount, note=" ".join(args[2:]) or None)
    return CommandReply(messages.granted(args[0], amount, balance))


def _allowance(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 2, "admin allowance <user> <credits|default>")
    target = _target(args[0], resolve)
    value = None if args[1].lower() == "default" else _amount(args[1])
    balance = core.admin_allowance(actor, target, value)
    return CommandReply(messages.allowance_set(args[0], balance))


def _show(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 1, "admin show <user>")
    core.admin_history_allowed(actor)
    info = core.credits(_target(args[0], resolve))
    return CommandReply(f"{args[0]}: " + messages.credits(info.balance, len(info.active), core.now()))


def _history(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 1, "admin history <user>")
    core.admin_history_allowed(actor)
    entries = core.ledger.history(_target(args[0], resolve), limit=15)
    if not entries:
        return CommandReply(f"No ledger entries for {args[0]} yet.")
    lines = [f"{e.ts:%Y-%m-%d %H:%M} {e.kind:<8} {e.delta_balance:+5d} balance {e.balance_after:>5}"
             f"{' job ' + e.job_id if e.job_id else ''}{' by ' + e.actor if e.actor else ''}" for e in entries]
    return CommandReply(f"Last {len(lines)} entries for {args[0]}:\n```\n" + "\n".join(lines) + "\n```")


def _report(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    if (args and args[0].lower() == "all") or (not args and actor.place is None):
        csv_text = core.admin_report(actor)
        rows = max(0, csv_text.count("\n") - 1)
        return CommandReply(f"Usage report: {rows} account(s).",
                            attachment=(f"imagine-usage-{core.now():%Y%m%d}.csv", csv_text.encode()))
    report = core.admin_scope_report(actor, _scope(args[0], actor) if args else None)
    return CommandReply(report.summary, attachment=(report.filename, report.csv.encode()))


def _budget(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    if args and args[0].lower() == "set":
        usage = "admin budget set <here|channel|scope> <credits|default|unlimited> [--period day|week|month|never]"
        _need(args, 3, usage)
        scope, raw = _scope(args[1], actor), args[2].lower()
        period = None
        rest = args[3:]
        if rest:
            flag = rest[0].split("=", 1)
            value = flag[1] if len(flag) == 2 else (rest[1] if len(rest) > 1 else "")
            if flag[0] not in ("--period", "period") or value not in PERIODS:
                raise UserInputError(f"Usage: {usage}")
            period = value
        amount = None if raw in ("default", "unlimited") else _amount(raw)
        status = core.admin_budget_set(actor, scope, amount, period=period, unlimited=raw == "unlimited")
        return CommandReply("Budget set: " + messages.budget_line(status))
    shown = core.admin_budget_show(actor, _scope(args[0], actor) if args else None)
    return CommandReply("\n".join(messages.budget_line(b) for b in shown) or "No budgets yet.")


# ---------------------------------------------------------------------- community admins (and operators)
def _ban(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser, *, ban: bool = True) -> CommandReply:
    _need(args, 1, f"admin {'ban' if ban else 'unban'} <user>")
    target = _target(args[0], resolve)
    changed = core.admin_ban(actor, target, ban=ban)
    if ban:
        return CommandReply(f"{args[0]} can no longer use the image bot here." if changed
                            else f"{args[0]} was already banned here.")
    return CommandReply(f"{args[0]} can use the image bot here again." if changed
                        else f"{args[0]} was not banned here.")


def _unban(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    return _ban(core, actor, args, resolve, ban=False)


def _channels(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    if not args:
        current = core.places.prefs(actor.place).channels if actor.place else ()
        where = ", ".join(f"<#{c}>" for c in current) or "every channel"
        return CommandReply(f"I answer in {where}. Change it with `admin channels here`, `admin channels all` "
                            "or `admin channels #a #b`.")
    if args[0].lower() == "all":
        chosen: tuple[str, ...] = ()
    elif args[0].lower() == "here":
        if actor.channel is None:
            raise UserInputError("Use `admin channels here` in the channel you mean.")
        chosen = (actor.channel,)
    else:
        found = [CHANNEL_MENTION.match(a) for a in args]
        if not all(found):
            raise UserInputError("Name channels as #mentions, or say `here` or `all`.")
        chosen = tuple(m.group(1) for m in found if m)
    done = core.admin_channels(actor, chosen)
    return CommandReply("I now answer in " + (", ".join(f"<#{c}>" for c in done) or "every channel") + " here.")


def _defaults(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    if args and args[0].lower() == "reset":
        changes: dict[str, str | None] = {"aspect_ratio": None, "quality": None}
    else:
        unset = {"aspect_ratio": "", "quality": ""}  # tells the flags given from those not given
        parsed = core.parse("defaults " + " ".join(args), unset)
        changes = {k: v for k, v in parsed.params.items() if k in unset and v}
        if not changes:
            current = core.place_defaults(actor)
            shown = messages.describe_params(dict(current)) or "the model's defaults"
            return CommandReply(f"Default options here: {shown}. Change them with "
                                "`admin defaults --ar 16:9 --quality high`, or `admin defaults reset`.")
    done = core.admin_defaults(actor, changes)
    shown = messages.describe_params(dict(done)) or "the model's defaults"
    return CommandReply(f"Default options here: {shown}.")


def _member_cap(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    _need(args, 1, "admin member-cap <credits|none>")
    cap = None if args[0].lower() in ("none", "off") else _amount(args[0])
    status = core.admin_member_cap(actor, cap)
    return CommandReply("Member cap set: " + messages.budget_line(status))


def _dashboard(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    url, scope = core.dashboard_link(actor)
    return CommandReply(messages.dashboard_link(url, scope))


PRESET_USAGE = ('Usage: `admin preset set NAME "TEMPLATE with {prompt}" [--ar R] [--quality Q] [--image URL ...]`, '
                '`admin preset list`, `admin preset remove NAME`, `admin preset default NAME|none` (in a channel); '
                "operators add `--global` for a preset of every place.")


def preset_list(core: ImagineCore, actor: Actor, usage: str = PRESET_USAGE) -> str:
    """``admin preset list``: every preset here, its options and the channels that use it by default."""
    found, defaults_in = core.admin_presets(actor)
    if not found:
        return "No presets here yet. " + usage
    lines = [messages.preset_line(p.name, p.template, dict(p.defaults), len(p.images), p.scope,
                                  sorted(c for c, n in defaults_in.items() if n == p.name)) for p in found]
    return "Presets here:\n" + "\n".join(lines)


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
        saved = core.admin_preset_set(actor, spec.name, spec.template, defaults=defaults, images=spec.images,
                                      everywhere=spec.everywhere)
        return CommandReply(messages.preset_saved(saved.name, saved.scope))
    if action == "list" and not named:
        return CommandReply(preset_list(core, actor))
    if action == "remove" and len(named) == 1:
        channels = core.admin_preset_remove(actor, named[0], everywhere=everywhere)
        return CommandReply(messages.preset_removed(named[0].lower(), channels))
    if action == "default" and len(named) == 1 and not everywhere:
        chosen = core.admin_preset_default(actor, named[0])
        return CommandReply(messages.preset_default_set(chosen.name if chosen else None))
    raise UserInputError(PRESET_USAGE)


def _approvals(core: ImagineCore, actor: Actor, args: list[str], resolve: ResolveUser) -> CommandReply:
    usage = "Usage: `admin approvals on @reviewer [@reviewer2 ...]` or `admin approvals off`, in the channel."
    action = args[0].lower() if args else ""
    if action == "on":
        if len(args) < 2:
            raise UserInputError(usage)
        reviewers = core.admin_approvals(actor, [_target(raw, resolve) for raw in args[1:]])
    elif action == "off" and len(args) == 1:
        reviewers = core.admin_approvals(actor, None)
    elif not args:
        reviewers = core.approvals_here(actor)
    else:
        raise UserInputError(usage)
    return CommandReply(messages.approvals_set(reviewers, core.settings.APPROVAL_EXPIRE_H))


_ADMIN: dict[str, Handler] = {
    "grant": _grant, "allowance": _allowance, "show": _show, "history": _history, "report": _report,
    "budget": _budget, "ban": _ban, "unban": _unban, "channels": _channels, "defaults": _defaults,
    "member-cap": _member_cap, "dashboard": _dashboard, "preset": _preset, "presets": _preset,
    "approvals": _approvals,
}
