"""Terminal sessions: ``imagine-bot imagine`` (one job) and ``imagine-bot chat`` (a line-by-line chat)."""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from rich.console import Console

from imagine_bot.bots.terminal.frontend import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.chat.commands import dispatch
from imagine_bot.core.errors import ImagineError, UserInputError
from imagine_bot.core.events import Delivered
from imagine_bot.core.jobs.model import ReplyTo
from imagine_bot.core.media.references import Reference
from imagine_bot.core.settings import Settings
from imagine_bot.core.web.server import build_web_app, start_web


def _resolve(raw: str) -> UserRef | None:
    raw = raw.lstrip("@")
    try:
        return UserRef.parse(raw) if ":" in raw else UserRef("terminal", "local", raw)
    except ValueError:
        return None


def local_reference(raw: str) -> Reference:
    """``--image``: an http(s) URL as it is, anything else a local file read now."""
    if raw.lower().startswith(("http://", "https://")):
        return Reference(name=raw, url=raw)
    path = Path(raw).expanduser()
    try:
        return Reference(name=path.name, data=path.read_bytes())
    except OSError as error:
        raise UserInputError(f"I cannot read the image `{raw}`: {error.strerror or error}.") from None


def _stdin_lines() -> asyncio.Queue[str]:
    """Lines of stdin ("" at the end), read by a daemon thread: a blocked read never holds up a stop
    (SIGTERM), which the event loop's own thread pool would, as it waits for its threads at exit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        for line in itertools.chain(iter(sys.stdin.readline, ""), [""]):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            except RuntimeError:  # the loop has closed: the chat is over
                return

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue


@asynccontextmanager
async def serving_refs(core: ImagineCore, settings: Settings) -> AsyncIterator[None]:
    """Serve ``/refs/`` while the session runs, so the gateway can fetch local images: on loopback for the
    embedded sandbox, on ``HTTP_HOST:HTTP_PORT`` behind ``PUBLIC_URL`` otherwise (without it, an edit of
    a local image is refused with a plain answer)."""
    if not settings.sandbox and not settings.PUBLIC_URL:
        yield
        return
    host, port = ("127.0.0.1", 0) if settings.sandbox else (settings.HTTP_HOST, settings.HTTP_PORT)
    runner, bound = await start_web(build_web_app(core), host, port)
    if settings.sandbox and not settings.PUBLIC_URL:
        core.serve_refs_at(f"http://127.0.0.1:{bound}")
    try:
        yield
    finally:
        await runner.cleanup()


async def imagine_once(settings: Settings, text: str, out_dir: Path, user: str,
                       images: Sequence[str] = ()) -> int:
    """One ``/imagine`` from the terminal: progress, the saved image paths and the credits left.

    ``images`` (``--image``, paths or URLs) make it an edit of those images."""
    console = Console(soft_wrap=True)
    me = UserRef("terminal", "local", user)
    async with ImagineCore.open(settings) as core, serving_refs(core, settings):
        frontend = TerminalFrontEnd(out_dir, console, core=core)
        core.register(frontend)
        await core.start()
        if settings.sandbox:
            console.print("Using the embedded sandbox gateway: no key, no network, no real credits.",
                          style="dim")
        with frontend:
            try:
                references = [local_reference(raw) for raw in images]
                job = await core.imagine(me, ReplyTo("terminal", "cli"), text, references=references)
            except ImagineError as error:
                console.print(error.user_message, style="red", markup=False, highlight=False)
                return 1
            await core.orchestrator.wait_idle()
        info = core.credits(me)
        console.print(messages.credits(info.balance, len(info.active), core.now()), highlight=False)
        delivered = any(isinstance(e, Delivered) and e.job.id == job.id for e in frontend.events)
        return 0 if delivered else 1


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def as_operator(settings: Settings, me: UserRef) -> Settings:
    """The settings of a terminal session: whoever runs the command line is an operator (they own the
    database and the key), so ``/imagine admin ...`` works for them as the README says."""
    return settings if me.key in settings.ADMINS else settings.model_copy(
        update={"ADMINS": [*settings.ADMINS, me.key]})


async def chat(settings: Settings, user: str, out_dir: Path = Path("out")) -> int:
    """A terminal chat front end reading lines from stdin: the same commands as the bots. The local user
    is an operator (``as_operator``)."""
    console = Console(soft_wrap=True)
    me = UserRef("terminal", "local", user)
    settings = as_operator(settings, me)
    async with ImagineCore.open(settings) as core, serving_refs(core, settings):
        frontend = TerminalFrontEnd(out_dir, console, bar=False, core=core)
        core.register(frontend)
        await core.start()
        console.print(f"imagine-bot chat as {me.key} (an operator). Try: /imagine a lighthouse at dusk --ar 16:9 "
                      "· /imagine make it winter --image out/latest.png · /credits · /imagine admin ... · /help "
                      "· /quit", highlight=False)
        lines = _stdin_lines()
        while True:
            line = await lines.get()
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
            reply = await dispatch(core, me, rest, ReplyTo("terminal", "chat"), resolve_user=_resolve,
                                   resolve_image=local_reference)
            if reply.job is None:
                console.print(reply.text, highlight=False, markup=False)
            if reply.attachment:
                name, content = reply.attachment
                saved = out_dir / Path(name).name  # beside the images, never loose in the current folder
                await asyncio.to_thread(_write, saved, content)
                console.print(f"saved {saved}", highlight=False)
        await core.orchestrator.wait_idle()
    return 0
