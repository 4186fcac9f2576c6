"""The job pipeline never waits on a chat API except to deliver, and a gateway slot is freed as soon as
the image is downloaded. Real core, real sandbox gateway; the front end is ours (its chat API "hangs")."""

from __future__ import annotations

import asyncio

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.events import Delivered, Failed, JobEvent, Progress, Queued
from imagine_bot.core.jobs.model import JobState, ReplyTo

REPLY = ReplyTo("terminal", "test")


class HangingFrontEnd:
    """Every status message hangs (a chat API that never answers); deliveries may be held on purpose."""

    platform = "terminal"

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self.never = asyncio.Event()
        self.hold_delivery: set[str] = set()
        self.release = asyncio.Event()
        self.seen = asyncio.Event()

    async def publish(self, event: JobEvent) -> None:
        self.events.append(event)
        self.seen.set()
        if isinstance(event, Delivered):
            if event.job.id in self.hold_delivery:
                await self.release.wait()
            return
        await self.never.wait()

    async def wait_for(self, predicate, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async def loop() -> None:
            while not predicate():
                self.seen.clear()
                await self.seen.wait()
        await asyncio.wait_for(loop(), timeout)


async def test_jobs_are_delivered_while_every_status_message_hangs(make_settings):
    async with ImagineCore.open(make_settings(MAX_ACTIVE_JOBS=1)) as core:
        fe = HangingFrontEnd()
        core.register(fe)
        users = [UserRef("terminal", "local", f"u{n}") for n in range(3)]
        jobs = [await asyncio.wait_for(core.imagine(who, REPLY, f"short job {n}"), 5)
                for n, who in enumerate(users)]
        await fe.wait_for(lambda: sum(isinstance(e, Delivered) for e in fe.events) == 3)
        # one after the other through the single gateway slot, each delivered although its status hangs
        assert [core.jobs.get(job.id).state for job in jobs] == [JobState.DELIVERED] * 3
        assert all(core.ledger.balance(who).available == 180 - 18 for who in users)
        assert core.orchestrator.outbox.busy >= 1  # the hanging status edits are still out there
        await core.orchestrator.stop()


async def test_the_gateway_slot_is_freed_once_the_image_is_downloaded(make_settings):
    async with ImagineCore.open(make_settings(MAX_ACTIVE_JOBS=1)) as core:
        fe = HangingFrontEnd()
        fe.never.set()  # statuses answer at once here
        core.register(fe)
        first = await core.imagine(UserRef("terminal", "local", "a"), REPLY, "first")
        fe.hold_delivery.add(first.id)  # its chat post takes as long as we like
        second = await core.imagine(UserRef("terminal", "local", "b"), REPLY, "second")
        # the second job reaches the gateway while the first one is still being posted
        await fe.wait_for(lambda: any(isinstance(e, Progress) and e.job.id == second.id for e in fe.events))
        assert core.jobs.get(first.id).state is JobState.DELIVERING
        fe.release.set()
        await core.orchestrator.wait_idle()
        assert core.jobs.get(first.id).state is JobState.DELIVERED
        assert core.jobs.get(second.id).state is JobState.DELIVERED


async def test_only_the_first_waiters_hear_each_move_of_the_queue(make_settings, sandbox):
    sandbox.delays.update(generating=0.3)
    async with ImagineCore.open(make_settings(MAX_ACTIVE_JOBS=1, MAX_ACTIVE_JOBS_PER_USER=10)) as core:
        fe = HangingFrontEnd()
        fe.never.set()
        core.register(fe)
        who = UserRef("terminal", "local", "busy")
        jobs = [await core.imagine(who, REPLY, f"job {n}") for n in range(8)]
        await core.orchestrator.wait_idle()
        assert all(core.jobs.get(job.id).state is JobState.DELIVERED for job in jobs)
        for job in jobs:
            places = [e.position for e in fe.events if isinstance(e, Queued) and e.job.id == job.id]
            if places and places[0] > 5:
                # told its place once, then nothing until it is among the first five
                assert all(p <= 5 for p in places[1:]), places
        last = [e.position for e in fe.events if isinstance(e, Queued) and e.job.id == jobs[-1].id]
        assert last and last[0] == 7 and 6 not in last
        assert not any(isinstance(e, Failed) for e in fe.events)
