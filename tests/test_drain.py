"""Drain on SIGTERM: new commands get a plain "restarting" answer, a createTask call in flight and a
delivery in progress finish (so nothing is refunded that the gateway will bill, and nothing is posted
twice), everything else is left for the next process with its lease released, within DRAIN_S."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ShuttingDown
from imagine_bot.core.events import Delivered
from imagine_bot.core.jobs.model import JobState, ReplyTo
from tests.conftest import until

ALICE = UserRef("terminal", "local", "alice")
REPLY = ReplyTo("terminal", "test")


def recorder(tmp_path, core):
    return TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core)



async def test_a_create_task_in_flight_finishes_and_the_job_is_left_running_not_refunded(
        make_settings, sandbox, tmp_path):
    settings = make_settings(MODKIE_TIMEOUT_S=5)
    async with ImagineCore.open(settings) as core:
        core.register(recorder(tmp_path, core))
        sandbox.inject("createTask", hang=0.5)  # the gateway takes its time to accept
        job = await core.imagine(ALICE, REPLY, "drained mid-submit")
        await until(lambda: core.jobs.get(job.id).state is JobState.SUBMITTING)
        await core.orchestrator.drain(5)
        row = core.jobs.get(job.id)
        # createTask finished: the task id is saved, the job left for the next owner, lease released
        assert row.state is JobState.RUNNING and row.task_id and row.owner is None
    async with ImagineCore.open(settings) as core:
        core.register(recorder(tmp_path, core))
        await core.start()
        await core.orchestrator.wait_idle()
        assert core.jobs.get(job.id).state is JobState.DELIVERED
        assert sandbox.requests["createTask"] == 1
        assert core.ledger.balance(ALICE).balance == 180 - 18


class SlowPoster(TerminalFrontEnd):
    def __init__(self, *args, delay: float, **kw) -> None:
        super().__init__(*args, **kw)
        self.delay = delay
        self.posting = asyncio.Event()

    async def publish(self, event):
        if isinstance(event, Delivered):
            self.posting.set()
            await asyncio.sleep(self.delay)  # an upload in progress
        await super().publish(event)


async def test_a_delivery_in_progress_finishes_and_is_charged(core, tmp_path):
    fe = SlowPoster(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core, delay=0.5)
    core.register(fe)
    job = await core.imagine(ALICE, REPLY, "drained mid-upload")
    await asyncio.wait_for(fe.posting.wait(), 10)
    await core.orchestrator.drain(5)
    assert core.jobs.get(job.id).state is JobState.DELIVERED
    assert len(fe.saved[job.id]) == 1
    assert core.ledger.balance(ALICE).balance == 180 - 18


async def test_drain_is_bounded_by_its_timeout(core, tmp_path):
    fe = SlowPoster(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core, delay=60)
    core.register(fe)
    job = await core.imagine(ALICE, REPLY, "a stuck upload")
    await asyncio.wait_for(fe.posting.wait(), 10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await core.orchestrator.drain(0.3)
    assert loop.time() - started < 3
    row = core.jobs.get(job.id)
    assert row.state is JobState.DELIVERING and row.owner is None  # the next owner delivers it (receipt)


async def test_waiting_and_tracking_jobs_are_left_at_once_for_the_next_owner(make_settings, tmp_path):
    async with ImagineCore.open(make_settings(MAX_ACTIVE_JOBS=1, MAX_ACTIVE_JOBS_PER_USER=5)) as core:
        core.register(recorder(tmp_path, core))
        tracking = await core.imagine(ALICE, REPLY, "tracking sandbox:slow")
        waiting = await core.imagine(ALICE, REPLY, "waiting for a slot")
        await until(lambda: core.jobs.get(tracking.id).state is JobState.RUNNING)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await core.orchestrator.drain(20)
        assert loop.time() - started < 2  # nothing worth waiting for
        rows = [core.jobs.get(tracking.id), core.jobs.get(waiting.id)]
        assert [(r.state, r.owner) for r in rows] == [(JobState.RUNNING, None), (JobState.QUEUED, None)]
        assert core.ledger.balance(ALICE).held == 36  # nothing refunded, nothing charged
        with pytest.raises(ShuttingDown) as refused:
            await core.imagine(ALICE, REPLY, "one more")
        assert refused.value.user_message.startswith("The bot is restarting")
