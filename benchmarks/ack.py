"""Ack latency: how long a command waits before it is acknowledged, with 200 commands arriving at once.

- Core level: 200 ``core.imagine`` calls started together (200 distinct users, default limits). A call
  returns once the job is accepted: credits reserved, job recorded, ``Accepted`` published to the
  (recording) front end. Latency = from the moment the burst starts to the moment each call returns, so
  the queueing among the 200 counts.
- Slack level: 200 signed ``/imagine`` slash-command POSTs to ``/slack/events`` at once, sent by a
  separate process that also serves the fake Slack Web API; latency = burst start to HTTP response, as
  Slack would see it. The connections are opened (and kept alive) before the burst, as a proxy would.
- Discord level: the fake Discord (REST and gateway) in a separate process sends 200 ``/imagine``
  INTERACTION_CREATE dispatches at once over the gateway websocket to the real discord.py client
  (``AutoShardedClient``, one shard); latency = burst start to the interaction callback (the ack) arriving
  at the fake, both on the fake's clock.

Acks per second: the burst's size over the time until its last ack.

Goal: p99 < 50 ms (Slack and Discord allow 3 s).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import multiprocessing.connection
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .common import (
    HOST,
    REPLY,
    Helper,
    LoopLag,
    Recorder,
    bench_settings,
    drain,
    fig,
    ms,
    recv_or_none,
    sandbox_process,
    say,
    summary,
    user,
)

GOAL_MS = 50.0
SIGNING_SECRET = "bench-signing-secret-0123456789ab"
BOT_TOKEN = "xoxb-bench-token"
TEAM = "TBENCH"
#: the gateway is not what is measured here: the sandbox's default delays
DELAYS = {"waiting": 0.3, "queuing": 0.3, "generating": 1.0}


# ---------------------------------------------------------------------- core level


async def core_burst(n: int, workdir: Path) -> dict[str, Any]:
    from imagine_bot.core.app import ImagineCore

    async with sandbox_process(delays=DELAYS) as (base_url, _sandbox):
        async with ImagineCore.open(bench_settings(workdir, base_url)) as core:
            recorder = Recorder()
            core.register(recorder)
            await core.start()
            for i in range(3):  # warm-up: first statements, first connections, every code path once
                await core.imagine(user(i, "warm"), REPLY, "warm up")
            await recorder.wait(3, timeout=30)

            lag = LoopLag()
            lag.start()
            t0 = time.perf_counter()

            async def one(i: int) -> tuple[float, float]:
                start = time.perf_counter()
                await core.imagine(user(i), REPLY, f"bench prompt {i} --ar 16:9")
                end = time.perf_counter()
                return end - t0, end - start

            results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
            await asyncio.sleep(0.05)  # let the ticker see how long the burst held the loop
            lags = await lag.stop()
            ok = [r for r in results if isinstance(r, tuple)]
            errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
            drained = await drain(core)
            delivered = len(recorder.delivered)
    return {
        "n": n,
        "accepted": len(ok),
        "refused": errors[:5],
        "all_finished_after": drained,
        "delivered_after": delivered - 3,
        "latency_ms": summary((r[0] for r in ok), 1000),
        "own_call_ms": summary((r[1] for r in ok), 1000),
        "loop_lag_ms": lags,
    }


# ---------------------------------------------------------------------- Slack level


def sign(body: str, timestamp: str) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(SIGNING_SECRET.encode(), base, hashlib.sha256).hexdigest()


async def slack_helper(conn: multiprocessing.connection.Connection) -> None:
    """The Slack side, in its own process: the fake Slack Web API, and the client that fires the burst."""
    import aiohttp

    from tests.fakes.slack_api import FakeSlackAPI

    async with FakeSlackAPI(bot_token=BOT_TOKEN, team_id=TEAM) as fake:
        conn.send({"api_url": fake.api_url})
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
            while True:
                message = await asyncio.to_thread(recv_or_none, conn)
                if message is None or message.get("op") == "stop":
                    conn.send({"calls": _calls(fake)})
                    break
                if message["op"] == "burst":
                    conn.send(await _burst(http, fake, message["url"], message["n"], message["prefix"]))
                elif message["op"] == "calls":
                    conn.send({"calls": _calls(fake)})


def _calls(fake: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for call in fake.calls:
        counts[call.method] = counts.get(call.method, 0) + 1
    return counts


async def _burst(http: Any, fake: Any, url: str, n: int, prefix: str) -> dict[str, Any]:
    ts = str(int(time.time()))
    bodies = []
    for i in range(n):
        form = {
            "token": "legacy", "team_id": TEAM, "team_domain": "bench", "channel_id": "CBENCH",
            "channel_name": "general", "user_id": f"{prefix}{i:05d}", "user_name": f"user{i}",
            "command": "/imagine", "text": f"bench prompt {i} --ar 16:9", "api_app_id": "ABENCH",
            "is_enterprise_install": "false", "response_url": fake.response_url(),
            "trigger_id": f"trigger.{prefix}.{i}",
        }
        bodies.append(urllib.parse.urlencode(form))
    headers = [{"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": sign(body, ts)} for body in bodies]
    health = url.rsplit("/slack/", 1)[0] + "/healthz"

    async def warm() -> None:
        async with http.get(health) as response:
            await response.read()

    await asyncio.gather(*(warm() for _ in range(n)))  # n keep-alive connections in the pool

    t0 = time.perf_counter()

    async def one(i: int) -> tuple[float, int]:
        async with http.post(url, data=bodies[i].encode(), headers=headers[i]) as response:
            await response.read()
            return time.perf_counter() - t0, response.status

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    ok = [r for r in results if isinstance(r, tuple)]
    return {
        "latencies": [r[0] for r in ok],
        "statuses": sorted({r[1] for r in ok}),
        "errors": [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)][:5],
    }


async def slack_burst(n: int, workdir: Path) -> dict[str, Any]:
    from imagine_bot.bots.slack import SlackService
    from imagine_bot.core.app import ImagineCore
    from imagine_bot.core.web.server import build_web_app, start_web

    slack = Helper("benchmarks.ack:slack_helper")
    try:
        api_url = (await slack.ready())["api_url"]
        async with sandbox_process(delays=DELAYS) as (base_url, _sandbox):
            settings = bench_settings(workdir, base_url, SLACK_BOT_TOKEN=BOT_TOKEN,
                                      SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=api_url)
            async with ImagineCore.open(settings) as core:
                web_app = build_web_app(core)
                service = SlackService(core, settings, web_app)
                runner, port = await start_web(web_app, HOST, 0)
                try:
                    await service.start()
                    await core.start()
                    url = f"http://{HOST}:{port}/slack/events"
                    await slack.ask({"op": "burst", "url": url, "n": 3, "prefix": "UWARM"})  # warm-up
                    await asyncio.wait_for(service.handlers.wait_idle(), 30)
                    await asyncio.wait_for(core.orchestrator.wait_idle(), 30)

                    lag = LoopLag()
                    lag.start()
                    burst = await slack.ask({"op": "burst", "url": url, "n": n, "prefix": "U"}, timeout=120)
                    lags = await lag.stop()
                    # let the listeners finish accepting (each ack'd command goes on in the background)
                    try:
                        await asyncio.wait_for(service.handlers.wait_idle(), 60)
                    except TimeoutError:
                        pass
                    jobs = core.stores.db.execute(
                        "SELECT COUNT(*) FROM jobs WHERE account LIKE 'slack:%:U0%'").fetchone()[0]
                    drained = await drain(core)
                    delivered = core.stores.db.execute("SELECT COUNT(*) FROM jobs WHERE account LIKE 'slack:%:U0%' "
                                                "AND state = 'delivered'").fetchone()[0]
                    calls = (await slack.ask({"op": "calls"}))["calls"]
                finally:
                    await core.orchestrator.stop()
                    await service.stop()
                    await runner.cleanup()
    finally:
        await slack.stop()
    return {
        "n": n,
        "statuses": burst["statuses"],
        "errors": burst["errors"],
        "latency_ms": summary(burst["latencies"], 1000),
        "jobs_accepted": jobs,
        "all_finished_after": drained,
        "delivered_after": delivered,
        "slack_calls": calls,
        "loop_lag_ms": lags,
    }


# ---------------------------------------------------------------------- Discord level


async def discord_helper(conn: multiprocessing.connection.Connection) -> None:
    """The Discord side, in its own process: the fake REST API and gateway, which fires the burst."""
    from tests.fakes.discord_api import FakeDiscord, InteractionFactory

    async with FakeDiscord() as fake:
        conn.send({"api_base": fake.api_base, "gateway_url": fake.gateway_url, "token": fake.token})
        factory = InteractionFactory(fake.app_id, guild_id="999999999999999999", channel_id="555555555555555555")
        while True:
            message = await asyncio.to_thread(recv_or_none, conn)
            if message is None or message.get("op") == "stop":
                conn.send({"calls": len(fake.calls)})
                break
            if message["op"] == "wait_identified":
                await fake.wait_identified(1, within=30)
                conn.send({"ok": True})
            elif message["op"] == "burst":
                n, prefix = message["n"], message["prefix"]
                payloads = [factory.command("imagine", f"{prefix}{i:014d}", [
                    {"name": "prompt", "type": 3, "value": f"bench prompt {i} --ar 16:9"}]) for i in range(n)]
                t0 = time.monotonic()
                for payload in payloads:
                    await fake.dispatch("INTERACTION_CREATE", payload)
                sent = time.monotonic() - t0
                acks = await fake.wait_for("POST", r"/interactions/\d+/[^/]+/callback", count=n,
                                           where=lambda c, ids={p["id"] for p in payloads}: c.path.split("/")[2] in ids,
                                           within=120)
                conn.send({"latencies": [c.at - t0 for c in acks], "sent_s": sent,
                           "statuses": sorted({c.status for c in acks})})


async def discord_burst(n: int, workdir: Path) -> dict[str, Any]:
    from imagine_bot.bots.discord import DiscordService
    from imagine_bot.core.app import ImagineCore

    fake = Helper("benchmarks.ack:discord_helper")
    try:
        info = await fake.ready()
        async with sandbox_process(delays=DELAYS) as (base_url, _sandbox):
            settings = bench_settings(workdir, base_url, DISCORD_TOKEN=info["token"],
                                      DISCORD_API_BASE=info["api_base"], DISCORD_GATEWAY_URL=info["gateway_url"],
                                      MAX_ACTIVE_JOBS_PER_USER=2)
            async with ImagineCore.open(settings) as core:
                service = DiscordService(core, settings, sync=False, guild_ready_timeout=0.0)
                try:
                    await service.start()
                    await core.start()
                    await fake.ask({"op": "burst", "n": 3, "prefix": "7"})  # warm-up
                    await asyncio.wait_for(core.orchestrator.wait_idle(), 30)
                    lag = LoopLag()
                    lag.start()
                    burst = await fake.ask({"op": "burst", "n": n, "prefix": "8"}, timeout=150)
                    lags = await lag.stop()
                    drained = await drain(core)
                finally:
                    await core.orchestrator.stop()
                    await service.stop()
    finally:
        await fake.stop()
    return {
        "n": n,
        "statuses": burst["statuses"],
        "dispatch_s": burst["sent_s"],
        "latency_ms": summary(burst["latencies"], 1000),
        "all_finished_after": drained,
        "loop_lag_ms": lags,
    }


def acks_per_s(n: int, latency_ms: dict[str, float]) -> float:
    """The burst's size over the time to its last ack."""
    return n / (latency_ms["max"] / 1000) if latency_ms.get("max") else 0.0


# ---------------------------------------------------------------------- entry point


async def main(quick: bool) -> dict[str, Any]:
    n = 50 if quick else 200
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        say(f"core: {n} core.imagine calls at once")
        core = await core_burst(n, Path(tmp) / "core")
        say(f"slack: {n} signed slash commands at once to /slack/events")
        slack = await slack_burst(n, Path(tmp) / "slack")
        say(f"discord: {n} /imagine interactions at once over the gateway")
        disc = await discord_burst(n, Path(tmp) / "discord")
    c, s, d = core["latency_ms"], slack["latency_ms"], disc["latency_ms"]
    figures = [
        fig(f"ack latency, core.imagine, {n} at once: p50 / p99", f"{ms(c['p50'])} / {ms(c['p99'])}",
            f"p99 < {GOAL_MS:.0f} ms", c["p99"] < GOAL_MS and core["accepted"] == n, **c),
        fig("core.imagine, time inside each call of the burst: p50 / p99",
            f"{ms(core['own_call_ms']['p50'])} / {ms(core['own_call_ms']['p99'])}", "", None, **core["own_call_ms"]),
        fig(f"ack latency, Slack HTTP /slack/events, {n} at once: p50 / p99", f"{ms(s['p50'])} / {ms(s['p99'])}",
            f"p99 < {GOAL_MS:.0f} ms", s["p99"] < GOAL_MS and s["count"] == n, **s),
        fig(f"ack latency, Discord gateway (discord.py), {n} at once: p50 / p99", f"{ms(d['p50'])} / {ms(d['p99'])}",
            f"p99 < {GOAL_MS:.0f} ms", d["p99"] < GOAL_MS and d["count"] == n, **d),
        fig(f"acks per second in a burst of {n}, core.imagine / Slack HTTP (Bolt) / Discord (discord.py)",
            f"{acks_per_s(n, c):,.0f} / {acks_per_s(n, s):,.0f} / {acks_per_s(n, d):,.0f}", "", None,
            core=acks_per_s(n, c), slack=acks_per_s(n, s), discord=acks_per_s(n, d)),
    ]
    return {"figures": figures, "details": {"core": core, "slack": slack, "discord": disc}}


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(main(quick))
