"""Several hosts on one PostgreSQL database, each with its own data folder (nothing on disk is shared)."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.events import Delivered
from imagine_bot.core.jobs.model import JobState, ReplyTo
from tests.conftest import until
from tests.test_leases import recorder

ALICE = UserRef("terminal", "local", "alice")
REPLY = ReplyTo("terminal", "test")


class _StuckPosting(TerminalFrontEnd):
    """A front end whose post of the result never finishes (its host is about to die)."""

    async def publish(self, event):
        if isinstance(event, Delivered):
            await asyncio.Event().wait()
        await super().publish(event)


async def test_a_job_taken_over_from_another_host_fetches_its_images_again(make_settings, make_sandbox, tmp_path,
                                                                          pg_url, monkeypatch):
    """Two hosts on PostgreSQL, each with its own data folder (nothing on disk is shared): A downloads the
    image and dies while posting it; B takes the job over once A's lease expired, finds no file of its own,
    fetches the image again into its folder (one createTask, two downloads) and delivers it, charged once."""
    monkeypatch.setenv("DATABASE_URL", pg_url)
    sandbox = await make_sandbox()
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    common = {"JOB_LEASE_S": 0.6, "MODKIE_BASE_URL": sandbox.base_url}
    async with ImagineCore.open(make_settings(IMAGINE_DB_PATH=host_a / "imagine.db", **common)) as a, \
            ImagineCore.open(make_settings(IMAGINE_DB_PATH=host_b / "imagine.db", **common)) as b:
        a.register(_StuckPosting(host_a / "out", Console(file=io.StringIO()), bar=False, core=a))
        fe_b = recorder(host_b, b)
        b.register(fe_b)
        await a.start()
        job = await a.imagine(ALICE, REPLY, "a heron on one leg")
        await until(lambda: a.jobs.get(job.id).state is JobState.DELIVERING, within=20)
        stuck = a.jobs.get(job.id)
        assert stuck.files and all(f.is_relative_to(host_a) and f.exists() for f in stuck.files)
        await a.orchestrator.halt()  # host A dies (kill -9): its lease is left to expire
        await b.start()
        await until(lambda: b.jobs.get(job.id).state.final, within=30)
        done = b.jobs.get(job.id)
        assert (done.state, done.owner) == (JobState.DELIVERED, b.orchestrator.owner)
        assert done.files and all(f.is_relative_to(host_b) and f.exists() for f in done.files)
        assert sandbox.requests["createTask"] == 1 and sandbox.requests["download"] == 2
        assert [e.job.id for e in fe_b.events if isinstance(e, Delivered)] == [job.id]
        assert b.ledger.balance(ALICE).balance == 180 - 18 and b.ledger.verify() == []


class _PushingRelayStore:
    """A relay table whose push wakes the relay once more at the moment it is told to stop (as a PostgreSQL
    notification arriving during shutdown does)."""

    def __init__(self) -> None:
        self.woken = 0

    def last_id(self) -> int:
        return 0

    def put(self, task_id, final, origin) -> None:
        raise AssertionError("nothing is published here")

    def after(self, seen, origin):
        return []

    def prune(self, before) -> int:
        return 0

    def listen(self, wake):
        def stop() -> None:
            self.woken += 1
            wake()

        return stop


async def test_the_relay_stops_even_when_a_notification_lands_as_it_stops():
    """Python 3.11's ``asyncio.wait_for`` swallows a cancel that arrives as the awaited event is set: the
    relay's task then never ended and the bot hung on stop (found with PostgreSQL's NOTIFY)."""
    from imagine_bot.core.jobs.relay import CallbackRelay

    store = _PushingRelayStore()
    for _ in range(20):
        relay = CallbackRelay(store, orchestrator=None, every_s=3600)  # type: ignore[arg-type]
        relay.start()
        await asyncio.sleep(0)
        await asyncio.wait_for(relay.stop(), 10)
    assert store.woken == 20
