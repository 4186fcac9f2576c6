"""The Slack service: one Bolt ``AsyncApp`` on the shared core, in HTTP mode or Socket Mode.

- HTTP mode (``SLACK_SIGNING_SECRET``): Bolt answers ``POST /slack/events`` on the one web server; Bolt
  verifies every request's signature and timestamp (401 otherwise).
- Socket Mode (``SLACK_APP_TOKEN``): a websocket to Slack, no public URL needed.

Both modes register the same listeners (``handlers``) and the same front end (``frontend``). The Web API
client talks to ``SLACK_API_URL`` through one aiohttp session owned by the service.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from imagine_bot.bots.slack.errors import SlackError, slack_error_code
from imagine_bot.bots.slack.frontend import SlackFrontEnd
from imagine_bot.bots.slack.handlers import SlackHandlers
from imagine_bot.bots.slack.remix import SlackRemix
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.settings import Settings

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
#: auth.test answers meaning the bot token itself is wrong: fail at start, naming the setting
BAD_TOKEN = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"})


def _secret(value: object) -> str | None:
    raw = value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]
    return raw.strip() if raw and raw.strip() else None


class SlackService:
    name = "slack"

    def __init__(self, core: ImagineCore, settings: Settings, web_app: web.Application | None = None, *,
                 min_edit_interval: float = 1.0, tick_s: float = 10.0, **frontend_kw: Any) -> None:
        bot_token = _secret(settings.SLACK_BOT_TOKEN)
        app_token = _secret(settings.SLACK_APP_TOKEN)
        signing_secret = _secret(settings.SLACK_SIGNING_SECRET)
        if not bot_token:
            raise ConfigError("SLACK_BOT_TOKEN", "is not set: copy the Bot User OAuth Token (xoxb-...) "
                              "from your Slack app's OAuth & Permissions page")
        if not bot_token.startswith("xoxb-"):
            raise ConfigError("SLACK_BOT_TOKEN", "must be a bot token starting with xoxb-")
        if app_token and not app_token.startswith("xapp-"):
            raise ConfigError("SLACK_APP_TOKEN", "must be an app-level token starting with xapp- "
                              "(Basic Information > App-Level Tokens, scope connections:write)")
        if not app_token and not signing_secret:
            raise ConfigError("SLACK_SIGNING_SECRET", "is not set: set it for HTTP mode (Slack posts to "
                              f"PUBLIC_URL{EVENTS_PATH}) or set SLACK_APP_TOKEN for Socket Mode")
        self.mode: Literal["http", "socket"] = "socket" if app_token else "http"
        if self.mode == "http" and web_app is None:
            raise ValueError("HTTP mode needs the web app to add /slack/events to")
        self.core = core
        self._app_token = app_token
        self._closed = False
        self._socket: AsyncSocketModeHandler | None = None

        base_url = settings.SLACK_API_URL if settings.SLACK_API_URL.endswith("/") else settings.SLACK_API_URL + "/"
        self.session = aiohttp.ClientSession()
        self.client = AsyncWebClient(
            token=bot_token, base_url=base_url, session=self.session, timeout=30,
            retry_handlers=[AsyncConnectionErrorRetryHandler(), AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
        )
        # status edits: no rate-limit retry (it would sleep inside the call); the outbox honours Retry-After
        self.edits = AsyncWebClient(token=bot_token, base_url=base_url, session=self.session, timeout=10,
                                    retry_handlers=[])
        self.frontend = SlackFrontEnd(core, self.client, self.session, edits=self.edits,
                                      min_edit_interval=min_edit_interval, tick_s=tick_s,
                                      result_in_thread=settings.SLACK_RESULT_IN_THREAD, **frontend_kw)
        self.app = AsyncApp(
            name="imagine-bot", client=self.client, signing_secret=signing_secret,
            process_before_response=False,  # ack first; the listener's work goes on in the background
            request_verification_enabled=self.mode == "http",
        )
        self.handlers = SlackHandlers(core, self.frontend)
        self.handlers.register(self.app)
        self.remix = SlackRemix(self.handlers)
        self.remix.register(self.app)
        core.register(self.frontend)
        if web_app is not None and self.mode == "http":
            web_app.router.add_post(EVENTS_PATH, self.handle_http)

    # ------------------------------------------------------------------ HTTP mode: the aiohttp route
    async def handle_http(self, request: web.Request) -> web.Response:
        if self._closed:
            return web.json_response({"ok": False, "error": "stopping"}, status=503)
        bolt_response = await self.app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(bolt_response)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            code = slack_error_code(exc)
            if code in BAD_TOKEN:
                raise ConfigError("SLACK_BOT_TOKEN", f"Slack refused it ({code}): copy the current Bot User "
                                  "OAuth Token (xoxb-...) from your Slack app") from None
            log.warning("slack auth.test failed (%s); carrying on", code)
        except SlackError as exc:
            log.warning("could not reach Slack at %s (%s); carrying on", self.client.base_url,
                        slack_error_code(exc))
        else:
            self.frontend.bot_name = str(auth.get("user") or self.frontend.bot_name)
            log.info("slack: signed in as @%s in %s (%s mode)", auth.get("user"), auth.get("team"), self.mode)
        if self.mode == "socket":
            self._socket = self.socket_handler()
            await self._socket.connect_async()  # type: ignore[no-untyped-call]

    def socket_handler(self) -> AsyncSocketModeHandler:
        """The Socket Mode connection (built at start: it opens its own session and tasks)."""
        return AsyncSocketModeHandler(self.app, self._app_token, web_client=self.client)

    async def stop(self) -> None:
        """Take no more requests, cancel listeners still running, close every connection."""
        self._closed = True
        if self._socket is not None:
            await close_socket_handler(self._socket)
            self._socket = None
        await self.handlers.stop()
        await self.frontend.close()
        await self.session.close()


async def close_socket_handler(handler: AsyncSocketModeHandler) -> None:
    """Close a Socket Mode handler and wait for its background tasks, which ``close`` only cancels."""
    client = handler.client
    await handler.close_async()  # type: ignore[no-untyped-call]
    tasks = [t for t in (client.message_processor, client.current_session_monitor, client.message_receiver)
             if isinstance(t, asyncio.Future)]
    await asyncio.gather(*tasks, return_exceptions=True)
