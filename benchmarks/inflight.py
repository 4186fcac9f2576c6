"""1,000 jobs in flight in one process: peak memory, event-loop lag, gateway requests per job, recordInfo rate,
in three modes: per-task callbacks, polling, and signed ModKie account webhooks.

Each mode runs in a fresh bot process (so its peak RSS is its own), with the sandbox gateway in another
process (its CPU and memory are not counted in the bot's figures). The sandbox keeps each task 16 to 26 s
(waiting and queuing 1 s, then generating 20 s stretched by a random factor from 0.75 to 1.25) and serves
small images (``image_scale`` 0.05). The bot runs the real orchestrator with ``MAX_ACTIVE_JOBS=1000`` and
``CREATE_RATE_PER_10S=10000``, raised for this run so that all 1,000 are admitted at once (the defaults,
32 and 18, would queue them); 1,000 distinct users submit in batches of 50 every 100 ms (2 s for all),
after one warm-up job (first connection, first statements) on a short task of 0.5 s.
Polling is left at its defaults: ``POLL_INTERVAL_S=2`` per job and ``POLL_RATE_PER_S=8`` (burst 2): every
recordInfo of every job, a callback's confirmation too, takes a token from one shared limiter
(``Orchestrator.poll_limiter``), where confirmations wait in a line that goes before routine polls.

- peak RSS: ``VmHWM`` of the bot process (its whole life, imports included); RSS before the first job too.
- event-loop lag: a ticker sleeps 10 ms again and again; lag = how late it wakes. From the first
  submission to the last delivery.
- gateway API requests per job: ``createTask`` + ``recordInfo`` sent by the bot (the gateway client's own
  counter; the sandbox's count agrees), downloads counted apart.
- with callbacks: one createTask and one recordInfo (to confirm the callback) per job, plus the fallback
  polls of jobs still running when the fallback starts (``CALLBACK_FALLBACK_FIRST_S``, 45 s, then every
  ``CALLBACK_FALLBACK_EVERY_S``, 30 s; every task here ends by 26 s, so there should be none). The
  limiter's ``acquire`` is wrapped (this instance only) to note how long each confirmation (``urgent``)
  and each routine poll waited for its token. The 1,000 tasks end within about 15 s of each other, about
  60 a second, so their confirmations queue at 8/s: at this scale, with every task ending at once,
  done -> delivered is set by the shared rate with callbacks too (the ``delivery`` benchmark shows
  callbacks when completions come slower than the rate).
- with polling: each job waits ``POLL_INTERVAL_S`` after its poll, then queues for the shared limiter, so
  with 1,000 jobs its own interval stretches to about 1,000 / 8 = 125 s; tracking all 1,000 takes at least
  that long. Shown: the smallest and the median gap between two polls of one job.
- recordInfo requests at the gateway, in both modes: the sandbox notes each one's arrival time; the
  busiest 1 s is the most arrivals in any sliding window [t, t + 1) (so at least as strict as any fixed
  1-s window), the mean is requests / time from the first to the last. Goal: busiest <=
  ``POLL_RATE_PER_S`` + burst (8 + 2), the most a token bucket of that size lets through in 1 s, and
  mean <= the contract's ~10/s. The bot side's busiest second (when ``record_info`` was called) is shown
  in brackets: the limiter paces the calls; requests that then wait in the HTTP client's connection pool
  can still reach the gateway together.
- with signed account webhooks (``webhooks``): the bot registers its ``/callbacks/modkie`` as the ModKie
  account webhook with a secret (as ``imagine-bot run`` does with ``PUBLIC_URL`` and
  ``MODKIE_WEBHOOK_SECRET``); createTask carries no per-task callBackUrl, and the sandbox POSTs each
  finished task there in the ModKie shape, signed over its whole body. A final one is the answer: no
  recordInfo at all, so the shared 8/s no longer sets the pace. Goals: 1.0 gateway request a job
  (createTask; the download counted apart) and done -> delivered p99 < 2 s.
- done -> delivered: as in the ``delivery`` benchmark (download included), here under the load of 1,000:
  in both modes it is dominated by the shared rate (a job waits its turn for a recordInfo token), not by
  the bot.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing.connection
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from imagine_bot.core.jobs.orchestrator import CALLBACK_FALLBACK_EVERY_S, CALLBACK_FALLBACK_FIRST_S
from imagine_bot.core.settings import Settings

from .common import (
    REPLY,
    WEBHOOK_SECRET,
    Helper,
    LoopLag,
    Recorder,
    bench_settings,
    busiest_second,
    callbacks_served,
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
#: the warm-up job's task is short (the measured tasks' delays are set after it)
WARM_DELAYS = {"waiting": 0.1, "queuing": 0.1, "generating": 0.3}
#: the gateway contract: recordInfo allows about 10 requests/s per key
CONTRACT_RECORDINFO_PER_S = 10
#: the default shared recordInfo rate (the benchmark leaves it as it is)
POLL_RATE_PER_S: float = Settings.model_fields["POLL_RATE_PER_S"].default
#: callbacks: per-task callbacks (hints, each confirmed with recordInfo); polling: no callbacks; webhooks:
#: the signed ModKie account webhook (a final one is the answer: no recordInfo)
MODES = ("callbacks", "polling", "webhooks")
#: signed webhooks: the goal for done -> delivered p99, and for gateway requests per job (createTask only)
WEBHOOK_DELIVERY_GOAL_MS = 2000.0


def logged_polls(gateway: Any) -> dict[str, list[float]]:
    """Wrap ``gateway.record_info`` (this instance only) to note when each task was looked at."""
    polls: dict[str, list[float]] = {}
    original = gateway.record_info

    async def record_info(task_id: str) -> Any:
        polls.setdefault(task_id, []).append(time.perf_counter())
        return await original(task_id)

    gateway.record_info = record_info
    return polls


def logged_acquires(limiter: Any) -> list[tuple[float, float, bool]]:
    """Wrap the shared poll limiter's ``acquire`` (this instance only) to note, for each token taken, when
    it was asked for, how long the caller waited and whether it was urgent (a callback's confirmation)."""
    taken: list[tuple[float, float, bool]] = []
    original = limiter.acquire

    async def acquire(*, urgent: bool = False) -> None:
        start = time.perf_counter()
        await original(urgent=urgent)
        taken.append((start, time.perf_counter() - start, urgent))

    limiter.acquire = acquire
    return taken


def tracking_deadline_s(n: int, delays: dict[str, float]) -> float:
    """How long (after the last submission) a mode may take: the tasks themselves, a margin, and one round
    of ``n`` polls at the shared rate (with polling each job waits its turn; the ~125 s of 1,000 jobs)."""
    return 60 + 3 * sum(delays.values()) + n / POLL_RATE_PER_S


async def one_mode(mode: str, n: int, delays: dict[str, float], workdir: Path) -> dict[str, Any]:
    from imagine_bot.core.app import ImagineCore

    async with sandbox_process(delays=WARM_DELAYS, jitter=JITTER, image_scale=0.05) as (base_url, sandbox):
        secret = {"MODKIE_WEBHOOK_SECRET": WEBHOOK_SECRET} if mode == "webhooks" else {}
        settings = bench_settings(workdir, base_url, MAX_ACTIVE_JOBS=n, CREATE_RATE_PER_10S=10 * n, **secret)
        async with ImagineCore.open(settings) as core:
            polls = logged_polls(core.gateway)
            limiter = core.orchestrator.poll_limiter
            taken = logged_acquires(limiter)
            recorder = Recorder()
            core.register(recorder)
            await core.start()
            async with callbacks_served(core, mode != "polling", account_webhook=mode == "webhooks"):
                await core.imagine(user(0, "warm"), REPLY, "warm up")  # first connection, first statements
                await recorder.wait(1, timeout=60)
                await sandbox.ask({"op": "delays", "delays": delays})
                await sandbox.ask({"op": "reset"})
                core.gateway.requests_sent.clear()
                polls.clear()
                taken.clear()
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
                deadline = time.perf_counter() + tracking_deadline_s(n, delays)
                while recorder.finished < n and time.perf_counter() < deadline:
                    peak_in_flight = max(peak_in_flight, core.orchestrator.in_flight)
                    await asyncio.sleep(0.25)
                elapsed = time.perf_counter() - t0
                cpu = cpu_seconds() - cpu_before
                lags = await lag.stop()
                rss_after = rss_mb()
            sent = dict(core.gateway.requests_sent)
        stats = await sandbox.ask({"op": "stats"})

    delivered = len(recorder.delivered)
    ends = [stats["done_at"][task_id] for task_id in recorder.task_of.values()]
    overheads = [seen.wall - stats["done_at"][recorder.task_of[job_id]] for job_id, seen in recorder.delivered.items()]
    gaps = [b - a for times in polls.values() for a, b in itertools.pairwise(times)]
    polled_more = sum(1 for times in polls.values() if len(times) > 1)
    gap_hist = Counter(5 * int(g // 5) for g in gaps)
    return {
        "mode": mode,
        "n": n,
        "delivered": delivered,
        "failed": dict(Counter(recorder.failed.values())),
        "peak_in_flight": peak_in_flight,
        "elapsed_s": elapsed,
        "all_delivered_after_s": (max(s.mono for s in recorder.delivered.values()) - t0
                                  if delivered == n else None),
        "completions_span_s": max(ends) - min(ends) if ends else 0.0,
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
        "jobs_with_more_than_one_recordinfo": polled_more,
        "min_poll_gap_s": min(gaps) if gaps else None,
        "median_poll_gap_s": statistics.median(gaps) if gaps else None,
        "poll_gaps_5s_bins": {f"{lo}-{lo + 5}s": count for lo, count in sorted(gap_hist.items())},
        "poll_rate_per_s": limiter.bucket.fill_per_s,
        # the most one second may see: routine polls burst `limiter.burst`; confirmations may use the bucket
        "poll_burst": int(limiter.bucket.capacity) if any(urgent for _, _, urgent in taken) else limiter.burst,
        "urgent_tokens": sum(1 for _, _, urgent in taken if urgent),
        "urgent_wait_s": summary(wait for _, wait, urgent in taken if urgent),
        "routine_tokens": sum(1 for _, _, urgent in taken if not urgent),
        "routine_wait_s": summary(wait for _, wait, urgent in taken if not urgent),
        # at the gateway: from each recordInfo request's arrival time (the sandbox's clock)
        "recordinfo_at_gateway": {**stats["recordinfo"],
                                  "bot_busiest_second": busiest_second(t for ts in polls.values() for t in ts)},
    }


async def mode_helper(conn: multiprocessing.connection.Connection, *, mode: str, n: int,
                      delays: dict[str, float]) -> None:
    """One mode in a fresh process, so that its peak RSS is its own."""
    conn.send({"ready": True})
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        result = await one_mode(mode, n, delays, Path(tmp))
    await asyncio.to_thread(recv_or_none, conn)  # the stop request
    conn.send(result)


def _seconds(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f} s"


async def main(quick: bool) -> dict[str, Any]:
    n = 100 if quick else 1000
    delays = {"waiting": 0.5, "queuing": 0.5, "generating": 3.0 if quick else 20.0}
    results: dict[str, Any] = {}
    for mode in MODES:
        say(f"{mode}: {n} jobs in flight, {1 + delays['generating'] * (1 - JITTER):.0f}-"
            f"{1 + delays['generating'] * (1 + JITTER):.0f} s each, in a fresh bot process")
        helper = Helper("benchmarks.inflight:mode_helper", mode=mode, n=n, delays=delays)
        await helper.ready()
        results[mode] = await helper.stop(timeout=60 + tracking_deadline_s(n, delays))
        if results[mode] is None:
            raise RuntimeError(f"the {mode} run did not report (crashed or timed out)")
    cb, poll, wh = results["callbacks"], results["polling"], results["webhooks"]
    ok = cb["delivered"] == n and poll["delivered"] == n
    rate = poll["poll_rate_per_s"]
    round_s = n / rate  # one poll of every job at the shared rate
    cw = cb["urgent_wait_s"]
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
        fig(f"{n} jobs in flight, callbacks: jobs also polled by the fallback "
            f"({CALLBACK_FALLBACK_FIRST_S:.0f} s, then every {CALLBACK_FALLBACK_EVERY_S:.0f} s; tasks end by 26 s)",
            f"{cb['jobs_with_more_than_one_recordinfo']} of {n}", "", None,
            jobs=cb["jobs_with_more_than_one_recordinfo"]),
        fig(f"{n} jobs in flight, callbacks: wait of each confirmation for a recordInfo token p50 / max "
            "(confirmations / routine polls)",
            f"{_seconds(cw.get('p50'))} / {_seconds(cw.get('max'))} ({cb['urgent_tokens']} / {cb['routine_tokens']})",
            f"(the {n} tasks end within {cb['completions_span_s']:.0f} s; {cb['poll_rate_per_s']:g} tokens a second)",
            None, completions_span_s=cb["completions_span_s"],
            confirmations=cb["urgent_tokens"], routine=cb["routine_tokens"],
            **{f"wait_{k}": v for k, v in cw.items()}),
        fig(f"{n} jobs in flight, polling: gap between two polls of one job, smallest / median",
            f"{_gap(poll['min_poll_gap_s'])} / {_gap(poll['median_poll_gap_s'])}",
            ">= POLL_INTERVAL_S (2 s)",
            poll["min_poll_gap_s"] is not None and poll["min_poll_gap_s"] >= 2.0 - 0.01,
            seconds=poll["min_poll_gap_s"], median=poll["median_poll_gap_s"], gaps=poll["poll_gaps_5s_bins"]),
        *(_rate_figure(n, mode, results[mode]) for mode in ("callbacks", "polling")),
        fig(f"{n} jobs in flight, callbacks: done -> delivered (download included) p50 / p99",
            f"{ms(cb['done_to_delivered_ms']['p50'])} / {ms(cb['done_to_delivered_ms']['p99'])}",
            f"(confirmations share the {rate:g}/s: up to ~{n} / {rate:g} per s = {round_s:.0f} s)", None,
            **cb["done_to_delivered_ms"]),
        fig(f"{n} jobs in flight, polling: done -> delivered (download included) p50 / p99",
            f"{ms(poll['done_to_delivered_ms']['p50'])} / {ms(poll['done_to_delivered_ms']['p99'])}",
            f"(each job waits its turn: up to ~{n} / {rate:g} per s = {round_s:.0f} s)", None,
            **poll["done_to_delivered_ms"]),
        fig(f"{n} jobs in flight, signed account webhooks: done -> delivered (download included) p50 / p99",
            f"{ms(wh['done_to_delivered_ms']['p50'])} / {ms(wh['done_to_delivered_ms']['p99'])}",
            f"p99 < {WEBHOOK_DELIVERY_GOAL_MS / 1000:.0f} s (the {n} tasks end within "
            f"{wh['completions_span_s']:.0f} s)",
            wh["delivered"] == n and wh["done_to_delivered_ms"].get("p99", 1e12) < WEBHOOK_DELIVERY_GOAL_MS,
            completions_span_s=wh["completions_span_s"], **wh["done_to_delivered_ms"]),
        fig(f"{n} jobs in flight, signed account webhooks: gateway API requests per job (createTask + recordInfo) "
            "+ downloads per job",
            f"{wh['api_requests_per_job']:.2f} + {wh['downloads_per_job']:.2f}", "1.0 (createTask only)",
            wh["delivered"] == n and wh["api_requests_per_job"] <= 1.0, per_job=wh["api_requests_per_job"],
            downloads_per_job=wh["downloads_per_job"], client_requests=wh["client_requests"]),
        fig(f"{n} jobs in flight, signed account webhooks: peak RSS / event-loop lag p99",
            f"{wh['peak_rss_mb']:.0f} MB / {ms(wh['loop_lag_ms']['p99'])}",
            f"< {RSS_GOAL_MB:.0f} MB / < {LAG_GOAL_MS:.0f} ms",
            wh["peak_rss_mb"] < RSS_GOAL_MB and wh["loop_lag_ms"]["p99"] < LAG_GOAL_MS,
            peak=wh["peak_rss_mb"], **wh["loop_lag_ms"]),
        fig(f"{n} jobs in flight: all delivered after (from the first submission), callbacks / polling / "
            "signed webhooks",
            f"{_seconds(cb['all_delivered_after_s'])} / {_seconds(poll['all_delivered_after_s'])} / "
            f"{_seconds(wh['all_delivered_after_s'])}",
            f"(callbacks, polling: at least {n} / {rate:g} per s = {round_s:.0f} s)", None,
            callbacks_s=cb["all_delivered_after_s"], polling_s=poll["all_delivered_after_s"],
            webhooks_s=wh["all_delivered_after_s"]),
        fig(f"{n} jobs in flight: bot CPU time per job, callbacks / polling / signed webhooks",
            f"{1000 * cb['bot_cpu_s'] / n:.1f} ms / {1000 * poll['bot_cpu_s'] / n:.1f} ms / "
            f"{1000 * wh['bot_cpu_s'] / n:.1f} ms", "", None,
            callbacks_s=cb["bot_cpu_s"], polling_s=poll["bot_cpu_s"], webhooks_s=wh["bot_cpu_s"]),
    ]
    return {"figures": figures, "details": results}


def _rate_figure(n: int, mode: str, result: dict[str, Any]) -> dict[str, Any]:
    """recordInfo at the gateway against the shared limiter (rate + burst in any 1 s) and the contract."""
    rate, burst = result["poll_rate_per_s"], result["poll_burst"]
    ri = {k: v for k, v in result["recordinfo_at_gateway"].items() if k != "per_second"}
    return fig(f"{n} jobs in flight, {mode}: recordInfo at the gateway, busiest 1 s (sliding) / mean per s "
               "(busiest 1 s at the bot)",
               f"{ri['busiest_second']} / {ri['mean_per_s']:.1f} ({ri['bot_busiest_second']})",
               f"busiest <= {rate + burst:.0f} (POLL_RATE_PER_S {rate:g} + burst {burst}); "
               f"mean <= {CONTRACT_RECORDINFO_PER_S} (contract)",
               ri["busiest_second"] <= rate + burst and ri["mean_per_s"] <= CONTRACT_RECORDINFO_PER_S, **ri)


def _gap(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s" if x < 10 else f"{x:.0f} s"


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(main(quick))
