"""The Slack service: one Bolt ``AsyncApp`` on the shared core, in HTTP mode or Socket Mode, serving one
workspace (``SLACK_BOT_TOKEN``) or every workspace that installs it (distributed mode).

- HTTP mode (``SLACK_SIGNING_SECRET``): Bolt answers ``POST /slack/events`` on the one web server; Bolt
  verifies every request's signature and timestamp (401 otherwise).
- Socket Mode (``SLACK_APP_TOKEN``): a websocket to Slack, no public URL needed. One workspace only.
- Distributed mode (``SLACK_CLIENT_ID`` and ``SLACK_CLIENT_SECRET``, HTTP mode, ``PUBLIC_URL``, no bot
  token): Bolt's OAuth flow serves ``GET /slack/install`` (an "Add to Slack" page; the flow's state kept in
  the database and in a browser cookie) and ``GET /slack/oauth_redirect`` (``oauth.v2.access``, then a
  plain success or failure page). Installations live in the bot's database (``installs``), tokens sealed
  with ``SLACK_TOKEN_KEY``; Bolt's authorize step reads them for every request (a workspace without one
  gets Bolt's "please install" answer), refreshing a rotating token before it expires; ``app_uninstalled``
  and ``tokens_revoked`` delete them. An Enterprise Grid organisation-wide installation serves every
  workspace of the organisation.

Both modes register the same listeners (``handlers``) and the same front end (``frontend``), which make
every call with the token of the workspace it is for (``workspaces``). The Web API clients talk to
``SLACK_API_URL`` through one aiohttp session owned by the service.
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
from slack_bolt.authorization.async_authorize import AsyncInstallationStoreAuthorize
from slack_bolt.logger import get_bolt_app_logger
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_sdk.errors import SlackApiError

from imagine_bot.bots.slack import manifest
from imagine_bot.bots.slack.errors import SlackError, slack_error_code
from imagine_bot.bots.slack.frontend import SlackFrontEnd
from imagine_bot.bots.slack.handlers import SlackHandlers
from imagine_bot.bots.slack.installs import PLATFORM, SerialTokenRotator, SlackInstallationStore, SlackStateStore
from imagine_bot.bots.slack.remix import SlackRemix
from imagine_bot.bots.slack.workspaces import ClientFactory, InstalledWorkspaces, OneWorkspace, Workspaces
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.settings import Settings
from imagine_bot.core.storage.secretbox import MAKE_KEY, SecretBox

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"
#: auth.test answers meaning the bot token itself is wrong: fail at start, naming the setting
BAD_TOKEN = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"})
#: an install flow's state is good this long (Bolt's default)
STATE_TTL_S = 600
#: a rotating bot token (12 hours) is refreshed when it expires within this many minutes (Bolt's default)
REFRESH_BEFORE_MIN = 120


def _secret(value: object) -> str | None:
    raw = value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]
    return raw.strip() if raw and raw.strip() else None


def authorize_url(api_url: str) -> str:
    """Where installers approve the app: ``https://slack.com/oauth/v2/authorize`` beside ``SLACK_API_URL``."""
    base = api_url.rstrip("/")
    return base.removesuffix("/api") + "/oauth/v2/authorize"


def distributed(settings: Settings) -> bool:
    """Distributed mode: the app's client id or secret without a bot token."""
    return not _secret(settings.SLACK_BOT_TOKEN) and bool(
        (settings.SLACK_CLIENT_ID or "").strip() or _secret(settings.SLACK_CLIENT_SECRET))


def check_single(settings: Settings) -> None:
    bot_token, app_token = _secret(settings.SLACK_BOT_TOKEN), _secret(settings.SLACK_APP_TOKEN)
    if not bot_token:
        raise ConfigError("SLACK_BOT_TOKEN", "is not set: copy the Bot User OAuth Token (xoxb-...) "
                          "from your Slack app's OAuth & Permissions page (or set SLACK_CLIENT_ID and "
                          "SLACK_CLIENT_SECRET for many workspaces)")
    if not bot_token.startswith("xoxb-"):
        raise ConfigError("SLACK_BOT_TOKEN", "must be a bot token starting with xoxb-")
    if (settings.SLACK_CLIENT_ID or "").strip() or _secret(settings.SLACK_CLIENT_SECRET):
        raise ConfigError("SLACK_CLIENT_ID", "is set with SLACK_BOT_TOKEN: set SLACK_BOT_TOKEN for one workspace, "
                          "or SLACK_CLIENT_ID and SLACK_CLIENT_SECRET without SLACK_BOT_TOKEN for many")
    if app_token and not app_token.startswith("xapp-"):
        raise ConfigError("SLACK_APP_TOKEN", "must be an app-level token starting with xapp- "
                          "(Basic Information > App-Level Tokens, scope connections:write)")
    if not app_token and not _secret(settings.SLACK_SIGNING_SECRET):
        raise ConfigError("SLACK_SIGNING_SECRET", "is not set: set it for HTTP mode (Slack posts to "
                          f"PUBLIC_URL{EVENTS_PATH}) or set SLACK_APP_TOKEN for Socket Mode")


def check_distributed(settings: Settings) -> None:
    if not (settings.SLACK_CLIENT_ID or "").strip():
        raise ConfigError("SLACK_CLIENT_ID", "is not set: copy the Client ID from your Slack app's Basic Information")
    if not _secret(settings.SLACK_CLIENT_SECRET):
        raise ConfigError("SLACK_CLIENT_SECRET", "is not set: copy the Client Secret from your Slack app's "
                          "Basic Information")
    if _secret(settings.SLACK_APP_TOKEN):
        raise ConfigError("SLACK_APP_TOKEN", "is set, but Socket Mode serves one workspace: unset it for many "
                          f"workspaces (HTTP mode: Slack posts to PUBLIC_URL{EVENTS_PATH}), or set SLACK_BOT_TOKEN "
                          "instead of SLACK_CLIENT_ID for one")
    if not _secret(settings.SLACK_SIGNING_SECRET):
        raise ConfigError("SLACK_SIGNING_SECRET", "is not set: copy the Signing Secret from your Slack app's "
                          "Basic Information (distributed mode is HTTP mode)")
    if not settings.PUBLIC_URL:
        raise ConfigError("PUBLIC_URL", f"is not set: distributed mode needs it (installs start at "
                          f"PUBLIC_URL{INSTALL_PATH} and Slack sends installers back to PUBLIC_URL{REDIRECT_PATH})")


class SlackService:
    name = "slack"

    def __init__(self, core: ImagineCore, settings: Settings, web_app: web.Application | None = None, *,
                 min_edit_interval: float = 1.0, tick_s: float = 10.0, **frontend_kw: Any) -> None:
        self.distributed = distributed(settings)
        if self.distributed:
            check_distributed(settings)
        else:
            check_single(settings)
        app_token = None if self.distributed else _secret(settings.SLACK_APP_TOKEN)
        signing_secret = _secret(settings.SLACK_SIGNING_SECRET)
        self.mode: Literal["http", "socket"] = "socket" if app_token else "http"
        if self.mode == "http" and web_app is None:
            raise ValueError("HTTP mode needs the web app to add /slack/events to")
        self.core = core
        self.settings = settings
        self._app_token = app_token
        self._closed = False
        self._socket: AsyncSocketModeHandler | None = None
        self.box = SecretBox(_secret(settings.SLACK_TOKEN_KEY), setting="SLACK_TOKEN_KEY")
        self.installations = core.stores.installations(PLATFORM, self.box)

        self.session = aiohttp.ClientSession()
        self.factory = ClientFactory(settings.SLACK_API_URL, self.session)
        self.workspaces: Workspaces
        self.store: SlackInstallationStore | None = None
        oauth: AsyncOAuthSettings | None = None
        if self.distributed:
            # the app's own calls (oauth.v2.access, auth.test of a new token); every other call has a workspace
            self.client = self.factory.api(None)
            oauth = self._oauth_settings(settings)
        else:
            one = self.factory.clients(str(_secret(settings.SLACK_BOT_TOKEN)))
            self.client, self.edits = one.api, one.edits
            self.workspaces = OneWorkspace(one)
        self.frontend = SlackFrontEnd(core, self.workspaces, self.session, min_edit_interval=min_edit_interval,
                                      tick_s=tick_s, result_in_thread=settings.SLACK_RESULT_IN_THREAD, **frontend_kw)
        self.app = BoltApp(
            name="imagine-bot", client=self.client, signing_secret=signing_secret, oauth_settings=oauth,
            share_client=not self.distributed,
            # a workspace with no installation: Bolt answers this and runs no listener
            user_facing_authorize_error_message=messages.not_installed(f"{settings.PUBLIC_URL}{INSTALL_PATH}"),
            # every listener returns as it acks (its work after the ack goes on in a task: ``handlers.guarded``),
            # so Bolt may await it: with False Bolt runs it in a task and polls every 10 ms for its ack, a wakeup
            # per 10 ms for each command of a burst still waiting for its batch's commit (issue 22)
            process_before_response=True,
            request_verification_enabled=self.mode == "http",
            # requests that come over HTTP only (Slack's certificate check, the Events API's URL check)
            ssl_check_enabled=self.mode == "http", url_verification_enabled=self.mode == "http",
            attaching_function_token_enabled=False,  # no workflow functions of ours: no token to attach
        )
        self.handlers = SlackHandlers(core, self.frontend)
        self.handlers.register(self.app)
        if self.store is not None:
            self.handlers.register_uninstalls(self.app, self.store)
        self.remix = SlackRemix(self.handlers)
        self.remix.register(self.app)
        core.register(self.frontend)
        if web_app is not None and self.mode == "http":
            web_app.router.add_post(EVENTS_PATH, self.handle_http)
            if self.distributed:
                web_app.router.add_get(INSTALL_PATH, self.handle_install)
                web_app.router.add_get(REDIRECT_PATH, self.handle_oauth_redirect)

    def _oauth_settings(self, settings: Settings) -> AsyncOAuthSettings:
        """Bolt's OAuth flow over our stores, its authorize step with the serial token rotator."""
        client_id = str(settings.SLACK_CLIENT_ID).strip()
        client_secret = str(_secret(settings.SLACK_CLIENT_SECRET))
        self.store = SlackInstallationStore(self.installations)
        rotator = SerialTokenRotator(client_id=client_id, client_secret=client_secret, client=self.client,
                                     store=self.store)
        self.workspaces = InstalledWorkspaces(self.factory, self.store, rotator,
                                              expiration_minutes=REFRESH_BEFORE_MIN)
        oauth = AsyncOAuthSettings(
            client_id=client_id, client_secret=client_secret,
            scopes=manifest.bot_scopes(manifest.DISTRIBUTED), user_scopes=[],
            redirect_uri=f"{settings.PUBLIC_URL}{REDIRECT_PATH}", install_path=INSTALL_PATH,
            redirect_uri_path=REDIRECT_PATH, authorization_url=authorize_url(settings.SLACK_API_URL),
            installation_store=self.store,
            state_store=SlackStateStore(self.core.stores.oauth_states(PLATFORM), STATE_TTL_S),
            state_expiration_seconds=STATE_TTL_S, token_rotation_expiration_minutes=REFRESH_BEFORE_MIN, logger=log,
        )
        authorize = AsyncInstallationStoreAuthorize(
            logger=log, installation_store=self.store, client_id=client_id, client_secret=client_secret,
            token_rotation_expiration_minutes=REFRESH_BEFORE_MIN, client=self.client)
        authorize.token_rotator = rotator  # one refresh per workspace at a time, shared with the front end
        oauth.authorize = authorize
        return oauth

    # ------------------------------------------------------------------ HTTP mode: the aiohttp route
    async def handle_http(self, request: web.Request) -> web.Response:
        if self._closed:
            return web.json_response({"ok": False, "error": "stopping"}, status=503)
        with self.core.answering():  # the work of jobs already accepted waits for this answer
            bolt_response = await self.app.async_dispatch(await to_bolt_request(request))
            return await to_aiohttp_response(bolt_response)

    # ------------------------------------------------------------------ distributed mode: the install flow
    async def handle_install(self, request: web.Request) -> web.Response:
        """``GET /slack/install``: the "Add to Slack" page, with a new state (database and cookie)."""
        assert self.app.oauth_flow is not None
        return await to_aiohttp_response(await self.app.oauth_flow.handle_installation(await to_bolt_request(request)))

    async def handle_oauth_redirect(self, request: web.Request) -> web.Response:
        """``GET /slack/oauth_redirect``: Slack sends the installer back here; the installation is saved."""
        assert self.app.oauth_flow is not None
        if self._closed:
            return web.Response(text="The bot is restarting; please try again in a moment.", status=503)
        response = await self.app.oauth_flow.handle_callback(await to_bolt_request(request))
        if response.status == 200:
            log.info("slack: installed through Add to Slack (%d workspace(s) or organisation(s) now)",
                     len(self.core.stores.installed_places(PLATFORM)))
        else:
            log.warning("slack: an install failed at the redirect (HTTP %d)", response.status)
        return await to_aiohttp_response(response)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.distributed:
            await self._start_distributed()
            return
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

    async def _start_distributed(self) -> None:
        if not self.box.sealing:
            log.warning("SLACK_TOKEN_KEY is not set: the workspaces' bot tokens are stored unencrypted in %s; "
                        "make a key with %s", self.settings.IMAGINE_DB_PATH, MAKE_KEY)
        elif resealed := self.installations.reseal():
            log.info("slack: sealed the tokens of %d installation(s) stored before SLACK_TOKEN_KEY was set", resealed)
        places = self.core.stores.installed_places(PLATFORM)
        if places:  # the key must open the stored tokens: fail now, naming SLACK_TOKEN_KEY, not at a request
            self.installations.latest(org=places[0].org, workspace=places[0].workspace)
        log.info("slack: distributed mode, installed in %d workspace(s) or organisation(s); more install at %s%s",
                 len(places), self.settings.PUBLIC_URL, INSTALL_PATH)

    def socket_handler(self) -> AsyncSocketModeHandler:
        """The Socket Mode connection (built at start: it opens its own session and tasks)."""
        return SocketHandler(self.app, self._app_token, web_client=self.client, core=self.core)

    async def stop(self) -> None:
        """Take no more requests, cancel listeners still running, close every connection."""
        self._closed = True
        if self._socket is not None:
            await close_socket_handler(self._socket)
            self._socket = None
        await self.handlers.stop()
        await self.frontend.close()
        await self.session.close()


class BoltApp(AsyncApp):
    """Bolt's ``AsyncApp``, whose requests share the app's own Web API client where one token serves every
    request (``share_client``: one workspace, by HTTP or Socket Mode).

    Since Bolt 1.15 every request gets a new ``AsyncWebClient`` (so that a listener may change its token
    without touching the app's): a third of Bolt's own time a request here (30 of 130 µs, a slash command in a
    tight loop; ``docs/benchmarks.md``, issue 22). No listener of ours uses that client or changes its token
    (every call goes through ``workspaces``), so one workspace shares the app's. Distributed mode keeps Bolt's
    client a request: its authorize step sets each request's token on it."""

    def __init__(self, *args: Any, share_client: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.share_client = share_client
        self._context_logger = get_bolt_app_logger(app_name=self.name, base_logger=self._base_logger)

    def _init_context(self, req: Any) -> None:
        if not self.share_client:
            super()._init_context(req)
            return
        # what Bolt's ``_init_context`` sets, but the client (tests/slack/test_service.py compares the keys)
        req.context["logger"] = self._context_logger
        req.context["token"] = self._token
        req.context["client"] = self._async_client
        req.context["listener_runner"] = self.listener_runner


class SocketHandler(AsyncSocketModeHandler):
    """Bolt's Socket Mode handler, each envelope answered inside ``core.answering`` (as HTTP requests are)."""

    def __init__(self, app: AsyncApp, app_token: str | None, *, web_client: Any, core: ImagineCore) -> None:
        super().__init__(app, app_token, web_client=web_client)
        self.core = core

    async def handle(self, client: Any, req: Any) -> None:
        with self.core.answering():
            await super().handle(client, req)


async def close_socket_handler(handler: AsyncSocketModeHandler) -> None:
    """Close a Socket Mode handler and wait for its background tasks, which ``close`` only cancels."""
    client = handler.client
    await handler.close_async()  # type: ignore[no-untyped-call]
    tasks = [t for t in (client.message_processor, client.current_session_monitor, client.message_receiver)
             if isinstance(t, asyncio.Future)]
    await asyncio.gather(*tasks, return_exceptions=True)
