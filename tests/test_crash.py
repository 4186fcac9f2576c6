"""Restart mid-job: kill -9 a bot process again and again with 30+ jobs in every stage (queued, mid
createTask, mid-poll, mid-download, mid-delivery), start another, and lose nothing."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.sandbox import SandboxGateway
from imagine_bot.core.settings import load_settings
from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
from imagine_bot.core.storage.ledger import SqliteLedger as Ledger
from imagine_bot.core.storage.sqlite import SqliteStores
from tests.conftest import until

ROOT = Path(__file__).resolve().parents[1]
JOBS = 32


async def _spawn(*args: str, host: Path | None = None) -> asyncio.subprocess.Process:
    """A bot process; with ``host`` (PostgreSQL) a machine of its own: its data folder is ``host``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"CRASH_HOST_DIR": str(host)} if host else {})}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.crash_worker", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


def open_stores(db: str) -> SqliteStores:
    """The database the workers share: the SQLite file ``db``, or PostgreSQL (``DATABASE_URL``)."""
    return SqliteStores.open(load_settings(_env_file=None, IMAGINE_DB_PATH=db))


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


@pytest.mark.slow
async def test_kill_9_at_random_points_then_restart_delivers_each_job_once(tmp_path, backend):
    """On PostgreSQL every process is a host of its own (its own data folder): a job taken over from a
    killed host fetches its images again."""
    hosts: dict[int, Path] = {}

    async def spawn(*args: str) -> asyncio.subprocess.Process:
        host = tmp_path / f"host{len(hosts)}" if backend == "postgres" else None
        proc = await _spawn(*args, host=host)
        hosts[proc.pid] = host or tmp_path
        return proc

    rng = random.Random(20261124)
    gateway = SandboxGateway(delays={"waiting": 0.2, "queuing": 0.2, "generating": 0.4}, image_scale=0.1,
                             latency=0.02)
    url = await gateway.start()
    db = str(tmp_path / "crash.db")
    stores = open_stores(db)
    store = stores.jobs
    seen_states: Counter[JobState] = Counter()
    try:
        first = await spawn(db, url, "submit", str(JOBS))
        line = await asyncio.wait_for(first.stdout.readline(), timeout=30)
        assert line.strip() == b"submitted", (await first.stderr.read()).decode()[-2000:]
        proc = first
        for kill in range(5):  # five kills, each at a random moment, and one while a job is being delivered
            if kill == 2:
                await until(lambda: any(j.state is JobState.DELIVERING for j in store.recent(limit=100)),
                            within=30)
            else:
                await asyncio.sleep(rng.uniform(0.2, 1.2))
            seen_states.update(j.state for j in store.recent(limit=100))
            await _kill(proc)
            proc = await spawn(db, url, "resume")
        _, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode == 0, err.decode()[-2000:]
        # the kills caught jobs waiting, at the gateway and being delivered
        assert all(seen_states[s] for s in (JobState.QUEUED, JobState.RUNNING, JobState.DELIVERING)), seen_states

        jobs = store.recent(limit=100)
        assert len(jobs) == JOBS
        posted = (await asyncio.to_thread(Path(db + ".deliveries").read_text)).splitlines()
        deliveries = Counter(line.split()[0] for line in posted)
        poster = dict(line.split() for line in posted)
        failures_file = Path(db + ".failures")
        told = {}
        if failures_file.exists():
            told = {line.split()[0]: line.split()[1:] for line in failures_file.read_text().splitlines()}
        for job in jobs:
            if job.state is JobState.DELIVERED:
                assert deliveries[job.id] == 1, job
                # the images were in the data folder of the host that posted them (fetched again there if the
                # job came from a killed host)
                assert all(f.is_relative_to(hosts[int(poster[job.id])]) and f.exists() for f in job.files), job
            else:  # only a job caught mid-createTask may fail: refunded, cause recorded, user told
                assert job.state is JobState.FAILED and job.error_code == "interrupted", job
                assert deliveries[job.id] == 0
                assert told[job.id] == ["interrupted", "True"]
        assert sum(1 for j in jobs if j.state is JobState.DELIVERED) >= JOBS // 2
        # tasks already at the gateway were resumed, never resent: at most one createTask per job
        assert gateway.requests["createTask"] <= JOBS
        assert len({j.task_id for j in jobs if j.task_id}) == len([j for j in jobs if j.task_id])
        ledger = Ledger(stores.db, budgets=Budgets(stores.db, default_amount=None), allowance=10_000, period="month")
        assert ledger.verify() == []
        charged = sum(-e.delta_balance for e in ledger.history(limit=1000) if e.kind == "capture")
        assert charged == 18 * sum(1 for j in jobs if j.state is JobState.DELIVERED)
        assert all(b.held == 0 for b in ledger.accounts())
    finally:
        stores.close()
        await gateway.stop()
