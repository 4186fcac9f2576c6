"""``imagine-bot``: the command line.

    imagine-bot [--sandbox] [--db PATH] imagine "a lighthouse at dusk --ar 16:9"
    imagine-bot imagine "make it winter" --image photo.png [--image URL ...]   an edit of images
    imagine-bot chat                          a terminal chat: /imagine, /credits, /help
    imagine-bot run [--only slack|discord]    the bots, the callback server and /healthz
    imagine-bot sandbox [--port 8787]         the sandbox gateway alone
    imagine-bot credits show|grant|allowance|history|report ...
    imagine-bot jobs list|show ...
    imagine-bot discord sync|invite-url
    imagine-bot doctor                        check the install against the real services
    imagine-bot dashboard                     the /admin dashboard alone, with a one-time sign-in link
    imagine-bot dashboard-link [--scope S]    a one-time sign-in link to the /admin dashboard
    imagine-bot db copy --to postgresql://... copy the SQLite database into an empty PostgreSQL one

Configuration comes from the environment and ``.env`` (see ``.env.example``). A bad setting ends the
command with one line naming it, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from imagine_bot.bots.cli.common import local_user
from imagine_bot.core.errors import ConfigError, ImagineError
from imagine_bot.core.ops.logs import setup_logging
from imagine_bot.core.settings import SANDBOX, Settings, load_settings

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.sandbox:
        overrides["MODKIE_BASE_URL"] = SANDBOX
    if args.db:  # this SQLite file (from here, not from IMAGINE_DATA_DIR), even where DATABASE_URL is set
        overrides["IMAGINE_DB_PATH"] = args.db.expanduser().resolve()
        overrides["DATABASE_URL"] = ""
    return load_settings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagine-bot", description="Text-to-image from chat, with credits.")
    parser.add_argument("--sandbox", action="store_true",
                        help="use the embedded sandbox gateway (no key, no network, no credits spent)")
    parser.add_argument("--db", type=Path,
                        help="SQLite database path (default: DATABASE_URL if set, else IMAGINE_DB_PATH)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("imagine", help="make one image in the terminal")
    p.add_argument("text", nargs="+", help='prompt with optional flags, e.g. "a fox --ar 16:9 --quality high"')
    p.add_argument("--out", type=Path, default=Path("out"), help="folder for the images (default ./out)")
    p.add_argument("--image", action="append", default=[], metavar="PATH_OR_URL",
                   help="a reference image to edit (repeatable, up to 14): a local file or an https URL")

    sub.add_parser("chat", help="a terminal chat front end: /imagine, /credits, /help")

    sub.add_parser("doctor", help="check settings, database, gateway, Slack, Discord and PUBLIC_URL")

    sub.add_parser("dashboard", help="serve the /admin dashboard, /metrics and /healthz alone (no chat token, "
                   "no ModKie key needed) and print a one-time sign-in link")

    p = sub.add_parser("run", help="run the chat bots with the callback server and /healthz")
    p.add_argument("--only", choices=["slack", "discord"], action="append", help="run only this front end")

    p = sub.add_parser("sandbox", help="serve the sandbox gateway alone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", default="8787")
    p.add_argument("--delay-scale", type=float, default=1.0, help="multiply the state delays")
    p.add_argument("--dialect", choices=["kie", "modkie"], default="kie", help="answer in kie's or ModKie's shape")

    from imagine_bot.bots.cli.admin import add_admin_parsers

    add_admin_parsers(sub)

    from imagine_bot.bots.discord.cli import add_discord_parsers

    add_discord_parsers(sub)

    from imagine_bot.bots.cli.db import add_db_parsers

    add_db_parsers(sub)
    return parser


GLOBAL_FLAGS = ("--sandbox", "-v", "--verbose")


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Let ``--sandbox``, ``--db PATH`` and ``-v`` stand anywhere: ``imagine-bot run --only slack --sandbox``."""
    front: list[str] = []
    rest: list[str] = []
    items = iter(argv)
    for arg in items:
        if arg == "--":
            rest.append(arg)
            rest.extend(items)
            break
        if arg in GLOBAL_FLAGS or arg.startswith("--db="):
            front.append(arg)
        elif arg == "--db":
            front.extend([arg, next(items, "")])
        else:
            rest.append(arg)
    return front + rest


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(hoist_global_options(sys.argv[1:] if argv is None else argv))
    if args.command == "doctor":
        return _doctor(args)
    try:
        settings = _settings(args)
        # their output is for people
        quiet = args.command in ("imagine", "chat", "credits", "jobs", "discord", "dashboard-link", "dashboard", "db")
        setup_logging("DEBUG" if args.verbose else ("WARNING" if quiet else settings.LOG_LEVEL), settings.secrets())
        return int(args.func(args, settings) or 0) if hasattr(args, "func") else _run_async(args, settings)
    except ConfigError as error:
        print(f"imagine-bot: configuration error: {error.admin_message}", file=sys.stderr)
        return 2
    except ImagineError as error:
        print(f"imagine-bot: {error.user_message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _doctor(args: argparse.Namespace) -> int:
    from imagine_bot.bots.cli.doctor import run_checks, settings_failed
    from imagine_bot.core.ops.doctor import exit_code, render

    try:
        settings = _settings(args)
    except ConfigError as error:
        checks = settings_failed(error)
    else:
        setup_logging("DEBUG" if args.verbose else "ERROR", settings.secrets())
        checks = asyncio.run(run_checks(settings))
    print(render(checks))
    return exit_code(checks)


async def until_sigterm(work: Coroutine[Any, Any, int], *, on_term: int = 0) -> int:
    """Run ``work``; SIGTERM (``docker stop``, systemd) cancels it, so it cleans up and the command exits
    ``on_term`` at once. Needed even in a container: PID 1 ignores a signal it has no handler for."""
    task = asyncio.ensure_future(work)
    terminated = asyncio.Event()

    def terminate() -> None:
        terminated.set()
        task.cancel()

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not POSIX, or not the main thread
        loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await task
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        log.info("stopped on SIGTERM")
        return on_term


def _run_async(args: argparse.Namespace, settings: Settings) -> int:
    from imagine_bot.bots import terminal

    if args.command == "imagine":
        # stopped mid-job: the job stays saved (it resumes at the next start); say it did not finish
        return asyncio.run(until_sigterm(terminal.imagine_once(
            settings, " ".join(args.text), args.out, local_user(), images=args.image), on_term=143))
    if args.command == "chat":
        return asyncio.run(until_sigterm(terminal.chat(settings, local_user())))
    if args.command == "sandbox":
        from imagine_bot.core.chat.parsing import whole_number
        from imagine_bot.core.sandbox.server import DEFAULT_DELAYS, serve_forever

        port = whole_number(args.port, "--port", 0, 65535)
        delays = {state: seconds * args.delay_scale for state, seconds in DEFAULT_DELAYS.items()}
        return asyncio.run(until_sigterm(serve_forever(args.host, port, delays=delays, dialect=args.dialect)))
    if args.command == "dashboard":
        from imagine_bot.bots.dashboard import serve_dashboard

        return asyncio.run(serve_dashboard(settings, actor=f"cli:{local_user()}"))
    if args.command == "run":
        from imagine_bot.bots.run import run

        # its own SIGTERM handling: a graceful stop; start-up's objects frozen out of the collector's way
        return asyncio.run(run(settings, only=args.only, freeze=True))
    raise SystemExit(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
