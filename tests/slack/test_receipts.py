"""Delivery happens once on Slack: the uploaded file ids are the job's receipt."""

from __future__ import annotations

from imagine_bot.core.events import Delivered, ImageFile

from .conftest import SlackHarness


async def test_a_delivery_handed_again_with_its_receipt_uploads_nothing_twice(slack: SlackHarness):
    """Crashed after files.completeUploadExternal, before the charge: the next owner hands Delivered again
    with the receipt recorded the moment the upload returned; nothing is uploaded or posted twice."""
    await slack.slash("upload me once")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    [file_id] = job.reply.data["file_ids"]
    assert job.receipt == {"file_ids": [file_id], "channel": "C1", "ts": job.reply.data["progress_ts"]}
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
