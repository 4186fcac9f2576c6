"""Every billed task reaches someone: a job is taken only where the bot can post (``conversations.info``,
before anything is reserved or sent to the gateway), and a channel that refuses the result once the task
was sent (the bot removed, the channel archived) gets it to the requester by direct message instead.

Signed slash commands go to the real Bolt app; the fake Slack Web API answers like Slack for channels the
bot is not in (``not_in_channel``, ``channel_not_found``, ``is_archived``); the sandbox gateway counts
createTask calls."""

from __future__ import annotations

import asyncio

import pytest

from imagine_bot.bots.slack import frontend as slack_frontend
from imagine_bot.bots.slack.blocks import ACTION_REROLL
from imagine_bot.bots.slack.mentions import escape
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.chat import messages
from imagine_bot.core.jobs.model import JobState
from tests.conftest import until

from .conftest import TEAM, SlackHarness, of_type
from .test_edit import png, shortcut

U1 = UserRef("slack", TEAM, "U1")
PLACE = f"slack:{TEAM}"


def nothing_reserved_or_sent(slack: SlackHarness, sandbox) -> None:
    """No job, no createTask, no money moved: no ledger row for a job, no budget held or spent."""
    assert slack.core.jobs.recent() == []
    assert sandbox.requests["createTask"] == 0
    assert [e for e in slack.core.ledger.history() if e.job_id or e.kind in ("reserve", "capture", "release")] == []
    account = slack.core.ledger.balance(U1)
    assert (account.balance, account.held) == (180, 0)
    budget = slack.core.budgets.status(PLACE)
    assert (budget.spent, budget.held) == (0, 0)
    assert slack.core.ledger.verify() == []
    assert not slack.fake.calls_to("chat.postMessage")  # nothing posted anywhere


@pytest.mark.parametrize(("channel", "setup", "said"), [
    ("C2", {"member": False}, "I'm not a member of this channel"),  # a public channel the bot was not invited to
    ("G2", {"member": False}, "I'm not a member of this channel"),  # a private one (Slack: channel_not_found)
    ("C3", {"archived": True}, "This channel is archived"),
    ("D12", {"member": False}, "a direct message between other people"),  # two people's DM, not the bot's
], ids=["public-not-member", "private-not-member", "archived", "dm-between-people"])
async def test_where_the_bot_cannot_post_the_user_is_told_privately_and_nothing_is_reserved_or_sent(
        slack: SlackHarness, sandbox, channel, setup, said):
    slack.fake.conversation(channel, **setup)
    response, response_url = await slack.slash("a lighthouse at dusk", channel=channel)
    assert response.status_code == 200 and response.content == b""  # Slack is asked after the ack
    answer = await slack.fake.wait_response(response_url)
    await slack.settle()

    assert answer.get("via") != "ack"  # sent to the response_url: private, and it works where the bot is not
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    assert said in answer["text"] and "`/invite @imagine`" in answer["text"]
    assert answer["text"].endswith("Nothing was charged.")
    assert [c.params["channel"] for c in slack.fake.calls_to("conversations.info")] == [channel]
    nothing_reserved_or_sent(slack, sandbox)


async def test_a_refused_channel_is_asked_again_so_an_invite_takes_effect_at_once(slack: SlackHarness, sandbox):
    slack.fake.conversation("C2", member=False)
    _, refused = await slack.slash("a red kite", channel="C2")
    assert "/invite @imagine" in (await slack.fake.wait_response(refused))["text"]
    await slack.settle()
    slack.fake.conversation("C2", member=True)  # someone typed /invite @imagine
    await slack.slash("a red kite", channel="C2")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERED and job.reply.data["progress_channel"] == "C2"
    assert len(slack.fake.calls_to("conversations.info")) == 2  # a "no" is never cached
    assert sandbox.requests["createTask"] == 1


async def test_one_check_per_channel_then_prompts_there_are_answered_in_the_ack(slack: SlackHarness):
    first, _ = await slack.slash("a red kite")
    await slack.settle()
    second, _ = await slack.slash("a blue kite")
    refused, url = await slack.slash("a green kite --ar 5:4")  # a plain refusal: answered in the ack
    await slack.settle()
    assert [j.state for j in slack.core.jobs.recent()] == [JobState.DELIVERED, JobState.DELIVERED]
    assert len(slack.fake.calls_to("conversations.info")) == 1  # the "yes" is cached for the channel
    assert (first.content, second.content) == (b"", b"")  # a job: its progress message is the answer
    assert "5:4" in refused.json()["text"] and slack.fake.responses_to(url)[0]["via"] == "ack"


async def test_a_burst_in_a_new_channel_asks_slack_once(slack: SlackHarness):
    slack.fake.slow("conversations.info", 0.3)  # all five arrive while the first question is out
    responses = await asyncio.gather(*(slack.slash(f"kite {n}", user=f"U{n}") for n in range(5)))
    assert [r.content for r, _ in responses] == [b""] * 5  # acked at once, Slack asked after
    await slack.settle()
    assert [j.state for j in slack.core.jobs.recent()] == [JobState.DELIVERED] * 5
    assert len(slack.fake.calls_to("conversations.info")) == 1


async def test_plain_refusals_stay_in_the_ack_where_the_channel_is_not_checked_yet(slack: SlackHarness):
    slack.fake.conversation("C2", member=False)
    response, _ = await slack.slash("a cat --ar 5:4", channel="C2")
    assert "5:4" in response.json()["text"]  # no need to ask Slack about a prompt that is refused anyway
    assert not slack.fake.calls_to("conversations.info")


async def test_the_bots_own_direct_message_works(slack: SlackHarness, sandbox):
    """/imagine in the App Home's Messages tab: the bot's own DM with the requester."""
    slack.fake.conversation("D1", user="U1")
    await slack.slash("a lighthouse at dusk", channel="D1")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERED
    [post] = slack.fake.calls_to("chat.postMessage")
    assert post.params["channel"] == "D1"
    assert [f["channels"] for f in slack.fake.files.values()] == [["D1"]]
    assert slack.core.ledger.balance(U1).balance == 180 - 18


@pytest.mark.parametrize("what", ["removed", "archived"])
async def test_a_channel_that_refuses_mid_job_gets_the_image_to_the_requesters_dm_charged_once(
        slack: SlackHarness, sandbox, what):
    sandbox.delays.update(generating=1.0)
    _, response_url = await slack.slash("a lighthouse at dusk")
    await until(lambda: [j.state for j in slack.core.jobs.recent()] == [JobState.RUNNING])  # sent, billed
    (slack.fake.remove_bot if what == "removed" else slack.fake.archive)("C1")
    await slack.settle()

    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERED
    assert sandbox.requests["createTask"] == 1
    # the result went to the requester's DM with the bot: one upload, shared there, the message made the result
    [opened] = slack.fake.calls_to("conversations.open")
    assert opened.params["users"] == "U1"
    [file_id] = job.receipt["file_ids"]
    assert slack.fake.files[file_id]["channels"] == ["D1"]
    assert [f for f in slack.fake.files.values() if f.get("channels") == ["C1"]] == []
    assert (job.reply.data["progress_channel"], job.reply.data["moved_from"]) == ("D1", "C1")
    result = slack.fake.messages[job.reply.data["progress_ts"]]
    assert result.channel == "D1"
    note = escape(messages.delivered_elsewhere("C1"))
    assert result.text.startswith(f"<@U1> {note}\n") and "18 credits" in result.text
    [image] = of_type(result.blocks or [], "image")
    assert image["slack_file"] == {"id": file_id}
    # delivered and charged exactly once, never refunded
    assert sorted(e.kind for e in slack.core.ledger.history(U1) if e.job_id == job.id) == ["capture", "reserve"]
    account = slack.core.ledger.balance(U1)
    assert (account.balance, account.held) == (180 - 18, 0)
    assert slack.core.ledger.verify() == []
    assert slack.fake.responses_to(response_url) == []  # no failure said anywhere

    # the channel's "yes" was dropped with the refusal: the next prompt there is refused before anything
    _, again = await slack.slash("a red kite")
    said = "I'm not a member" if what == "removed" else "This channel is archived"
    assert said in (await slack.fake.wait_response(again))["text"]
    await slack.settle()
    assert sandbox.requests["createTask"] == 1 and len(slack.core.jobs.recent()) == 1


async def test_refused_in_the_channel_and_in_the_dm_the_job_is_refunded_in_plain_words(slack: SlackHarness, sandbox):
    sandbox.delays.update(generating=1.0)
    slack.fake.conversation("D1", user="U1", archived=True)  # the requester's DM cannot take it either
    _, response_url = await slack.slash("a lighthouse at dusk")
    await until(lambda: [j.state for j in slack.core.jobs.recent()] == [JobState.RUNNING])
    slack.fake.remove_bot("C1")
    answer = await slack.fake.wait_response(response_url)
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.FAILED and job.error_code == "delivery_failed"
    assert messages.undeliverable() in answer["text"] and "refunded" in answer["text"]
    account = slack.core.ledger.balance(U1)
    assert (account.balance, account.held) == (180, 0)
    assert slack.core.ledger.verify() == []


async def test_when_slack_cannot_tell_the_job_goes_ahead_and_a_refused_first_post_stops_it_unsent(
        slack: SlackHarness, sandbox):
    """An install without the conversations.info scopes (missing_scope): the job is taken; the channel then
    refuses its first post while the job still waits for the gateway, so it is stopped before createTask."""
    slack.fake.scopes = [s for s in slack.fake.scopes if s != "channels:read"]
    slack.fake.conversation("C2", member=False)
    slack.core.orchestrator.admission.pause(60)  # the job waits its turn, nothing sent yet
    _, response_url = await slack.slash("a quiet harbour", channel="C2")
    answer = await slack.fake.wait_response(response_url)
    await slack.settle()

    [info] = slack.fake.calls_to("conversations.info")
    assert info.params["channel"] == "C2"
    assert answer["response_type"] == "ephemeral" and "/invite @imagine" in answer["text"]
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.FAILED and job.error_code == "cannot_answer_here"
    assert sandbox.requests["createTask"] == 0
    account = slack.core.ledger.balance(U1)
    assert (account.balance, account.held) == (180, 0)
    assert slack.core.ledger.verify() == []


async def test_reroll_where_the_bot_was_removed_is_refused_before_anything(slack: SlackHarness, sandbox,
                                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(slack_frontend, "CHANNEL_OK_S", 0.0)  # every "yes" has expired by the next request
    await slack.slash("a lighthouse at dusk")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    slack.fake.remove_bot("C1")
    _, response_url = await slack.press(ACTION_REROLL, job.id)
    answer = await slack.fake.wait_response(response_url)
    await slack.settle()
    assert "I'm not a member" in answer["text"] and "/invite @imagine" in answer["text"]
    assert len(slack.core.jobs.recent()) == 1 and sandbox.requests["createTask"] == 1
    assert slack.core.ledger.balance(U1).balance == 180 - 18


async def test_remix_shortcut_in_a_channel_the_bot_is_not_in_opens_no_form(slack: SlackHarness, sandbox):
    slack.fake.conversation("C2", member=False)
    photo = slack.fake.add_file("product.png", png((220, 120, 20)))
    message = {"type": "message", "ts": "1700000000.000100", "user": "U2", "text": "ours", "files": [photo]}
    _, response_url = await shortcut(slack, message, channel="C2")
    answer = await slack.fake.wait_response(response_url)
    await slack.settle()
    assert "/invite @imagine" in answer["text"]
    assert slack.fake.views == [] and slack.fake.file_downloads == []
    nothing_reserved_or_sent(slack, sandbox)


async def test_a_drain_that_begins_while_slack_is_asked_takes_no_job(slack: SlackHarness, sandbox):
    slack.fake.slow("conversations.info", 0.5)
    _, response_url = await slack.slash("a lighthouse at dusk")
    await slack.fake.wait_for("conversations.info")
    await slack.core.orchestrator.drain(5.0)  # SIGTERM while the channel check is out
    answer = await slack.fake.wait_response(response_url)
    await slack.service.handlers.wait_idle()
    assert "restarting" in answer["text"]
    nothing_reserved_or_sent(slack, sandbox)
