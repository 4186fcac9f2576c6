"""The result in the channel: the image inline in the result message, its fallbacks, delete, reroll, App Home.

Everything runs through the real Bolt stack and the fake Slack Web API, which checks every block with
slack_sdk's models and refuses a ``slack_file`` that is not (yet) shared in the channel, like Slack.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.models.views import View

from imagine_bot.bots.slack import blocks
from imagine_bot.bots.slack.blocks import ACTION_DELETE, ACTION_REROLL
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.events import Delivered
from imagine_bot.core.jobs.model import Job, JobState
from imagine_bot.core.storage.db import utcnow

from .conftest import TEAM, SlackHarness, of_type, valid_blocks

U1 = UserRef("slack", TEAM, "U1")


async def one_image(slack: SlackHarness, prompt: str = "a lighthouse at dusk") -> Job:
    await slack.slash(prompt)
    await slack.settle()
    job = slack.core.jobs.recent(limit=1)[0]
    assert job.state is JobState.DELIVERED
    return job


def image_updates(slack: SlackHarness, ts: str) -> list[dict[str, Any]]:
    """The chat.update calls on ``ts`` that tried to show an image block."""
    return [c.params for c in slack.fake.calls_to("chat.update")
            if c.params["ts"] == ts and of_type(c.params.get("blocks") or [], "image")]


def assert_charged_once(slack: SlackHarness, user: UserRef = U1, images: int = 1) -> None:
    account = slack.core.ledger.balance(user)
    assert (account.balance, account.held) == (180 - 18 * images, 0)
    assert slack.core.ledger.verify() == []


async def test_a_workspace_that_refuses_the_image_block_gets_the_thread_message(slack: SlackHarness):
    slack.fake.refuse_image_blocks = True
    job = await one_image(slack)
    ts, [file_id] = job.reply.data["progress_ts"], job.reply.data["file_ids"]

    # files.info said the file was shared, so the refusal is final: one try, then caption and buttons
    assert slack.fake.calls_to("files.info")
    assert len(image_updates(slack, ts)) == 1
    final = slack.fake.messages[ts]
    assert [b["type"] for b in valid_blocks(final.blocks or [])] == ["section", "actions"]
    assert "18 credits" in final.text and "162 left" in final.text
    # the image itself is in the message's thread: nothing is lost, charged once
    assert slack.fake.files[file_id]["thread_ts"] == ts and slack.fake.files[file_id]["channel"] == "C1"
    assert_charged_once(slack)


async def test_a_file_not_yet_processed_is_waited_for_through_files_info(slack: SlackHarness):
    slack.fake.processing_looks = 2
    job = await one_image(slack)
    ts, [file_id] = job.reply.data["progress_ts"], job.reply.data["file_ids"]
    infos = slack.fake.calls_to("files.info")
    assert [c.params["file"] for c in infos] == [file_id] * 3  # unshared twice, then shared
    assert len(image_updates(slack, ts)) == 1  # the edit waited, so it went through at once
    assert of_type(slack.fake.messages[ts].blocks or [], "image")[0]["slack_file"] == {"id": file_id}
    assert_charged_once(slack)


async def test_without_files_read_the_edit_itself_is_retried(slack: SlackHarness):
    slack.fake.fail("files.info", "missing_scope")  # an install from before the files:read scope
    slack.fake.processing_looks = 2
    job = await one_image(slack)
    ts, [file_id] = job.reply.data["progress_ts"], job.reply.data["file_ids"]
    assert len(image_updates(slack, ts)) == 3  # refused twice (invalid_blocks), then shown
    assert of_type(valid_blocks(slack.fake.messages[ts].blocks or []), "image")[0]["slack_file"] == {"id": file_id}
    assert_charged_once(slack)


async def test_a_file_never_processed_in_time_falls_back_to_the_thread(slack: SlackHarness):
    slack.fake.processing_looks = 100
    job = await one_image(slack)
    ts = job.reply.data["progress_ts"]
    assert len(slack.fake.calls_to("files.info")) == 5  # a look now and after each of the four waits
    assert [b["type"] for b in slack.fake.messages[ts].blocks or []] == ["section", "actions"]
    assert_charged_once(slack)


async def test_a_repeated_delivery_shows_the_image_without_uploading_it_again(slack: SlackHarness):
    """A crash between the upload and the final edit: Delivered comes again; the file is not uploaded twice."""
    job = await one_image(slack)
    ts, [file_id] = job.reply.data["progress_ts"], job.reply.data["file_ids"]
    await slack.service.client.chat_update(channel="C1", ts=ts, text="Working on it", blocks=[])  # as it was
    uploads = len(slack.fake.calls_to("files.completeUploadExternal"))

    await slack.service.frontend.publish(Delivered(slack.core.jobs.get(job.id), (), 162))
    await slack.settle()  # the result edit is the job's final status, sent by the outbox
    assert len(slack.fake.calls_to("files.completeUploadExternal")) == uploads == 1
    shown = valid_blocks(slack.fake.messages[ts].blocks or [])
    assert of_type(shown, "image")[0]["slack_file"] == {"id": file_id}
    assert len(slack.fake.calls_to("chat.postMessage")) == 1  # no second message either


async def test_result_in_thread_keeps_the_quiet_layout(slack_settings, fake_slack):
    async with SlackHarness.open(slack_settings(SLACK_RESULT_IN_THREAD=True), fake_slack) as slack:
        job = await one_image(slack)
        ts = job.reply.data["progress_ts"]
        [complete] = slack.fake.calls_to("files.completeUploadExternal")
        assert complete.params["thread_ts"] == ts
        assert complete.params["initial_comment"].startswith("<@U1> `a lighthouse at dusk`")
        assert not image_updates(slack, ts) and not slack.fake.calls_to("files.info")
        final = slack.fake.messages[ts]
        assert [b["type"] for b in valid_blocks(final.blocks or [])] == ["section", "actions"]
        assert final.text == complete.params["initial_comment"]
        assert_charged_once(slack)


async def test_delete_removes_the_message_and_the_file(slack: SlackHarness):
    job = await one_image(slack)
    ts, [file_id] = job.reply.data["progress_ts"], job.reply.data["file_ids"]
    assert of_type(slack.fake.messages[ts].blocks or [], "image")

    _, url = await slack.press(ACTION_DELETE, job.id, message_ts=ts)
    assert (await slack.fake.wait_response(url))["text"] == "Deleted."
    assert slack.fake.messages[ts].deleted
    assert slack.fake.files[file_id]["deleted"]
    # the message goes first: nobody sees it with a broken image
    assert [c.method for c in slack.fake.calls if c.method in ("chat.delete", "files.delete")] == [
        "chat.delete", "files.delete"]
    with pytest.raises(SlackApiError) as gone:
        await slack.service.client.files_info(file=file_id)
    assert gone.value.response["error"] == "file_not_found"


async def test_reroll_posts_a_new_result_message_and_leaves_the_first_alone(slack: SlackHarness):
    first = await one_image(slack)
    first_ts, [first_file] = first.reply.data["progress_ts"], first.reply.data["file_ids"]
    first_blocks = slack.fake.messages[first_ts].blocks
    updates_before = len(slack.fake.calls_to("chat.update"))

    _, url = await slack.press(ACTION_REROLL, first.id, message_ts=first_ts)
    await slack.settle()
    assert slack.fake.responses_to(url) == []
    second = slack.core.jobs.recent(limit=1)[0]
    assert second.parent_id == first.id and second.state is JobState.DELIVERED
    second_ts, [second_file] = second.reply.data["progress_ts"], second.reply.data["file_ids"]

    assert second_ts != first_ts and second_file != first_file
    assert [c.params["ts"] for c in slack.fake.calls_to("chat.update")[updates_before:]] == (
        [second_ts] * (len(slack.fake.calls_to("chat.update")) - updates_before))  # the first is never edited
    assert slack.fake.messages[first_ts].blocks == first_blocks
    second_blocks = valid_blocks(slack.fake.messages[second_ts].blocks or [])
    assert of_type(second_blocks, "image")[0]["slack_file"] == {"id": second_file}
    assert slack.fake.messages[second_ts].channel == "C1" and slack.fake.messages[second_ts].thread_ts is None
    assert_charged_once(slack, images=2)


async def open_home(slack: SlackHarness, count: int = 1) -> dict[str, Any]:
    response = await slack.event({"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home",
                                  "event_ts": f"{time.time():.6f}"})
    assert response.status_code == 200
    await slack.settle()
    calls = slack.fake.calls_to("views.publish")
    assert len(calls) >= count
    return calls[-1].params["view"]  # type: ignore[no-any-return]


async def test_app_home_shows_thumbnails_cost_and_balance_and_forgets_deleted_images(slack: SlackHarness):
    kept = await one_image(slack, "a lighthouse at dusk")
    gone = await one_image(slack, "a red kite --quality high")
    _, url = await slack.press(ACTION_DELETE, gone.id)
    await slack.fake.wait_response(url)

    view = await open_home(slack)
    View(**view).validate_json()
    assert view["type"] == "home" and len(view["blocks"]) <= blocks.MAX_VIEW_BLOCKS
    sections = of_type(view["blocks"], "section")
    text = " ".join(b["text"]["text"] for b in sections)
    balance = 180 - kept.cost - gone.cost
    assert f"You have {balance} credits" in text
    [row] = [b for b in sections if "accessory" in b]
    assert row["text"]["text"].startswith("`a lighthouse at dusk`\n18 credits · <!date^")
    assert row["accessory"] == {"type": "image", "slack_file": {"id": kept.reply.data["file_ids"][0]},
                                "alt_text": "a lighthouse at dusk"}
    assert "a red kite" not in text  # deleted: its file is gone
    assert slack.fake.calls_to("views.publish")[-1].params["user_id"] == "U1"


async def test_app_home_without_thumbnails_when_slack_refuses_them(slack: SlackHarness):
    await one_image(slack)
    slack.fake.refuse_image_blocks = True
    view = await open_home(slack, count=2)
    [refused, _] = slack.fake.calls_to("views.publish")
    assert any("accessory" in b for b in refused.params["view"]["blocks"])
    View(**view).validate_json()
    assert not any("accessory" in b for b in view["blocks"])
    assert "`a lighthouse at dusk`" in " ".join(b["text"]["text"] for b in of_type(view["blocks"], "section"))


def test_app_home_stays_under_the_block_limit_with_many_images():
    many = [blocks.HomeImage(f"image {i}", utcnow(), 18, f"F{i:08d}") for i in range(300)]
    view = blocks.home("You have 9 credits.", "Type /imagine.", many)
    assert len(view["blocks"]) == blocks.MAX_VIEW_BLOCKS
    View(**view).validate_json()
    empty = blocks.home("You have 9 credits.", "Type /imagine.", [])
    assert empty["blocks"][-1]["text"]["text"] == "No images yet."
