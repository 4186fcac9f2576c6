"""Completion -> delivered overhead: from the moment the gateway's task is done to the moment the image is
handed to the front end, minus the download of the image itself.

The sandbox gateway (its own process) knows when each task ends: its creation time plus the time it
spends in each state (the generating time is stretched by a random factor per task, so that completions
fall at every phase of the pollers). The recording front end notes the wall clock when ``Delivered``
arrives; the result download is timed by wrapping the gateway client's ``download`` (same process), and
subtracted. Both processes read the same system clock.

- with callbacks: the orchestrator's ``callback_url`` is the core web app's ``/callbacks/modkie``; the
  sandbox POSTs there when the task ends, which wakes the job's tracker (one recordInfo to confirm; it
  takes a token of the shared ``POLL_RATE_PER_S``, ahead of any routine poll: here about 5 tasks end a
  second, under the 8/s).
- with polling: no callback URL; default polling: each job waits ``POLL_INTERVAL_S`` (2 s) after a poll,
  then queues for the recordInfo rate shared by all jobs (``POLL_RATE_PER_S``, 8/s, burst 2). Here all 40
  jobs are in flight at once at the peak (a task that is done stays in flight until it is polled), and 2 s
  a job would be 20 polls/s, so the shared rate, not the interval, sets the pace: each job is looked at
  about every max(2 s, jobs in flight / 8 s), 5 s at the peak. The peak number in flight is noted.

Jobs arrive one every 100 ms; the admission limits are raised for this run (``MAX_ACTIVE_JOBS``,
``CREATE_RATE_PER_10S``) so that admission does not delay them (it does not affect this figure anyway).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from imagine_bot.core.settings import Settings

from .common import (
    REPLY,
    Helper,
    Recorder,
    bench_settings,
    callbacks_served,
    fig,
    ms,
    sandbox_process,
    say,
    summary,
    task_of_url,
    timed_downloads,
    user,
)

GOAL_MS = 100.0
DELAYS = {"waiting": 0.2, "queuing": 0.2, "generating": 4.0}
JITTER = 0.5  # generating: 2 to 6 s
SPACING_S = 0.1
#: the default shared recordInfo rate (the benchmark leaves it as it is)
POLL_RATE_PER_S: float = Settings.model_fields["POLL_RATE_PER_S"].default


async def one_mode(mode: str, n: int, workdir: Path, base_url: str, sandbox: Helper) -> dict[str, Any]:
    from imagine_bot.core.app import ImagineCore

    await sandbox.ask({"op": "reset"})
    peak_in_flight = 0
    settings = bench_settings(workdir, base_url, MAX_ACTIVE_JOBS=max(32, n), CREATE_RATE_PER_10S=max(18, 4 * n))
    async with ImagineCore.open(settings) as core:
        took = timed_downloads(core.gateway)
        recorder = Recorder()
        core.register(recorder)
        await core.start()
        async with callbacks_served(core, mode == "callbacks"):
            for i in range(n):
                await core.imagine(user(i, mode[:4]), REPLY, f"{mode} job {i}")
                peak_in_flight = max(peak_in_flight, core.orchestrator.in_flight)
                await asyncio.sleep(SPACING_S)
            finished = await recorder.wait(n, timeout=60)
        sent = dict(core.gateway.requests_sent)
    stats = await sandbox.ask({"op": "stats"})
    done_at: dict[str, float] = stats["done_at"]
    download_s = {task_of_url(url): seconds for url, seconds in took.items()}
    raw, net, downloads = [], [], []
    for job_id, seen in recorder.delivered.items():
        task_id = recorder.task_of[job_id]
        overhead = seen.wall - done_at[task_id]
        raw.append(overhead)
        net.append(overhead - download_s.get(task_id, 0.0))
        downloads.append(download_s.get(task_id, 0.0))
    delivered = len(recorder.delivered)
    return {
        "n": n,
        "finished_in_time": finished,
        "peak_in_flight": peak_in_flight,
        "delivered": delivered,
        "failed": dict(recorder.failed),
        "overhead_ms": summary(net, 1000),
        "overhead_with_download_ms": summary(raw, 1000),
        "download_ms": summary(downloads, 1000),
        "client_requests": sent,
        "sandbox_requests": stats["requests"],
        "api_requests_per_job": (sent.get("createTask", 0) + sent.get("recordInfo", 0)) / max(1, delivered),
    }


async def main(quick: bool) -> dict[str, Any]:
    n = 10 if quick else 40
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        async with sandbox_process(delays=DELAYS, jitter=JITTER, image_scale=0.125) as (base_url, sandbox):
            for mode in ("callbacks", "polling"):
                say(f"{mode}: {n} jobs, one every {SPACING_S * 1000:.0f} ms, generating 2-6 s each")
                results[mode] = await one_mode(mode, n, Path(tmp) / mode, base_url, sandbox)
    cb, poll = results["callbacks"]["overhead_ms"], results["polling"]["overhead_ms"]
    figures = [
        fig("completion -> delivered overhead, callbacks: p50 / p99", f"{ms(cb['p50'])} / {ms(cb['p99'])}",
            f"p99 < {GOAL_MS:.0f} ms", cb.get("p99", 1e9) < GOAL_MS and results["callbacks"]["delivered"] == n,
            **cb),
        fig(f"completion -> delivered overhead, polling (2 s a job, {POLL_RATE_PER_S:g}/s shared; "
            f"{results['polling']['peak_in_flight']} in flight at the peak): p50 / p99",
            f"{ms(poll['p50'])} / {ms(poll['p99'])}",
            f"(bounded by max(2 s, in flight / {POLL_RATE_PER_S:g} per s))", None,
            peak_in_flight=results["polling"]["peak_in_flight"], **poll),
        fig("gateway API requests per job, callbacks, jobs of 2-6 s (createTask + recordInfo)",
            f"{results['callbacks']['api_requests_per_job']:.2f}", "<= 2",
            results["callbacks"]["api_requests_per_job"] <= 2.0 and results["callbacks"]["delivered"] == n,
            per_job=results["callbacks"]["api_requests_per_job"]),
        fig("download of the image (subtracted above), callbacks: p50",
            ms(results["callbacks"]["download_ms"].get("p50", float("nan"))), "", None,
            **results["callbacks"]["download_ms"]),
    ]
    return {"figures": figures, "details": results}


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(main(quick))
