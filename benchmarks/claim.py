"""Claiming jobs: how long one claim takes, and four processes sweeping the same jobs at once.

A claim is what a process does to take a job nobody holds (never owned, released by a drain, or left by a
dead process whose lease expired): one ``UPDATE`` that succeeds for exactly one process. 500 queued jobs
with no owner are inserted; one process claims each (``JobStore.claim``) and the time of each claim is
measured. Then 2,000 more, and four processes (spawned, each with its own connection; on PostgreSQL four
hosts' worth) list the claimable jobs and claim them all at once, started together on a barrier: every job
must be claimed exactly once, and the figure is the time until all are taken. On PostgreSQL a claim skips a
row another host is claiming that moment (``FOR UPDATE SKIP LOCKED``) instead of waiting for it.

Both on the SQLite file and on PostgreSQL (a throwaway, durable local cluster, ``tests/pg.py``; skipped and
said so without the server binaries).
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from .common import fig, ms, say, summary

SINGLE = 500
SWEPT = 2000
PROCESSES = 4
TIMEOUT_S = 300


def _jobs(where: str) -> Any:
    from imagine_bot.core.storage.db import open_db
    from imagine_bot.core.storage.jobs import SqliteJobStore

    if where.startswith("postgresql://"):
        from imagine_bot.core.storage.postgres import open_postgres

        return SqliteJobStore(open_postgres(where))
    return SqliteJobStore(open_db(where))


def _insert(store: Any, tag: str, count: int) -> list[str]:
    from imagine_bot.core.access.identity import UserRef
    from imagine_bot.core.jobs.model import JobRequest, ReplyTo

    request = JobRequest(requester=UserRef("terminal", "local", "bench"), reply=ReplyTo("terminal", "bench"),
                         prompt="a claimed job", params={})
    return [store.insert(request, model="m", cost=18, job_id=f"{tag}{n:05d}").id for n in range(count)]


def _sweeper(where: str, owner: str, barrier: Any, results: Any) -> None:
    from imagine_bot.core.storage.db import utcnow

    try:
        store = _jobs(where)
        barrier.wait(TIMEOUT_S)
        start = time.monotonic()
        now = utcnow()
        taken = [job.id for job in store.claimable(now=now)
                 if store.claim(job.id, owner, now + timedelta(minutes=5), now=now) is not None]
        results.put(("ok", (start, time.monotonic(), taken)))
        store.db.close()
    except BaseException as exc:
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def measure(where: str, single: int, swept: int) -> dict[str, Any]:
    from imagine_bot.core.storage.db import utcnow

    store = _jobs(where)
    ids = _insert(store, "one", single)
    say(f"one process: {single} claims")
    took: list[float] = []
    for job_id in ids:
        now = utcnow()
        start = time.perf_counter()
        claimed = store.claim(job_id, "bench-single", now + timedelta(minutes=5), now=now)
        took.append(time.perf_counter() - start)
        assert claimed is not None
    _insert(store, "swept", swept)
    say(f"{PROCESSES} processes sweep {swept} claimable jobs at once")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_sweeper, args=(where, f"bench-p{k}", barrier, results)) for k in range(PROCESSES)]
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
    taken = [job_id for _, _, ids_ in spans for job_id in ids_]
    owners = {row["owner"] for row in store.db.query("SELECT owner FROM jobs WHERE id LIKE 'swept%'")}
    store.db.close()
    sweep_s = (max(e for _, e, _ in spans) - min(s for s, _, _ in spans)) if spans and not errors else float("nan")
    return {"claim_ms": summary(took, 1000.0), "sweep_s": sweep_s, "errors": errors,
            "claimed_once": len(taken) == swept and len(set(taken)) == swept and None not in owners,
            "taken": len(taken), "per_process": [len(i) for _, _, i in spans]}


def run(quick: bool) -> dict[str, Any]:
    single, swept = (100, 400) if quick else (SINGLE, SWEPT)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        say("SQLite")
        results["sqlite"] = measure(str(Path(tmp) / "claim.db"), single, swept)
    from tests import pg

    reason = pg.missing_reason()
    if reason is None:
        with pg.PgCluster(durable=True) as cluster:
            say("PostgreSQL, durable defaults")
            results["postgresql"] = measure(cluster.create_database("bench"), single, swept)
    else:
        say(f"PostgreSQL: {reason}")
    figures = []
    for name, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        if name not in results:
            figures.append(fig(f"claim a job on {label}", "not measured: no PostgreSQL server binaries", "", None))
            continue
        r = results[name]
        figures += [
            fig(f"claim a job on {label}, one process (p50 / p99)",
                f"{ms(r['claim_ms']['p50'])} / {ms(r['claim_ms']['p99'])}", "", None, **r["claim_ms"]),
            fig(f"{PROCESSES} processes claim {swept} jobs on {label}", f"{r['sweep_s']:.2f} s",
                "each claimed exactly once", r["claimed_once"], sweep_s=r["sweep_s"], taken=r["taken"],
                per_process=r["per_process"], errors=r["errors"]),
        ]
    return {"figures": figures, "details": results}
