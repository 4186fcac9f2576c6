"""The gateway's HTTP client: CPU a request, httpx on its own pool (httpcore) against httpx on aiohttp's pool
(``core.gateway.transport``, what the bot uses) and aiohttp alone (the floor).

A local aiohttp server in a helper process answers ``GET /img`` with 20 KB (a small result image); each client
first opens its connections with a burst of 200 (as a burst of createTask calls would), then sends 2,000
requests, ``concurrency`` at a time, each body read to the end as a download is. The figure is the bot
process's CPU time over the 2,000, divided by 2,000. Clients alternate, twice each, so that the machine's
load moves them alike; the median of the two is shown.
"""

from __future__ import annotations

import asyncio
import multiprocessing.connection
import statistics
import time
from typing import Any

from .common import HOST, Helper, fig, recv_or_none, say

N = 2000
BODY = b"x" * 20_000
POOL = 100


async def server_helper(conn: multiprocessing.connection.Connection) -> None:
    from aiohttp import web

    async def img(_: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="image/png")

    app = web.Application()
    app.router.add_get("/img", img)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    conn.send({"url": f"http://{HOST}:{runner.addresses[0][1]}/img"})
    await asyncio.to_thread(recv_or_none, conn)
    conn.send({})
    await runner.cleanup()


async def one_client(kind: str, url: str, concurrency: int, n: int) -> float:
    """CPU seconds a request for ``n`` requests, ``concurrency`` at a time."""
    import aiohttp
    import httpx

    from imagine_bot.core.gateway.transport import gateway_http

    sem = asyncio.Semaphore(concurrency)
    if kind == "aiohttp":
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL)) as session:
            async def get() -> None:
                async with sem, session.get(url) as response:
                    await response.read()
            return await _timed(get, n)
    client = (gateway_http(POOL, user_agent="bench") if kind == "httpx+aiohttp" else
              httpx.AsyncClient(limits=httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)))
    async with client as http:
        async def fetch() -> None:
            async with sem, http.stream("GET", url) as response:
                async for _ in response.aiter_bytes():
                    pass
        return await _timed(fetch, n)


async def _timed(one: Any, n: int) -> float:
    await asyncio.gather(*(one() for _ in range(200)))  # the connections opened, as by a burst
    cpu0 = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    return (time.process_time() - cpu0) / n


async def main(quick: bool) -> dict[str, Any]:
    n = N // 4 if quick else N
    kinds = ("httpx (httpcore's pool)", "httpx+aiohttp", "aiohttp")
    measured: dict[tuple[str, int], list[float]] = {}
    helper = Helper("benchmarks.httpclient:server_helper")
    try:
        url = (await helper.ready())["url"]
        for _round in range(1 if quick else 2):
            for concurrency in (100, 10):
                for kind in kinds:
                    cpu = await one_client(kind.split(" ")[0], url, concurrency, n)
                    measured.setdefault((kind, concurrency), []).append(cpu)
                    say(f"{kind}, {concurrency} at a time: {cpu * 1000:.2f} ms CPU a request")
    finally:
        await helper.stop()
    figures = []
    for concurrency in (100, 10):
        cpus = {kind: statistics.median(measured[(kind, concurrency)]) * 1000 for kind in kinds}
        figures.append(fig(
            f"HTTP client CPU a request ({n} GETs of 20 KB, {concurrency} at a time, pool {POOL}): "
            + " / ".join(kinds), " / ".join(f"{cpus[k]:.2f} ms" for k in kinds), "", None, **cpus))
    return {"figures": figures}


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(main(quick))
