"""Operators hear about gateway-account trouble by Slack DM: a 402 once per pause, a 401 at most hourly."""

from __future__ import annotations

import asyncio

from .conftest import ADMIN, SlackHarness


def _dms_to_admin(slack: SlackHarness) -> list[str]:
    return [c.params["text"] for c in slack.fake.calls_to("chat.postMessage")
            if c.params["channel"] == "D" + ADMIN.lstrip("U")]


async def test_402_pauses_and_tells_the_operator_once(slack_settings, fake_slack, sandbox):
    async with SlackHarness.open(slack_settings(GATEWAY_BALANCE_CHECK_S=60), fake_slack) as slack:
        await asyncio.wait_for(slack.core.account.resumed.wait(), 10)  # the balance read at start was fine
        sandbox.credits = 0  # ... and now createTask answers 402
        await slack.slash("a cat in the dark", user="U1")
        await slack.settle()
        _, url2 = await slack.slash("another cat", user="U2")
        answer = await slack.fake.wait_response(url2)
        assert answer["text"].startswith("Image making is paused") and answer["response_type"] == "ephemeral"
        await slack.settle()
        await slack.core.alerts.wait_sent()
        told = [t for t in _dms_to_admin(slack) if "out of credits" in t]
        assert len(told) == 1
        assert slack.core.account.state().paused == "out_of_credits"
        assert sandbox.requests["createTask"] == 1


async def test_a_bad_key_alerts_at_most_once_an_hour(slack_settings, fake_slack, sandbox):
    async with SlackHarness.open(slack_settings(), fake_slack) as slack:
        sandbox.inject("createTask", status=401, times=3)
        for user in ("U1", "U2", "U3"):
            await slack.slash(f"a cat for {user}", user=user)
            await slack.settle()
        await slack.core.alerts.wait_sent()
        told = [t for t in _dms_to_admin(slack) if "refused the API key (401)" in t]
        assert len(told) == 1
        assert slack.core.account.state().paused is None  # a 401 alerts but does not pause
        assert [j.error_code for j in slack.core.jobs.recent()] == ["gateway_auth"] * 3
        assert slack.core.ledger.verify() == []
