"""The text commands behind ``/imagine``, shared by every front end that takes free text.

    /imagine <prompt> [--ar 16:9] [--quality high]     make an image
    /imagine help | credits                             help, your balance
    /imagine admin grant <user> <n> [note]              admins: grant (negative n revokes)
    /imagine admin allowance <user> <n|default>         admins: per-user allowance
    /imagine admin show|history <user>                  admins: a user's balance or ledger
    /imagine admin report                               admins: usage report as CSV

A front end resolves user mentions (``<@U123>``, ``@name``) with its own ``resolve_user``; everything
else, wording included, is here. Errors come back as a private reply, never as an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import messages
from .app import ImagineCore
from .errors import ImagineError, PermissionDenied, UserInputError
from .identity import UserRef
from .jobs import Job, ReplyTo

ResolveUser = Callable[[str], UserRef | None]


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
    "Admin commands: `admin grant <user> <credits> [note]` (negative to revoke), "
    "`admin allowance <user> <credits|default>`, `admin show <user>`, `admin history <user>`, `admin report`."
)


async def dispatch(core: ImagineCore, requester: UserRef, text: str, reply: ReplyTo, *,
                   resolve_user: ResolveUser, platform_admin: bool = False, dedupe_key: str | None = None,
                   command: str = "/imagine") -> CommandReply:
    words = text.split()
    first = words[0].lower() if words else ""
    try:
        if (first == "help" and len(words) == 1) or not words:
            return CommandReply(messages.help_text(core.model, command=command,
                                                   admin=core.is_admin(requester, platform_admin=platform_admin)))
        if first in ("credits", "balance") and len(words) == 1:
            info = core.credits(requester)
            return CommandReply(messages.credits(info.balance, len(info.active), core.now()))
        if first == "admin" and len(words) >= 2 and words[1].lower() in _ADMIN:
            if not core.is_admin(requester, platform_admin=platform_admin):
                raise PermissionDenied(f"{requester.key} tried admin {words[1]}")
            return _ADMIN[words[1].lower()](core, requester, words[2:], resolve_user, platform_admin)
        job = await core.imagine(requester, reply, text, dedupe_key=dedupe_key)
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


def _grant(core: ImagineCore, actor: UserRef, args: list[str], resolve: ResolveUser, pa: bool) -> CommandReply:
    _need(args, 2, "admin grant <user> <credits> [note]")
    target = _target(args[0], resolve)
    amount = _amount(args[1])
    balance = core.admin_grant(actor, target, amount, platform_admin=pa, note=" ".join(args[2:]) or None)
    return CommandReply(messages.granted(args[0], amount, balance))


def _allowance(core: ImagineCore, actor: UserRef, args: list[str], resolve: ResolveUser, pa: bool) -> CommandReply:
    _need(args, 2, "admin allowance <user> <credits|default>")
    target = _target(args[0], resolve)
    value = None if args[1].lower() == "default" else _amount(args[1])
    balance = core.admin_allowance(actor, target, value, platform_admin=pa)
    return CommandReply(messages.allowance_set(args[0], balance))


def _show(core: ImagineCore, actor: UserRef, args: list[str], resolve: ResolveUser, pa: bool) -> CommandReply:
    _need(args, 1, "admin show <user>")
    info = core.credits(_target(args[0], resolve))
    return CommandReply(f"{args[0]}: " + messages.credits(info.balance, len(info.active), core.now()))


def _history(core: ImagineCore, actor: UserRef, args: list[str], resolve: ResolveUser, pa: bool) -> CommandReply:
    _need(args, 1, "admin history <user>")
    entries = core.ledger.history(_target(args[0], resolve), limit=15)
    if not entries:
        return CommandReply(f"No ledger entries for {args[0]} yet.")
    lines = [f"{e.ts:%Y-%m-%d %H:%M} {e.kind:<8} {e.delta_balance:+5d} balance {e.balance_after:>5}"
             f"{' job ' + e.job_id if e.job_id else ''}{' by ' + e.actor if e.actor else ''}" for e in entries]
    return CommandReply(f"Last {len(lines)} entries for {args[0]}:\n```\n" + "\n".join(lines) + "\n```")


def _report(core: ImagineCore, actor: UserRef, args: list[str], resolve: ResolveUser, pa: bool) -> CommandReply:
    csv_text = core.admin_report(actor, platform_admin=pa)
    rows = max(0, csv_text.count("\n") - 1)
    return CommandReply(f"Usage report: {rows} account(s).",
                        attachment=(f"imagine-usage-{core.now():%Y%m%d}.csv", csv_text.encode()))


_ADMIN = {"grant": _grant, "allowance": _allowance, "show": _show, "history": _history, "report": _report}
