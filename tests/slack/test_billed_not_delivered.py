"""Billed but not delivered: the gateway finished the task (and charged the ModKie account), then Slack refused
the post for good. The user is refunded; the operator sees the credits in /metrics, in ``credits report``, on
the dashboard, and in one DM the day the total reaches ``UNDELIVERED_ALERT_CREDITS``."""

from __future__ import annotations

import logging
import re

import httpx

from imagine_bot.bots.cli.main import main
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.web.server import build_web_app, start_web
from tests.test_metrics import samples, scrape, value

from .conftest import ADMIN, TEAM, SlackHarness

U1 = UserRef("slack", TEAM, "U1")
UPLOAD = "files.getUploadURLExternal"
METRIC = "imagine_billed_not_delivered_credits_total"
TOKEN = "scrape-me"


def _told(slack: SlackHarness) -> list[str]:
    return [c.params["text"] for c in slack.fake.calls_to("chat.postMessage")
            if c.params["channel"] == "D" + ADMIN.lstrip("U") and "never delivered" in c.params["text"]]


async def _billed_then_refused(slack: SlackHarness, prompt: str) -> None:
    # refused for good by the time the image is ready (the app lost files:write); a channel that refuses
    # sends the image to the requester's DM instead (test_channel_check), so that is delivered, not counted
    slack.fake.fail(UPLOAD, "missing_scope")
    await slack.slash(prompt)
    await slack.settle()
    await slack.core.alerts.wait_sent()


async def _usage_page(core: ImagineCore) -> str:
    runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    token = core.dashboard_auth.mint(base, actor="cli:op", scope=None).split("t=")[1]
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.post("/admin/login", data={"t": token})).status_code == 303
            return (await http.get("/admin/usage")).text
    finally:
        await runner.cleanup()


async def test_an_image_billed_but_never_delivered_is_counted_everywhere_and_told_once(
        slack_settings, fake_slack, sandbox, capsys):
    settings = slack_settings(UNDELIVERED_ALERT_CREDITS=36, METRICS_TOKEN=TOKEN)
    async with SlackHarness.open(settings, fake_slack) as slack:
        await slack.slash("a lighthouse that arrives")  # delivered and charged: not counted
        await slack.settle()
        await slack.slash("a broken dream sandbox:fail")  # failed at the gateway, never billed: not counted
        await slack.settle()
        assert value(samples((await scrape(slack.core, TOKEN)).text), METRIC) == 0

        await _billed_then_refused(slack, "a harbour, lost once")
        assert _told(slack) == []  # 18 of 36
        assert value(samples((await scrape(slack.core, TOKEN)).text), METRIC) == 18

        await _billed_then_refused(slack, "a harbour, lost twice")  # 36: the operator hears of it
        await _billed_then_refused(slack, "a harbour, lost thrice")  # 54: not again today
        [told] = _told(slack)
        assert "36 credits for 2 images that were never delivered" in told
        assert "UNDELIVERED_ALERT_CREDITS (36)" in told

        jobs = [j for j in slack.core.jobs.recent() if "lost" in j.prompt]
        assert len(jobs) == 3
        assert all(j.state is JobState.FAILED and j.error_code == "delivery_failed" for j in jobs)
        assert all(j.billed_at is not None and j.gateway_cost == 18 for j in jobs)
        assert sandbox.credits == 100_000 - 4 * 18  # the gateway did charge for all four successes
        account = slack.core.ledger.balance(U1)
        assert (account.balance, account.held) == (180 - 18, 0)  # the user paid for the one delivered
        assert slack.core.ledger.verify() == [] and slack.core.ledger.orphan_holds() == []

        found = samples((await scrape(slack.core, TOKEN)).text)
        assert value(found, METRIC) == 54
        assert value(found, "imagine_jobs_total", platform="slack", outcome="failed") == 4

        page = await _usage_page(slack.core)
        assert re.search(r'id="billed-not-delivered">54<', page), page

    # another process on the same database (or this one after a restart) reports the same
    async with ImagineCore.open(settings) as other:
        assert value(samples((await scrape(other, TOKEN)).text), METRIC) == 54
        assert other.account.check_undelivered() is False  # told already today

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["--db", str(settings.IMAGINE_DB_PATH), "credits", "report"]) == 0
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr()
    assert out.out.startswith("account,balance")  # stdout stays plain CSV
    assert ("Billed but not delivered: 54 credits (3 images) in all, 54 credits (3 images) today"
            in out.err)
