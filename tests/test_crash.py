"""Restart mid-job: kill -9 a bot process with jobs in every stage, start another, lose nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from core.db import open_db
from core.jobs import JobState, JobStore
from core.ledger import Ledger
from core.sandbox import SandboxGateway

ROOT = Path(__file__).resolve().parents[1]


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.crash_worker", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@pytest.mark.slow
async def test_kill_mid_job_then_restart_delivers_each_job_once(tmp_path):
    gateway = SandboxGateway(delays={"waiting": 0.3, "queuing": 0.3, "generating": 0.6}, image_scale=0.1)
    url = await gateway.start()
    db = str(tmp_path / "crash.db")
    try:
        first = await _spawn(db, url, "submit", "12")
        line = await asyncio.wait_for(first.stdout.readline(), timeout=30)
        assert line.strip() == b"submitted", (await first.stderr.read()).decode()[-2000:]
        store = JobStore(open_db(db))
        # wait until some jobs are at the gateway and none has finished, then kill -9
        for _ in range(300):
            states = Counter(j.state for j in store.recent(limit=100))
            if states[JobState.RUNNING] >= 3:
                break
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        before = Counter(j.state for j in store.recent(limit=100))
        assert before[JobState.RUNNING] >= 1, before

        second = await _spawn(db, url, "resume")
        _, err = await asyncio.wait_for(second.communicate(), timeout=60)
        assert second.returncode == 0, err.decode()[-2000:]

        jobs = store.recent(limit=100)
        assert len(jobs) == 12
        deliveries = Counter((await asyncio.to_thread(Path(db + ".deliveries").read_text)).split())
        for job in jobs:
            if job.state is JobState.DELIVERED:
                assert deliveries[job.id] == 1, job
            else:
                assert job.state is JobState.FAILED and job.error_code, job
                assert deliveries[job.id] == 0
        # tasks already at the gateway were resumed, never resent: at most one createTask per job
        assert gateway.requests["createTask"] <= len(jobs)
        assert len({j.task_id for j in jobs if j.task_id}) == len([j for j in jobs if j.task_id])
        ledger = Ledger(store.db, allowance=10_000, period="month")
        assert ledger.verify() == []
        charged = sum(-e.delta_balance for e in ledger.history(limit=1000) if e.kind == "capture")
        assert charged == 18 * sum(1 for j in jobs if j.state is JobState.DELIVERED)
        assert all(b.held == 0 for b in ledger.accounts())
    finally:
        await gateway.stop()
