"""Delivery happens once on Slack: the uploaded file ids are the job's receipt, recorded before the files
are shared (``pending_file_ids``) and again once Slack confirmed the upload (``file_ids``)."""

from __future__ import annotations

import logging

import pytest

from imagine_bot.core.errors import DeliveryInterrupted
from imagine_bot.core.events import Delivered, ImageFile
from imagine_bot.core.jobs.model import Job, JobState

from .conftest import SlackHarness, of_type

COMPLETE = "files.completeUploadExternal"
RESERVE = "files.getUploadURLExternal"


def shared_in_c1(slack: SlackHarness) -> list[str]:
    return [f["id"] for f in slack.fake.files.values() if f.get("channels") == ["C1"]]


def shown(slack: SlackHarness, job: Job) -> list[str]:
    """The file ids the job's progress message shows inline."""
    message = slack.fake.messages[job.reply.data["progress_ts"]]
    return [b["slack_file"]["id"] for b in of_type(message.blocks or [], "image")]


async def delivered_then_forgotten(slack: SlackHarness) -> tuple[Job, ImageFile]:
    """A delivered job whose upload only the receipt remembers (as when a process stopped mid-delivery)."""
    await slack.slash("upload me once")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERED
    slack.core.jobs.set_reply_data(job.id, file_ids=[])
    slack.core.record_receipt(job.id, file_ids=None, pending_file_ids=None)
    image = slack.core.settings.spool_dir / "again.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\x89PNG again")
    return slack.core.jobs.get(job.id), ImageFile(image, "image/png", 10)


async def redeliver(slack: SlackHarness, job: Job, image: ImageFile) -> None:
    """The next owner hands Delivered again with the receipt as recorded (the core's retry)."""
    fresh = slack.core.jobs.get(job.id)
    await slack.service.frontend.publish(Delivered(fresh, (image,), 162, dict(fresh.receipt)))
    await slack.settle()


async def test_a_delivery_handed_again_with_its_receipt_uploads_nothing_twice(slack: SlackHarness):
    """Crashed after files.completeUploadExternal, before the charge: the next owner hands Delivered again
    with the receipt recorded the moment the upload returned; nothing is uploaded or posted twice."""
    await slack.slash("upload me once")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    [file_id] = job.reply.data["file_ids"]
    assert job.receipt == {"pending_file_ids": [file_id], "file_ids": [file_id], "channel": "C1",
                           "ts": job.reply.data["progress_ts"]}
    slack.core.jobs.set_reply_data(job.id, file_ids=[])  # only the receipt knows (as after a takeover)
    image = slack.core.settings.spool_dir / "again.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\x89PNG not read")
    await slack.service.frontend.publish(
        Delivered(slack.core.jobs.get(job.id), (ImageFile(image, "image/png", 13),), 162, dict(job.receipt)))
    await slack.settle()
    assert len(slack.fake.calls_to("files.completeUploadExternal")) == 1
    assert len(slack.fake.calls_to("chat.postMessage")) == 1
    message = slack.fake.messages[job.reply.data["progress_ts"]]
    assert message.blocks and message.blocks[-1]["type"] == "actions"  # the result was repaired, not reposted


async def test_a_lost_complete_answer_is_checked_with_files_info_not_uploaded_again(slack: SlackHarness):
    """Slack shared the file but its answer to completeUploadExternal was lost (HTTP 500): files.info shows
    the file shared, so the job is delivered with that one image, charged once."""
    slack.fake.lose_answer(COMPLETE)
    await slack.slash("answer lost")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERED
    assert [c.status for c in slack.fake.calls_to(COMPLETE)] == [500]
    assert len(slack.fake.calls_to(RESERVE)) == 1
    [file_id] = shared_in_c1(slack)
    assert job.receipt["file_ids"] == [file_id] and shown(slack, job) == [file_id]
    assert sorted(e.kind for e in slack.core.ledger.history(job.requester) if e.job_id == job.id) == [
        "capture", "reserve"]
    assert slack.core.ledger.verify() == []


async def test_a_lost_complete_answer_and_a_files_info_blip_end_delivered_and_charged_once(slack: SlackHarness):
    """Slack shared the file, its answer to completeUploadExternal was lost and files.info then failed once:
    nobody can tell yet, so it is a blip (``DeliveryInterrupted``), not a refusal. The core hands the delivery
    again with the pending file ids, files.info finds the file shared: delivered with that one image, charged
    once, nothing uploaded again, no failure said."""
    slack.core.orchestrator.delivery_backoff_s = (0.05,)
    slack.fake.lose_answer(COMPLETE)
    slack.fake.fail("files.info", "internal_error")
    await slack.slash("answer lost, then files.info down")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.DELIVERED, (job.error_code, job.error_message)
    assert [c.status for c in slack.fake.calls_to(COMPLETE)] == [500]
    assert len(slack.fake.calls_to(RESERVE)) == 1
    [file_id] = shared_in_c1(slack)
    assert job.receipt["file_ids"] == [file_id] and shown(slack, job) == [file_id]
    assert not any("Could not" in (c.params.get("text") or "") for c in slack.fake.calls_to("chat.update"))
    assert sorted(e.kind for e in slack.core.ledger.history(job.requester) if e.job_id == job.id) == [
        "capture", "reserve"]
    assert slack.core.ledger.verify() == []


async def test_a_retry_after_a_lost_complete_answer_finishes_without_uploading(slack: SlackHarness):
    """The answer to completeUploadExternal was lost and files.info could not tell at that moment: the
    delivery raises (nothing guessed); handed again with the recorded receipt, it finds the file shared and
    finishes the result: one completeUploadExternal, one file shared, one image shown."""
    job, image = await delivered_then_forgotten(slack)
    first_upload = shared_in_c1(slack)
    slack.fake.lose_answer(COMPLETE)
    slack.fake.fail("files.info", "internal_error")
    with pytest.raises(DeliveryInterrupted):  # a blip: the core hands it again
        await slack.service.frontend.publish(Delivered(job, (image,), 162, dict(job.receipt)))
    receipt = slack.core.jobs.get(job.id).receipt
    [pending] = receipt["pending_file_ids"]
    assert not receipt.get("file_ids")
    completes, reserves = len(slack.fake.calls_to(COMPLETE)), len(slack.fake.calls_to(RESERVE))

    await redeliver(slack, job, image)
    assert len(slack.fake.calls_to(COMPLETE)) == completes and len(slack.fake.calls_to(RESERVE)) == reserves
    assert shared_in_c1(slack) == [*first_upload, pending]  # this delivery shared exactly one file
    assert slack.core.jobs.get(job.id).receipt["file_ids"] == [pending]
    assert shown(slack, job) == [pending]


async def test_a_retry_after_a_crash_before_complete_uploads_once(slack: SlackHarness):
    """The receipt names a file id reserved by an attempt that died before completeUploadExternal: Slack
    never shared it, so the retry uploads once, anew, and shows the new file."""
    job, image = await delivered_then_forgotten(slack)
    reserved = await slack.service.client.files_getUploadURLExternal(filename="x.png", length=3)
    slack.core.record_receipt(job.id, pending_file_ids=[reserved["file_id"]])
    completes = len(slack.fake.calls_to(COMPLETE))

    await redeliver(slack, job, image)
    assert len(slack.fake.calls_to(COMPLETE)) == completes + 1
    [new_id] = slack.core.jobs.get(job.id).receipt["file_ids"]
    assert new_id != reserved["file_id"] and new_id in shared_in_c1(slack)
    assert reserved["file_id"] not in shared_in_c1(slack)
    assert shown(slack, job) == [new_id]


async def test_files_info_failing_on_a_retry_raises_and_uploads_nothing(slack: SlackHarness):
    job, image = await delivered_then_forgotten(slack)
    [earlier] = shared_in_c1(slack)
    slack.core.record_receipt(job.id, pending_file_ids=[earlier])
    reserves = len(slack.fake.calls_to(RESERVE))
    slack.fake.fail("files.info", "internal_error")
    with pytest.raises(DeliveryInterrupted, match=r"files\.info failed"):
        await slack.service.frontend.publish(Delivered(slack.core.jobs.get(job.id), (image,), 162,
                                                       dict(slack.core.jobs.get(job.id).receipt)))
    assert len(slack.fake.calls_to(RESERVE)) == reserves


async def test_without_files_read_a_retry_uploads_again_and_says_why(slack: SlackHarness, caplog):
    """An old install without ``files:read`` cannot ask files.info: the retry uploads again, with a warning."""
    job, image = await delivered_then_forgotten(slack)
    [earlier] = shared_in_c1(slack)
    slack.core.record_receipt(job.id, pending_file_ids=[earlier])
    slack.fake.fail("files.info", "missing_scope")
    with caplog.at_level(logging.WARNING):
        await redeliver(slack, job, image)
    [new_id] = slack.core.jobs.get(job.id).receipt["file_ids"]
    assert new_id != earlier
    assert "files:read" in caplog.text
