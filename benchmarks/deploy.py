"""Deploys and admin work beside a running bot.

- Rolling deploy: process A (a bot, ``tests/crash_worker.py serve``) takes 200 jobs; process B starts on
  the same database file while A works; after 3 s A gets SIGTERM and drains (``DRAIN_S``) while B picks
  up what A leaves. Counted afterwards from the gateway (the sandbox's tasks, per prompt), the channel
  (one line per post) and the ledger: duplicates (a second createTask or a second post for one job), lost
  jobs (not delivered and not refunded), double charges (two captures, or a capture and a release).
  Also: how long A's drain took and how many jobs B finished.
- Ack latency while an operator runs ``imagine-bot credits report`` in a loop in another process (2,000
  accounts on the file): the core-level burst of ``benchmarks.ack`` (200 ``core.imagine`` at once),
  without and with the report loop. Reads take no write lock, so the report cannot freeze the bot.

Goals: duplicates, lost and double charges 0; ack p99 < 50 ms with the report loop running.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .ack import GOAL_MS, core_burst
from .common import fig, ms, say

ROOT = Path(__file__).resolve().parent.parent
DRAIN_S = 15.0  # what tests/crash_worker.py sets
REPORT_ACCOUNTS = 2000


async def _spawn(*args: str, max_active: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CRASH_MAX_ACTIVE": str(max_active)}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.crash_worker", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def rolling(jobs: int, workdir: Path) -> dict[str, Any]:
    from imagine_bot.core.jobs.model import JobState
    from imagine_bot.core.sandbox import SandboxGateway
    from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
    from imagine_bot.core.storage.db import open_db
    from imagine_bot.core.storage.jobs import SqliteJobStore as JobStore
    from imagine_bot.core.storage.ledger import SqliteLedger as Ledger

    gateway = SandboxGateway(delays={"waiting": 0.5, "queuing": 0.5, "generating": 1.0}, image_scale=0.05)
    url = await gateway.start()
    gateway.inject("createTask", hang=0.2, times=100_000)
    db = str(workdir / "deploy.db")
    procs: list[asyncio.subprocess.Process] = []
    try:
        started = time.monotonic()
        a = await _spawn(db, url, "serve", str(jobs), max_active=32)
        procs.append(a)
        await asyncio.wait_for(a.stdout.readline(), timeout=120)  # "submitted"
        b = await _spawn(db, url, "follow", max_active=32)
        procs.append(b)
        await asyncio.sleep(3.0)
        store = JobStore(open_db(db))
        at_sigterm = Counter(j.state.value for j in store.recent(limit=jobs + 10))
        a.send_signal(signal.SIGTERM)
        term = time.monotonic()
        _, a_err = await asyncio.wait_for(a.communicate(), timeout=DRAIN_S + 30)
        drain_s = time.monotonic() - term
        _, b_err = await asyncio.wait_for(b.communicate(), timeout=600)
        total_s = time.monotonic() - started
        rows = store.recent(limit=jobs + 10)
        creates = Counter(t.input["prompt"] for t in gateway.tasks.values())
        text = await asyncio.to_thread(Path(db + ".deliveries").read_text)
        lines = [line.split() for line in text.splitlines()]
        posts = Counter(line[0] for line in lines)
        posters = Counter(line[1] for line in lines)
        ledger = Ledger(store.db, budgets=Budgets(store.db, default_amount=None), allowance=10_000, period="month")
        settled = Counter((e.job_id, e.kind) for e in ledger.history(limit=100_000)
                          if e.kind in ("capture", "release"))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await gateway.stop()
    duplicates = sum(n - 1 for n in creates.values() if n > 1) + sum(n - 1 for n in posts.values() if n > 1)
    lost = sum(1 for j in rows if not (j.state is JobState.DELIVERED
                                       or (j.state is JobState.FAILED and settled[(j.id, "release")] == 1)))
    double = sum(1 for j in rows if settled[(j.id, "capture")] + settled[(j.id, "release")] > 1)
    return {
        "jobs": jobs, "rows": len(rows), "duplicates": duplicates, "lost": lost, "double_charges": double,
        "delivered": sum(j.state is JobState.DELIVERED for j in rows),
        "failed": sum(j.state is JobState.FAILED for j in rows),
        "posted_by_a": posters.get(str(a.pid), 0), "posted_by_b": posters.get(str(b.pid), 0),
        "a_exit": a.returncode, "b_exit": b.returncode, "drain_s": drain_s, "total_s": total_s,
        "states_at_sigterm": dict(at_sigterm), "verify_problems": len(ledger.verify()),
        "a_stderr_tail": a_err.decode()[-500:] if a.returncode else "",
        "b_stderr_tail": b_err.decode()[-500:] if b.returncode else "",
    }


def _report_loop(db: str, stop: Any, runs: Any) -> None:
    """Another process: ``imagine-bot credits report`` again and again until told to stop."""
    import contextlib
    import io

    from imagine_bot.bots.cli.main import main

    out = str(Path(db).with_suffix(".csv"))
    while not stop.is_set():
        with contextlib.redirect_stdout(io.StringIO()):
            main(["--db", db, "credits", "report", "--out", out])
        runs.value += 1


def _seed(db: Path) -> None:
    from imagine_bot.core.access.identity import UserRef
    from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
    from imagine_bot.core.storage.db import open_db
    from imagine_bot.core.storage.ledger import SqliteLedger as Ledger

    opened = open_db(db)
    ledger = Ledger(opened, budgets=Budgets(opened, default_amount=None), allowance=180, period="month")
    for n in range(REPORT_ACCOUNTS):
        ledger.grant(UserRef("terminal", "local", f"seed{n:05d}"), 10, actor="bench")
    ledger.db.conn.close()


async def acks_beside_report(n: int, workdir: Path) -> dict[str, Any]:
    say(f"ack burst of {n} without the report loop")
    (workdir / "quiet").mkdir(parents=True)
    quiet = await core_burst(n, workdir / "quiet")
    busy_dir = workdir / "busy"
    busy_dir.mkdir()
    _seed(busy_dir / "imagine.db")
    ctx = multiprocessing.get_context("spawn")
    stop, runs = ctx.Event(), ctx.Value("i", 0)
    looper = ctx.Process(target=_report_loop, args=(str(busy_dir / "imagine.db"), stop, runs))
    looper.start()
    try:
        while runs.value < 1:  # noqa: ASYNC110 - a counter in another process: wait until the loop is going
            await asyncio.sleep(0.05)
        say(f"ack burst of {n} while `credits report` ({REPORT_ACCOUNTS} accounts) runs in a loop")
        before = runs.value
        busy = await core_burst(n, busy_dir)
        during = runs.value - before
    finally:
        stop.set()
        looper.join(60)
        if looper.is_alive():
            looper.kill()
    return {"quiet": quiet, "busy": busy, "reports_during_busy_burst": during, "reports_total": runs.value}


async def main(quick: bool) -> dict[str, Any]:
    jobs = 60 if quick else 200
    n = 50 if quick else 200
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        say(f"rolling deploy: {jobs} jobs, process B starts beside A, SIGTERM to A after 3 s")
        roll = await rolling(jobs, Path(tmp))
        acks = await acks_beside_report(n, Path(tmp) / "acks")
    q, b = acks["quiet"]["latency_ms"], acks["busy"]["latency_ms"]
    figures = [
        fig(f"rolling deploy, {jobs} jobs over two processes: duplicates / lost / double charges",
            f"{roll['duplicates']} / {roll['lost']} / {roll['double_charges']}", "0 / 0 / 0",
            roll["duplicates"] == roll["lost"] == roll["double_charges"] == 0 and roll["rows"] == jobs, **roll),
        fig("rolling deploy: A's drain after SIGTERM; posts by A / by B",
            f"{roll['drain_s']:.1f} s; {roll['posted_by_a']} / {roll['posted_by_b']}",
            f"< DRAIN_S ({DRAIN_S:.0f} s), exit 0", roll["drain_s"] < DRAIN_S and roll["a_exit"] == 0,
            drain_s=roll["drain_s"]),
        fig(f"ack latency, core.imagine, {n} at once, quiet / beside a `credits report` loop: p99",
            f"{ms(q['p99'])} / {ms(b['p99'])}", f"p99 < {GOAL_MS:.0f} ms", b["p99"] < GOAL_MS,
            quiet=q, busy=b, reports_during=acks["reports_during_busy_burst"]),
    ]
    return {"figures": figures, "details": {"rolling": roll, "acks": acks}}


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(main(quick))
