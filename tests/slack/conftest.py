"""The Slack harness: the real SlackService (HTTP mode) on the real web app, a real core behind it with
the sandbox gateway, and the fake Slack Web API. Requests to ``/slack/events`` are built and signed here,
for the default workspace or any other (``team=``, ``enterprise=``, ``org_wide=``); ``install`` adds the
app to a workspace through ``/slack/install`` and ``/slack/oauth_redirect`` as a browser does (distributed
mode: ``distributed_settings``).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import itertools
import json
import re
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from slack_sdk.models.blocks import Block

from imagine_bot.bots.slack import SlackService
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.settings import Settings
from imagine_bot.core.web.server import build_web_app
from tests.fakes.slack_api import FakeSlackAPI

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-test-token"
TEAM = "T0001"
ADMIN = "UADMIN"

_triggers = itertools.count(1)


def sign(body: str, timestamp: int | str, secret: str = SIGNING_SECRET) -> str:
    """Slack's request signature: ``v0=`` HMAC-SHA256 of ``v0:<timestamp>:<body>``."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackHarness:
    """One running SlackService, its core and web server, and a client that speaks like Slack."""

    def __init__(self, core: ImagineCore, service: SlackService, fake: FakeSlackAPI, http: httpx.AsyncClient,
                 events_url: str) -> None:
        self.core = core
        self.service = service
        self.fake = fake
        self.http = http
        self.events_url = events_url
        self.base_url = events_url.removesuffix("/slack/events")

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, fake: FakeSlackAPI, *, port: int = 0,
                   **service_kw: Any) -> AsyncIterator[SlackHarness]:
        """``port``: serve there (a restarted process on the same ``PUBLIC_URL``); 0 picks one."""
        service_kw.setdefault("tick_s", 0)
        service_kw.setdefault("inline_waits", (0.02, 0.05, 0.1, 0.1))  # the image block's short retries
        async with AsyncExitStack() as stack:
            core = await stack.enter_async_context(ImagineCore.open(settings))
            web_app = build_web_app(core)
            service = SlackService(core, settings, web_app, **service_kw)
            runner = web.AppRunner(web_app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            sock = listening_socket(port)
            await web.SockSite(runner, sock).start()
            port = sock.getsockname()[1]
            stack.push_async_callback(service.stop)
            stack.push_async_callback(core.orchestrator.stop)  # the order of bots/run.py
            await service.start()
            await core.start()
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
            yield cls(core, service, fake, http, f"http://127.0.0.1:{port}/slack/events")

    async def settle(self) -> None:
        """Wait until every listener and every job has finished."""
        while (self.service.handlers.busy or self.core.orchestrator.in_flight
               or self.core.orchestrator.outbox.busy):
            await self.service.handlers.wait_idle()
            await self.core.orchestrator.wait_idle()

    # ------------------------------------------------------------------ requests as Slack sends them
    async def post(self, body: str, content_type: str, *, timestamp: int | None = None,
                   signature: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        ts = int(time.time()) if timestamp is None else timestamp
        return await self.http.post(self.events_url, content=body.encode(), headers={
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": signature or sign(body, ts),
            **(headers or {}),
        })

    async def slash(self, text: str, *, user: str = "U1", channel: str = "C1", trigger_id: str | None = None,
                    response_url: str | None = None, team: str = TEAM, enterprise: str | None = None,
                    org_wide: bool = False, **kw: Any) -> tuple[httpx.Response, str]:
        """POST a signed ``/imagine`` slash command; returns the HTTP response and the response_url."""
        response_url = response_url or self.fake.response_url()
        form = {
            "token": "legacy-verification-token", "team_id": team, "team_domain": "fake",
            "channel_id": channel, "channel_name": "general", "user_id": user, "user_name": user.lower(),
            "command": "/imagine", "text": text, "api_app_id": "A0001",
            "is_enterprise_install": "true" if org_wide else "false",
            "response_url": response_url, "trigger_id": trigger_id or f"trigger.{next(_triggers)}",
            **({"enterprise_id": enterprise, "enterprise_name": "Org"} if enterprise else {}),
        }
        body = urllib.parse.urlencode(form)
        response = await self.post(body, "application/x-www-form-urlencoded", **kw)
        await self._note_ack(response, response_url)
        return response, response_url

    async def _note_ack(self, response: httpx.Response, response_url: str) -> None:
        """An answer given in the ack is what the user sees, like one sent to the response_url: record it
        with the response_url's answers (marked ``"via": "ack"``) so a test can wait for either."""
        if response.status_code == 200 and response.content:
            answer = response.json()
            if answer.get("text"):
                self.fake.responses[response_url.rsplit("/", 1)[-1]].append({**answer, "via": "ack"})
                await self.fake._notify()

    async def press(self, action_id: str, value: str, *, user: str = "U1", channel: str = "C1",
                    message_ts: str = "1700000001.000002", team: str = TEAM, enterprise: str | None = None,
                    org_wide: bool = False) -> tuple[httpx.Response, str]:
        """POST a signed block_actions payload (a button press); returns the response and response_url."""
        response_url = self.fake.response_url()
        payload = {
            "type": "block_actions", "api_app_id": "A0001", "trigger_id": f"trigger.{next(_triggers)}",
            "team": {"id": team, "domain": "fake", **({"enterprise_id": enterprise} if enterprise else {})},
            "enterprise": {"id": enterprise, "name": "Org"} if enterprise else None,
            "is_enterprise_install": org_wide,
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team},
            "channel": {"id": channel, "name": "general"},
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel,
                          "is_ephemeral": False},
            "message": {"type": "message", "ts": message_ts, "text": "", "user": "UBOT"},
            "response_url": response_url,
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b", "value": value,
                         "action_ts": f"{time.time():.6f}", "text": {"type": "plain_text", "text": "x"}}],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        return await self.post(body, "application/x-www-form-urlencoded"), response_url

    async def event(self, event: dict[str, Any], *, team: str | None = TEAM, enterprise: str | None = None,
                    org_wide: bool = False) -> httpx.Response:
        body = json.dumps({
            "token": "legacy-verification-token", "team_id": team, "api_app_id": "A0001",
            **({"enterprise_id": enterprise} if enterprise else {}),
            "event": event, "type": "event_callback", "event_id": f"Ev{next(_triggers):08d}",
            "event_time": int(time.time()), "is_ext_shared_channel": False,
            "authorizations": [{"enterprise_id": enterprise, "team_id": None if org_wide else team,
                                "user_id": "UBOT", "is_bot": True, "is_enterprise_install": org_wide}],
        })
        return await self.post(body, "application/json")

    # ------------------------------------------------------------------ distributed mode: installs
    async def install(self, target: str, *, keep_cookie: bool = True) -> httpx.Response:
        """An admin adds the app to ``target`` (a workspace, or an organisation: org-wide) as a browser does:
        the "Add to Slack" page (its state cookie kept), Slack's approval page (the fake's), and back to
        ``PUBLIC_URL/slack/oauth_redirect`` with the cookie. Returns that last page."""
        page = await self.http.get(f"{self.base_url}/slack/install", params={"team": target})
        assert page.status_code == 200, page.text
        link = re.search(r'href="([^"]*oauth/v2/authorize[^"]*)"', page.text)
        assert link is not None, page.text
        approved = await self.http.get(html.unescape(link.group(1)))  # the admin clicks "Add to Slack", allows
        assert approved.status_code == 302, approved.text
        back = approved.headers["location"]
        assert back.startswith(f"{self.service.settings.PUBLIC_URL}/slack/oauth_redirect?")
        cookie = page.headers["set-cookie"].split(";")[0] if keep_cookie else "other=1"
        return await self.http.get(back, headers={"Cookie": cookie})

    async def uninstall(self, target: str, *, enterprise: str | None = None, org_wide: bool = False) -> None:
        """The workspace (or organisation) removes the app: Slack revokes the tokens, then sends
        ``tokens_revoked`` and ``app_uninstalled``."""
        self.fake.uninstall(target)
        team = None if org_wide else target
        for event in ({"type": "tokens_revoked", "tokens": {"bot": ["UBOT"]}}, {"type": "app_uninstalled"}):
            answer = await self.event(event, team=team, enterprise=enterprise, org_wide=org_wide)
            assert answer.status_code == 200, answer.text
        await self.settle()


def valid_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each block checked with slack_sdk's own Block Kit models (raises if Slack would refuse it)."""
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None, block
        parsed.validate_json()
    return blocks


def of_type(blocks: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [b for b in blocks if b.get("type") == kind]


def listening_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound on 127.0.0.1 (``port`` 0 picks one; the same port again after a restart)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


TOKEN_KEY = Fernet.generate_key().decode()


@pytest.fixture
def distributed_settings(make_settings: Callable[..., Settings],
                         fake_slack: FakeSlackAPI) -> Callable[..., tuple[Settings, int]]:
    """Distributed mode: the app's client id and secret, no bot token; ``PUBLIC_URL`` is this machine at a
    port picked now (returned too, for ``SlackHarness.open(port=...)``)."""
    def make(**overrides: Any) -> tuple[Settings, int]:
        with listening_socket() as probe:
            port = probe.getsockname()[1]
        values: dict[str, Any] = {
            "SLACK_CLIENT_ID": fake_slack.client_id,
            "SLACK_CLIENT_SECRET": fake_slack.client_secret,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_TOKEN_KEY": TOKEN_KEY,
            "SLACK_API_URL": fake_slack.api_url,
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "ADMINS": f"slack:{TEAM}:{ADMIN}",
        }
        values.update(overrides)
        return make_settings(**values), port

    return make


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlackAPI]:
    async with FakeSlackAPI(bot_token=BOT_TOKEN, app_token=APP_TOKEN, team_id=TEAM) as fake:
        yield fake


@pytest.fixture
def slack_settings(make_settings: Callable[..., Settings], fake_slack: FakeSlackAPI) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": fake_slack.api_url,
            "ADMINS": f"slack:{TEAM}:{ADMIN}",
        }
        values.update(overrides)
        return make_settings(**values)

    return make


@pytest.fixture
async def slack(slack_settings: Callable[..., Settings], fake_slack: FakeSlackAPI) -> AsyncIterator[SlackHarness]:
    async with SlackHarness.open(slack_settings(), fake_slack) as harness:
        yield harness
