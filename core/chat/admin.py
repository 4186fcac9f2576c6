"""The admin operations with their answers, typed: what ``/imagine admin ...`` (text, in Slack and the
terminal) and Discord's ``/imagine-admin`` (typed options) both call.

The text commands (``core.chat.commands``) parse words into these calls; a typed front end calls them
directly with its own values, never rebuilding a text command. Who may do what is decided by
``ImagineCore`` (``core.access.authority``); the wording is here and in ``core.chat.messages``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imagine_bot.core.access.authority import Actor, parse_scope
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.errors import ImagineError, PermissionDenied, UserInputError
from imagine_bot.core.jobs.model import Job


@dataclass(frozen=True, slots=True)
class CommandReply:
    #: what to answer; empty for a job (its ``Accepted`` event says "Got it", posted by every front end)
    text: str
    #: only the requester sees it
    ephemeral: bool = True
    #: a file to attach: (filename, content)
    attachment: tuple[str, bytes] | None = None
    #: the job an ``/imagine <prompt>`` started (its progress arrives as job events)
    job: Job | None = None


Operation = Callable[[ImagineCore, Actor], CommandReply]


def run(core: ImagineCore, actor: Actor, operation: Operation, *, what: str) -> CommandReply:
    """Run one admin operation for ``actor``: refused unless they are an operator or a community admin of
    their place; every refusal or error comes back as a private answer, never as an exception."""
    try:
        if not core.is_admin(actor):
            raise PermissionDenied(f"{actor.key} tried admin {what}")
        return operation(core, actor)
    except ImagineError as error:
        return CommandReply(error.user_message)


def scope_of(raw: str, actor: Actor) -> str:
    """``here`` (this server or workspace), ``channel`` (this channel of it) or a scope's name."""
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
def grant(core: ImagineCore, actor: Actor, target: UserRef, amount: int, note: str | None, *,
          shown: str) -> CommandReply:
    balance = core.admin_grant(actor, target, amount, note=note)
    return CommandReply(messages.granted(shown, amount, balance))


def allowance(core: ImagineCore, actor: Actor, target: UserRef, value: int | None, *, shown: str) -> CommandReply:
    balance = core.admin_allowance(actor, target, value)
    return CommandReply(messages.allowance_set(shown, balance))


def show(core: ImagineCore, actor: Actor, target: UserRef, *, shown: str) -> CommandReply:
    core.admin_history_allowed(actor)
    info = core.credits(target)
    return CommandReply(f"{shown}: " + messages.credits(info.balance, len(info.active), core.now()))


def history(core: ImagineCore, actor: Actor, target: UserRef, *, shown: str) -> CommandReply:
    core.admin_history_allowed(actor)
    entries = core.ledger.history(target, limit=15)
    if not entries:
        return CommandReply(f"No ledger entries for {shown} yet.")
    lines = [f"{e.ts:%Y-%m-%d %H:%M} {e.kind:<8} {e.delta_balance:+5d} balance {e.balance_after:>5}"
             f"{' job ' + e.job_id if e.job_id else ''}{' by ' + e.actor if e.actor else ''}" for e in entries]
    return CommandReply(f"Last {len(lines)} entries for {shown}:\n```\n" + "\n".join(lines) + "\n```")


def report(core: ImagineCore, actor: Actor, scope: str | None) -> CommandReply:
    """``scope`` ``all`` (operators: every account), a scope's name, or None: this place (outside a place,
    every account)."""
    if (scope is not None and scope.lower() == "all") or (scope is None and actor.place is None):
        csv_text = core.admin_report(actor)
        rows = max(0, csv_text.count("\n") - 1)
        return CommandReply(f"Usage report: {rows} account(s).",
                            attachment=(f"imagine-usage-{core.now():%Y%m%d}.csv", csv_text.encode()))
    result = core.admin_scope_report(actor, scope_of(scope, actor) if scope else None)
    return CommandReply(result.summary, attachment=(result.filename, result.csv.encode()))


def budget_set(core: ImagineCore, actor: Actor, scope: str, amount: int | None, *, period: str | None = None,
               unlimited: bool = False) -> CommandReply:
    """``amount`` None: back to the default budget, or no limit with ``unlimited``."""
    status = core.admin_budget_set(actor, scope_of(scope, actor), amount, period=period, unlimited=unlimited)
    return CommandReply("Budget set: " + messages.budget_line(status))


def budget_show(core: ImagineCore, actor: Actor, scope: str | None) -> CommandReply:
    shown = core.admin_budget_show(actor, scope_of(scope, actor) if scope else None)
    return CommandReply("\n".join(messages.budget_line(b) for b in shown) or "No budgets yet.")


# ---------------------------------------------------------------------- community admins (and operators)
def ban(core: ImagineCore, actor: Actor, target: UserRef, *, shown: str, banned: bool = True) -> CommandReply:
    changed = core.admin_ban(actor, target, ban=banned)
    if banned:
        return CommandReply(f"{shown} can no longer use the image bot here." if changed
                            else f"{shown} was already banned here.")
    return CommandReply(f"{shown} can use the image bot here again." if changed
                        else f"{shown} was not banned here.")


def channels(core: ImagineCore, actor: Actor, chosen: tuple[str, ...] | None) -> CommandReply:
    """``chosen``: channel ids (empty: every channel); None shows the current choice."""
    if chosen is None:
        current = core.places.prefs(actor.place).channels if actor.place else ()
        where = ", ".join(f"<#{c}>" for c in current) or "every channel"
        return CommandReply(f"I answer in {where}. Change it with `admin channels here`, `admin channels all` "
                            "or `admin channels #a #b`.")
    done = core.admin_channels(actor, chosen)
    return CommandReply("I now answer in " + (", ".join(f"<#{c}>" for c in done) or "every channel") + " here.")


def this_channel(actor: Actor) -> tuple[str, ...]:
    if actor.channel is None:
        raise UserInputError("Use `admin channels here` in the channel you mean.")
    return (actor.channel,)


def defaults(core: ImagineCore, actor: Actor, changes: dict[str, str | None]) -> CommandReply:
    """``changes``: ``aspect_ratio`` and ``quality`` (None: back to the model's default); empty shows them."""
    if not changes:
        current = core.place_defaults(actor)
        shown = messages.describe_params(dict(current)) or "the model's defaults"
        return CommandReply(f"Default options here: {shown}. Change them with "
                            "`admin defaults --ar 16:9 --quality high`, or `admin defaults reset`.")
    done = core.admin_defaults(actor, changes)
    shown = messages.describe_params(dict(done)) or "the model's defaults"
    return CommandReply(f"Default options here: {shown}.")


RESET_DEFAULTS: dict[str, str | None] = {"aspect_ratio": None, "quality": None}


def member_cap(core: ImagineCore, actor: Actor, cap: int | None) -> CommandReply:
    status = core.admin_member_cap(actor, cap)
    return CommandReply("Member cap set: " + messages.budget_line(status))


def dashboard(core: ImagineCore, actor: Actor) -> CommandReply:
    url, scope = core.dashboard_link(actor)
    return CommandReply(messages.dashboard_link(url, scope))


# ---------------------------------------------------------------------- brand presets (core.chat.presets)
PRESET_USAGE = ('Usage: `admin preset set NAME "TEMPLATE with {prompt}" [--ar R] [--quality Q] [--image URL ...]`, '
                '`admin preset list`, `admin preset remove NAME`, `admin preset default NAME|none` (in a channel); '
                "operators add `--global` for a preset of every place.")


def preset_set(core: ImagineCore, actor: Actor, name: str, template: str, defaults: dict[str, str],
               images: Sequence[str], *, everywhere: bool = False) -> CommandReply:
    saved = core.admin_preset_set(actor, name, template, defaults=defaults, images=images, everywhere=everywhere)
    return CommandReply(messages.preset_saved(saved.name, saved.scope))


def preset_list(core: ImagineCore, actor: Actor, *, usage: str = PRESET_USAGE) -> CommandReply:
    """Every preset here, its options and the channels that use it by default."""
    found, defaults_in = core.admin_presets(actor)
    if not found:
        return CommandReply("No presets here yet. " + usage)
    lines = [messages.preset_line(p.name, p.template, dict(p.defaults), len(p.images), p.scope,
                                  sorted(c for c, n in defaults_in.items() if n == p.name)) for p in found]
    return CommandReply("Presets here:\n" + "\n".join(lines))


def preset_remove(core: ImagineCore, actor: Actor, name: str, *, everywhere: bool = False) -> CommandReply:
    channels = core.admin_preset_remove(actor, name, everywhere=everywhere)
    return CommandReply(messages.preset_removed(name.strip().lower(), channels))


def preset_default(core: ImagineCore, actor: Actor, name: str) -> CommandReply:
    """The preset of the actor's channel (``none``: no default)."""
    chosen = core.admin_preset_default(actor, name)
    return CommandReply(messages.preset_default_set(chosen.name if chosen else None))


# ---------------------------------------------------------------------- approvals (core.jobs.approvals)
def approvals(core: ImagineCore, actor: Actor, reviewers: Sequence[UserRef] | None, *,
              show: bool = False) -> CommandReply:
    """Approvals in the actor's channel: on with ``reviewers``, off (None), or ``show`` who reviews there."""
    now = core.approvals_here(actor) if show else core.admin_approvals(actor, reviewers)
    return CommandReply(messages.approvals_set(now, core.settings.APPROVAL_EXPIRE_H))
