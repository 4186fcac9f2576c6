"""Approval before an image goes public, through the real Bolt stack and the fake Slack Web API, across a
restart: nothing in the channel before the approve, the image there (inline, caption, buttons) after it, the
requester's own press refused, a second press told, a rejection with its reason, and expiry."""

from __future__ import annotations

import itertools
import json
import urllib.parse
from datetime import timedelta
from typing import Any

from imagine_bot.bots.slack.blocks import ACTION_APPROVE, ACTION_REJECT
from imagine_bot.bots.slack.mentions import escape_keep_user_mentions
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.chat import messages
from imagine_bot.core.jobs.model import Job, JobState
from imagine_bot.core.storage.db import utcnow

from .conftest import ADMIN, TEAM, SlackHarness, of_type, valid_blocks

U1 = UserRef("slack", TEAM, "U1")
REV, REV2 = "UREV", "UREV2"
_ids = itertools.count(1)


def dm(user: str) -> str:
    """The fake's DM channel with a user."""
    return "D" + user.lstrip("UW")


def shown(text: str) -> str:
    return escape_keep_user_mentions(text)


async def _make(slack: SlackHarness, prompt: str) -> tuple[Job, str]:
    """``/imagine prompt`` by U1 in C1: the job and the response_url it answered on."""
    before = {j.id for j in slack.core.jobs.recent()}
    _, url = await slack.slash(prompt)
    await slack.settle()
    (job,) = [j for j in slack.core.jobs.recent() if j.id not in before]
    return job, url


def _posts_in(slack: SlackHarness, channel: str) -> list[Any]:
    return [c for c in slack.fake.calls_to("chat.postMessage") if c.params["channel"] == channel]


def _uploads_to(slack: SlackHarness, channel: str) -> list[Any]:
    return [c for c in slack.fake.calls_to("files.completeUploadExternal") if c.params["channel_id"] == channel]


async def _answer_to_press(slack: SlackHarness, action: str, job_id: str, user: str) -> str:
    _, url = await slack.press(action, job_id, user=user, channel=dm(user))
    answer = await slack.fake.wait_response(url)
    await slack.settle()
    return str(answer["text"])


async def _submit_reason(slack: SlackHarness, view: dict[str, Any], user: str, reason: str) -> None:
    payload = {
        "type": "view_submission", "team": {"id": TEAM, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "team_id": TEAM}, "api_app_id": "A0001",
        "trigger_id": f"trig.{next(_ids)}",
        "view": {**view, "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}}},
    }
    response = await slack.post(urllib.parse.urlencode({"payload": json.dumps(payload)}),
                                "application/x-www-form-urlencoded")
    assert response.status_code == 200 and not response.content  # the form closes
    await slack.settle()


async def test_an_approval_round_across_a_restart(slack_settings, fake_slack, sandbox):
    settings = slack_settings()
    async with SlackHarness.open(settings, fake_slack) as slack:
        # an operator turns approvals on in C1
        _, url = await slack.slash(f"admin approvals on <@{REV}|rev> <@{REV2}>", user=ADMIN)
        assert (await slack.fake.wait_response(url))["text"] == shown(messages.approvals_set(
            (f"slack:{TEAM}:{REV}", f"slack:{TEAM}:{REV2}"), 72))
        await slack.settle()

        job, url = await _make(slack, "a spring sale poster")
        job = slack.core.jobs.get(job.id)
        # made and charged; the requester was told privately, and got the image in their DM
        assert job.state is JobState.DELIVERED
        assert slack.core.ledger.balance(U1).balance == 180 - 18
        assert slack.fake.responses_to(url)[0]["text"] == shown(messages.review_coming(job))
        (mine,) = _uploads_to(slack, dm("U1"))
        assert "Sent for review" in mine.params["initial_comment"]
        # each reviewer got it by DM, with Approve and Reject
        for reviewer in (REV, REV2):
            (upload,) = _uploads_to(slack, dm(reviewer))
            assert "asked for this image in <#C1>" in upload.params["initial_comment"]
            (buttons,) = _posts_in(slack, dm(reviewer))
            raw = buttons.params["blocks"]
            actions = of_type(valid_blocks(json.loads(raw) if isinstance(raw, str) else raw), "actions")[0]["elements"]
            assert [(b["action_id"], b["value"]) for b in actions] == [(ACTION_APPROVE, job.id),
                                                                       (ACTION_REJECT, job.id)]
        # the channel saw nothing
        assert _posts_in(slack, "C1") == [] and _uploads_to(slack, "C1") == []

    # a restart: the buttons still work
    async with SlackHarness.open(settings, fake_slack) as slack:
        # the requester's own press is refused; nothing posted
        assert await _answer_to_press(slack, ACTION_APPROVE, job.id, "U1") == shown(messages.review_own_image())
        assert _posts_in(slack, "C1") == []

        assert await _answer_to_press(slack, ACTION_APPROVE, job.id, REV) == shown(messages.review_approved("C1"))
        (post,) = _posts_in(slack, "C1")
        assert "approved by <@UREV>" in post.params["text"]
        (upload,) = _uploads_to(slack, "C1")
        assert upload.params["thread_ts"] == slack.core.jobs.get(job.id).reply.data["progress_ts"]
        final = slack.fake.messages[upload.params["thread_ts"]]
        assert [b["type"] for b in final.blocks] == ["section", "image", "actions"]  # inline, as any result
        assert "approved by <@UREV>" in final.blocks[0]["text"]["text"]
        assert [b["action_id"] for b in final.blocks[2]["elements"]][:2] == ["imagine_reroll", "imagine_vary"]

        # a second press is told what was decided and by whom; nothing is posted again
        late = await _answer_to_press(slack, ACTION_REJECT, job.id, REV2)
        assert late.startswith("This image was already approved by <@UREV> on ")
        late = await _answer_to_press(slack, ACTION_APPROVE, job.id, REV2)
        assert "already approved by <@UREV>" in late
        assert len(_posts_in(slack, "C1")) == 1 and len(_uploads_to(slack, "C1")) == 1
        assert slack.core.ledger.balance(U1).balance == 180 - 18  # charged once, when it was made


async def test_a_rejection_and_an_expiry(slack_settings, fake_slack, sandbox):
    settings = slack_settings()
    async with SlackHarness.open(settings, fake_slack) as slack:
        _, url = await slack.slash(f"admin approvals on <@{REV}>", user=ADMIN)
        await slack.fake.wait_response(url)
        await slack.settle()
        rejected, _ = await _make(slack, "a banner with the old logo")
        expiring, _ = await _make(slack, "a banner nobody looks at")

    async with SlackHarness.open(settings, fake_slack) as slack:
        # Reject opens a form for the reason; sending it tells the requester, and the channel sees nothing
        await slack.press(ACTION_REJECT, rejected.id, user=REV, channel=dm(REV))
        await slack.fake.wait_for("views.open")
        await slack.settle()
        view = slack.fake.views[-1]
        assert view["callback_id"] == "imagine_reject_modal" and [b["block_id"] for b in view["blocks"]] == ["reason"]
        await _submit_reason(slack, view, REV, "the logo is the old one")
        note = _posts_in(slack, dm("U1"))[-1]
        assert note.params["text"] == shown(messages.review_rejected_to_requester(
            slack.core.jobs.get(rejected.id), "C1", f"slack:{TEAM}:{REV}", "the logo is the old one"))
        assert "the logo is the old one" in note.params["text"]
        assert slack.core.approvals.store.get(rejected.id).state == "rejected"
        assert _posts_in(slack, "C1") == []

        # nobody decides on the other one: after APPROVAL_EXPIRE_H it expires and the requester is told
        await slack.core.approvals.expire_due(utcnow() + timedelta(hours=72, minutes=1))
        await slack.settle()
        assert _posts_in(slack, dm("U1"))[-1].params["text"] == shown(messages.review_expired_to_requester(
            slack.core.jobs.get(expiring.id), "C1", 72))
        late = await _answer_to_press(slack, ACTION_APPROVE, expiring.id, REV)
        assert late.startswith("This review expired")
        assert _posts_in(slack, "C1") == [] and _uploads_to(slack, "C1") == []


async def test_an_approved_post_cut_short_is_finished_after_a_restart_never_posted_twice(slack_settings, fake_slack,
                                                                                         sandbox):
    settings = slack_settings()
    async with SlackHarness.open(settings, fake_slack) as slack:
        _, url = await slack.slash(f"admin approvals on <@{REV}>", user=ADMIN)
        await slack.fake.wait_response(url)
        await slack.settle()
        job, _ = await _make(slack, "a window display")
        # the message is posted and the image uploaded into its thread, then Slack fails the final edit
        slack.fake.fail("chat.update", "internal_error")
        answer = await _answer_to_press(slack, ACTION_APPROVE, job.id, REV)
        assert answer == shown(messages.review_approved_not_posted("C1", messages.review_retrying()))
        assert len(_posts_in(slack, "C1")) == 1 and len(_uploads_to(slack, "C1")) == 1
        assert slack.core.approvals.store.get(job.id).posted_at is None

    async with SlackHarness.open(settings, fake_slack) as slack:  # the next start finishes it
        await slack.core.approvals.wait_idle()
        assert slack.core.approvals.store.get(job.id).posted_at is not None
        (post,) = _posts_in(slack, "C1")
        assert len(_uploads_to(slack, "C1")) == 1  # not uploaded again
        final = slack.fake.messages[slack.core.jobs.get(job.id).reply.data["progress_ts"]]
        assert final.channel == post.params["channel"] == "C1"
        assert [b["type"] for b in final.blocks] == ["section", "image", "actions"]
