"""Delivery happens once on Discord: the message id is the job's receipt, recorded the moment Discord
returns it; a ``Delivered`` handed again (the process died between the post and the charge, or another
process took the job over) posts nothing twice."""

from __future__ import annotations

import pytest

from imagine_bot.core.events import Delivered, ImageFile
from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.sandbox import render_png

from .conftest import ALICE, discord_user, old_interaction_time


def an_image(tmp_path) -> ImageFile:
    path = tmp_path / "again-0.png"
    path.write_bytes(render_png("again", "1:1", "basic", scale=0.125))
    return ImageFile(path, "image/png", path.stat().st_size)


@pytest.mark.parametrize("where", ["interaction", "channel"])
async def test_a_delivery_handed_again_with_its_receipt_posts_nothing_twice(open_bot, tmp_path, where):
    async with open_bot() as bot:
        created = {"created": old_interaction_time(16)} if where == "channel" else {}
        sent = await bot.imagine(ALICE, "post me once", **created)
        if where == "channel":
            await bot.fake.wait_for("POST", rf"/channels/{sent['channel']['id']}/messages")
        else:
            await bot.final_edit(sent)
        await bot.idle()
        job = bot.core.jobs.recent(discord_user(ALICE).key, limit=1)[0]
        assert job.state is JobState.DELIVERED
        # recorded as soon as Discord answered the post
        assert job.receipt == {"message_id": job.reply.data["message_id"], "delivered_in": where}
        results = [c for c in bot.fake.calls if c.files]
        assert len(results) == 1

        # "crashed after the post, before the capture": the next owner hands Delivered again, with the receipt
        await bot.service.frontend.publish(Delivered(job, (an_image(tmp_path),), 162, dict(job.receipt)))
        await bot.idle()
        assert [c for c in bot.fake.calls if c.files] == results  # no second upload, no second message
        assert len(bot.fake.find("POST", rf"/channels/{sent['channel']['id']}/messages")) == (where == "channel")
