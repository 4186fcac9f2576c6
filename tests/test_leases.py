"""Job ownership: two processes (two cores) on one database never work on the same job at once; a
process takes over only what another abandons (an expired lease); every transition is a compare-and-set,
and a lost race stops the local worker without touching money."""

from __future__ import annotations

import asyncio
import io
import logging
from collections import Counter
from datetime import timedelta

import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import LeaseLost, ShuttingDown
from imagine_bot.core.events import Delivered, Failed
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.storage.db import utcnow
from tests.conftest import until

# every test here runs on SQLite and on PostgreSQL (conftest's ``backend``)
pytestmark = pytest.mark.usefixtures("backend")

REPLY = ReplyTo("terminal", "test")


def recorder(tmp_path, core=None, name="out"):
    return TerminalFrontEnd(tmp_path / name, Console(file=io.StringIO()), bar=False, core=core)



async def test_a_second_process_takes_only_what_the_first_abandons(make_settings, make_sandbox, tmp_path):
    sandbox = await make_sandbox(delays={"waiting": 1.0, "queuing": 1.0, "generating": 1.0})
    settings = make_settings(JOB_LEASE_S=0.6, MAX_ACTIVE_JOBS_PER_USER=10, MODKIE_BASE_URL=sandbox.base_url)
    async with ImagineCore.open(settings) as a, ImagineCore.open(settings) as b:
        fe_a, fe_b = recorder(tmp_path, a, "a"), recorder(tmp_path, b, "b")
        a.register(fe_a)
        b.register(fe_b)
        await a.start()
        jobs = [await a.imagine(UserRef("terminal", "local", f"u{n}"), REPLY, f"overlap {n}")
                for n in range(4)]
        assert await b.start() == 0  # every job is A's, with a live lease
        await asyncio.sleep(1.5)  # several lease periods: A renews, B's sweeps find nothing to take
        assert not b.orchestrator.in_flight
        assert all(a.jobs.get(j.id).owner == a.orchestrator.owner for j in jobs)
        owner_a = a.orchestrator.owner
        # A dies mid-way: B takes every job over once A's leases expired
        await a.orchestrator.halt()  # as kill -9 would: no more renewals, its leases left to expire
        await until(lambda: all(b.jobs.get(j.id).state.final for j in jobs), within=30)
        rows = [b.jobs.get(j.id) for j in jobs]
        assert [(r.state, r.owner) for r in rows] == [(JobState.DELIVERED, b.orchestrator.owner)] * 4, rows
        assert owner_a != b.orchestrator.owner
        per_prompt = Counter(t.input["prompt"] for t in sandbox.tasks.values())
        assert all(count == 1 for count in per_prompt.values()) and len(per_prompt) == 4  # one createTask each
        delivered = Counter(e.job.id for e in fe_a.events + fe_b.events if isinstance(e, Delivered))
        assert all(delivered[j.id] == 1 for j in jobs)
        assert b.ledger.verify() == []
        assert all(b.ledger.balance(j.requester).balance == 180 - 18 for j in jobs)


async def test_transitions_are_compare_and_set(core, tmp_path):
    core.register(recorder(tmp_path, core))
    job = await core.imagine(UserRef("terminal", "local", "cas"), REPLY, "cas sandbox:slow")
    await core.orchestrator.stop()
    row = core.jobs.get(job.id)
    with pytest.raises(LeaseLost):  # wrong expected state
        core.jobs.transition(job.id, JobState.RUNNING, JobState.DELIVERING, owner=None)
    core.jobs.claim(job.id, "someone", utcnow() + timedelta(seconds=30))
    with pytest.raises(LeaseLost):  # right state, wrong owner
        core.jobs.transition(job.id, row.state, JobState.SUBMITTING, owner="me")
    moved = core.jobs.transition(job.id, row.state, JobState.SUBMITTING, owner="someone")
    assert moved.state is JobState.SUBMITTING
    # a live lease cannot be claimed; an expired one can
    assert core.jobs.claim(job.id, "me", utcnow() + timedelta(seconds=30)) is None
    core.jobs.update(job.id, lease_until=utcnow() - timedelta(seconds=1))
    assert core.jobs.claim(job.id, "me", utcnow() + timedelta(seconds=30)).owner == "me"


async def test_a_worker_that_lost_its_job_stops_quietly_without_touching_money(core, tmp_path, caplog):
    fe = recorder(tmp_path, core)
    core.register(fe)
    who = UserRef("terminal", "local", "lost")
    job = await core.imagine(who, REPLY, "taken over sandbox:slow")
    await until(lambda: core.jobs.get(job.id).state is JobState.RUNNING)
    # another process took the job over (its lease had expired while this one stalled)
    core.jobs.update(job.id, owner="other-process", lease_until=utcnow() + timedelta(seconds=60))
    await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
    row = core.jobs.get(job.id)
    assert row.state is JobState.RUNNING and row.owner == "other-process"  # left for its owner
    assert not [e for e in fe.events if isinstance(e, Delivered | Failed)]
    assert [e.kind for e in core.ledger.history(who)] == ["reserve", "refill"]  # no capture, no release
    assert core.ledger.balance(who).held == 18


class Refunder(TerminalFrontEnd):
    """Something settled the job behind the core's back while it was being delivered."""

    async def publish(self, event):
        await super().publish(event)
        if isinstance(event, Delivered):
            self.core.ledger.release(event.job.id)


async def test_a_refused_capture_is_an_error_never_delivered(core, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    core.register(Refunder(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core))
    job = await core.imagine(UserRef("terminal", "local", "x"), REPLY, "refused capture")
    await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
    row = core.jobs.get(job.id)
    assert row.state is JobState.FAILED and row.error_code == "capture_refused"
    assert "refused to charge" in caplog.text
    assert core.ledger.verify() == []


async def test_nothing_starts_after_stop(core, tmp_path):
    core.register(recorder(tmp_path, core))
    await core.start()
    queued = await core.imagine(UserRef("terminal", "local", "early"), REPLY, "left queued sandbox:slow")
    await core.orchestrator.stop()
    with pytest.raises(ShuttingDown) as refused:
        await core.imagine(UserRef("terminal", "local", "late"), REPLY, "too late")
    assert "restarting" in refused.value.user_message
    # a stopped orchestrator takes up nothing more, and its jobs are free for the next owner at once
    assert await core.orchestrator.resume() == 0 and not core.orchestrator.in_flight
    row = core.jobs.get(queued.id)
    assert not row.state.final and row.owner is None


async def test_a_halted_process_keeps_its_leases_until_they_expire(make_settings, tmp_path):
    settings = make_settings(JOB_LEASE_S=30)
    async with ImagineCore.open(settings) as a, ImagineCore.open(settings) as b:
        a.register(recorder(tmp_path, a, "a"))
        b.register(recorder(tmp_path, b, "b"))
        job = await a.imagine(UserRef("terminal", "local", "halted"), REPLY, "held sandbox:slow")
        await a.orchestrator.halt()
        await a.orchestrator.stop()  # its closing stop releases nothing either
        row = b.jobs.get(job.id)
        assert row.owner == a.orchestrator.owner and not row.state.final
        assert await b.start() == 0  # the lease is live: B must wait for it to expire
        assert a.orchestrator.in_flight == 0


async def test_releasing_some_leases_leaves_the_others(core, tmp_path):
    core.register(recorder(tmp_path, core))
    jobs = [await core.imagine(UserRef("terminal", "local", f"r{n}"), REPLY, f"held {n} sandbox:slow")
            for n in range(3)]
    owner = core.orchestrator.owner
    assert core.jobs.release_leases(owner, [jobs[1].id]) == 1  # one worker died: free that one only
    assert [core.jobs.get(j.id).owner for j in jobs] == [owner, None, owner]
    assert core.jobs.release_leases(owner, []) == 0
    assert core.jobs.release_leases(owner) == 2  # stopping: every other one
    assert [core.jobs.get(j.id).owner for j in jobs] == [None, None, None]
