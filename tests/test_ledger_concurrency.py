"""Many processes, one account: the ledger never hands out more than the balance, nor charges twice.

Four processes (forked from a fresh forkserver process, not from pytest's, so nothing is shared but the
database: the SQLite file, or a PostgreSQL server as four hosts would share it) each open their own
connection and start together on a barrier. 50
reservations of 18 race for a balance of 180: exactly 10 win.
Then every process tries to capture 6 of the winners and release the other 4: each job is settled
exactly once.
"""

from __future__ import annotations

import multiprocessing
import random
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.credits.ledger import Hold
from imagine_bot.core.errors import BudgetExhausted, InsufficientCredits
from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
from imagine_bot.core.storage.db import Database, open_db
from imagine_bot.core.storage.ledger import SqliteLedger as Ledger
from imagine_bot.core.storage.postgres import open_postgres

WHO = UserRef("slack", "T1", "URACE")
COST = 18
PROCESSES = 4
TIMEOUT_S = 30


def _ledger(where: str) -> Ledger:
    """The ledger on ``where``: an SQLite file, or a ``postgresql://`` URL."""
    db: Database = open_postgres(where) if where.startswith("postgresql://") else open_db(where)
    return Ledger(db, budgets=Budgets(db, default_amount=None), allowance=10 * COST, period="never")


def _reserve_worker(ledger: Ledger, start: Callable[[], None], job_ids: list[str]) -> tuple[list[str], int]:
    won, refused = [], 0
    start()
    for job_id in job_ids:
        try:
            ledger.reserve(WHO, job_id, COST)
            won.append(job_id)
        except InsufficientCredits:
            refused += 1
    return won, refused


def _settle_worker(
    ledger: Ledger, start: Callable[[], None], capture: list[str], release: list[str]
) -> list[tuple[str, str]]:
    moves = [("capture", j) for j in capture] + [("release", j) for j in release]
    random.shuffle(moves)
    start()
    return [(kind, job_id) for kind, job_id in moves if getattr(ledger, kind)(job_id)]


def _child(path: str, target: Callable[..., Any], args: tuple[Any, ...], barrier: Any, results: Any) -> None:
    """In a spawned process: open the database, run ``target``, report its result or its traceback."""
    try:
        ledger = _ledger(path)
        try:
            value = target(ledger, lambda: barrier.wait(TIMEOUT_S), *args)
        finally:
            ledger.db.close()
        results.put(("ok", value))
    except BaseException:
        barrier.abort()  # let the others stop waiting
        results.put(("error", traceback.format_exc()))


def _run(path: str, target: Callable[..., Any], args_per_process: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target`` in one spawned process per argument tuple, all started at once; their results."""
    # a fresh interpreter as "spawn" gives, started once: this module imported in the forkserver, not again
    # (0.6 s of CPU) in each of the 48 processes of this file
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    barrier = ctx.Barrier(len(args_per_process))
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(path, target, args, barrier, results))
             for args in args_per_process]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=TIMEOUT_S) for _ in procs]
    finally:
        for p in procs:
            p.join(TIMEOUT_S)
    errors = [detail for status, detail in out if status == "error"]
    assert not errors, errors[0]
    return [value for _, value in out]


def _check_books(ledger: Ledger) -> None:
    assert ledger.verify() == []
    rows = ledger.db.execute("SELECT balance_after, held_after FROM ledger WHERE account = ?", [WHO.key])
    assert all(balance - held >= 0 and held >= 0 for balance, held in rows.fetchall())


@pytest.fixture
def where(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The shared database: an SQLite file, or (``backend`` postgres) the test's PostgreSQL database."""
    return str(tmp_path / "race.db") if backend == "sqlite" else str(request.getfixturevalue("pg_url"))


@pytest.mark.slow
def test_concurrent_reservations_never_overspend(where: str) -> None:
    path = where
    ledger = _ledger(path)
    assert ledger.balance(WHO).balance == 180  # open the account before the race

    jobs = [f"job{i:02}" for i in range(50)]
    results = _run(path, _reserve_worker, [(jobs[i::PROCESSES],) for i in range(PROCESSES)])
    won = sorted(j for w, _ in results for j in w)
    assert len(won) == 10
    assert sum(refused for _, refused in results) == 40
    b = ledger.balance(WHO)
    assert (b.balance, b.held, b.available) == (180, 180, 0)
    _check_books(ledger)

    capture, release = won[:6], won[6:]
    results = _run(path, _settle_worker, [(capture, release)] * PROCESSES)
    done = sorted(move for r in results for move in r)
    assert done == sorted([("capture", j) for j in capture] + [("release", j) for j in release])
    b = ledger.balance(WHO)
    assert (b.balance, b.held, b.available) == (180 - 6 * COST, 0, 72)
    kinds = ledger.db.execute("SELECT kind, COUNT(*) FROM ledger GROUP BY kind ORDER BY kind").fetchall()
    assert kinds == [("capture", 6), ("refill", 1), ("release", 4), ("reserve", 10)]
    _check_books(ledger)
    ledger.db.close()


# ---------------------------------------------------------------------- budgets over many users
GUILD = "discord:900"


def _budget_worker(ledger: Ledger, start: Callable[[], None], jobs: list[tuple[str, str]]) -> tuple[list[str], int]:
    won, refused = [], 0
    start()
    for user, job_id in jobs:
        try:
            ledger.reserve(UserRef("discord", "-", user), job_id, COST, scopes=(GUILD,), channel="555")
            won.append(job_id)
        except BudgetExhausted:
            refused += 1
    return won, refused


def _capture_worker(ledger: Ledger, start: Callable[[], None], jobs: list[str]) -> list[str]:
    start()
    return [job_id for job_id in jobs if ledger.capture(job_id)]


@pytest.mark.slow
@pytest.mark.parametrize("budget", [36, 360])
def test_a_server_budget_holds_against_50_jobs_from_4_processes(where: str, budget: int) -> None:
    path = where
    ledger = _ledger(path)
    ledger.budgets.set_amount(GUILD, budget, actor="cli:test", period="month")

    # 50 jobs of 18 from 25 different users (each could afford them), spread over 4 processes
    jobs = [(f"{100 + i % 25}", f"job{i:02}") for i in range(50)]
    results = _run(path, _budget_worker, [(jobs[i::PROCESSES],) for i in range(PROCESSES)])
    won = sorted(j for w, _ in results for j in w)
    assert len(won) == budget // COST
    assert sum(refused for _, refused in results) == 50 - budget // COST
    status = ledger.budgets.status(GUILD)
    assert (status.held, status.spent) == (budget // COST * COST, 0)

    results = _run(path, _capture_worker, [(won,)] * PROCESSES)
    assert sorted(j for r in results for j in r) == won  # each captured once, whichever process got it
    status = ledger.budgets.status(GUILD)
    assert (status.held, status.spent, status.remaining) == (0, budget // COST * COST, budget % COST)
    charged = ledger.db.execute("SELECT -SUM(delta_balance) FROM ledger WHERE kind = 'capture'").fetchone()[0]
    assert charged == status.spent  # users paid exactly what the server's budget counts, nobody for a refusal
    assert ledger.verify() == []
    ledger.db.close()


# ---------------------------------------------------------------------- batches (the orchestrator's burst path)
def _batch_worker(ledger: Ledger, start: Callable[[], None], batches: list[list[tuple[str, str]]]
                  ) -> tuple[list[str], int, int]:
    """Each batch through ``reserve_many``, as ``Orchestrator._commit`` does; one by one where it answers None
    (PostgreSQL). Returns the jobs held, the refusals and how many batches went through the batch path."""
    won, refused, together = [], 0, 0
    start()
    for batch in batches:
        holds = [Hold(UserRef("discord", "-", user), job_id, COST, (GUILD,), "555") for user, job_id in batch]
        answers = ledger.reserve_many(holds)
        together += answers is not None
        for hold in holds if answers is None else []:
            try:
                ledger.reserve(hold.who, hold.job_id, hold.cost, scopes=hold.scopes, channel=hold.channel)
                won.append(hold.job_id)
            except (BudgetExhausted, InsufficientCredits):
                refused += 1
        for hold, answer in zip(holds, answers or [], strict=False):
            if answer is None:
                won.append(hold.job_id)
            else:
                refused += 1
    return won, refused, together


@pytest.mark.slow
def test_batches_from_4_processes_hold_a_budget_and_every_balance(where: str) -> None:
    """40 batches of 4 new jobs (8 users, each with room for 10) race for a server budget of 20 jobs: exactly
    20 are held, each user within their balance, and the books add up."""
    ledger = _ledger(where)
    ledger.budgets.set_amount(GUILD, 20 * COST, actor="cli:test", period="month")
    ledger.budgets.status("global")  # made before, as earlier reservations would have
    users = [f"{200 + n}" for n in range(8)]
    batches = [[(users[(b + k) % 8], f"b{b:02}-{k}") for k in range(4)] for b in range(40)]
    results = _run(where, _batch_worker, [(batches[i::PROCESSES],) for i in range(PROCESSES)])
    won = [j for w, _, _ in results for j in w]
    assert len(won) == len(set(won)) == 20
    assert sum(refused for _, refused, _ in results) == 160 - 20
    if not where.startswith("postgresql://"):
        assert sum(together for _, _, together in results) == 40  # every batch at once
    assert ledger.budgets.status(GUILD).held == 20 * COST
    for user in users:
        balance = ledger.balance(UserRef("discord", "-", user))
        assert 0 <= balance.held <= balance.balance == 180
    assert sum(ledger.balance(UserRef("discord", "-", u)).held for u in users) == 20 * COST
    assert ledger.verify() == [] and ledger.budgets.verify() == []
    ledger.db.close()
