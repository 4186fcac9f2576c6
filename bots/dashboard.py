"""``imagine-bot dashboard``: the web server alone (the ``/admin`` dashboard, ``/metrics``, ``/healthz``),
with a one-time sign-in link printed for whoever runs it (an operator: every server and workspace).

No Slack or Discord token is needed and no image is made, so no ModKie key either: a checkout that only
ran ``make demo`` can look at its jobs. With the embedded sandbox (``--sandbox``) the usage page shows the
sandbox's pretend balance; with a key, the real gateway's; with neither, none. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from collections.abc import Callable

from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.settings import Settings
from imagine_bot.core.web.dashboard.auth import LINK_TTL
from imagine_bot.core.web.server import build_web_app, start_web

log = logging.getLogger(__name__)


def _say(text: str) -> None:
    print(text, flush=True)  # at once, also into a pipe: the link is what the reader waits for


async def serve_dashboard(settings: Settings, *, actor: str, stop: asyncio.Event | None = None,
                          ready: Callable[[str], None] | None = None, say: Callable[[str], None] | None = None) -> int:
    """Serve until ``stop`` (or SIGTERM, SIGINT); ``ready`` gets the sign-in link once the server listens."""
    stop = stop or asyncio.Event()
    say = say or _say
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests), not POSIX
            loop.add_signal_handler(sig, stop.set)
    async with ImagineCore.open(settings, need_gateway=False) as core:
        try:
            runner, port = await start_web(build_web_app(core), settings.HTTP_HOST, settings.HTTP_PORT)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError("HTTP_PORT", f"{settings.HTTP_HOST}:{settings.HTTP_PORT} is in use (if `imagine-bot "
                              "run` is running, it serves the dashboard already: `imagine-bot dashboard-link` "
                              "prints a link to it); set HTTP_PORT to another port") from None
        try:
            base = settings.model_copy(update={"HTTP_PORT": port}).web_url
            link = core.dashboard_auth.mint(base, actor=actor, scope=None)
            minutes = int(LINK_TTL.total_seconds() // 60)
            say(f"Dashboard at {base}/admin (also {base}/metrics and {base}/healthz); Ctrl-C stops it.")
            say(f"Sign in with this link (it works once, within {minutes} minutes; "
                "`imagine-bot dashboard-link` prints another):")
            say(link)
            if not settings.gateway_usable:
                say("No MODKIE_API_KEY: the usage page shows no gateway balance (--sandbox shows the sandbox's).")
            if ready is not None:
                ready(link)
            await stop.wait()
        finally:
            await runner.cleanup()
    return 0
