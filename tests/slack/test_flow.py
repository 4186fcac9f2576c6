"""/imagine end to end: signed Slack requests in, the fake Slack Web API and the ledger checked out."""

from __future__ import annotations

import io
import itertools
import time

from PIL import Image

from imagine_bot.bots.slack.blocks import ACTION_DELETE, ACTION_REROLL
from imagine_bot.bots.slack.mentions import escape
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.chat import messages
from imagine_bot.core.jobs.model import JobState
from tests.conftest import until

from .conftest import TEAM, SlackHarness, of_type, valid_blocks

U1 = UserRef("slack", TEAM, "U1")


async def test_ack_is_immediate_then_progress_is_edited_in_place_then_the_image_shows_in_the_message(
        slack: SlackHarness, sandbox):
    sandbox.delays.update(waiting=0.2, queuing=0.2, generating=2.5)
    fake = slack.fake
    started = time.monotonic()
    response, _ = await slack.slash("a lighthouse at dusk --ar 16:9")
    ack_s = time.monotonic() - started

    assert response.status_code == 200
    assert ack_s < 3.0  # Slack's own limit for acknowledging a slash command
    # the first prompt in a channel is taken just after the ack (conversations.info: may the bot post here?)
    await until(lambda: slack.core.jobs.recent())
    [job] = slack.core.jobs.recent()
    assert not slack.core.jobs.get(job.id).state.final  # the answer came before the job was done

    await slack.settle()
    job = slack.core.jobs.get(job.id)
    assert job.state is JobState.DELIVERED

    # one progress message naming the requester, edited in place, ending in the done text
    [post] = fake.calls_to("chat.postMessage")
    assert post.params["channel"] == "C1"
    assert post.params["text"] == f"<@U1> {escape(messages.accepted(job))}"
    assert post.params["unfurl_links"] is False
    progress_ts = job.reply.data["progress_ts"]
    updates = fake.calls_to("chat.update")
    assert all(u.params["ts"] == progress_ts and u.params["channel"] == "C1" for u in updates)
    texts = [u.params["text"] for u in updates]
    assert all(t.startswith("<@U1> ") for t in texts)
    assert any("Working on it: generating" in t for t in texts), texts
    balance = 180 - 18
    assert texts[-1] == f"<@U1> {escape(messages.delivered(job, balance))}"
    # throttled: about one edit a second at most (the final edit is never held back)
    moments = [post.at] + [u.at for u in updates]
    gaps = [b - a for a, b in itertools.pairwise(moments)][:-1]
    assert gaps and min(gaps) >= 0.9, gaps
    # the final message is the result: caption, the uploaded image inline, the buttons (valid Block Kit)
    final = valid_blocks(updates[-1].params["blocks"])
    assert [b["type"] for b in final] == ["section", "image", "actions"]
    [file_id] = job.reply.data["file_ids"]
    assert final[1]["slack_file"] == {"id": file_id}
    assert final[1]["alt_text"] == "a lighthouse at dusk"  # the prompt, for screen readers
    buttons = final[2]["elements"]
    assert [(b["action_id"], b["value"]) for b in buttons] == [
        (ACTION_REROLL, job.id), ("imagine_vary", job.id), ("imagine_remix", job.id), (ACTION_DELETE, job.id)]
    assert fake.messages[progress_ts].blocks == final  # Slack took it (the fake checks the file is shared)

    # the image went to the upload URL as a real PNG and was shared in the channel through the message's
    # thread, with no caption of its own (the caption is on the result)
    complete = await fake.wait_for("files.completeUploadExternal")
    assert complete.params["channel_id"] == "C1"
    assert complete.params["thread_ts"] == progress_ts
    assert "initial_comment" not in complete.params
    caption = final[0]["text"]["text"]
    assert "18 credits" in caption and f"{balance} left" in caption and caption.startswith("<@U1> ")
    with Image.open(io.BytesIO(fake.uploads[file_id])) as image:
        assert image.format == "PNG"
        image.verify()

    # charged once
    account = slack.core.ledger.balance(U1)
    assert (account.balance, account.held) == (balance, 0)
    assert slack.core.ledger.verify() == []


async def test_gateway_failure_edits_the_progress_message_and_charges_nothing(slack: SlackHarness):
    await slack.slash("a broken dream sandbox:fail")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.FAILED
    last = slack.fake.calls_to("chat.update")[-1]
    assert last.params["ts"] == job.reply.data["progress_ts"]
    assert "Could not make" in last.params["text"] and "refunded" in last.params["text"]
    assert not slack.fake.calls_to("files.completeUploadExternal")
    account = slack.core.ledger.balance(U1)
    assert (account.balance, account.held) == (180, 0)


async def test_a_retried_delivery_makes_no_second_job(slack: SlackHarness):
    first, _ = await slack.slash("a red kite", trigger_id="trigger.same")
    again, _ = await slack.slash("a red kite", trigger_id="trigger.same", headers={
        "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert (first.status_code, again.status_code) == (200, 200)
    # the retry's listener runs in the background too: wait for both to finish
    await slack.settle()
    assert len(slack.core.jobs.recent()) == 1
    assert len(slack.fake.calls_to("chat.postMessage")) == 1
    account = slack.core.ledger.balance(U1)
    assert (account.balance, account.held) == (180 - 18, 0)


async def test_prompts_are_echoed_without_pinging_anyone(slack: SlackHarness):
    # Slack sends typed angle brackets and ampersands as entities, and @channel as <!channel>
    await slack.slash("&lt;!here&gt; <!channel> salt &amp; pepper <@U9|bob>")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.prompt == "<!here> @channel salt & pepper @bob"
    sent = [c.params["text"] for c in slack.fake.calls if "text" in c.params]
    sent += [b["alt_text"] for c in slack.fake.calls_to("chat.update") for b in of_type(c.params["blocks"], "image")]
    for text in sent:
        assert "<!" not in text and "<@U9" not in text
    assert "&lt;!here&gt; @channel salt &amp; pepper @bob" in sent[0]
