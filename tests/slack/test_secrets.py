"""Security: the gateway key, the bot token and the signing secret never show up in logs or in anything
sent to Slack, through a whole run with successes, failures and refusals logged at DEBUG."""

from __future__ import annotations

import json
import logging

from tests.conftest import TEST_API_KEY
from tests.slack.conftest import BOT_TOKEN, SIGNING_SECRET, SlackHarness


async def test_no_secret_in_logs_or_messages(slack: SlackHarness, caplog):
    caplog.set_level(logging.DEBUG)
    await slack.slash("a lighthouse at dusk --ar 16:9")
    await slack.slash("a broken one sandbox:fail")
    await slack.slash("a cat --ar 5:4")
    await slack.slash("admin grant <@U2> 90", user="U3")
    await slack.slash("a forged one", signature="v0=" + "0" * 64)
    await slack.settle()

    assert slack.fake.calls_to("files.completeUploadExternal"), "the flow ran"
    sent = json.dumps([c.params for c in slack.fake.calls], default=str)
    logged = caplog.text
    for secret in (TEST_API_KEY, BOT_TOKEN, SIGNING_SECRET):
        assert secret not in logged, f"{secret[:6]}… leaked into the logs"
        assert secret not in sent.replace(f"Bearer {BOT_TOKEN}", ""), f"{secret[:6]}… sent in a message"
