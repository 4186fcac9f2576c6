"""The naive design, for comparison: one job at a time with a fixed 5 s poll, as several popular bots do.

N commands arrive at once; the same sandbox gateway (its own process, every task 3 s: waiting 0.3 s,
queuing 0.3 s, generating 2.4 s) serves three designs in turn:

- naive: a loop over the commands: createTask, then ``sleep 5 s; recordInfo`` until done, download, next;
- ours with callbacks: the real orchestrator, the gateway calling back ``/callbacks/modkie``;
- ours with polling: the real orchestrator with its default polling (2 s a job at first; all jobs share
  ``POLL_RATE_PER_S``, 8 recordInfo/s, which 3 jobs at 2 s, 1.5/s, never reach).

Both use the same gateway client (``core.gateway.GatewayClient``). Latency = from the moment the N commands
arrive to the moment each image is in hand (the naive loop saves it; ours hands it to the front end).
The naive loop needs at least 5 s per job whatever the gateway does, so its throughput is at most 12
jobs a minute; ours is bounded by ``CREATE_RATE_PER_10S`` (18 per 10 s by default: 108 a minute) and
``MAX_ACTIVE_JOBS`` (32 at once), and when polling also by ``POLL_RATE_PER_S`` (8 recordInfo/s, at least one
a job: at most 480 jobs a minute, well above the 108 created).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    API_KEY,
    REPLY,
    Recorder,
    bench_settings,
    callbacks_served,
    fig,
    sandbox_process,
    say,
    summary,
    user,
)

DELAYS = {"waiting": 0.3, "queuing": 0.3, "generating": 2.4}
NAIVE_POLL_S = 5.0


async def naive(n: int, base_url: str, out: Path) -> list[float]:
    import httpx

    from imagine_bot.core.gateway import GatewayClient, TaskStage
    from imagine_bot.core.gateway.catalog import get_model

    model = get_model("seedream/4.5-text-to-image", [])
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    latencies = []
    async with httpx.AsyncClient(timeout=30) as http:
        gateway = GatewayClient(http, base_url=base_url, api_key=API_KEY)
        t0 = time.perf_counter()
        for i in range(n):
            task_id = await gateway.create_task(model.id, {"prompt": f"naive job {i}", **model.fixed,
                                                           "aspect_ratio": "1:1", "quality": "basic"})
            while True:
                await asyncio.sleep(NAIVE_POLL_S)
                record = await gateway.record_info(task_id)
                if record.stage in (TaskStage.SUCCESS, TaskStage.FAIL):
                    break
            if record.stage is TaskStage.SUCCESS:
                image = await gateway.download(record.result_urls[0])
                await asyncio.to_thread((out / f"{task_id}.png").write_bytes, image.content)
            latencies.append(time.perf_counter() - t0)
    return latencies


async def ours(n: int, base_url: str, workdir: Path, *, callbacks: bool) -> list[float]:
    from imagine_bot.core.app import ImagineCore

    async with ImagineCore.open(bench_settings(workdir, base_url)) as core:  # default limits and polling
        recorder = Recorder()
        core.register(recorder)
        await core.start()
        async with callbacks_served(core, callbacks):
            t0 = time.perf_counter()
            for i in range(n):
                await core.imagine(user(i), REPLY, f"our job {i}")
            await recorder.wait(n, timeout=60)
    return [seen.mono - t0 for seen in recorder.delivered.values()]


def _row(label: str, latencies: list[float], n: int) -> dict[str, Any]:
    s = summary(latencies)
    total = max(latencies) if len(latencies) == n else float("nan")
    return fig(label, f"{total:.1f} s (each: p50 {s.get('p50', float('nan')):.1f} s)", "", None,
               all_delivered_s=total, jobs_per_min=60 * n / total if total == total else 0.0, **s)


async def main(quick: bool) -> dict[str, Any]:
    n = 2 if quick else 3
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        async with sandbox_process(delays=DELAYS) as (base_url, _sandbox):
            say(f"naive: {n} jobs one at a time, {NAIVE_POLL_S:.0f} s fixed poll, 3 s tasks")
            results["naive"] = await naive(n, base_url, Path(tmp) / "naive")
            say(f"ours, callbacks: the same {n} jobs")
            results["callbacks"] = await ours(n, base_url, Path(tmp) / "callbacks", callbacks=True)
            say(f"ours, polling: the same {n} jobs")
            results["polling"] = await ours(n, base_url, Path(tmp) / "polling", callbacks=False)
    figures = [
        _row(f"{n} jobs at once, 3 s tasks: naive loop (one at a time, 5 s poll), all delivered after",
             results["naive"], n),
        _row(f"{n} jobs at once, 3 s tasks: ours with callbacks, all delivered after", results["callbacks"], n),
        _row(f"{n} jobs at once, 3 s tasks: ours with polling, all delivered after", results["polling"], n),
    ]
    return {"figures": figures, "details": {k: summary(v) for k, v in results.items()}}


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(main(quick))
