"""1,000 jobs in flight in one process: peak memory, event-loop lag, gateway requests per job.

Each mode runs in a fresh bot process (so its peak RSS is its own), with the sandbox gateway in another
process (its CPU and memory are not counted in the bot's figures). The sandbox keeps each task 16 to 26 s
(waiting and queuing 1 s, then generating 20 s stretched by a random factor from 0.75 to 1.25) and serves
small images (``image_scale`` 0.05). The bot runs the real orchestrator with ``MAX_ACTIVE_JOBS=1000`` and
``CREATE_RATE_PER_10S=10000``, raised for this run so that all 1,000 are admitted at once (the defaults,
32 and 18, would queue them); 1,000 distinct users submit in batches of 50 every 100 ms (2 s for all).

- peak RSS: ``VmHWM`` of the bot process (its whole life, imports included); RSS before the first job too.
- event-loop lag: a ticker sleeps 10 ms again and again; lag = how late it wakes. From the first
  submission to the last delivery.
- gateway API requests per job: ``createTask`` + ``recordInfo`` sent by the bot (the gateway client's own
  counter; the sandbox's count agrees), downloads counted apart.
- with callbacks: one createTask and one recordInfo (to confirm the callback) per job, plus the fallback
  polls of jobs still running when the fallback starts (``CALLBACK_FALLBACK_FIRST_S``, 20 s).
- with polling: every job polls on its own adaptive schedule (2 s for the first 30 s, then 5 s); the
  smallest gap between two polls of one job, and the total recordInfo rate the gateway saw, per second.
- done -> delivered: as in the ``delivery`` benchmark (download included), here under the load of 1,000.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing.connection
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import (
    HOST,
    REPLY,
    Helper,
    LoopLag,
    Recorder,
    bench_settings,
    cpu_seconds,
    fig,
    ms,
    peak_rss_mb,
    recv_or_none,
    rss_mb,
    sandbox_process,
    say,
    summary,
    user,
)

RSS_GOAL_MB = 200.0
LAG_GOAL_MS = 50.0
BATCH = 50
#: generating time stretched by a random factor in [1 - JITTER, 1 + JITTER] per task
JITTER = 0.25
BATCH_EVERY_S = 0.1
#: the gateway contract: recordInfo allows about 10 requests/s per key
CONTRACT_RECORDINFO_PER_S = 10


def logged_polls(gateway: Any) -> dict[str, list[float]]:
    """Wrap ``gateway.record_info`` (this instance only) to note when each task was looked at."""
    polls: dict[str, list[float]] = {}
    original = gateway.record_info

    async def record_info(task_id: str) -> Any:
        polls.setdefault(task_id, []).append(time.perf_counter())
        return await original(task_id)

    gateway.record_info = record_info
    return polls


async def one_mode(mode: str, n: int, delays: dict[str, float], workdir: Path) -> dict[str, Any]:
    from core.app import ImagineCore
    from core.web import build_web_app, start_web

    async with sandbox_process(delays=delays, jitter=JITTER, image_scale=0.05) as (base_url, sandbox):
        settings = bench_settings(workdir, base_url, MAX_ACTIVE_JOBS=n, CREATE_RATE_PER_10S=10 * n)
        async with ImagineCore.open(settings) as core:
            polls = logged_polls(core.gateway)
            recorder = Recorder()
            core.register(recorder)
            await core.start()
            runner = None
            if mode == "callbacks":
                runner, port = await start_web(build_web_app(core), HOST, 0)
                core.orchestrator.callback_url = f"http://{HOST}:{port}/callbacks/modkie"
            try:
                await core.imagine(user(0, "warm"), REPLY, "warm up")  # first connection, first statements
                await recorder.wait(1, timeout=60)
                await sandbox.ask({"op": "reset"})
                core.gateway.requests_sent.clear()
                polls.clear()
                recorder = Recorder()
                core.register(recorder)
                rss_before = rss_mb()
                cpu_before = cpu_seconds()
                sandbox_cpu_before = (await sandbox.ask({"op": "stats"}))["cpu_s"]
                peak_in_flight = 0
                lag = LoopLag()
                lag.start()
                t0 = time.perf_counter()
                for start in range(0, n, BATCH):
                    for i in range(start, min(n, start + BATCH)):
                        await core.imagine(user(i), REPLY, f"job {i} in a crowd --ar 16:9")
                    peak_in_flight = max(peak_in_flight, core.orchestrator.in_flight)
                    await asyncio.sleep(BATCH_EVERY_S)
                deadline = time.perf_counter() + 60 + 3 * sum(delays.values())
                while recorder.finished < n and time.perf_counter() < deadline:
                    peak_in_flight = max(peak_in_flight, core.orchestrator.in_flight)
                    await asyncio.sleep(0.25)
                elapsed = time.perf_counter() - t0
                cpu = cpu_seconds() - cpu_before
                lags = await lag.stop()
                rss_after = rss_mb()
            finally:
                if runner is not None:
                    await runner.cleanup()
            sent = dict(core.gateway.requests_sent)
        stats = await sandbox.ask({"op": "stats"})

    delivered = len(recorder.delivered)
    overheads = [seen.wall - stats["done_at"][recorder.task_of[job_id]] for job_id, seen in recorder.delivered.items()]
    gaps = [b - a for times in polls.values() for a, b in itertools.pairwise(times)]
    polled_early = sum(1 for times in polls.values() if len(times) > 1)
    gap_hist = Counter(f"{round(g * 2) / 2:.1f}s" for g in gaps)
    timeline = [c for c in stats["recordinfo_per_s"] if c > 0]
    return {
        "mode": mode,
        "n": n,
        "delivered": delivered,
        "failed": dict(Counter(recorder.failed.values())),
        "peak_in_flight": peak_in_flight,
        "elapsed_s": elapsed,
        "bot_cpu_s": cpu,
        "sandbox_cpu_s": stats["cpu_s"] - sandbox_cpu_before,
        "done_to_delivered_ms": summary(overheads, 1000),
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "peak_rss_mb": peak_rss_mb(),
        "sandbox_peak_rss_mb": stats["peak_rss_mb"],
        "loop_lag_ms": lags,
        "client_requests": sent,
        "sandbox_requests": stats["requests"],
        "api_requests_per_job": (sent.get("createTask", 0) + sent.get("recordInfo", 0)) / max(1, delivered),
        "downloads_per_job": sent.get("download", 0) / max(1, delivered),
        "jobs_with_more_than_one_recordinfo": polled_early,
        "min_poll_gap_s": min(gaps) if gaps else None,
        "poll_gaps": dict(sorted(gap_hist.items())),
        "recordinfo_per_s": {"peak": max(timeline, default=0),
                             "mean": sum(timeline) / len(timeline) if timeline else 0.0},
    }


async def mode_helper(conn: multiprocessing.connection.Connection, *, mode: str, n: int,
                      delays: dict[str, float]) -> None:
    """One mode in a fresh process, so that its peak RSS is its own."""
    conn.send({"ready": True})
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        result = await one_mode(mode, n, delays, Path(tmp))
    await asyncio.to_thread(recv_or_none, conn)  # the stop request
    conn.send(result)


async def main(quick: bool) -> dict[str, Any]:
    n = 100 if quick else 1000
    delays = {"waiting": 0.5, "queuing": 0.5, "generating": 3.0 if quick else 20.0}
    results: dict[str, Any] = {}
    for mode in ("callbacks", "polling"):
        say(f"{mode}: {n} jobs in flight, {1 + delays['generating'] * (1 - JITTER):.0f}-"
            f"{1 + delays['generating'] * (1 + JITTER):.0f} s each, in a fresh bot process")
        helper = Helper("benchmarks.inflight:mode_helper", mode=mode, n=n, delays=delays)
        await helper.ready()
        results[mode] = await helper.stop(timeout=120 + 3 * sum(delays.values()))
        if results[mode] is None:
            raise RuntimeError(f"the {mode} run did not report (crashed or timed out)")
    cb, poll = results["callbacks"], results["polling"]
    ok = cb["delivered"] == n and poll["delivered"] == n
    figures = [
        fig(f"{n} jobs in flight, callbacks: peak RSS of the bot process", f"{cb['peak_rss_mb']:.0f} MB",
            f"< {RSS_GOAL_MB:.0f} MB", cb["peak_rss_mb"] < RSS_GOAL_MB and ok,
            peak=cb["peak_rss_mb"], before=cb["rss_before_mb"]),
        fig(f"{n} jobs in flight, polling: peak RSS of the bot process", f"{poll['peak_rss_mb']:.0f} MB",
            f"< {RSS_GOAL_MB:.0f} MB", poll["peak_rss_mb"] < RSS_GOAL_MB and ok,
            peak=poll["peak_rss_mb"], before=poll["rss_before_mb"]),
        fig(f"{n} jobs in flight, callbacks: event-loop lag p50 / p99 (max)",
            f"{ms(cb['loop_lag_ms']['p50'])} / {ms(cb['loop_lag_ms']['p99'])} ({ms(cb['loop_lag_ms']['max'])})",
            f"p99 < {LAG_GOAL_MS:.0f} ms", cb["loop_lag_ms"]["p99"] < LAG_GOAL_MS, **cb["loop_lag_ms"]),
        fig(f"{n} jobs in flight, polling: event-loop lag p50 / p99 (max)",
            f"{ms(poll['loop_lag_ms']['p50'])} / {ms(poll['loop_lag_ms']['p99'])} ({ms(poll['loop_lag_ms']['max'])})",
            f"p99 < {LAG_GOAL_MS:.0f} ms", poll["loop_lag_ms"]["p99"] < LAG_GOAL_MS, **poll["loop_lag_ms"]),
        fig("gateway API requests per job, callbacks (createTask + recordInfo)", f"{cb['api_requests_per_job']:.2f}",
            "<= 2", cb["api_requests_per_job"] <= 2.0 and ok, per_job=cb["api_requests_per_job"]),
        fig("gateway API requests per job, polling (createTask + recordInfo)", f"{poll['api_requests_per_job']:.2f}",
            "", None, per_job=poll["api_requests_per_job"]),
        fig(f"{n} jobs in flight, callbacks: jobs still running at the 20 s fallback, so polled as well",
            f"{cb['jobs_with_more_than_one_recordinfo']} of {n}", "", None,
            jobs=cb["jobs_with_more_than_one_recordinfo"]),
        fig("polling: smallest gap between two polls of one job",
            f"{poll['min_poll_gap_s']:.2f} s" if poll["min_poll_gap_s"] is not None else "n/a",
            ">= POLL_INTERVAL_S (2 s)",
            poll["min_poll_gap_s"] is not None and poll["min_poll_gap_s"] >= 2.0 - 0.01,
            seconds=poll["min_poll_gap_s"], gaps=poll["poll_gaps"]),
        fig(f"polling: recordInfo requests/s at the gateway, {n} jobs (peak / mean)",
            f"{poll['recordinfo_per_s']['peak']} / {poll['recordinfo_per_s']['mean']:.0f}",
            f"contract: about {CONTRACT_RECORDINFO_PER_S}/s per key",
            poll["recordinfo_per_s"]["peak"] <= CONTRACT_RECORDINFO_PER_S, **poll["recordinfo_per_s"]),
        fig(f"{n} jobs in flight, callbacks: done -> delivered (download included) p50 / p99",
            f"{ms(cb['done_to_delivered_ms']['p50'])} / {ms(cb['done_to_delivered_ms']['p99'])}", "", None,
            **cb["done_to_delivered_ms"]),
        fig(f"{n} jobs in flight, polling: done -> delivered (download included) p50 / p99",
            f"{ms(poll['done_to_delivered_ms']['p50'])} / {ms(poll['done_to_delivered_ms']['p99'])}", "", None,
            **poll["done_to_delivered_ms"]),
        fig(f"{n} jobs in flight: bot CPU time per job, callbacks / polling",
            f"{1000 * cb['bot_cpu_s'] / n:.1f} ms / {1000 * poll['bot_cpu_s'] / n:.1f} ms", "", None,
            callbacks_s=cb["bot_cpu_s"], polling_s=poll["bot_cpu_s"]),
    ]
    return {"figures": figures, "details": results}


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(main(quick))
