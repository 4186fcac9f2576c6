"""Operator commands on the database, for whoever runs the bot: ``imagine-bot credits ...``, ``budget ...``
and ``jobs ...``. Whoever can run these is an operator (they own the database and the gateway key).

Users are named by their key (``slack:TEAM:USER``, ``discord:USER``, ``terminal:USER``); a bare name
means a terminal user. Budget scopes: ``discord:SERVER_ID``, ``slack:TEAM_ID``, either with ``#CHANNEL``,
or ``global`` (the ``SPEND_CAP``). These need no gateway key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from imagine_bot.bots.cli.common import local_user
from imagine_bot.core.access.authority import parse_scope
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.chat import messages
from imagine_bot.core.chat.parsing import whole_number
from imagine_bot.core.credits.budgets import MAX_CREDITS_CHANGE, spend_csv
from imagine_bot.core.credits.periods import describe_refill, period_start
from imagine_bot.core.credits.refunds import fail_stranded
from imagine_bot.core.errors import UserInputError
from imagine_bot.core.gateway.balance import AccountState
from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.settings import Settings
from imagine_bot.core.storage.base import Stores
from imagine_bot.core.storage.db import utcnow
from imagine_bot.core.storage.sqlite import SqliteStores


def _console() -> Console:
    """Tables at full width when piped (rich would cut them at 80 columns)."""
    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=True)


def _user(raw: str) -> UserRef:
    try:
        return UserRef.parse(raw) if ":" in raw else UserRef("terminal", "local", raw)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None


def _stores(settings: Settings) -> Stores:
    """The database's stores, built as the bot builds them (the ledger with the budgets over it)."""
    return SqliteStores.open(settings)


#: the most rows ``--limit`` shows
MAX_LIMIT = 100_000


def _credits(raw: str, *, signed: bool = False) -> int:
    """Credits as typed (numbers are read by the core's one parser: a plain line for 10^40, no traceback)."""
    return whole_number(raw, "Credits", -MAX_CREDITS_CHANGE if signed else 0, MAX_CREDITS_CHANGE)


def _limit(raw: str) -> int:
    return whole_number(raw, "--limit", 1, MAX_LIMIT)


def _scope(raw: str) -> str:
    try:
        return parse_scope(raw)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None


def _actor() -> str:
    return f"cli:{local_user()}"


def credits_cmd(args: argparse.Namespace, settings: Settings) -> int:
    console = _console()
    stores = _stores(settings)
    ledger = stores.ledger
    if args.action == "show":
        balances = [ledger.balance(_user(args.user))] if args.user else ledger.accounts()
        table = Table("account", "available", "held", "balance", "allowance", "next refill")
        for b in balances:
            table.add_row(b.account, str(b.available), str(b.held), str(b.balance),
                          f"{b.allowance}/{b.period}", describe_refill(b.next_refill, utcnow()) or "never")
        console.print(table)
        console.print(_gateway_line(stores.gateway_account.read()), highlight=False)
    elif args.action == "grant":
        b = ledger.grant(_user(args.user), _credits(args.amount, signed=True), actor=_actor(), note=args.note)
        console.print(f"{b.account}: {b.available} available ({b.balance} balance, {b.held} held)")
    elif args.action == "allowance":
        value = None if args.amount == "default" else _credits(args.amount)
        b = ledger.set_allowance(_user(args.user), value, actor=_actor())
        console.print(f"{b.account}: allowance {b.allowance} per {b.period}")
    elif args.action == "history":
        table = Table("when", "account", "kind", "Δ balance", "Δ held", "balance", "job", "by", "note")
        for e in ledger.history(_user(args.user) if args.user else None, limit=_limit(args.limit)):
            table.add_row(f"{e.ts:%Y-%m-%d %H:%M:%S}", e.account, e.kind, f"{e.delta_balance:+d}",
                          f"{e.delta_held:+d}", str(e.balance_after), e.job_id or "", e.actor or "", e.note or "")
        console.print(table)
    elif args.action == "report":
        text = ledger.report_csv()
        jobs = stores.jobs
        undelivered = messages.billed_not_delivered_line(
            jobs.billed_not_delivered(), jobs.billed_not_delivered(since=period_start(utcnow(), "day")))
        if args.out:
            args.out.write_text(text)
            console.print(f"wrote {args.out}")
            console.print(undelivered, highlight=False)
        else:
            sys.stdout.write(text)
            print(undelivered, file=sys.stderr)  # stdout stays plain CSV
    elif args.action == "verify":
        drift, orphans = ledger.verify(), ledger.orphan_holds()
        for line in drift + orphans:
            console.print(line, style="red", highlight=False)
        if drift:
            console.print(f"{len(drift)} account(s) drifted")
        if orphans:
            console.print(f"{len(orphans)} hold(s) owned by no active job")
        if not drift and not orphans:
            console.print("ledger and balances agree; every hold belongs to an image in progress")
        return 1 if drift or orphans else 0
    return 0


def _gateway_line(state: AccountState) -> str:
    """The ModKie account as the running bot last saw it."""
    if state.checked_at is None and not state.paused:
        return "ModKie account: not read yet (the running bot reads it at start and every few minutes)."
    when = ""
    if state.checked_at is not None:
        minutes = max(0, round((utcnow() - state.checked_at).total_seconds() / 60))
        when = f" (read {minutes} min ago)"
    line = f"ModKie account: {state.balance if state.balance is not None else '?'} credits{when}."
    if state.paused:
        line += (f" DEGRADED: new images are paused ({state.paused.replace('_', ' ')}: {state.detail});"
                 " they resume by themselves once the balance covers an image.")
    return line


def budget_cmd(args: argparse.Namespace, settings: Settings) -> int:
    console = _console()
    budgets = _stores(settings).ledger.budgets
    if args.action == "set":
        raw = args.amount.lower()
        amount = None if raw in ("default", "unlimited") else _credits(raw)
        status = budgets.set_amount(_scope(args.scope), amount, actor=_actor(), period=args.period,
                                    unlimited=raw == "unlimited")
        console.print(messages.budget_line(status).replace("`", ""), highlight=False)
    elif args.action == "show":
        shown = [budgets.status(_scope(args.scope))] if args.scope else budgets.all()
        table = Table("scope", "budget", "period", "spent", "reserved", "left", "member cap", "resets")
        for b in shown:
            table.add_row(b.scope, ("unlimited" if b.amount is None else str(b.amount)) + (" (default)" if b.default
                                                                                           else ""),
                          b.period, str(b.spent), str(b.held), "-" if b.remaining is None else str(b.remaining),
                          "-" if b.member_cap is None else str(b.member_cap),
                          describe_refill(b.next_reset, utcnow()) or "never")
        console.print(table)
    elif args.action == "report":
        scope = _scope(args.scope)
        status = budgets.status(scope)
        rows = budgets.spend_rows(scope, status.period_start)
        text = spend_csv(rows)
        if args.out:
            args.out.write_text(text)
            console.print(messages.scope_summary(status, rows), highlight=False)
            console.print(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
    return 0


def _lease(owner: str | None, until: datetime | None, now: datetime) -> str:
    """What ``jobs list`` shows of a job's lease: who holds it and for how long, or that it is free."""
    if owner is None or until is None:
        return "free"
    left = (until - now).total_seconds()
    return f"{owner} ({left:.0f}s left)" if left > 0 else f"{owner} (expired {-left:.0f}s ago)"


def jobs_cmd(args: argparse.Namespace, settings: Settings) -> int:
    console = _console()
    stores = _stores(settings)
    store = stores.jobs
    if args.action == "fail":
        job = fail_stranded(stores, args.job_id, actor=f"{_actor()}:{os.getpid()}")
        console.print(f"{job.id} failed and refunded {job.cost} credits to {job.requester.key}; they will be "
                      f"told when the {job.platform} front end runs", highlight=False)
        return 0
    if args.action == "show":
        job = store.get(args.job_id)
        fields: dict[str, Any] = {
            "id": job.id, "account": job.requester.key, "state": job.state.value, "prompt": job.prompt,
            "params": job.params, "model": job.model, "cost": job.cost, "task_id": job.task_id,
            "created_at": job.created_at.isoformat(), "finished_at": job.finished_at and job.finished_at.isoformat(),
            "error_code": job.error_code, "error_message": job.error_message, "result_urls": list(job.result_urls),
            "reply": {"platform": job.reply.platform, "channel": job.reply.channel},
            "owner": job.owner, "lease_until": job.lease_until and job.lease_until.isoformat(),
        }
        console.print_json(json.dumps(fields))
        return 0
    states = [JobState(args.state)] if args.state else None
    table = Table("id", "created", "account", "state", "owner (lease)", "cost", "prompt", "error")
    now = utcnow()
    for job in store.recent(_user(args.user).key if args.user else None, limit=_limit(args.limit), states=states):
        lease = _lease(job.owner, job.lease_until, now) if not job.state.final else (job.owner or "")
        table.add_row(job.id, f"{job.created_at:%Y-%m-%d %H:%M}", job.requester.key, job.state.value, lease,
                      str(job.cost), job.prompt[:50], job.error_code or "")
    console.print(table)
    return 0


def dashboard_link_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from imagine_bot.core.access.authority import parse_scope
    from imagine_bot.core.web.dashboard.auth import dashboard_auth

    try:
        scope = parse_scope(args.scope) if args.scope else None
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    auth = dashboard_auth(_stores(settings))
    url = auth.mint(settings.web_url, actor=_actor(), scope=scope)
    print(url)
    print(f"Works once, within 10 minutes; shows {scope or 'every server and workspace'}.", file=sys.stderr)
    local = settings.model_copy(update={"PUBLIC_URL": None}).web_url
    if not _answers(f"{local}/healthz"):
        print(f"Nothing answers at {local} yet: the link works once `imagine-bot run` is running, or run "
              "`imagine-bot dashboard` instead (the dashboard alone, with its own link).", file=sys.stderr)
    return 0


def _answers(url: str) -> bool:
    """Whether this machine's web server is up (the link is useless while it is not)."""
    import httpx

    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def add_admin_parsers(sub: Any) -> None:
    from pathlib import Path

    p = sub.add_parser("credits", help="balances, grants, allowances, history and the usage report")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("show", help="one user's balance, or every account")
    a.add_argument("user", nargs="?")
    a = actions.add_parser("grant", help="grant credits (negative to revoke)")
    a.add_argument("user")
    a.add_argument("amount")
    a.add_argument("--note")
    a = actions.add_parser("allowance", help="set a user's allowance per period, or 'default'")
    a.add_argument("user")
    a.add_argument("amount")
    a = actions.add_parser("history", help="the audit trail, newest first")
    a.add_argument("user", nargs="?")
    a.add_argument("--limit", default="50")
    a = actions.add_parser("report", help="usage report as CSV")
    a.add_argument("--out", type=Path)
    actions.add_parser("verify", help="check every balance against its ledger")
    p.set_defaults(func=credits_cmd)

    p = sub.add_parser("budget", help="budgets per Discord server, Slack workspace or channel (operators)")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("set", help="set a scope's budget per period: a number, 'default' or 'unlimited'")
    a.add_argument("scope", help="discord:SERVER_ID, slack:TEAM_ID, either with #CHANNEL")
    a.add_argument("amount")
    a.add_argument("--period", choices=["day", "week", "month", "never"])
    a = actions.add_parser("show", help="one scope's budget, or every budget")
    a.add_argument("scope", nargs="?")
    a = actions.add_parser("report", help="a scope's spend this period per user and channel, as CSV")
    a.add_argument("scope")
    a.add_argument("--out", type=Path)
    p.set_defaults(func=budget_cmd)

    p = sub.add_parser("dashboard-link", help="print a one-time sign-in link to the /admin dashboard")
    p.add_argument("--scope", help="show only this server or workspace (discord:ID, slack:TEAM)")
    p.set_defaults(func=dashboard_link_cmd)

    p = sub.add_parser("jobs", help="list, inspect and fail jobs")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list")
    a.add_argument("--user")
    a.add_argument("--state", choices=[s.value for s in JobState])
    a.add_argument("--limit", default="30")
    a = actions.add_parser("show")
    a.add_argument("job_id")
    a = actions.add_parser("fail", help="fail and refund a stranded job (its user is told when the bot runs)")
    a.add_argument("job_id")
    p.set_defaults(func=jobs_cmd)
