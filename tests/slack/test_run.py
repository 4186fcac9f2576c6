"""``imagine-bot run --only slack``: the process shape of bots/run.py with the Slack front end, and the manifest."""

from __future__ import annotations

import asyncio
import importlib.resources
import time
import urllib.parse

import httpx

from imagine_bot.bots.run import run

from .conftest import TEAM, sign


async def test_run_serves_slack_events_on_the_one_web_server_and_stops_cleanly(slack_settings, fake_slack):
    settings = slack_settings()
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    runner = asyncio.create_task(run(settings, only=["slack"], stop=stop, ready=ready.set_result))
    try:
        port = await asyncio.wait_for(ready, 10)
        response_url = fake_slack.response_url()
        body = urllib.parse.urlencode({
            "team_id": TEAM, "user_id": "U1", "channel_id": "C1", "command": "/imagine", "text": "credits",
            "trigger_id": "t.run", "response_url": response_url})
        ts = int(time.time())
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
            answer = await http.post(f"http://127.0.0.1:{port}/slack/events", content=body, headers={
                "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(ts),
                "X-Slack-Signature": sign(body, ts)})
        assert health["frontends"] == ["slack"]
        assert answer.status_code == 200
        assert "You have 180 credits" in answer.json()["text"]  # answered in the ack
    finally:
        stop.set()
        assert await asyncio.wait_for(runner, 10) == 0


def test_the_manifest_is_package_data_with_the_command_scopes_and_event():
    text = importlib.resources.files("imagine_bot.bots.slack").joinpath("manifest.yml").read_text()
    for needle in ("command: /imagine", "usage_hint:", "should_escape: true", "home_tab_enabled: true",
                   "socket_mode_enabled: true", "- app_home_opened", "- commands", "- chat:write",
                   "- files:write", "- files:read", "- im:write", "- channels:read", "- groups:read",
                   "- im:read", "- mpim:read"):
        assert needle in text, needle
    assert "- chat:write.public" not in text


async def test_run_freezes_what_start_up_made_once_everything_started_only_when_asked(slack_settings, fake_slack,
                                                                                         monkeypatch):
    """``imagine-bot run`` (``freeze=True``): after start-up and before the first command, start-up's objects
    leave the collector's sight (``gc.freeze``); a ``run`` inside another process (the tests) freezes nothing."""
    import imagine_bot.bots.run as running

    frozen: list[bool] = []
    monkeypatch.setattr(running.gc, "freeze", lambda: frozen.append(True))
    for freeze, expected in ((False, []), (True, [True])):
        frozen.clear()
        stop = asyncio.Event()
        ready: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        runner = asyncio.create_task(run(slack_settings(), only=["slack"], stop=stop, freeze=freeze,
                                         ready=lambda _port, told=ready: told.set_result(list(frozen))))
        try:
            assert await asyncio.wait_for(ready, 10) == expected  # by the time it serves
        finally:
            stop.set()
            assert await asyncio.wait_for(runner, 10) == 0
        assert frozen == expected
