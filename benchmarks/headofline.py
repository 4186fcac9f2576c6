"""Head-of-line: do Slack's rate limits on progress edits hold up deliveries?

50 jobs go through the real Slack front end (HTTP mode's service, production pacing: one edit a second
per job, a tick every 10 s) to the fake Slack Web API, in a process of its own, that enforces Tier 3 on
``chat.update``: at most 50 a minute for the workspace, answering 429 with a ``Retry-After`` past that.
Jobs arrive one every 100 ms and take 2-6 s at the sandbox gateway (callbacks on); ``MAX_ACTIVE_JOBS`` is
8, so a job that held its gateway slot while it waited on Slack would hold up the others.

Completion -> delivered overhead: from the moment the gateway's task is done to the moment the Slack
front end returns from ``Delivered`` (the image is uploaded; the core charges next), minus the download
of the image (timed, as in ``delivery``). Progress edits and the final caption edit go through the outbox
and must not count. Also noted: how many ``chat.update`` calls Slack refused with 429, and how long after
the last delivery the last final edit (caption and buttons) landed: the outbox keeps those, spaced out
within the workspace's budget.

Goal: p99 < 1 s.
"""

from __future__ import annotations

import asyncio
import multiprocessing.connection
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    Helper,
    bench_settings,
    callbacks_served,
    fig,
    ms,
    recv_or_none,
    sandbox_process,
    say,
    summary,
    task_of_url,
    timed_downloads,
)

GOAL_MS = 1000.0
BOT_TOKEN = "xoxb-bench-token"
SIGNING_SECRET = "bench-signing-secret-0123456789ab"
TEAM = "TBENCH"
DELAYS = {"waiting": 0.2, "queuing": 0.2, "generating": 4.0}
JITTER = 0.5  # generating: 2 to 6 s
SPACING_S = 0.1
TIER3_PER_MIN = 50
MAX_ACTIVE = 8
#: how long the final edits may take to land after the last delivery (50 finals at 50 a minute: ~1 min)
FINALS_WAIT_S = 150.0


async def slack_helper(conn: multiprocessing.connection.Connection) -> None:
    """The fake Slack Web API in its own process, with Tier 3 on chat.update."""
    from tests.fakes.slack_api import FakeSlackAPI

    async with FakeSlackAPI(bot_token=BOT_TOKEN, team_id=TEAM) as fake:
        fake.tier("chat.update", per_minute=TIER3_PER_MIN)
        conn.send({"api_url": fake.api_url})
        while True:
            message = await asyncio.to_thread(recv_or_none, conn)
            if message is None or message.get("op") == "stop":
                conn.send({})
                break
            updates = fake.calls_to("chat.update")
            conn.send({
                "calls": {m: len(fake.calls_to(m)) for m in {c.method for c in fake.calls}},
                "updates_429": sum(1 for c in updates if c.status == 429),
                "final_texts": sum(1 for m in fake.messages.values() if m.blocks and m.blocks[-1]["type"] == "actions"),
            })


async def main(quick: bool) -> dict[str, Any]:
    from imagine_bot.bots.slack import SlackService
    from imagine_bot.core.access.identity import UserRef
    from imagine_bot.core.app import ImagineCore
    from imagine_bot.core.events import Delivered, JobEvent
    from imagine_bot.core.jobs.model import ReplyTo
    from imagine_bot.core.web.server import build_web_app

    n = 20 if quick else 50
    delivered_at: dict[str, float] = {}
    slack = Helper("benchmarks.headofline:slack_helper")
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        try:
            api_url = (await slack.ready())["api_url"]
            async with sandbox_process(delays=DELAYS, jitter=JITTER, image_scale=0.125) as (base_url, sandbox):
                settings = bench_settings(Path(tmp), base_url, SLACK_BOT_TOKEN=BOT_TOKEN,
                                          SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=api_url,
                                          MAX_ACTIVE_JOBS=MAX_ACTIVE, CREATE_RATE_PER_10S=max(18, 4 * n))
                async with ImagineCore.open(settings) as core:
                    took = timed_downloads(core.gateway)
                    service = SlackService(core, settings, build_web_app(core))
                    publish = service.frontend.publish

                    async def timed_publish(event: JobEvent) -> None:
                        await publish(event)
                        if isinstance(event, Delivered):
                            delivered_at[event.job.id] = time.time()

                    service.frontend.publish = timed_publish  # type: ignore[method-assign]
                    await service.start()
                    await core.start()
                    say(f"{n} jobs, one every {SPACING_S * 1000:.0f} ms, MAX_ACTIVE_JOBS={MAX_ACTIVE}, "
                        f"chat.update limited to {TIER3_PER_MIN}/min (429 + Retry-After)")
                    try:
                        async with callbacks_served(core, True):
                            for i in range(n):
                                await core.imagine(UserRef("slack", TEAM, f"U{i:05d}"), ReplyTo("slack", "CBENCH"),
                                                   f"head of line {i}")
                                await asyncio.sleep(SPACING_S)
                            await core.orchestrator.wait_jobs()
                            last_delivery = max(delivered_at.values(), default=time.time())
                            try:
                                await asyncio.wait_for(core.orchestrator.outbox.wait_idle(), FINALS_WAIT_S)
                                finals_done = True
                            except TimeoutError:
                                finals_done = False
                            finals_after = time.time() - last_delivery
                        rows = core.stores.db.execute("SELECT id, task_id, state FROM jobs").fetchall()
                        outbox = core.orchestrator.outbox
                        coalesced, sent = outbox.coalesced, outbox.sent
                    finally:
                        await core.orchestrator.stop()
                        await service.stop()
                stats = await sandbox.ask({"op": "stats"})
            seen = await slack.ask({"op": "calls"})
        finally:
            await slack.stop()

    download_s = {task_of_url(url): s for url, s in took.items()}
    overhead = [delivered_at[job_id] - stats["done_at"][task_id] - download_s.get(task_id, 0.0)
                for job_id, task_id, state in rows if job_id in delivered_at and task_id in stats["done_at"]]
    delivered = sum(1 for _, _, state in rows if state == "delivered")
    o = summary(overhead, 1000)
    figures = [
        fig(f"head-of-line: completion -> delivered overhead, {n} jobs, Slack chat.update at Tier 3 "
            f"({TIER3_PER_MIN}/min, 429 + Retry-After), MAX_ACTIVE_JOBS={MAX_ACTIVE}: p50 / p99",
            f"{ms(o['p50'])} / {ms(o['p99'])}", f"p99 < {GOAL_MS:.0f} ms",
            o.get("p99", 1e9) < GOAL_MS and delivered == n, **o),
        fig("head-of-line: chat.update answered 429 / sent; final edits landed, after the last delivery",
            f"{seen['updates_429']} / {seen['calls'].get('chat.update', 0)}; "
            f"{seen['final_texts']} of {n} in {finals_after:.0f} s", "every final edit lands",
            seen["final_texts"] == n and finals_done, updates_429=seen["updates_429"],
            updates=seen["calls"].get("chat.update", 0), finals=seen["final_texts"], finals_after_s=finals_after),
    ]
    return {"figures": figures, "details": {"n": n, "delivered": delivered, "overhead_ms": o,
                                            "slack_calls": seen["calls"], "outbox_sent": sent,
                                            "outbox_coalesced": coalesced, "finals_done": finals_done}}


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(main(quick))
