"""A batch of submits reserved at once (``Orchestrator._commit_together``, ``SqliteLedger.reserve_many``) writes
exactly what reserving them one at a time writes (issue 22).

The same batches go through both paths on two databases set up alike; the outcomes and every money and job
row must match (timestamps aside: each path stamps its own). Where the batch path cannot decide a batch (a
user twice, a budget with a limit, a redelivery), it hands the batch to the one-at-a-time path, with
nothing written twice.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from imagine_bot.bots.discord.buttons import REROLL_TEMPLATE
from imagine_bot.core.access.authority import GLOBAL
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import BudgetExhausted, InsufficientCredits, TooManyActiveJobs
from imagine_bot.core.jobs.model import Job, JobRequest, NewJob, ReplyTo, new_job_id
from imagine_bot.core.media import refstore
from imagine_bot.core.media.refstore import RefStore
from imagine_bot.core.storage import db as db_module
from imagine_bot.core.storage.errors import DuplicateRequest

#: what each path stamps with its own clock, left out of the comparison
#: (and the owner: each core is a process of its own)
STAMPS = {"ts", "created_at", "updated_at", "lease_until", "owner"}
TABLES = {"accounts": "account", "ledger": "id", "budgets": "scope", "budget_ledger": "id", "jobs": "id"}
PLACE, CHANNEL = "slack:T1", "slack:T1#C1"


def user(n: int) -> UserRef:
    return UserRef("slack", "T1", f"U{n}")


def new_job(n: int, job_id: str, *, cost: int = 18, dedupe_key: str | None = None,
            scopes: tuple[str, ...] = (PLACE, CHANNEL)) -> NewJob:
    request = JobRequest(requester=user(n), reply=ReplyTo("slack", "C1"), prompt=f"prompt {n}",
                         params={"aspect_ratio": "1:1"}, dedupe_key=dedupe_key, scopes=scopes)
    return NewJob(request, "seedream/4.5-text-to-image", cost, job_id)


def dump(core: ImagineCore) -> dict[str, list[dict[str, Any]]]:
    db = core.stores.db
    return {table: [{k: v for k, v in row.items() if k not in STAMPS}
                    for row in db.query(f"SELECT * FROM {table} ORDER BY {key}")]
            for table, key in TABLES.items()}


def answers(outcomes: list[Job | Exception]) -> list[tuple[str, str]]:
    return [(type(o).__name__, o.id if isinstance(o, Job) else getattr(o, "user_message", str(o))) for o in outcomes]


class Paths:
    """Two cores on two databases: ``together`` reserves a batch at once where it can, ``one`` never does."""

    def __init__(self, together: ImagineCore, one: ImagineCore) -> None:
        self.together, self.one = together, one
        self.used: list[bool] = []  # whether each batch of ``together`` went through the batch path
        commit_together = together.orchestrator._commit_together

        def counted(batch: list[NewJob]) -> list[Job | Exception] | None:
            done = commit_together(batch)
            self.used.append(done is not None)
            return done

        together.orchestrator._commit_together = counted  # type: ignore[method-assign]
        one.ledger.reserves_together = False  # type: ignore[misc]

    def both(self) -> Iterator[ImagineCore]:
        yield self.together
        yield self.one

    def commit(self, batch: list[NewJob]) -> list[list[tuple[str, str]]]:
        """The batch through both paths (no worker starts: ``_commit`` only reserves and records)."""
        told = []
        for core in self.both():
            futures: list[Any] = [None] * len(batch)
            told.append(answers(core.orchestrator._commit(list(zip(futures, batch, strict=True)))))
        return told


@asynccontextmanager
async def two_paths(make_settings, tmp_path, **settings: Any):
    async with ImagineCore.open(make_settings(IMAGINE_DB_PATH=tmp_path / "together.db", **settings)) as together, \
            ImagineCore.open(make_settings(IMAGINE_DB_PATH=tmp_path / "one.db", **settings)) as one:
        yield Paths(together, one)


async def test_a_batch_at_once_writes_what_one_at_a_time_writes(make_settings, tmp_path):
    async with two_paths(make_settings, tmp_path, MAX_ACTIVE_JOBS_PER_USER=2) as paths:
        for core in paths.both():  # the same accounts, budgets and jobs in both databases
            core.ledger.balance(user(0))  # an account with its allowance
            core.ledger.grant(user(1), -170, actor="test")  # 10 credits left: refused
            core.ledger.grant(user(2), -175, actor="test")  # 5 left, and a refill due: refilled, then held
            core.stores.db.execute("UPDATE accounts SET period_start = '2000-01-01T00:00:00.000+00:00'"
                                   " WHERE account = ?", [user(2).key])
            core.ledger.balance(user(6))
            core.stores.db.execute("UPDATE accounts SET period_start = '2000-01-01T00:00:00.000+00:00'"
                                   " WHERE account = ?", [user(6).key])  # a refill due that adds nothing
            for scope in (PLACE, CHANNEL):
                core.budgets.status(scope)  # made, with no limit
            for k in range(2):  # at the job limit
                core.orchestrator._commit([(None, new_job(3, f"old-{k}"))])  # type: ignore[list-item]
        batch = [new_job(0, "j0"), new_job(1, "j1"), new_job(2, "j2"), new_job(3, "j3"), new_job(4, "j4"),
                 new_job(5, "j5", cost=200), new_job(6, "j6", scopes=(PLACE,)), new_job(7, "j7", dedupe_key="d7")]
        together, one = paths.commit(batch)
        assert together == one
        assert [kind for kind, _ in together] == ["Job", "InsufficientCredits", "Job", "TooManyActiveJobs", "Job",
                                                  "InsufficientCredits", "Job", "Job"]
        # a second batch on top: the holds and the job counts of the first are read back
        together, one = paths.commit([new_job(0, "k0"), new_job(4, "k4", cost=170), new_job(2, "k2")])
        assert together == one and [kind for kind, _ in together] == ["Job", "InsufficientCredits", "Job"]
        assert paths.used == [True, True]
        assert dump(paths.together) == dump(paths.one)
        ledger = paths.together.ledger
        assert ledger.verify() == [] and paths.together.budgets.verify() == []
        assert [ledger.balance(user(n)).held for n in (0, 1, 2, 4, 5)] == [36, 0, 36, 18, 0]
        assert ledger.balance(user(2)).balance == 180  # refilled once, up to the allowance
        # 9 jobs held: 2 before, 5 in the first batch, 2 in the second; user 6 asked outside the channel
        assert paths.together.budgets.status(PLACE).held == 18 * 9
        assert paths.together.budgets.status(CHANNEL).held == 18 * 8


async def test_a_batch_that_needs_deciding_one_by_one_is_handed_over_with_nothing_written(make_settings,
                                                                                            tmp_path):
    """A user twice in a batch, a budget with a limit, a redelivered request: each batch goes one submit at a
    time (a savepoint each), with the same outcome as there, and nothing held twice."""
    async with two_paths(make_settings, tmp_path, MAX_ACTIVE_JOBS_PER_USER=1) as paths:
        for core in paths.both():
            core.orchestrator._commit([(None, new_job(9, "taken", dedupe_key="slack:T1:t1"))])  # type: ignore[list-item]
            core.budgets.set_member_cap(PLACE, 18, actor="test")
        # a member cap on the place: each member's spend is read, one by one (the second member is refused)
        together, one = paths.commit([new_job(0, "a0"), new_job(9, "a9")])
        assert together == one and [kind for kind, _ in together] == ["Job", "TooManyActiveJobs"]
        together, one = paths.commit([new_job(1, "a1"), new_job(2, "a2")])
        assert together == one and [kind for kind, _ in together] == ["Job", "Job"]
        assert paths.used == [False, False]
        assert dump(paths.together) == dump(paths.one)
    async with two_paths(make_settings, tmp_path / "b", MAX_ACTIVE_JOBS_PER_USER=1) as paths:
        for core in paths.both():
            for scope in (PLACE, CHANNEL):
                core.budgets.status(scope)
            core.orchestrator._commit([(None, new_job(9, "taken", dedupe_key="slack:T1:t1"))])  # type: ignore[list-item]
        # the same user twice: the second meets the job limit the first's job makes
        together, one = paths.commit([new_job(0, "b0"), new_job(0, "b1")])
        assert together == one and [kind for kind, _ in together] == ["Job", "TooManyActiveJobs"]
        # a redelivery of a recorded request among new ones: rolled back at the insert, then one by one
        together, one = paths.commit([new_job(1, "c1"), new_job(2, "c2", dedupe_key="slack:T1:t1"),
                                      new_job(3, "c3")])
        assert together == one and [kind for kind, _ in together] == ["Job", "DuplicateRequest", "Job"]
        assert paths.used == [False, False]
        assert dump(paths.together) == dump(paths.one)
        ledger = paths.together.ledger
        assert ledger.verify() == [] and ledger.orphan_holds() == []
        assert [ledger.balance(user(n)).held for n in range(4)] == [18, 18, 0, 18]


async def test_budget_limits_are_decided_in_the_batch_as_one_at_a_time_decides_them(make_settings, tmp_path):
    """A spend cap and a place's budget with a limit: each job is checked against what the jobs before it in
    the batch hold, the first budget that cannot cover it refuses it (its message as one at a time gives
    it), and a refused job holds nothing."""
    async with two_paths(make_settings, tmp_path, SPEND_CAP=18 * 6) as paths:
        for core in paths.both():
            core.budgets.status(CHANNEL)
            core.budgets.set_amount(PLACE, 18 * 4, actor="test")  # the place runs out first
            core.orchestrator._commit([(None, new_job(9, "before"))])  # type: ignore[list-item]
        together, one = paths.commit([new_job(n, f"j{n}") for n in range(5)])
        assert together == one
        assert [kind for kind, _ in together] == ["Job", "Job", "Job", "BudgetExhausted", "BudgetExhausted"]
        assert "budget" in together[3][1] and "Nothing was charged" in together[3][1]  # as reserve words it
        # outside the place (another workspace), only the global cap: 2 left of its 6
        others = [replace(new_job(n, f"o{n}"), request=replace(new_job(n, f"o{n}").request,
                                                                 requester=UserRef("slack", "T2", f"U{n}"),
                                                                 scopes=("slack:T2",))) for n in range(3)]
        for core in paths.both():
            core.budgets.status("slack:T2")
        together, one = paths.commit(others)
        assert together == one and [kind for kind, _ in together] == ["Job", "Job", "BudgetExhausted"]
        assert paths.used == [True, True]
        assert dump(paths.together) == dump(paths.one)
        budgets = paths.together.budgets
        assert budgets.status(PLACE).held == 18 * 4 and budgets.status(GLOBAL).held == 18 * 6
        assert paths.together.ledger.verify() == [] and budgets.verify() == []


async def test_a_burst_of_new_users_is_reserved_at_once_and_each_hears_its_answer(make_settings, tmp_path):
    """Through ``imagine``: a burst of new users goes through the batch path, and a refusal among them (a user
    with too few credits) is told to that user alone."""
    async with ImagineCore.open(make_settings(IMAGINE_DB_PATH=tmp_path / "a.db")) as core:
        core.ledger.grant(user(3), -170, actor="test")
        for scope in ("slack:T1", GLOBAL):  # made before (by earlier reservations)
            core.budgets.status(scope)
        used: list[bool] = []
        commit_together = core.orchestrator._commit_together

        def counted(batch: list[NewJob]) -> list[Job | Exception] | None:
            done = commit_together(batch)
            used.append(done is not None)
            return done

        core.orchestrator._commit_together = counted  # type: ignore[method-assign]
        core.orchestrator._start = lambda job: None  # type: ignore[method-assign]  # reserved and recorded only
        results = await asyncio.gather(*(core.imagine(user(n), ReplyTo("slack", "C1", data={"team_id": "T1"}),
                                                      f"burst {n}") for n in range(6)), return_exceptions=True)
        assert used == [True]
        assert [type(r) for r in results] == [Job, Job, Job, InsufficientCredits, Job, Job]
        assert isinstance(results[3], InsufficientCredits) and "10" in results[3].user_message
        assert [core.ledger.balance(user(n)).held for n in range(6)] == [18, 18, 18, 0, 18, 18]
        assert {core.jobs.get(r.id).requester for r in results if isinstance(r, Job)} == {
            user(n) for n in (0, 1, 2, 4, 5)}
        assert core.ledger.verify() == [] and core.budgets.status("global").held == 18 * 5


@pytest.mark.parametrize("most_marks", [None, 999], ids=["sqlite", "sqlite-before-3.32"])
async def test_a_large_batch_writes_and_returns_what_one_at_a_time_does(make_settings, tmp_path, monkeypatch,
                                                                         most_marks):
    """A batch larger than one statement's rows (``insert_rows``: statements of 64, 16, 4 and 1 rows): every row
    as one at a time writes it, in the same order; each job returned equal to the job read back, with what the
    front end gave (its reply's data, the parameters) as its JSON reads back; a redelivery in the last statement
    undoes the whole batch's part. With an SQLite that allows 999 ``?`` a statement (before 3.32), no statement
    has more (64 job rows would have 1,216)."""
    if most_marks is not None:
        monkeypatch.setattr(db_module, "_MAX_MARKS", most_marks)
    async with two_paths(make_settings, tmp_path) as paths:
        if most_marks is not None:  # the old SQLite's own limit: a statement with more is refused
            for core in paths.both():
                core.stores.db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, most_marks)
        for core in paths.both():
            for scope in (PLACE, CHANNEL):
                core.budgets.status(scope)
            core.ledger.balance(user(3))  # an account that exists among new ones
            core.orchestrator._commit([(None, new_job(200, "taken", dedupe_key="slack:T1:t"))])  # type: ignore[list-item]

        def odd(n: int, job_id: str, **kw: Any) -> NewJob:
            new = new_job(n, job_id, **kw)
            reply = ReplyTo("slack", f"C{n % 3}", data={"ts": (n, "x"), 7: {"a": [1.5, None, True]}} if n % 2 else {})
            request = replace(new.request, reply=reply, params={"aspect_ratio": "1:1", "seed": n, "tags": ("a", "b")},
                              extra_input={"nsfw": n % 2 == 0}, image_urls=("ref:a", "ref:b") if n % 5 == 0 else (),
                              review=("slack:T1:R",) if n % 7 == 0 else (), text_cost=9 if n % 5 == 0 else None,
                              preset="p" if n % 4 == 0 else None, parent_id="parent" if n % 6 == 0 else None)
            return replace(new, request=request)

        # 64 + 16 + 4 + 4 + 1 + 1 of each table's rows; the last submit a redelivery: all undone, one by one
        batch = [odd(n, f"r{n}", dedupe_key=f"slack:T1:r{n}") for n in range(89)]
        together, one = paths.commit([*batch, odd(89, "r89", dedupe_key="slack:T1:t")])
        assert together == one and together[-1][0] == "DuplicateRequest" and paths.used == [False]
        batch = [odd(n, f"j{n}", dedupe_key=f"slack:T1:j{n}" if n % 2 else None) for n in range(100, 190)]
        jobs = {}
        for core in paths.both():
            futures: list[Any] = [None] * len(batch)
            outcomes = core.orchestrator._commit(list(zip(futures, batch, strict=True)))
            assert all(isinstance(job, Job) and job == core.jobs.get(job.id) for job in outcomes)
            jobs[core] = [{k: v for k, v in vars_of(job).items() if k not in STAMPS} for job in outcomes]
        assert paths.used == [False, True]
        assert jobs[paths.together] == jobs[paths.one]
        assert jobs[paths.together][1]["reply"].data == {"ts": [101, "x"], "7": {"a": [1.5, None, True]}}
        assert jobs[paths.together][0]["params"] == {"aspect_ratio": "1:1", "seed": 100, "tags": ["a", "b"],
                                                     "nsfw": True}
        assert dump(paths.together) == dump(paths.one)
        assert paths.together.ledger.verify() == [] and paths.together.budgets.verify() == []


def vars_of(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in Job.__slots__}


def test_the_refusals_named_here_are_the_ones_the_core_raises():
    """The outcome names compared above are real classes (a rename would make the comparison vacuous)."""
    assert {c.__name__ for c in (InsufficientCredits, TooManyActiveJobs, DuplicateRequest, BudgetExhausted)} == {
        "InsufficientCredits", "TooManyActiveJobs", "DuplicateRequest", "BudgetExhausted"}


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


async def test_job_ids_grow_in_the_order_the_jobs_were_made(make_settings, tmp_path):
    """A job's id starts with the time it was made (issue 22): the indexes keyed by job id (the jobs', the
    ledger's, the budgets' ledger's) grow at their end, so a batch's commit writes a few pages there, not one of
    each index per job at random places. Ids stay unique in a burst and are read wherever ids are read."""
    ids = [new_job_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)  # the millisecond first; at random within it
    assert len({i[:12] for i in ids}) > 1  # (the loop spans milliseconds: the order above was tested)
    for job_id in (ids[-1], "j3f9c2a1b7d40"):  # a new id, and one made before ids carried the time
        assert re.fullmatch(REROLL_TEMPLATE, f"imagine:reroll:{job_id}")
        assert RefStore.result_key(job_id) == f"job:{job_id}:0" and refstore._RESULT.match(f"job:{job_id}:0")
    async with ImagineCore.open(make_settings(IMAGINE_DB_PATH=tmp_path / "a.db")) as core:
        core.orchestrator._start = lambda job: None  # type: ignore[method-assign]  # recorded only
        bursts = []
        for burst in range(3):
            made = await asyncio.gather(*(core.imagine(user(10 * burst + n), ReplyTo("slack", "C1"), f"burst {n}")
                                          for n in range(5)))
            bursts.append({job.id for job in made})
            await asyncio.sleep(0.002)  # the next burst in a later millisecond
        rows = [r[0] for r in core.stores.db.execute("SELECT id FROM jobs ORDER BY id").fetchall()]
        assert [set(rows[0:5]), set(rows[5:10]), set(rows[10:15])] == bursts
