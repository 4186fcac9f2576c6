"""A rolling deploy on one database file, with real processes: A works on 20 slow jobs (queued, in
createTask, at the gateway, being delivered), B starts on the same file, A gets SIGTERM mid-way.

B takes nothing while A holds it; A drains (finishes its createTask calls and deliveries in flight, leaves
the rest with its leases released) and exits 0; B finishes the rest. Every job: exactly one createTask at
the gateway, exactly one post, exactly one capture or release; every balance equals its ledger sum."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.sandbox import SandboxGateway
from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
from imagine_bot.core.storage.ledger import SqliteLedger as Ledger
from tests.conftest import until
from tests.test_crash import open_stores

ROOT = Path(__file__).resolve().parents[1]
JOBS = 20


async def _spawn(*args: str, host: Path | None = None) -> asyncio.subprocess.Process:
    """A bot process; with ``host`` (PostgreSQL) a machine of its own: its data folder is ``host``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"CRASH_HOST_DIR": str(host)} if host else {})}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.crash_worker", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@pytest.mark.slow
async def test_sigterm_mid_way_with_a_second_process_on_the_same_file(tmp_path, backend):
    """On PostgreSQL, A and B are two hosts: each its own data folder."""
    gateway = SandboxGateway(delays={"waiting": 0.6, "queuing": 0.6, "generating": 1.2}, image_scale=0.1)
    url = await gateway.start()
    gateway.inject("createTask", hang=0.4, times=1000)  # createTask takes a while: SIGTERM lands in some
    db = str(tmp_path / "deploy.db")
    stores = open_stores(db)
    store = stores.jobs
    hosts = (tmp_path / "host-a", tmp_path / "host-b") if backend == "postgres" else (None, None)
    procs: list[asyncio.subprocess.Process] = []
    try:
        a = await _spawn(db, url, "serve", str(JOBS), host=hosts[0])
        procs.append(a)
        line = await asyncio.wait_for(a.stdout.readline(), timeout=30)
        assert line.strip() == b"submitted", (await a.stderr.read()).decode()[-2000:]
        b = await _spawn(db, url, "follow", host=hosts[1])
        procs.append(b)
        # mid-way: some delivered, some at the gateway, some still waiting for a slot
        await until(lambda: sum(j.state is JobState.DELIVERED for j in store.recent(limit=100)) >= 3, within=60)
        at_sigterm = Counter(j.state for j in store.recent(limit=100))
        owners = {j.owner for j in store.recent(limit=100) if not j.state.final}
        assert len(owners) == 1, owners  # B took nothing while A held its jobs
        a.send_signal(signal.SIGTERM)
        _, a_err = await asyncio.wait_for(a.communicate(), timeout=30)
        assert a.returncode == 0, a_err.decode()[-2000:]
        _, b_err = await asyncio.wait_for(b.communicate(), timeout=90)
        assert b.returncode == 0, b_err.decode()[-2000:]
        assert at_sigterm[JobState.QUEUED] and at_sigterm[JobState.RUNNING], at_sigterm

        jobs = store.recent(limit=100)
        assert len(jobs) == JOBS
        # a drained process leaves nothing to refund: every job delivered
        assert [j.id for j in jobs if j.state is not JobState.DELIVERED] == []
        creates = Counter(t.input["prompt"] for t in gateway.tasks.values())
        assert sorted(creates.values()) == [1] * JOBS  # exactly one createTask per job
        posted = [line.split() for line in Path(db + ".deliveries").read_text().splitlines()]
        posts = Counter(job_id for job_id, _ in posted)
        assert all(posts[j.id] == 1 for j in jobs) and len(posted) == JOBS  # exactly one post per job
        posters = Counter(pid for _, pid in posted)
        assert posters[str(a.pid)] and posters[str(b.pid)], posters  # both processes delivered some
        ledger = Ledger(stores.db, budgets=Budgets(stores.db, default_amount=None), allowance=10_000, period="month")
        settled = Counter((e.job_id, e.kind) for e in ledger.history(limit=10_000) if e.kind in ("capture", "release"))
        assert all(settled[(j.id, "capture")] == 1 and settled[(j.id, "release")] == 0 for j in jobs)
        assert ledger.verify() == []
        assert all(b.held == 0 for b in ledger.accounts())
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stores.close()
        await gateway.stop()
