"""Delivery receipts: a front end records what the platform returned as soon as it posted, and a
``Delivered`` handed again (after a crash between post and charge, or a takeover) carries it back, so the
images are not posted twice."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.events import Delivered
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.storage.db import open_db
from imagine_bot.core.storage.jobs import SqliteJobStore as JobStore

ALICE = UserRef("terminal", "local", "alice")
REPLY = ReplyTo("terminal", "test")


async def test_record_receipt_merges_and_survives_reopening(core, tmp_path):
    core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core))
    job = await core.imagine(ALICE, REPLY, "a receipt")
    assert core.jobs.get(job.id).receipt == {}
    core.record_receipt(job.id, message_id="m1")
    core.record_receipt(job.id, file_ids=["F1", "F2"])
    assert core.jobs.get(job.id).receipt == {"message_id": "m1", "file_ids": ["F1", "F2"]}
    await core.orchestrator.wait_idle()
    reopened = JobStore(open_db(core.settings.IMAGINE_DB_PATH))
    assert reopened.get(job.id).receipt["message_id"] == "m1"


class DiesAfterPosting(TerminalFrontEnd):
    """Posts (and records the receipt), then the process dies before the charge."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.posted = asyncio.Event()

    async def publish(self, event):
        await super().publish(event)
        if isinstance(event, Delivered):
            self.posted.set()
            await asyncio.Event().wait()  # never returns: the process is stopped here


async def test_delivered_again_after_a_crash_carries_the_receipt_and_posts_nothing_twice(make_settings, tmp_path):
    settings = make_settings()
    out = tmp_path / "out"
    async with ImagineCore.open(settings) as core:
        first = DiesAfterPosting(out, Console(file=io.StringIO()), bar=False, core=core)
        core.register(first)
        job = await core.imagine(ALICE, REPLY, "posted once")
        await asyncio.wait_for(first.posted.wait(), timeout=10)
        saved = sorted(p for p in out.iterdir() if p.name != "latest.png")  # (the copy under a stable name)
        assert len(saved) == 1
        for path in saved:
            path.write_bytes(b"the copy the user already has")
    async with ImagineCore.open(settings) as core:
        row = core.jobs.get(job.id)
        assert row.state is JobState.DELIVERING and row.receipt["saved"] == [str(saved[0].resolve())]
        second = TerminalFrontEnd(out, Console(file=io.StringIO()), bar=False, core=core)
        core.register(second)
        await core.start()
        await core.orchestrator.wait_idle()
        delivered = [e for e in second.events if isinstance(e, Delivered)]
        assert len(delivered) == 1 and delivered[0].receipt == row.receipt
        # the second attempt did not save (post) again, and the job was charged exactly once
        assert saved[0].read_bytes() == b"the copy the user already has"
        assert core.jobs.get(job.id).state is JobState.DELIVERED
        assert [e.kind for e in core.ledger.history(ALICE)][:2] == ["capture", "reserve"]
        assert core.ledger.verify() == []
