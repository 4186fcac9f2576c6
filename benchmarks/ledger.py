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

Then the same on PostgreSQL (``DATABASE_URL``'s store: the same classes through ``PgDatabase``), on a
throwaway local cluster started from the system's server binaries (``tests/pg.py``) with the server's
default, durable settings (``fsync``, ``synchronous_commit`` on); the four processes are four hosts' worth
of connections. Skipped, and said so, where the binaries are not installed.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import fig, say

GOAL_PER_S = 2000.0
PG_GOAL_PER_S = 1000.0  # with 4 processes (issue 19)
ACCOUNTS = 200
COST = 18
ALLOWANCE = 10**9
PROCESSES = 4
TIMEOUT_S = 120


def _ledger(path: str) -> Any:
    """The ledger on ``path``: an SQLite file, or a ``postgresql://`` URL."""
    from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
    from imagine_bot.core.storage.db import open_db
    from imagine_bot.core.storage.ledger import SqliteLedger as Ledger

    if path.startswith("postgresql://"):
        from imagine_bot.core.storage.postgres import open_postgres

        db: Any = open_postgres(path)
    else:
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
        ledger.db.close()
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
        ledger.db.close()
    expected_balance = ACCOUNTS * ALLOWANCE - COST * expected_pairs
    checks = {
        "verify_problems": len(problems),
        "held_total": held,
        "balance_off_by": balance - expected_balance,
        "reserve_rows_off_by": kinds.get("reserve", 0) - expected_pairs,
        "capture_rows_off_by": kinds.get("capture", 0) - expected_pairs,
    }
    return {"clean": all(v == 0 for v in checks.values()), **checks, "first_problems": problems[:3]}


def round_trips(url: str) -> int:
    """The queries one reserve+capture pair sends to PostgreSQL (each a round trip to the server), counted
    on psycopg's cursor: a figure the machine's load does not move."""
    import psycopg

    sent = 0
    execute = psycopg.Cursor.execute

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return execute(self, *args, **kwargs)

    ledger = _ledger(url)
    try:
        pairs(ledger, "warm", 1, 0)
        psycopg.Cursor.execute = counted  # type: ignore[method-assign]
        pairs(ledger, "counted", 1, 0)
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        ledger.db.close()
    return sent


def measure(path: str, single_n: int, per_process: int) -> dict[str, Any]:
    """One process, then ``PROCESSES`` at once, on the database at ``path``; then the drift check."""
    ledger = _ledger(path)
    for who in _users():
        ledger.balance(who)  # open every account before timing
    say(f"one process: {single_n} reserve+capture pairs")
    start, end = pairs(ledger, "single", single_n, 0)
    ledger.db.close()
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
        out = [results.get(timeout=TIMEOUT_S * 3) for _ in procs]
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
    return {"single_per_s": single_rate, "multi_per_s": multi_rate, "errors": errors, "drift": checked,
            "single_n": single_n, "multi_n": PROCESSES * per_process}


def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        say("SQLite")
        lite = measure(str(Path(tmp) / "ledger.db"), 1000 if quick else 6000, 300 if quick else 2500)
    pg = postgres(quick)
    figures = [
        fig("ledger reserve+capture pairs/s, one process", f"{lite['single_per_s']:,.0f}/s", f">= {GOAL_PER_S:,.0f}/s",
            lite["single_per_s"] >= GOAL_PER_S, per_s=lite["single_per_s"], pairs=lite["single_n"]),
        fig(f"ledger reserve+capture pairs/s, {PROCESSES} processes on one file", f"{lite['multi_per_s']:,.0f}/s",
            f">= {GOAL_PER_S:,.0f}/s", lite["multi_per_s"] >= GOAL_PER_S, per_s=lite["multi_per_s"],
            pairs=lite["multi_n"]),
        fig("ledger drift after both runs (verify, holds, totals, rows)",
            "none" if lite["drift"]["clean"] else "FOUND", "zero drift", lite["drift"]["clean"], **lite["drift"]),
    ]
    if "skipped" in pg:
        figures.append(fig("ledger on PostgreSQL", f"not measured: {pg['skipped']}", "", None))
    if "round_trips" in pg:
        figures.append(fig("round trips to PostgreSQL a reserve+capture pair", str(pg["round_trips"]), "", None,
                           round_trips=pg["round_trips"]))
    for mode, words in (("durable", "commits flushed (the server's defaults)"),
                        ("async_commit", "synchronous_commit=off (SQLite's synchronous=NORMAL)")):
        if mode not in pg:
            continue
        r = pg[mode]
        figures += [
            fig(f"ledger pairs/s on PostgreSQL, one process, {words}", f"{r['single_per_s']:,.0f}/s", "", None,
                per_s=r["single_per_s"], pairs=r["single_n"]),
            fig(f"ledger pairs/s on PostgreSQL, {PROCESSES} processes, {words}", f"{r['multi_per_s']:,.0f}/s",
                f">= {PG_GOAL_PER_S:,.0f}/s", r["multi_per_s"] >= PG_GOAL_PER_S, per_s=r["multi_per_s"],
                pairs=r["multi_n"]),
            fig(f"ledger drift on PostgreSQL, {words}", "none" if r["drift"]["clean"] else "FOUND", "zero drift",
                r["drift"]["clean"], **r["drift"]),
        ]
    return {"figures": figures, "details": {"sqlite": lite, "postgres": pg}}


def postgres(quick: bool) -> dict[str, Any]:
    """``measure`` on a throwaway PostgreSQL cluster (``tests/pg.py``), if its binaries are here: first with the
    server's durable defaults (every commit waits for its WAL flush), then with ``synchronous_commit=off``
    (a crash of the server may lose the last fraction of a second of commits, never corrupt them: what
    SQLite's ``synchronous=NORMAL`` in WAL mode, the bot's setting, risks too)."""
    from tests import pg

    reason = pg.missing_reason()
    if reason is not None:
        say(f"PostgreSQL: {reason}")
        return {"skipped": "no PostgreSQL server binaries (apt-get install postgresql)"}
    single_n, per_process = (300, 100) if quick else (1500, 500)
    results: dict[str, Any] = {"server": ""}
    with pg.PgCluster(durable=True) as cluster:
        results["server"] = str(cluster.bindir)
        say(f"PostgreSQL ({cluster.bindir}), durable defaults")
        results["durable"] = measure(cluster.create_database("bench"), single_n, per_process)
        results["round_trips"] = round_trips(cluster.create_database("trips"))
        cluster.admin("ALTER SYSTEM SET synchronous_commit = off")
        cluster.admin("SELECT pg_reload_conf()")
        say("PostgreSQL, synchronous_commit=off")
        results["async_commit"] = measure(cluster.create_database("bench"), single_n, per_process)
    return results
