"""Signatures, admin commands, bad input, buttons across a restart, and the App Home tab."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import urllib.parse

from imagine_bot.bots.slack.blocks import ACTION_DELETE, ACTION_REROLL
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.jobs.model import JobState

from .conftest import ADMIN, TEAM, SlackHarness, sign

U1, U2, U3 = (UserRef("slack", TEAM, u) for u in ("U1", "U2", "U3"))


async def test_forged_or_stale_signatures_are_refused_and_make_no_job(slack: SlackHarness):
    form = urllib.parse.urlencode({"team_id": TEAM, "user_id": "U1", "channel_id": "C1", "command": "/imagine",
                                   "text": "a forged cat", "trigger_id": "t.forged",
                                   "response_url": slack.fake.response_url()})
    forged = await slack.post(form, "application/x-www-form-urlencoded",
                              signature=sign(form, int(time.time()), secret="not-the-secret"))
    stale_ts = int(time.time()) - 6 * 60
    stale = await slack.post(form, "application/x-www-form-urlencoded", timestamp=stale_ts,
                             signature=sign(form, stale_ts))
    assert (forged.status_code, stale.status_code) == (401, 401)
    await slack.settle()
    assert slack.core.jobs.recent() == []
    assert not slack.fake.calls_to("chat.postMessage")


async def test_invalid_flag_is_a_private_error_listing_valid_values_and_charges_nothing(slack: SlackHarness):
    response, response_url = await slack.slash("a cat --ar 5:4")
    assert response.status_code == 200
    answer = await slack.fake.wait_response(response_url)
    assert answer["response_type"] == "ephemeral"
    assert "5:4" in answer["text"] and "1:1, 16:9, 9:16" in answer["text"]
    await slack.settle()
    assert slack.core.jobs.recent() == [] and not slack.fake.calls_to("chat.postMessage")
    assert slack.core.ledger.balance(U1).held == 0


async def test_empty_balance_is_a_private_error(slack_settings, fake_slack):
    async with SlackHarness.open(slack_settings(CREDITS_ALLOWANCE=10), fake_slack) as slack:
        _, response_url = await slack.slash("a cat")
        answer = await slack.fake.wait_response(response_url)
        assert "Not enough credits" in answer["text"] and answer["response_type"] == "ephemeral"
        await slack.settle()
        assert slack.core.jobs.recent() == [] and not slack.fake.calls_to("chat.postMessage")


async def test_help_credits_and_refusals_are_answered_privately_in_the_ack(slack: SlackHarness):
    # an admin command must ask Slack's users.info first: empty ack, answer through the response_url
    response, url = await slack.slash("admin grant <@U3> 90", user="U2")
    assert response.content == b""
    assert "only image-bot admins" in (await slack.fake.wait_response(url))["text"]
    answers = {}
    for text in ("help", "credits", "a cat --ar 5:4", "admin grant <@U3> 90"):
        response, url = await slack.slash(text, user="U2")
        answers[text] = response.json()  # the answer is the ack itself, as in Bolt's examples
        await slack.settle()
        assert slack.fake.responses_to(url) == [{**answers[text], "via": "ack"}]  # no second request
    assert "/imagine &lt;prompt&gt;" in answers["help"]["text"]  # escaped, so Slack shows it as typed
    assert "You have 180 credits" in answers["credits"]["text"]
    assert "5:4" in answers["a cat --ar 5:4"]["text"]
    assert "only image-bot admins" in answers["admin grant <@U3> 90"]["text"]  # users.info now cached
    assert {a["response_type"] for a in answers.values()} == {"ephemeral"}
    assert len(slack.fake.calls_to("users.info")) == 1


async def test_the_ack_never_waits_for_the_work_after_it(slack: SlackHarness):
    """Bolt sends a listener's ack as the listener returns (``process_before_response=True``, no polling for
    it): so every listener returns as it acks, and what follows goes on in a task of its own
    (``handlers.guarded``). Here that work (users.info, then the answer through the response_url) is stuck
    for up to a minute: the ack comes back at once all the same, and the answer once Slack replies."""
    slack.fake.slow("users.info", 60)
    response, url = await asyncio.wait_for(slack.slash("admin report", user="U2"), 10)
    assert response.status_code == 200 and response.content == b""
    assert slack.service.handlers.busy == 1  # the work after the ack: still waiting for users.info
    assert slack.fake.responses_to(url) == []
    slack.fake.slow("users.info", 0)
    slack.fake._unblock.set()  # Slack answers users.info now
    assert "only image-bot admins" in (await slack.fake.wait_response(url))["text"]
    await slack.settle()
    assert slack.service.handlers.busy == 0


async def test_admin_commands_refuse_non_admins_and_work_for_admins(slack: SlackHarness):
    _, refused_url = await slack.slash("admin grant <@U3|carol> 90", user="U2")
    refused = await slack.fake.wait_response(refused_url)
    assert "only image-bot admins" in refused["text"] and "Nothing was changed" in refused["text"]
    await slack.settle()
    assert slack.core.ledger.balance(U3).available == 180

    _, granted_url = await slack.slash("admin grant <@U3|carol> 90", user=ADMIN)
    granted = await slack.fake.wait_response(granted_url)
    assert granted["text"] == "Granted 90 credits to <@U3>; they now have 270."
    _, allowance_url = await slack.slash("admin allowance <@U3> 360", user=ADMIN)
    assert "360" in (await slack.fake.wait_response(allowance_url))["text"]
    await slack.settle()
    balance = slack.core.ledger.balance(U3)
    assert (balance.available, balance.allowance) == (360, 360)  # a raise is added at once, up to 360

    # the report of every account goes to the operator's direct message as a CSV file, never to the channel
    _, report_url = await slack.slash("admin report all", user=ADMIN)
    answer = await slack.fake.wait_response(report_url)
    assert answer["response_type"] == "ephemeral" and "direct messages" in answer["text"]
    [opened] = slack.fake.calls_to("conversations.open")
    assert opened.params["users"] == ADMIN
    [complete] = slack.fake.calls_to("files.completeUploadExternal")
    assert complete.params["channel_id"] == "DADMIN"
    [file_id] = [f["id"] for f in slack.fake.files.values()]
    rows = list(csv.reader(io.StringIO(slack.fake.uploads[file_id].decode())))
    assert any(f"slack:{TEAM}:U3" in row for row in rows)
    assert not slack.fake.calls_to("chat.postMessage")


async def test_a_workspace_admin_never_mints_and_sees_only_this_workspace(slack: SlackHarness):
    """Slack workspace admins and owners (users.info) are community admins: this workspace only, no minting."""
    slack.fake.workspace_admins.add("U2")
    for text in ("admin grant <@U2> 1000000", "admin allowance <@U3> 99999", "admin budget set here 100000",
                 "admin report all", "admin report slack:T0002", "admin report discord:123", "admin history <@U3>"):
        _, url = await slack.slash(text, user="U2")
        answer = await slack.fake.wait_response(url)
        assert answer["response_type"] == "ephemeral", text
        assert "Nothing was changed" in answer["text"], (text, answer["text"])
    await slack.settle()
    assert slack.core.ledger.history(U2) == [] and slack.core.ledger.history(U3) == []
    assert not slack.fake.calls_to("files.completeUploadExternal")
    assert slack.core.budgets.status(f"slack:{TEAM}").amount is None

    # their own workspace: ban, and its report (through users.info, asked once and cached)
    _, url = await slack.slash("admin ban <@U3|carol>", user="U2")
    assert (await slack.fake.wait_response(url))["text"] == "<@U3> can no longer use the image bot here."
    _, url = await slack.slash("a cat", user="U3")
    assert "turned the image bot off for you" in (await slack.fake.wait_response(url))["text"]
    _, url = await slack.slash("admin report", user="U2")
    assert (await slack.fake.wait_response(url))["text"].startswith("This workspace spent 0 credits for ")
    await slack.settle()
    assert slack.core.jobs.recent() == []
    assert len([c for c in slack.fake.calls_to("users.info") if c.params["user"] == "U2"]) == 1

    # an ordinary member is refused, and users.info is what decides
    _, url = await slack.slash("admin ban <@U2>", user="U4")
    assert "only image-bot admins" in (await slack.fake.wait_response(url))["text"]


async def test_admin_report_falls_back_to_an_inline_csv(slack: SlackHarness):
    slack.fake.fail("conversations.open", "missing_scope")
    _, url = await slack.slash("admin report", user=ADMIN)
    answer = await slack.fake.wait_response(url)
    assert "```" in answer["text"] and "account" in answer["text"]


async def test_buttons_work_after_a_restart(slack_settings, fake_slack):
    settings = slack_settings()
    async with SlackHarness.open(settings, fake_slack) as slack:
        await slack.slash("a lighthouse at dusk --ar 16:9 --quality high")
        await slack.settle()
        [job] = slack.core.jobs.recent()
        assert job.state is JobState.DELIVERED

    # a new process: new core, new service, same database; the buttons only carry the job id
    async with SlackHarness.open(settings, fake_slack) as slack:
        _, reroll_url = await slack.press(ACTION_REROLL, job.id, user="U2")
        await slack.settle()
        assert slack.fake.responses_to(reroll_url) == []
        reroll = slack.core.jobs.recent(limit=1)[0]
        assert reroll.parent_id == job.id and reroll.requester == U2
        assert (reroll.prompt, reroll.params) == (job.prompt, job.params)
        assert reroll.state is JobState.DELIVERED
        assert slack.core.ledger.balance(U2).balance == 180 - 18  # charged to whoever pressed
        assert slack.core.ledger.balance(U1).balance == 180 - 18  # the first job only
        assert slack.fake.calls_to("chat.postMessage")[-1].params["text"].startswith("<@U2> Got it:")

        _, refused_url = await slack.press(ACTION_DELETE, job.id, user="U3")
        refused = await slack.fake.wait_response(refused_url)
        assert "Only the person who asked" in refused["text"]
        assert not slack.fake.calls_to("files.delete") and not slack.fake.calls_to("chat.delete")

        _, deleted_url = await slack.press(ACTION_DELETE, job.id, user="U1")
        deleted = await slack.fake.wait_response(deleted_url)
        assert deleted["text"] == "Deleted."
        [file_id] = job.reply.data["file_ids"]
        assert [c.params["file"] for c in slack.fake.calls_to("files.delete")] == [file_id]
        [chat_delete] = slack.fake.calls_to("chat.delete")
        assert (chat_delete.params["channel"], chat_delete.params["ts"]) == ("C1", job.reply.data["progress_ts"])
        assert slack.fake.messages[job.reply.data["progress_ts"]].deleted


async def test_an_admin_may_delete_anyones_image(slack: SlackHarness):
    await slack.slash("a small boat")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    _, url = await slack.press(ACTION_DELETE, job.id, user=ADMIN)
    assert (await slack.fake.wait_response(url))["text"] == "Deleted."


async def test_reroll_of_an_unknown_job_is_a_polite_private_answer(slack: SlackHarness):
    _, url = await slack.press(ACTION_REROLL, "jnotajob")
    answer = await slack.fake.wait_response(url)
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    assert "could not find" in answer["text"]


async def test_app_home_shows_balance_help_and_recent_images(slack: SlackHarness):
    await slack.slash("a lighthouse at dusk")
    await slack.settle()
    response = await slack.event({"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home",
                                  "event_ts": f"{time.time():.6f}"})
    assert response.status_code == 200
    call = await slack.fake.wait_for("views.publish")
    assert call.params["user_id"] == "U1"
    view = call.params["view"]
    text = " ".join(b["text"]["text"] for b in view["blocks"] if b.get("type") == "section")
    assert view["type"] == "home"
    assert "You have 162 credits" in text and "/imagine &lt;prompt&gt;" in text
    assert "`a lighthouse at dusk`" in text and "<!date^" in text


async def test_a_workspace_outside_SLACK_ALLOWED_TEAMS_is_refused(slack_settings, fake_slack, caplog):
    async with SlackHarness.open(slack_settings(SLACK_ALLOWED_TEAMS="T9999"), fake_slack) as slack:
        _, url = await slack.slash("a cat")
        answer = await slack.fake.wait_response(url)
        assert answer["text"] == "This image bot is not enabled for this workspace."
        assert answer["response_type"] == "ephemeral"
        await slack.settle()
        assert slack.core.jobs.recent() == [] and not slack.fake.calls_to("chat.postMessage")
        assert f"workspace {TEAM} (not in SLACK_ALLOWED_TEAMS)" in caplog.text
