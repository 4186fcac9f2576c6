"""The gateway's HTTP transport (``core.gateway.transport``): httpx's API over aiohttp, against real sockets.

What matters for money is which failures say "never sent": only those let ``GatewayClient`` send a createTask
again. A connection refused or a pool that gave no connection in time: never sent. A connection closed after
the request went out, a response cut short, a read timeout: maybe sent, never resent.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from imagine_bot.core.errors import GatewayServerError, GatewayTimeout
from imagine_bot.core.gateway.client import GatewayClient
from imagine_bot.core.gateway.transport import AiohttpTransport, gateway_http
from tests.conftest import until

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + (await reader.readexactly(length) if length else b"")


@asynccontextmanager
async def server(behaviour: Behaviour) -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A raw HTTP server on 127.0.0.1; yields its URL, the requests it read and one entry per connection."""
    requests: list[bytes] = []
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                try:
                    requests.append(await read_request(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await behaviour(reader, writer)
                if writer.is_closing():
                    return
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", requests, connections
    finally:
        srv.close()


async def ok(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\": 1 }")
    writer.write(b" ")
    await writer.drain()


async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()  # the request arrived; no answer


async def cut_short(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    await writer.drain()
    writer.close()


async def never(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


async def gzipped(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = gzip.compress(b"hello " * 100)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_http(4, user_agent="imagine-bot/test", timeout=httpx.Timeout(2.0, connect=1.0)) as client:
        yield client


def gateway(http: httpx.AsyncClient, url: str, **kwargs: object) -> GatewayClient:
    async def no_sleep(_: float) -> None:
        return None

    return GatewayClient(http, base_url=url, api_key="k", sleep=no_sleep, request_timeout=2.0,
                         **kwargs)  # type: ignore[arg-type]


async def test_a_request_and_its_answer_go_through_and_the_connection_is_kept(http):
    async with server(ok) as (url, requests, connections):
        for _ in range(3):
            response = await http.post(url + "/api/v1/jobs/createTask", json={"model": "m"})
            assert response.status_code == 200 and response.json() == {"ok": 1}
        assert len(requests) == 3 and len(connections) == 1  # kept alive, reused
        assert b"user-agent: imagine-bot/test" in requests[0].lower()
        assert requests[0].endswith(b'{"model":"m"}')


async def test_a_compressed_answer_is_decoded_as_httpx_would(http):
    async with server(gzipped) as (url, _, _):
        assert (await http.get(url)).text == "hello " * 100


async def test_a_refused_connection_is_never_sent(http):
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(httpx.ConnectError):
        await http.get(f"http://127.0.0.1:{port}/")
    with pytest.raises(GatewayServerError) as raised:  # the gateway client: unsent, so safe to send again
        await gateway(http, f"http://127.0.0.1:{port}").create_task("m", {"prompt": "p"})
    assert raised.value.unsent


async def test_no_connection_from_the_pool_in_time_is_never_sent():
    async with server(never) as (url, requests, _), httpx.AsyncClient(
            transport=AiohttpTransport(max_connections=1), timeout=httpx.Timeout(5.0, pool=0.2)) as http:
        first = asyncio.create_task(http.get(url))  # holds the only connection
        await until(lambda: requests)
        with pytest.raises(httpx.ConnectTimeout):
            await http.get(url)
        assert len(requests) == 1
        first.cancel()


@pytest.mark.parametrize("behaviour", [hang_up, cut_short])
async def test_a_connection_lost_after_the_request_went_out_may_have_been_sent(http, behaviour):
    async with server(behaviour) as (url, requests, _):
        with pytest.raises(httpx.TransportError) as raised:
            response = await http.get(url)
            await response.aread()
        assert not isinstance(raised.value, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        sent = len(requests)
        with pytest.raises(GatewayServerError) as failed:
            await gateway(http, url).create_task("m", {"prompt": "p"})
        assert not failed.value.unsent
        assert len(requests) == sent + 1  # createTask was not sent again


async def test_a_read_timeout_may_have_been_sent_and_is_not_resent(http):
    async with server(never) as (url, requests, _):
        with pytest.raises(GatewayTimeout) as raised:
            await gateway(http, url).create_task("m", {"prompt": "p"})
        assert not raised.value.unsent and len(requests) == 1


async def test_a_download_stopped_early_closes_its_connection_and_the_next_one_works(http):
    async with server(ok) as (url, requests, _):
        async with http.stream("GET", url) as response:
            assert response.status_code == 200  # closed without reading the body
        assert (await http.get(url)).json() == {"ok": 1}
        assert len(requests) == 2


async def test_a_proxy_named_in_the_environment_is_used_unless_no_proxy_names_the_host(monkeypatch):
    """As httpx would (``HTTP_PROXY``, ``NO_PROXY``), read when the client is made."""
    async with server(ok) as (proxy, via_proxy, _), server(ok) as (direct, straight, _):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "localhost")
        async with gateway_http(2, user_agent="t") as http:
            await http.get("http://gateway.example/api/v1/chat/credit")  # through the proxy (no DNS here)
            await http.get(direct.replace("127.0.0.1", "localhost"))  # NO_PROXY: straight there
        assert via_proxy[0].startswith(b"GET http://gateway.example/api/v1/chat/credit HTTP/1.1")
        assert len(via_proxy) == 1 and len(straight) == 1
