"""Drain on SIGTERM: new commands get a plain "restarting" answer, a createTask call in flight and a
delivery in progress finish (so nothing is refunded that the gateway will bill, and nothing is posted
twice), everything else is left for the next process with its lease released, within DRAIN_S."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ShuttingDown
from imagine_bot.core.events import Delivered
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.sandbox import SandboxGateway
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
    fe = SlowPoster(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core, delay=3600)
    core.register(fe)
    job = await core.imagine(ALICE, REPLY, "a stuck upload")
    await asyncio.wait_for(fe.posting.wait(), 10)
    # the upload never ends: the drain returns all the same, at its timeout (the guard only stops a hang)
    await asyncio.wait_for(core.orchestrator.drain(0.3), 60)
    assert fe.saved.get(job.id) is None  # cut mid-upload, not finished
    row = core.jobs.get(job.id)
    assert row.state is JobState.DELIVERING and row.owner is None  # the next owner delivers it (receipt)


async def test_waiting_and_tracking_jobs_are_left_at_once_for_the_next_owner(make_settings, make_sandbox, tmp_path):
    sandbox = await make_sandbox(delays={"waiting": 0.01, "queuing": 0.01, "generating": 3600})  # an hour's work
    settings = make_settings(MAX_ACTIVE_JOBS=1, MAX_ACTIVE_JOBS_PER_USER=5, MODKIE_BASE_URL=sandbox.base_url,
                             JOB_TIMEOUT_S=7200)
    async with ImagineCore.open(settings) as core:
        core.register(recorder(tmp_path, core))
        tracking = await core.imagine(ALICE, REPLY, "tracking for an hour")
        waiting = await core.imagine(ALICE, REPLY, "waiting for a slot")
        await until(lambda: core.jobs.get(tracking.id).state is JobState.RUNNING)
        # nothing worth waiting for: the drain leaves both at once, where they are, however long it may take
        # (a drain that waited for the tracked job would wait an hour: the guard stops that)
        await asyncio.wait_for(core.orchestrator.drain(3600), 30)
        rows = [core.jobs.get(tracking.id), core.jobs.get(waiting.id)]
        assert [(r.state, r.owner) for r in rows] == [(JobState.RUNNING, None), (JobState.QUEUED, None)]
        assert core.ledger.balance(ALICE).held == 36  # nothing refunded, nothing charged
        with pytest.raises(ShuttingDown) as refused:
            await core.imagine(ALICE, REPLY, "one more")
        assert refused.value.user_message.startswith("The bot is restarting")


class Door:
    """The gateway's port while the gateway cannot be reached: a listening socket whose accept queue is
    full, so a connection attempt hangs (its SYN is dropped) until the door closes, when it is refused.
    Either way the request never leaves the bot."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(0)
        self.port = self.socket.getsockname()[1]
        self._queued = [socket.create_connection(("127.0.0.1", self.port))]  # fills the accept queue
        late = socket.socket()
        late.setblocking(False)
        late.connect_ex(("127.0.0.1", self.port))  # and one more half-open, for good measure
        self._queued.append(late)

    def close(self) -> None:
        for s in (*self._queued, self.socket):
            s.close()


async def test_a_create_task_never_sent_is_not_tried_again_while_draining_and_goes_back_to_the_queue(
        make_settings, tmp_path):
    """The gateway cannot be reached (createTask's connection never opens) and SIGTERM comes meanwhile: no
    new createTask attempt starts once the drain began; the job goes back to ``queued`` with its lease
    released and nothing charged, and the next owner submits it (once) and delivers it."""
    door = Door()
    settings = make_settings(MODKIE_BASE_URL=f"http://127.0.0.1:{door.port}", MODKIE_TIMEOUT_S=30, DRAIN_S=10)
    gateway = SandboxGateway(delays={"waiting": 0.02, "queuing": 0.02, "generating": 0.04}, image_scale=0.125)
    try:
        async with ImagineCore.open(settings) as core:
            core.gateway.backoff_base = 0.01  # the client would try again at once
            core.register(recorder(tmp_path, core))
            job = await core.imagine(ALICE, REPLY, "a gateway out of reach")
            await until(lambda: core.jobs.get(job.id).state is JobState.SUBMITTING
                        and core.gateway.requests_sent["createTask"] == 1)  # connecting
            draining = asyncio.create_task(core.orchestrator.drain(settings.DRAIN_S))
            await asyncio.sleep(0)  # the drain has begun
            door.close()  # the connection attempt is refused: createTask never left
            await draining
            row = core.jobs.get(job.id)
            assert (row.state, row.owner, row.task_id) == (JobState.QUEUED, None, None), row.error_message
            assert core.gateway.requests_sent["createTask"] == 1  # no attempt after the drain began
            account = core.ledger.balance(ALICE)
            assert (account.balance, account.held) == (180, 18)  # nothing charged, nothing refunded
            assert {e.kind for e in core.ledger.history(ALICE) if e.job_id == job.id} == {"reserve"}
        await gateway.start(port=door.port)  # the gateway is back: the next owner takes the job
        async with ImagineCore.open(settings) as core:
            core.register(recorder(tmp_path, core))
            await core.start()
            await until(lambda: core.jobs.get(job.id).state is JobState.DELIVERED)
            assert gateway.requests["createTask"] == 1
            assert sorted(e.kind for e in core.ledger.history(ALICE) if e.job_id == job.id) == ["capture", "reserve"]
            assert core.ledger.verify() == []
    finally:
        door.close()
        await gateway.stop()


async def test_a_create_task_call_ends_before_the_drain_does_whatever_the_request_timeout(
        make_settings, sandbox, tmp_path):
    """httpx's timeouts apply per phase (and MODKIE_TIMEOUT_S may be set above DRAIN_S), so one attempt
    could outlast the drain; the whole createTask call is bounded below DRAIN_S. A gateway that does not
    answer in time: the call ends by itself within the drain (an unknown outcome: failed, refunded and the
    user told, as any createTask timeout), instead of being cut when DRAIN_S ends and left ``submitting``."""
    settings = make_settings(MODKIE_TIMEOUT_S=60, DRAIN_S=2)
    async with ImagineCore.open(settings) as core:
        fe = recorder(tmp_path, core)
        core.register(fe)
        sandbox.inject("createTask", hang=60)  # answers, but far too slowly
        job = await core.imagine(ALICE, REPLY, "a gateway that takes its time")
        await until(lambda: sandbox.requests["createTask"] == 1)  # on the wire
        await core.orchestrator.drain(settings.DRAIN_S)
        row = core.jobs.get(job.id)
        assert (row.state, row.error_code) == (JobState.FAILED, "timed_out"), (row.state, row.error_message)
        assert sandbox.requests["createTask"] == 1
        assert sorted(e.kind for e in core.ledger.history(ALICE) if e.job_id == job.id) == ["release", "reserve"]
        assert core.ledger.balance(ALICE).available == 180 and core.ledger.verify() == []
