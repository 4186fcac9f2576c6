"""The Slack harness: the real SlackService (HTTP mode) on the real web app, a real core behind it with
the sandbox gateway, and the fake Slack Web API. Requests to ``/slack/events`` are built and signed here.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from slack_sdk.models.blocks import Block

from imagine_bot.bots.slack import SlackService
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.settings import Settings
from imagine_bot.core.web.server import build_web_app, start_web
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

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, fake: FakeSlackAPI, **service_kw: Any) -> AsyncIterator[SlackHarness]:
        service_kw.setdefault("tick_s", 0)
        service_kw.setdefault("inline_waits", (0.02, 0.05, 0.1, 0.1))  # the image block's short retries
        async with AsyncExitStack() as stack:
            core = await stack.enter_async_context(ImagineCore.open(settings))
            web_app = build_web_app(core)
            service = SlackService(core, settings, web_app, **service_kw)
            runner, port = await start_web(web_app, "127.0.0.1", 0)
            stack.push_async_callback(runner.cleanup)
            stack.push_async_callback(service.stop)
            stack.push_async_callback(core.orchestrator.stop)  # the order of bots/run.py
            await service.start()
            await core.start()
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
            yield cls(core, service, fake, http, f"http://127.0.0.1:{port}/slack/events")

    async def settle(self) -> None:
        """Wait until every listener and every job has finished."""
        while (self.service.handlers._running or self.core.orchestrator.in_flight
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
                    response_url: str | None = None, **kw: Any) -> tuple[httpx.Response, str]:
        """POST a signed ``/imagine`` slash command; returns the HTTP response and the response_url."""
        response_url = response_url or self.fake.response_url()
        form = {
            "token": "legacy-verification-token", "team_id": TEAM, "team_domain": "fake",
            "channel_id": channel, "channel_name": "general", "user_id": user, "user_name": user.lower(),
            "command": "/imagine", "text": text, "api_app_id": "A0001", "is_enterprise_install": "false",
            "response_url": response_url, "trigger_id": trigger_id or f"trigger.{next(_triggers)}",
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
                    message_ts: str = "1700000001.000002") -> tuple[httpx.Response, str]:
        """POST a signed block_actions payload (a button press); returns the response and response_url."""
        response_url = self.fake.response_url()
        payload = {
            "type": "block_actions", "api_app_id": "A0001", "trigger_id": f"trigger.{next(_triggers)}",
            "team": {"id": TEAM, "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
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

    async def event(self, event: dict[str, Any]) -> httpx.Response:
        body = json.dumps({
            "token": "legacy-verification-token", "team_id": TEAM, "api_app_id": "A0001",
            "event": event, "type": "event_callback", "event_id": f"Ev{next(_triggers):08d}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM, "user_id": "UBOT", "is_bot": True}],
        })
        return await self.post(body, "application/json")


def valid_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each block checked with slack_sdk's own Block Kit models (raises if Slack would refuse it)."""
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None, block
        parsed.validate_json()
    return blocks


def of_type(blocks: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [b for b in blocks if b.get("type") == kind]


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
