"""The gateway's HTTP transport: httpx's ``AsyncClient`` API over aiohttp's connection pool.

Why: measured on this project's 2-core machine, httpcore's pool costs about 2.5 to 5 ms of CPU a request (it
checks every pooled connection on each request and each response, and its cost grows with the pool),
aiohttp's about 0.3 ms, and the two together (httpx's API here, aiohttp's pool below) about 0.85 ms
(``benchmarks/httpclient.py``, docs/benchmarks.md). With 1,000 jobs finishing within seconds, two
requests a job (createTask, the download) were half the bot's CPU.

The one rule kept with care: which failures mean "the request never left". ``GatewayClient`` resends a
createTask only then (``_NOT_SENT``: ``httpx.ConnectError``, ``ConnectTimeout``, ``PoolTimeout``); anything
else may have reached the gateway, and resending could make (and bill) a second image. So only a failure to
open the connection (``aiohttp.ClientConnectorError``) or to get one in time (``ConnectionTimeoutError``: the
pool and the connect) maps to those; a connection lost after it was opened, a read timeout, a bad response,
any other aiohttp error maps to an httpx error that says "maybe sent".

Like httpx: proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, read
once at start) are honoured, certificates are checked as httpx checks them (certifi's, or ``SSL_CERT_FILE``),
idle connections are kept 5 s. (aiohttp's own ``trust_env`` would read the proxies, and look for a ``.netrc``,
at every request.)
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx

#: idle connections are closed after this long (httpx's default keep-alive expiry)
KEEPALIVE_S = 5.0
CHUNK = 64 * 1024


@contextmanager
def _mapped(request: httpx.Request) -> Any:
    """aiohttp's errors as the httpx errors they are (see the module docstring for the line drawn)."""
    try:
        yield
    except aiohttp.ClientConnectorError as exc:  # the connection never opened: nothing was sent
        raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ConnectionTimeoutError as exc:  # no connection in time (pool or connect): nothing was sent
        raise httpx.ConnectTimeout(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ServerTimeoutError as exc:  # a read timed out: the request may have arrived
        raise httpx.ReadTimeout(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ClientResponseError as exc:  # not a valid HTTP response
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ClientConnectionError as exc:  # lost after it opened (disconnected, reset): maybe sent
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise httpx.UnsupportedProtocol(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(str(exc) or type(exc).__name__, request=request) from exc
    except TimeoutError as exc:  # a timeout aiohttp did not name: treated as maybe sent
        raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp as it comes; closing it before the end closes the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk

    async def aclose(self) -> None:
        self._response.release()  # back to the pool if read to the end, else the connection is closed


def gateway_http(max_connections: int, *, user_agent: str, timeout: httpx.Timeout | None = None) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` the core talks to the gateway with (and fetches reference images with)."""
    return httpx.AsyncClient(timeout=timeout or httpx.Timeout(30.0, connect=10.0),
                             transport=AiohttpTransport(max_connections=max_connections),
                             headers={"User-Agent": user_agent})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` on one ``aiohttp.ClientSession`` (made on first use, closed with the
    client): at most ``max_connections`` at once."""

    def __init__(self, *, max_connections: int, keepalive_s: float = KEEPALIVE_S) -> None:
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._env_proxies = urllib.request.getproxies_environment()
        self._proxies: dict[tuple[str, str], str | None] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=self.keepalive_s,
                                             ssl=httpx.create_ssl_context())  # httpx's: certifi, SSL_CERT_FILE
            # no cookies: httpx's client keeps its own jar; every header is the one httpx built
            self._session = aiohttp.ClientSession(connector=connector,
                                                  cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                                                  skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"))
        return self._session

    def _proxy(self, url: httpx.URL) -> str | None:
        """The proxy the environment names for this URL's scheme and host (None: none, or ``NO_PROXY``)."""
        key = (url.scheme, url.host)
        if key not in self._proxies:
            proxy = self._env_proxies.get(url.scheme) or self._env_proxies.get("all")
            if proxy and urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]  # (untyped)
                    url.host, self._env_proxies):
                proxy = None
            self._proxies[key] = proxy
        return self._proxies[key]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        with _mapped(request):
            response = await self._open().request(
                request.method, str(request.url), headers=list(request.headers.multi_items()), data=body or None,
                allow_redirects=False, compress=None, proxy=self._proxy(request.url),
                timeout=aiohttp.ClientTimeout(total=None, connect=timeout.get("pool"),
                                              sock_connect=timeout.get("connect"), sock_read=timeout.get("read")))
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(response.status, headers=list(response.raw_headers), stream=_Body(response, request),
                              request=request, extensions=extensions)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
