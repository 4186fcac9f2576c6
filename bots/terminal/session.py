"""Terminal sessions: ``imagine-bot imagine`` (one job) and ``imagine-bot chat`` (a line-by-line chat)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from rich.console import Console

from imagine_bot.core import messages
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.commands import dispatch
from imagine_bot.core.errors import ImagineError
from imagine_bot.core.events import Delivered
from imagine_bot.core.identity import UserRef
from imagine_bot.core.jobs import ReplyTo
from imagine_bot.core.settings import Settings

from .frontend import TerminalFrontEnd


def _resolve(raw: str) -> UserRef | None:
    raw = raw.lstrip("@")
    try:
        return UserRef.parse(raw) if ":" in raw else UserRef("terminal", "local", raw)
    except ValueError:
        return None


async def imagine_once(settings: Settings, text: str, out_dir: Path, user: str) -> int:
    """One ``/imagine`` from the terminal: progress, the saved image paths and the credits left."""
    console = Console(soft_wrap=True)
    me = UserRef("terminal", "local", user)
    async with ImagineCore.open(settings) as core:
        frontend = TerminalFrontEnd(out_dir, console, core=core)
        core.register(frontend)
        await core.start()
        if settings.sandbox:
            console.print("Using the embedded sandbox gateway: no key, no network, no real credits.",
                          style="dim")
        with frontend:
            try:
                job = await core.imagine(me, ReplyTo("terminal", "cli"), text)
            except ImagineError as error:
                console.print(error.user_message, style="red", markup=False, highlight=False)
                return 1
            await core.orchestrator.wait_idle()
        info = core.credits(me)
        console.print(messages.credits(info.balance, len(info.active), core.now()), highlight=False)
        delivered = any(isinstance(e, Delivered) and e.job.id == job.id for e in frontend.events)
        return 0 if delivered else 1


async def chat(settings: Settings, user: str) -> int:
    """A terminal chat front end reading lines from stdin: the same commands as the bots."""
    console = Console(soft_wrap=True)
    me = UserRef("terminal", "local", user)
    async with ImagineCore.open(settings) as core:
        frontend = TerminalFrontEnd(Path("out"), console, bar=False, core=core)
        core.register(frontend)
        await core.start()
        console.print(f"imagine-bot chat as {me.key}. Try: /imagine a lighthouse at dusk --ar 16:9 "
                      "· /credits · /help · /quit", highlight=False)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            command, _, rest = line.partition(" ")
            if command in ("/credits", "/help"):
                rest, command = command[1:], "/imagine"
            if command != "/imagine":
                console.print("Commands: /imagine <prompt> [--ar 16:9] [--quality high], /credits, /help, /quit",
                              highlight=False)
                continue
            reply = await dispatch(core, me, rest, ReplyTo("terminal", "chat"), resolve_user=_resolve)
            if reply.job is None:
                console.print(reply.text, highlight=False, markup=False)
            if reply.attachment:
                name, content = reply.attachment
                await asyncio.to_thread(Path(name).write_bytes, content)
                console.print(f"saved {name}", highlight=False)
        await core.orchestrator.wait_idle()
    return 0
