"""Ledger throughput: reserve + capture pairs per second, in one process and across four, then the drift check.

Each pair is what a delivered job costs the ledger: ``reserve`` (credits put on hold, one transaction) then
``capture`` (the charge, another), each a short ``BEGIN IMMEDIATE`` transaction on the SQLite file (WAL,
``synchronous=NORMAL``: the settings ``core.db.open_db`` uses). 200 accounts are opened first, with an
allowance that never runs out; the pairs go round-robin over them. With four processes (spawned, each
with its own connection, started together on a barrier) the rate is all pairs over the time from the first
start to the last finish.

The drift check: ``Ledger.verify()`` (each account's balance and hold equal the sum of its ledger rows)
finds nothing, every hold is back to 0, the balances add up to what was granted minus what was captured,
and the ledger has exactly one reserve and one capture row per pair.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import fig, say

GOAL_PER_S = 2000.0
ACCOUNTS = 200
COST = 18
ALLOWANCE = 10**9
PROCESSES = 4
TIMEOUT_S = 120


def _ledger(path: str) -> Any:
    from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
    from imagine_bot.core.storage.db import open_db
    from imagine_bot.core.storage.ledger import SqliteLedger as Ledger

    db = open_db(path)
    return Ledger(db, budgets=Budgets(db, default_amount=None), allowance=ALLOWANCE, period="never")


def _users() -> list[Any]:
    from imagine_bot.core.access.identity import UserRef

    return [UserRef("terminal", "local", f"acct{i:04d}") for i in range(ACCOUNTS)]


def pairs(ledger: Any, tag: str, count: int, offset: int) -> tuple[float, float]:
    """``count`` reserve+capture pairs; returns the (monotonic) start and end times."""
    users = _users()
    start = time.monotonic()
    for i in range(count):
        job_id = f"{tag}-{i}"
        ledger.reserve(users[(offset + i) % ACCOUNTS], job_id, COST)
        ledger.capture(job_id)
    return start, time.monotonic()


def _worker(path: str, tag: str, count: int, offset: int, barrier: Any, results: Any) -> None:
    try:
        ledger = _ledger(path)
        barrier.wait(TIMEOUT_S)
        results.put(("ok", pairs(ledger, tag, count, offset)))
        ledger.db.conn.close()
    except BaseException as exc:
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def drift(path: str, expected_pairs: int) -> dict[str, Any]:
    ledger = _ledger(path)
    try:
        problems = ledger.verify()
        db = ledger.db
        balance, held = db.execute("SELECT SUM(balance), SUM(held) FROM accounts").fetchone()
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM ledger GROUP BY kind").fetchall())
    finally:
        ledger.db.conn.close()
    expected_balance = ACCOUNTS * ALLOWANCE - COST * expected_pairs
    checks = {
        "verify_problems": len(problems),
        "held_total": held,
        "balance_off_by": balance - expected_balance,
        "reserve_rows_off_by": kinds.get("reserve", 0) - expected_pairs,
        "capture_rows_off_by": kinds.get("capture", 0) - expected_pairs,
    }
    return {"clean": all(v == 0 for v in checks.values()), **checks, "first_problems": problems[:3]}


def run(quick: bool) -> dict[str, Any]:
    single_n = 1000 if quick else 6000
    per_process = 300 if quick else 2500
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        path = str(Path(tmp) / "ledger.db")
        ledger = _ledger(path)
        for who in _users():
            ledger.balance(who)  # open every account before timing
        say(f"one process: {single_n} reserve+capture pairs")
        start, end = pairs(ledger, "single", single_n, 0)
        ledger.db.conn.close()
        single_rate = single_n / (end - start)

        say(f"{PROCESSES} processes: {per_process} pairs each, started together")
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(PROCESSES)
        results = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(path, f"p{k}", per_process, k * 50, barrier, results))
                 for k in range(PROCESSES)]
        for p in procs:
            p.start()
        try:
            out = [results.get(timeout=TIMEOUT_S) for _ in procs]
        finally:
            for p in procs:
                p.join(TIMEOUT_S)
                if p.is_alive():
                    p.kill()
        errors = [detail for status, detail in out if status == "error"]
        spans = [value for status, value in out if status == "ok"]
        multi_rate = (PROCESSES * per_process / (max(e for _, e in spans) - min(s for s, _ in spans))
                      if spans and not errors else 0.0)
        checked = drift(path, single_n + (PROCESSES * per_process if not errors else 0))

    figures = [
        fig("ledger reserve+capture pairs/s, one process", f"{single_rate:,.0f}/s", f">= {GOAL_PER_S:,.0f}/s",
            single_rate >= GOAL_PER_S, per_s=single_rate, pairs=single_n),
        fig(f"ledger reserve+capture pairs/s, {PROCESSES} processes on one file", f"{multi_rate:,.0f}/s",
            f">= {GOAL_PER_S:,.0f}/s", multi_rate >= GOAL_PER_S, per_s=multi_rate, pairs=PROCESSES * per_process),
        fig("ledger drift after both runs (verify, holds, totals, rows)",
            "none" if checked["clean"] else "FOUND", "zero drift", checked["clean"], **checked),
    ]
    return {"figures": figures, "details": {"single_per_s": single_rate, "multi_per_s": multi_rate,
                                            "errors": errors, "drift": checked}}
