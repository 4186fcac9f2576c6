"""Submits arriving together are reserved and recorded in one transaction, a savepoint each (issue 22).

On both databases: a refusal in a batch undoes its own part only and is checked against what the submits
before it hold; every submit hears its answer after the one COMMIT; a crash between the COMMIT and the
acks loses nothing.
"""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from contextlib import contextmanager

import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import BudgetExhausted, InsufficientCredits
from imagine_bot.core.events import Delivered
from imagine_bot.core.jobs.model import Job, JobState, ReplyTo
from tests.conftest import until

pytestmark = pytest.mark.usefixtures("backend")

REPLY = ReplyTo("terminal", "test")


def user(n: int) -> UserRef:
    return UserRef("terminal", "local", f"u{n}")


def frontend(tmp_path, core, name="out") -> TerminalFrontEnd:
    return TerminalFrontEnd(tmp_path / name, Console(file=io.StringIO()), bar=False, core=core)


def count_transactions(core: ImagineCore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    opened: list[int] = []
    store = core.orchestrator.store
    transaction = store.transaction

    @contextmanager
    def counted():
        opened.append(1)
        with transaction() as tx:
            yield tx

    monkeypatch.setattr(store, "transaction", counted)
    return opened


async def test_a_burst_of_submits_is_reserved_and_recorded_in_one_transaction(make_settings, tmp_path, monkeypatch):
    async with ImagineCore.open(make_settings()) as core:
        core.register(frontend(tmp_path, core))
        opened = count_transactions(core, monkeypatch)
        jobs = await asyncio.gather(*(core.imagine(user(n), REPLY, f"burst {n}") for n in range(5)))
        assert len(opened) == 1
        assert [core.ledger.balance(user(n)).held for n in range(5)] == [18] * 5
        assert {core.jobs.get(j.id).requester for j in jobs} == {user(n) for n in range(5)}
        await core.orchestrator.wait_idle()
        assert all(core.jobs.get(j.id).state is JobState.DELIVERED for j in jobs)
        assert core.ledger.verify() == []


async def test_a_refusal_in_a_batch_undoes_its_own_part_only(make_settings, tmp_path):
    """Five submits at once under a spend cap of three images, one of them from a user with no credits:
    the cap counts the holds of the submits before it in the same transaction."""
    async with ImagineCore.open(make_settings(SPEND_CAP=54, ADMINS="terminal:admin")) as core:
        core.register(frontend(tmp_path, core))
        core.ledger.grant(user(1), -180, actor="test")
        results = await asyncio.gather(*(core.imagine(user(n), REPLY, f"batch {n}") for n in range(5)),
                                       return_exceptions=True)
        assert [type(r) for r in results] == [Job, InsufficientCredits, Job, Job, BudgetExhausted]
        assert [core.ledger.balance(user(n)).held for n in range(5)] == [18, 0, 18, 18, 0]
        assert core.jobs.recent(user(1).key) == [] and core.jobs.recent(user(4).key) == []
        assert core.budgets.status("global").held == 54
        assert core.ledger.verify() == []
        await core.orchestrator.wait_idle()
        assert [core.ledger.balance(user(n)).balance for n in range(5)] == [162, 0, 162, 162, 180]
        assert core.ledger.verify() == [] and core.ledger.orphan_holds() == []


async def test_the_same_request_twice_in_a_batch_makes_one_job(make_settings, tmp_path):
    async with ImagineCore.open(make_settings()) as core:
        core.register(frontend(tmp_path, core))
        first, second = await asyncio.gather(*(core.imagine(user(0), REPLY, "twice", dedupe_key="slack:T:t1")
                                               for _ in range(2)))
        assert first.id == second.id
        assert core.ledger.balance(user(0)).held == 18
        await core.orchestrator.wait_idle()
        assert core.ledger.balance(user(0)).balance == 162 and core.ledger.verify() == []


async def test_a_crash_between_the_commit_and_the_acks_loses_nothing(make_settings, make_sandbox, tmp_path,
                                                                      monkeypatch):
    """The process dies right after a batch's COMMIT, before any submit hears of it (no ack, no worker):
    another process takes the jobs over once the lease expires, and each is made and charged once."""
    sandbox = await make_sandbox()
    settings = make_settings(JOB_LEASE_S=0.6, MODKIE_BASE_URL=sandbox.base_url)
    async with ImagineCore.open(settings) as a, ImagineCore.open(settings) as b:
        a.register(frontend(tmp_path, a, "a"))
        fe_b = frontend(tmp_path, b, "b")
        b.register(fe_b)
        await a.start()
        monkeypatch.setattr(a.orchestrator, "_tell", lambda batch, outcomes: None)  # dead before telling
        submits = [asyncio.create_task(a.imagine(user(n), REPLY, f"crash {n}")) for n in range(3)]
        await until(lambda: sum(len(b.jobs.recent(user(n).key)) for n in range(3)) == 3)
        await a.orchestrator.halt()  # as kill -9 would: its leases are left to expire
        for task in submits:
            task.cancel()
        await asyncio.gather(*submits, return_exceptions=True)
        assert [b.ledger.balance(user(n)).held for n in range(3)] == [18] * 3  # committed, never acked
        await b.start()
        jobs = [job for n in range(3) for job in b.jobs.recent(user(n).key)]
        await until(lambda: all(b.jobs.get(j.id).state.final for j in jobs), within=30)
        assert [b.jobs.get(j.id).state for j in jobs] == [JobState.DELIVERED] * 3
        assert Counter(e.job.id for e in fe_b.events if isinstance(e, Delivered)) == {j.id: 1 for j in jobs}
        assert Counter(t.input["prompt"] for t in sandbox.tasks.values()) == {f"crash {n}": 1 for n in range(3)}
        assert [b.ledger.balance(user(n)).balance for n in range(3)] == [162] * 3
        assert b.ledger.verify() == []
        await b.orchestrator.stop()
