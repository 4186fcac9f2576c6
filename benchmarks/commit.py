"""A burst's batch commit: 100 new jobs reserved and recorded in one transaction, with time-ordered job ids
(``new_job_id``) and with random ones of the old form (``"j" + secrets.token_hex(6)``).

What is timed is ``Orchestrator._commit`` of a batch of 100 submits of 100 different users, the call the bot
makes for the commands of a burst (``_together``): one ``store.transaction()`` with ``jobs.count_active_many``,
``ledger.reserve_many`` and ``jobs.insert_many`` (``_commit_together``; the benchmark checks every batch went
that way and every job was recorded). The core is the real one (``ImagineCore.open``, default settings, the
SQLite file in a temporary directory; nothing is started, so no worker, sweep or checkpoint thread runs).
The jobs are Slack ``/imagine`` commands as the Slack front end makes them: one workspace and channel
(scopes: the workspace's budget, made beforehand with no limit, and the global one), a ``response_url`` in the
reply, a dedupe key from a random trigger id. Their users' accounts are opened beforehand (returning users).

Each id form gets a database of its own, filled first with N past jobs of its own form (N = 0 and 20,000;
2,000 with ``--quick``): the same batch path, 100 jobs a batch over N/8 past users, each job then moved to
``delivered`` and captured (``jobs.transition`` + ``ledger.capture``, as ``_deliver`` does), so the jobs'
indexes, the ledger's ``ledger_job_kind`` and the budgets' ``budget_ledger_job`` hold what N delivered jobs
leave there. Then one batch each not counted (warm-up), and the rounds, the two forms taking turns (which one
goes first alternates), so a change in the machine's load falls on both.

WAL frames: before each batch the log is checkpointed and truncated to nothing (``PRAGMA
wal_checkpoint(TRUNCATE)``, outside the timing: what the bot's checkpoint thread does in the pause before a
burst, though it does not truncate); ``PRAGMA wal_autocheckpoint`` is the running bot's (``BACKSTOP_PAGES``,
never reached by one batch). After the batch's COMMIT the size of the ``-wal`` file gives the pages its
commit wrote: (size - 32-byte header) / (24-byte frame header + page size). The log's frame count that the
next checkpoint reports (``PRAGMA wal_checkpoint(PASSIVE)``) is kept beside it (``frames_pragma``) as a
check. Times: ``time.process_time`` (CPU of the process; nothing else runs in it meanwhile) and
``time.perf_counter`` (wall), around the ``_commit`` call; ids are made before it (``submit`` makes them
before the batch too).

The figures have no goal: medians per form, and the ordered/random ratios.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import bench_settings, fig, ms, percentile, say

BATCH = 100
PAST = (0, 20_000)
PAST_QUICK = (0, 2_000)
ROUNDS = 25
ROUNDS_QUICK = 8
#: past jobs a past user made (8 x 18 credits: within the default allowance of 180)
JOBS_PER_PAST_USER = 8
TEAM, CHANNEL = "T0BENCH", "C0BENCH"
PLACE, CHANNEL_SCOPE = f"slack:{TEAM}", f"slack:{TEAM}#{CHANNEL}"
WAL_HEADER, FRAME_HEADER = 32, 24
NOWHERE = "http://127.0.0.1:9"  # the gateway: never asked (nothing is started)


def ordered_id() -> str:
    from imagine_bot.core.jobs.model import new_job_id

    return new_job_id()


def random_id() -> str:
    """The job id before commit b8d4b45."""
    return "j" + secrets.token_hex(6)


FORMS: dict[str, Callable[[], str]] = {"ordered": ordered_id, "random": random_id}


def _user(name: str) -> Any:
    from imagine_bot.core.access.identity import UserRef

    return UserRef("slack", TEAM, name)


def _new_job(who: Any, job_id: str, rng: random.Random) -> Any:
    """One Slack ``/imagine`` as ``core.imagine`` makes its request."""
    from imagine_bot.core.jobs.model import JobRequest, NewJob, ReplyTo

    trigger = f"{rng.randrange(10**12, 10**13)}.{rng.randrange(10**11, 10**12)}.{rng.getrandbits(128):032x}"
    reply = ReplyTo("slack", CHANNEL, data={
        "response_url": f"https://hooks.slack.com/commands/{TEAM}/{rng.randrange(10**12, 10**13)}/"
                        f"{rng.getrandbits(96):024x}",
        "team_id": TEAM})
    request = JobRequest(requester=who, reply=reply, prompt=f"a lighthouse at dusk, oil painting {rng.random():.6f}",
                         params={"aspect_ratio": "1:1", "quality": "basic"}, dedupe_key=f"slack:{TEAM}:{trigger}",
                         scopes=(PLACE, CHANNEL_SCOPE), cost=18)
    return NewJob(request, "seedream/4.5-text-to-image", 18, job_id)


class Bench:
    """One id form's core and database."""

    def __init__(self, core: Any, form: str) -> None:
        self.core, self.form, self.make_id = core, form, FORMS[form]
        self.db = core.stores.db
        self.wal = Path(str(core.settings.IMAGINE_DB_PATH) + "-wal")
        self.page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        self.together: list[bool] = []
        orchestrator = core.orchestrator
        commit_together = orchestrator._commit_together

        def counted(batch: list[Any]) -> Any:
            done = commit_together(batch)
            self.together.append(done is not None)
            return done

        orchestrator._commit_together = counted
        self.samples: list[dict[str, float]] = []

    def commit(self, users: list[Any], rng: random.Random) -> list[Any]:
        """One batch through ``Orchestrator._commit``; returns the jobs (raises if any was refused)."""
        batch = [(None, _new_job(who, self.make_id(), rng)) for who in users]
        self.together.clear()
        jobs: list[Any] = self.core.orchestrator._commit(batch)
        refused = [o for o in jobs if isinstance(o, Exception)]
        if refused or self.together != [True]:
            raise RuntimeError(f"{self.form}: the batch did not go through _commit_together "
                               f"({len(refused)} refused, first: {refused[:1]})")
        return jobs

    def truncate_wal(self) -> int:
        """Checkpoint and empty the log; returns the frames the log held (a ``PASSIVE`` checkpoint's count:
        ``TRUNCATE`` answers 0 once it has emptied the log)."""
        frames = 0
        for mode in ("PASSIVE", "TRUNCATE"):
            busy, log, _copied = self.db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            if busy:
                raise RuntimeError(f"{self.form}: the checkpoint could not finish")
            frames = max(frames, log)
        return int(frames)

    def measured(self, users: list[Any], rng: random.Random) -> None:
        self.truncate_wal()
        before = self.wal.stat().st_size if self.wal.exists() else 0
        cpu, wall = time.process_time(), time.perf_counter()
        self.commit(users, rng)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        after = self.wal.stat().st_size
        frames = (after - max(before, WAL_HEADER)) / (FRAME_HEADER + self.page_size)
        self.samples.append({"cpu_ms": cpu * 1000, "wall_ms": wall * 1000, "frames": frames,
                             "frames_pragma": self.truncate_wal()})

    def fill(self, past: int, rng: random.Random) -> None:
        """``past`` jobs of this form, delivered and charged, over ``past / JOBS_PER_PAST_USER`` users."""
        from imagine_bot.core.jobs.model import JobState
        from imagine_bot.core.storage.db import utcnow

        users = [_user(f"P{k:06d}") for k in range(past // JOBS_PER_PAST_USER)]
        core = self.core
        for start in range(0, past, BATCH):
            jobs = self.commit([users[(start + i) % len(users)] for i in range(BATCH)], rng)
            with core.stores.transaction():
                for job in jobs:
                    now = utcnow()
                    task = f"{rng.getrandbits(128):032x}"
                    core.jobs.transition(job.id, JobState.QUEUED, JobState.DELIVERED, owner=core.orchestrator.owner,
                                         task_id=task, submitted_at=now, finished_at=now,
                                         result_urls=[f"https://files.example/{task}/0.png"])
                    core.ledger.capture(job.id)


def _open_accounts(core: Any, users: list[Any]) -> None:
    with core.stores.transaction():
        for who in users:
            core.ledger.balance(who)
        core.budgets.status(PLACE)  # the workspace's budget and the global one, no limit (the defaults)
        core.budgets.status("global")


async def level(tmp: Path, past: int, rounds: int) -> dict[str, Any]:
    """Both forms on databases holding ``past`` jobs: ``rounds`` measured batches each, in turns."""
    from imagine_bot.core.app import ImagineCore
    from imagine_bot.core.storage.checkpoints import BACKSTOP_PAGES

    rng = random.Random(past)
    users = [_user(f"U{k:06d}") for k in range((rounds + 1) * BATCH)]  # each in one batch: never at a limit
    benches: dict[str, Bench] = {}
    async with ImagineCore.open(bench_settings(tmp / f"ordered-{past}", NOWHERE)) as ordered_core, \
            ImagineCore.open(bench_settings(tmp / f"random-{past}", NOWHERE)) as random_core:
        for form, core in (("ordered", ordered_core), ("random", random_core)):
            bench = benches[form] = Bench(core, form)
            bench.db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")  # as the running bot's
            _open_accounts(core, users)
            started = time.perf_counter()
            bench.fill(past, rng)
            if past:
                say(f"{form} ids: {past:,} past jobs in {time.perf_counter() - started:.1f} s")
            bench.commit(users[:BATCH], rng)  # warm-up, not counted
        for r in range(rounds):
            group = users[(r + 1) * BATCH:(r + 2) * BATCH]
            for form in (("ordered", "random") if r % 2 == 0 else ("random", "ordered")):
                benches[form].measured(group, rng)
        sizes = {form: b.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] for form, b in benches.items()}
    result: dict[str, Any] = {"past": past, "rounds": rounds, "jobs_after": sizes}
    for form, bench in benches.items():
        result[form] = {key: percentile([s[key] for s in bench.samples], 50) for key in bench.samples[0]}
        result[form]["samples"] = bench.samples
    return result


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def run(quick: bool) -> dict[str, Any]:
    levels = PAST_QUICK if quick else PAST
    rounds = ROUNDS_QUICK if quick else ROUNDS
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        for past in levels:
            say(f"{past:,} past jobs: {rounds} batches of {BATCH} per id form")
            results.append(asyncio.run(level(Path(tmp), past, rounds)))
    figures = []
    words = {"ordered": "time-ordered ids (new_job_id)", "random": 'random ids ("j" + token_hex(6))'}
    for r in results:
        where = f"into {r['past']:,} past jobs"
        for form in FORMS:
            m = r[form]
            figures.append(fig(f"commit of a {BATCH}-job batch {where}, {words[form]}: CPU / wall, WAL pages (median)",
                               f"{ms(m['cpu_ms'])} / {ms(m['wall_ms'])}, {m['frames']:.0f} pages", "", None,
                               **{k: v for k, v in m.items() if k != "samples"}))
        o, x = r["ordered"], r["random"]
        figures.append(fig(f"commit of a {BATCH}-job batch {where}: time-ordered / random ids",
                           f"CPU {_ratio(o['cpu_ms'], x['cpu_ms'])}, wall {_ratio(o['wall_ms'], x['wall_ms'])}, "
                           f"pages {_ratio(o['frames'], x['frames'])}", "", None))
    return {"figures": figures, "details": {"levels": results, "batch": BATCH}}
