"""The async client for the ModKie / kie.ai jobs API (see ``/work/shared/gateway-contract.md``).

Contract points this module follows:

- Every request carries ``Authorization: Bearer <key>`` and ``User-Agent: imagine-bot/<version>``. The key
  lives only in the request headers: it is never logged, never put in an exception text and never shown
  by ``repr``. Gateway messages are scrubbed of it too, in case a server echoes it back.
- ``createTask`` sends ``{"model", "input", "callBackUrl"?, "capability": "image"}``; ``recordInfo`` asks
  ``?taskId=..&capability=image``; ``/api/v1/chat/credit`` returns the balance as ``data``.
- Answers are the envelope ``{code, msg|message, data}``. An error arrives as an HTTP status *or* as
  ``code`` in a 200 body: both are checked and mapped onto ``core.errors`` (see ``_error_for``), with
  ``status`` (HTTP) and ``gateway_code`` (envelope) set on the error.
- Both dialects are read: kie (``resultJson`` a JSON string; ``waiting``/``queuing``/``generating``) and
  ModKie (``resultJson`` an object; ``pending``/``processing``). Unknown states mean "still running".
- record_info, download and credit are idempotent, so they are retried on what ``errors.is_transient``
  calls transient, with full-jitter exponential backoff that honours ``Retry-After``.
  ``create_task`` is never re-sent once a request may have reached the gateway (double submit = double
  spend): only a connection that never opened is retried, and not once the caller says stop (a drain:
  the error then carries ``unsent``). The whole call, retries and every phase of each request included, is
  bounded by ``create_timeout`` (httpx's timeouts are per phase). A 429 goes back to the caller (the
  orchestrator's admission line, where the job keeps its place).
- ``download`` sends the key only to the gateway's own origin, streams with a size cap and accepts only
  images (by content type, or by file signature when the type is missing or generic). Unless the gateway
  itself is local, it refuses non-public addresses (loopback, private, link-local, metadata) on the URL and
  on every redirect hop, which it follows by hand.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import functools
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

import httpx

from imagine_bot.core import __version__
from imagine_bot.core.errors import (
    DownloadError,
    GatewayAuthError,
    GatewayError,
    GatewayFeatureDisabled,
    GatewayInvalidInput,
    GatewayMaintenance,
    GatewayOutOfCredits,
    GatewayProtocolError,
    GatewayRateLimited,
    GatewayServerError,
    GatewayTimeout,
    GenerationFailed,
    UnknownTask,
    is_transient,
)
from imagine_bot.core.media.netaddr import Resolver, is_loopback_host, non_public_addresses, origin, system_resolve
from imagine_bot.core.ops.logs import redactable

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

CREATE_TASK = "createTask"
RECORD_INFO = "recordInfo"
DOWNLOAD = "download"
CREDIT = "credit"
WEBHOOKS = "webhooks"
MODELS = "models"


class TaskStage(StrEnum):
    """The four stages a task goes through, whatever the dialect calls them."""

    WAITING = "waiting"
    GENERATING = "generating"
    SUCCESS = "success"
    FAIL = "fail"


#: raw gateway states (both dialects, plus the aliases seen in the wild)
_STATES: dict[str, TaskStage] = {
    "waiting": TaskStage.WAITING,
    "queuing": TaskStage.WAITING,
    "pending": TaskStage.WAITING,
    "generating": TaskStage.GENERATING,
    "processing": TaskStage.GENERATING,
    "success": TaskStage.SUCCESS,
    "completed": TaskStage.SUCCESS,
    "fail": TaskStage.FAIL,
    "failed": TaskStage.FAIL,
}


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One recordInfo answer, normalised."""

    task_id: str
    stage: TaskStage
    #: the raw state string, as the gateway sent it
    state: str
    result_urls: tuple[str, ...]
    fail_code: str | None
    fail_msg: str | None
    progress: int | None
    consume_credits: int | None
    remained_credits: int | None


@dataclass(frozen=True, slots=True)
class Download:
    content: bytes
    content_type: str

    def __repr__(self) -> str:
        return f"Download(content=<{len(self.content)} bytes>, content_type={self.content_type!r})"


#: file signatures accepted when a download has no (or a generic) content type
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)

#: transport errors raised before a byte of the request left: createTask may be retried after these
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

_SAFE_MSG_MAX = 200
#: redirects followed by a download, each hop checked
MAX_REDIRECTS = 5


def _keyless(
    method: Callable[Concatenate[GatewayClient, P], Awaitable[T]],
) -> Callable[Concatenate[GatewayClient, P], Awaitable[T]]:
    """Last line of defence: no text of an error leaving a public method contains the API key."""

    @functools.wraps(method)
    async def wrapper(self: GatewayClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(self, *args, **kwargs)
        except GatewayError as error:
            self._clean(error)
            raise

    return wrapper


class GatewayClient:
    """Talks to one gateway. The ``httpx.AsyncClient`` is injected and shared; this class never closes it.

    ``retries`` is the number of attempts a safe call makes before it re-raises the last error.
    ``requests_sent`` counts HTTP requests per endpoint name (``createTask``, ``recordInfo``, ``download``,
    ``credit``), retries included.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        max_download_bytes: int = 25 * 1024 * 1024,
        retries: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        request_timeout: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        capability: str | None = "image",
        on_request: Callable[[str, str], None] | None = None,
        on_balance: Callable[[int], None] | None = None,
        max_in_flight: int = 100,
        allow_private_results: bool | None = None,
        resolve: Resolver = system_resolve,
        create_timeout: float | None = None,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self.max_download_bytes = max_download_bytes
        self.retries = max(1, retries)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.request_timeout = request_timeout
        self._timeout = httpx.Timeout(request_timeout)
        #: the longest a whole ``create_task`` call may take, connection retries and every phase included
        #: (httpx's timeouts are per phase: connect, write and read could each take ``request_timeout``)
        self.create_timeout = request_timeout if create_timeout is None else create_timeout
        self._sleep = sleep
        self.capability = capability
        self.requests_sent: collections.Counter[str] = collections.Counter()
        self._origin = origin(httpx.URL(self.base_url))
        #: result URLs may point at non-public addresses only when the gateway itself is local (the sandbox)
        self.allow_private_results = (is_loopback_host(httpx.URL(self.base_url).host)
                                      if allow_private_results is None else allow_private_results)
        self._resolve = resolve
        self._unknown_states: set[str] = set()
        self._random = random.Random()
        #: told of every answer (endpoint, code: HTTP status, envelope code of a 200, or "transport")
        self._on_request = on_request
        #: told of every balance read
        self._on_balance = on_balance
        # requests beyond the HTTP pool's size wait here, not in the client's pool (httpcore's, used until
        # 3 Dec, rescanned its queue for every connection event: with ~1,000 downloads queued at once the
        # event loop was held for seconds; any injected client may have such a pool)
        self._slots = asyncio.Semaphore(max_in_flight)

    def _observe(self, endpoint: str, code: str) -> None:
        if self._on_request is not None:
            self._on_request(endpoint, code)

    def __repr__(self) -> str:
        return f"GatewayClient(base_url={self.base_url!r})"

    # ------------------------------------------------------------------ public API
    @_keyless
    async def create_task(self, model: str, input: dict[str, Any], callback_url: str | None = None, *,
                          stop: asyncio.Event | None = None) -> str:
        """Submit a job; returns the gateway's task id. Never re-sent once it may have reached the gateway.

        The whole call takes at most ``create_timeout``. A connection that never opened is tried again,
        unless ``stop`` is set (the process is draining): then the error is raised at once, with
        ``unsent`` set, and the caller knows the gateway saw nothing."""
        body: dict[str, Any] = {"model": model, "input": input}
        if callback_url:
            body["callBackUrl"] = callback_url
        if self.capability:
            body["capability"] = self.capability
        deadline = time.monotonic() + self.create_timeout
        attempt = 0
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(left):
                    data = await self._call(CREATE_TASK, "POST", "/api/v1/jobs/createTask", json=body,
                                            phases=httpx.Timeout(min(self.request_timeout, left)))
                break
            except TimeoutError as exc:  # the whole call's bound: the request may have reached the gateway
                raise GatewayTimeout(f"{CREATE_TASK}: no answer within {self.create_timeout:.1f}s",
                                     transport=True) from exc
            except _NotSent as error:  # the connection never opened: nothing reached the gateway
                attempt += 1
                if (attempt >= self.retries or (stop is not None and stop.is_set())
                        or not await self._backoff(CREATE_TASK, attempt, error.error, until=deadline, stop=stop)):
                    raise error.error from error.__cause__
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise GatewayProtocolError(f"createTask answered without a taskId (data: {_short(data)})",
                                       status=200, gateway_code=200)
        log.debug("createTask accepted as %s", task_id)
        return task_id

    @_keyless
    async def record_info(self, task_id: str) -> TaskRecord:
        """The task's current state. 404 and "recordInfo is null" raise ``UnknownTask`` (no grace here)."""
        params = {"taskId": task_id}
        if self.capability:
            params["capability"] = self.capability

        async def once() -> TaskRecord:
            data = await self._call(RECORD_INFO, "GET", "/api/v1/jobs/recordInfo", params=params)
            return self._parse_record(task_id, data)

        return await self._retrying(RECORD_INFO, once)

    @_keyless
    async def register_webhook(self, url: str, secret: str) -> None:
        """Register the account webhook (ModKie ``POST /api/gateway/webhooks``): one URL per account, so
        registering the same URL again changes nothing. An accepted answer without ``data`` is fine."""

        async def once() -> None:
            try:
                await self._call(WEBHOOKS, "POST", "/api/gateway/webhooks", json={"url": url, "secret": secret})
            except GatewayProtocolError as error:
                if error.gateway_code is None or not 200 <= error.gateway_code < 300:
                    raise

        await self._retrying(WEBHOOKS, once)

    @_keyless
    async def credit(self) -> int:
        """The gateway account's balance, in credits."""

        async def once() -> int:
            data = await self._call(CREDIT, "GET", "/api/v1/chat/credit")
            value = _as_int(data)
            if value is None:
                raise GatewayProtocolError(f"credit answered with a non-number: {_short(data)}", status=200)
            if self._on_balance is not None:
                self._on_balance(value)
            return value

        return await self._retrying(CREDIT, once)

    @_keyless
    async def models(self) -> dict[str, int | None]:
        """The gateway's model list: model id -> credit cost (None when not given). The shape is not
        published: a list of objects (``model`` or ``id``, ``creditCost``) or of ids, maybe under ``models``."""

        async def once() -> dict[str, int | None]:
            data = await self._call(MODELS, "GET", "/api/v1/models")
            if isinstance(data, dict):
                data = data.get("models") or data.get("list") or []
            if not isinstance(data, list):
                raise GatewayProtocolError(f"models answered with a non-list: {_short(data)}", status=200)
            found: dict[str, int | None] = {}
            for item in data:
                if isinstance(item, str):
                    found[item] = None
                elif isinstance(item, dict):
                    ident = item.get("model") or item.get("id") or item.get("name")
                    if isinstance(ident, str):
                        found[ident] = _as_int(item.get("creditCost"))
            return found

        return await self._retrying(MODELS, once)

    @_keyless
    async def models_raw(self) -> Any:
        """The gateway's model list, as sent (its shape is not published: ``core.credits.prices`` reads it)."""
        return await self._retrying(MODELS, lambda: self._call(MODELS, "GET", "/api/v1/models"))

    @_keyless
    async def download(self, url: str) -> Download:
        """Fetch a result image: capped in size, images only, the key sent only to the gateway's origin."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise DownloadError(f"result URL is not a URL: {_short(url)}") from exc
        if parsed.scheme not in ("http", "https"):
            raise DownloadError(f"result URL is not http(s): {_short(url)}")
        own_origin = origin(parsed) == self._origin
        return await self._retrying(DOWNLOAD, lambda: self._download_once(parsed, own_origin))

    def failure(self, record: TaskRecord) -> GatewayError:
        """The error for a task that ended in ``fail`` (failCode and failMsg go to the admin text)."""
        code = f"[{record.fail_code}] " if record.fail_code else ""
        detail = self._scrub(record.fail_msg or "no failMsg given")
        gateway_code = int(record.fail_code) if record.fail_code and record.fail_code.isdigit() else None
        error = GenerationFailed(f"task {record.task_id} failed (state {record.state!r}): {code}{detail}",
                                 gateway_code=gateway_code)
        return self._clean(error)

    # ------------------------------------------------------------------ requests
    def _headers(self, *, auth: bool = True) -> dict[str, str]:
        headers = {"User-Agent": f"imagine-bot/{__version__}", "Accept": "application/json"}
        if auth and self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _call(self, endpoint: str, method: str, path: str, *, phases: httpx.Timeout | None = None,
                    **kwargs: Any) -> Any:
        """One request to the jobs API; returns the envelope's ``data`` or raises a mapped error."""
        self.requests_sent[endpoint] += 1
        try:
            async with self._slots:
                response = await self._http.request(method, self.base_url + path, headers=self._headers(),
                                                    timeout=phases or self._timeout, **kwargs)
        except httpx.HTTPError as exc:
            self._observe(endpoint, "transport")
            raise _transport_error(endpoint, exc) from exc
        log.debug("%s -> HTTP %d", endpoint, response.status_code)
        try:
            data = self._unwrap(endpoint, response)
        except GatewayError as error:
            status = error.status
            self._observe(endpoint, str(status if status and status != 200 else error.gateway_code or status))
            raise
        self._observe(endpoint, "200")
        return data

    def _unwrap(self, endpoint: str, response: httpx.Response) -> Any:
        status = response.status_code
        try:
            envelope = response.json()
        except ValueError:
            envelope = None
        msg = self._message(envelope)
        if not 200 <= status < 300:
            code = _as_int(envelope.get("code")) if isinstance(envelope, dict) else None
            raise self._error_for(endpoint, status, msg, status=status, gateway_code=code,
                                  retry_after=_retry_after(response.headers.get("Retry-After")))
        if not isinstance(envelope, dict):
            raise GatewayProtocolError(f"{endpoint}: HTTP {status} with a body that is not a JSON object: "
                                       f"{_short(response.text)}", status=status)
        code = _as_int(envelope.get("code"))
        if code is None:
            raise GatewayProtocolError(f"{endpoint}: answer without a numeric code: {_short(envelope)}",
                                       status=status)
        if not 200 <= code < 300:
            raise self._error_for(endpoint, code, msg, status=status, gateway_code=code,
                                  retry_after=_retry_after(response.headers.get("Retry-After")))
        if envelope.get("data") is None:
            raise GatewayProtocolError(f"{endpoint}: code {code} without data", status=status, gateway_code=code)
        return envelope["data"]

    def _message(self, envelope: Any) -> str:
        if not isinstance(envelope, dict):
            return ""
        for key in ("msg", "message"):
            value = envelope.get(key)
            if isinstance(value, str) and value.strip():
                return self._scrub(value.strip())
        return ""

    def _scrub(self, text: str) -> str:
        """Remove the API key from text that came from outside (a server echoing it back)."""
        if redactable(self._api_key) and self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text

    def _clean(self, error: GatewayError) -> GatewayError:
        """Scrub the key from an error's texts (they may quote a body the gateway sent)."""
        error.admin_message = self._scrub(error.admin_message)
        error.user_message = self._scrub(error.user_message)
        error.args = tuple(self._scrub(a) if isinstance(a, str) else a for a in error.args)
        return error

    def _error_for(self, endpoint: str, code: int, msg: str, *, status: int | None, gateway_code: int | None,
                   retry_after: float | None) -> GatewayError:
        """Map an HTTP status or envelope code to the error hierarchy (gateway contract, "Errors")."""
        where = f"{endpoint}: " + (f"HTTP {status}" if status and status != 200 else f"code {code}")
        admin = f"{where}: {msg}" if msg else where
        kw: dict[str, Any] = {"status": status, "gateway_code": gateway_code}
        if endpoint == RECORD_INFO and (code == 404 or (code == 422 and "null" in msg.lower())):
            return UnknownTask(admin, **kw)
        if code in (400, 422):
            safe = _safe_text(msg)
            user = (f"The image service refused this request: {safe}. Nothing was charged." if safe else None)
            return GatewayInvalidInput(admin, user_message=user, **kw)
        if code in (401, 403):
            return GatewayAuthError(admin, **kw)
        if code in (402, 433):
            return GatewayOutOfCredits(admin, **kw)
        if code == 404:
            return GatewayError(admin, **kw)
        if code == 408:
            return GatewayTimeout(admin, **kw)
        if code == 429:
            return GatewayRateLimited(admin, retry_after=retry_after, **kw)
        if code == 455:
            return GatewayMaintenance(admin, **kw)
        if code == 501:
            return GenerationFailed(admin, **kw)
        if code == 505:
            return GatewayFeatureDisabled(admin, **kw)
        if 500 <= code < 600:
            return GatewayServerError(admin, **kw)
        return GatewayError(f"{admin} (unexpected)", **kw)

    # ------------------------------------------------------------------ retries
    async def _retrying(self, endpoint: str, once: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent call, retrying transient failures; re-raise the last one after ``retries``."""
        attempt = 0
        while True:
            try:
                return await once()
            except _NotSent as error:
                failure: GatewayError = error.error
                cause: BaseException | None = error.__cause__
            except GatewayError as error:
                if not is_transient(error):
                    raise
                failure, cause = error, error.__cause__
            attempt += 1
            if attempt >= self.retries or not await self._backoff(endpoint, attempt, failure):
                raise failure from cause

    async def _backoff(self, endpoint: str, attempt: int, error: GatewayError, *, until: float | None = None,
                       stop: asyncio.Event | None = None) -> bool:
        """Sleep before attempt ``attempt + 1``; False when ``Retry-After`` asks for longer than the cap, when
        the wait would end past ``until`` (monotonic) or when ``stop`` is set meanwhile."""
        delay = self._random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            if retry_after > self.backoff_cap:
                return False  # the caller decides what to do with a long wait (the error carries it)
            delay = max(delay, retry_after)
        if until is not None and time.monotonic() + delay >= until:
            return False
        log.info("%s: %s, retrying in %.2fs (attempt %d of %d)", endpoint, error.code, delay, attempt + 1,
                 self.retries)
        if stop is None:
            await self._sleep(delay)
            return True
        sleeping = asyncio.ensure_future(self._sleep(delay))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((sleeping, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            stopping.cancel()
        return not stop.is_set()

    # ------------------------------------------------------------------ downloads
    async def _download_once(self, url: httpx.URL, own_origin: bool) -> Download:
        """One download, following at most ``MAX_REDIRECTS`` redirects by hand so that every hop is checked
        (``_check_address``) and the key goes only to the gateway's own origin."""
        self.requests_sent[DOWNLOAD] += 1
        host = url.host
        status: int | None = None
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                await self._check_address(url)
                host = url.host
                async with self._slots, self._http.stream(
                        "GET", url, headers=self._headers(auth=origin(url) == self._origin), timeout=self._timeout,
                        follow_redirects=False) as response:
                    if response.is_redirect:
                        url = _redirect_target(url, response)
                        continue
                    status = response.status_code
                    if status == 429:
                        raise GatewayRateLimited(f"download from {host}: HTTP 429", status=status,
                                                 retry_after=_retry_after(response.headers.get("Retry-After")))
                    if 500 <= status < 600:
                        raise GatewayServerError(f"download from {host}: HTTP {status}", status=status)
                    if not 200 <= status < 300:
                        raise DownloadError(f"download from {host}: HTTP {status}", status=status)
                    length = _as_int(response.headers.get("Content-Length"))
                    if length is not None and length > self.max_download_bytes:
                        raise DownloadError(f"download from {host}: {length} bytes is over the "
                                            f"{self.max_download_bytes}-byte cap", status=status)
                    content = await self._read_capped(response, host)
                    content_type = response.headers.get("Content-Type", "")
                    break
            else:
                raise DownloadError(f"download from {host}: more than {MAX_REDIRECTS} redirects")
        except httpx.HTTPError as exc:
            self._observe(DOWNLOAD, "transport")
            raise _transport_error(DOWNLOAD, exc) from exc
        finally:
            if status is not None:
                self._observe(DOWNLOAD, str(status))
        return Download(content, _image_type(content_type, content, host))

    async def _check_address(self, url: httpx.URL) -> None:
        """Refuse a download (or redirect hop) to a non-public address: loopback, private, link-local (the
        metadata service), ... The gateway's own origin is trusted, and everything is allowed when the
        gateway itself is local (``allow_private_results``: the sandbox and tests)."""
        if self.allow_private_results or origin(url) == self._origin:
            return
        port = url.port or {"http": 80, "https": 443}.get(url.scheme, 443)
        inward = await non_public_addresses(url.host, port, self._resolve)
        if inward:
            raise DownloadError(f"download refused: {_short(url.host, 80)} is a non-public address "
                                f"({', '.join(inward[:3])})")

    async def _read_capped(self, response: httpx.Response, host: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_download_bytes:
                raise DownloadError(f"download from {host}: more than the {self.max_download_bytes}-byte cap",
                                    status=response.status_code)
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ parsing
    def _parse_record(self, task_id: str, data: Any) -> TaskRecord:
        if not isinstance(data, dict):
            raise GatewayProtocolError(f"recordInfo {task_id}: data is not an object: {_short(data)}", status=200)
        state = data.get("state")
        if not isinstance(state, str) or not state:
            raise GatewayProtocolError(f"recordInfo {task_id}: no state in {_short(data)}", status=200)
        stage = _STATES.get(state.strip().lower())
        if stage is None:
            stage = TaskStage.GENERATING
            if state not in self._unknown_states:
                self._unknown_states.add(state)
                log.warning("recordInfo: unknown task state %r, treating it as still running", self._scrub(state))
        fail_code = data.get("failCode")
        return TaskRecord(
            task_id=str(data.get("taskId") or task_id),
            stage=stage,
            state=state,
            result_urls=_result_urls(task_id, data.get("resultJson")),
            fail_code=None if fail_code in (None, "") else str(fail_code),
            fail_msg=self._scrub(str(data["failMsg"])) if data.get("failMsg") not in (None, "") else None,
            progress=_progress(data.get("progress")),
            consume_credits=_as_int(data.get("consumeCredits")),
            remained_credits=_as_int(data.get("remainedCredits")),
        )


class _NotSent(Exception):
    """Internal: a transport error raised before the request left (carries the mapped error)."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.admin_message)
        self.error = error


def _transport_error(endpoint: str, exc: httpx.HTTPError) -> Exception:
    """httpx timeouts become GatewayTimeout; other transport errors GatewayServerError (both retryable)."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    error: GatewayError
    if isinstance(exc, httpx.TimeoutException):
        error = GatewayTimeout(f"{endpoint}: request timed out ({detail})", transport=True)
    else:
        error = GatewayServerError(f"{endpoint}: transport error ({detail})")
    if isinstance(exc, _NOT_SENT):
        error.unsent = True
        return _NotSent(error)
    return error


def _raise_protocol(message: str) -> NoReturn:
    raise GatewayProtocolError(message, status=200)


def _result_urls(task_id: str, raw: Any) -> tuple[str, ...]:
    """``resultJson``: a JSON string (kie) or an object (ModKie); empty or null until success."""
    if raw is None or raw == "" or raw == {}:
        return ()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            _raise_protocol(f"recordInfo {task_id}: resultJson is not JSON: {_short(raw)}")
    if not isinstance(raw, dict):
        _raise_protocol(f"recordInfo {task_id}: resultJson is not an object: {_short(raw)}")
    urls = raw.get("resultUrls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
        _raise_protocol(f"recordInfo {task_id}: resultUrls is not a list of URLs: {_short(urls)}")
    return tuple(urls)


def _image_type(content_type: str, content: bytes, host: str) -> str:
    """The image's media type, or DownloadError when it is not an image."""
    media = content_type.split(";")[0].strip().lower()
    if media.startswith("image/"):
        return media
    if media in ("", "application/octet-stream", "binary/octet-stream"):
        for signature, sniffed in _SIGNATURES:
            if content.startswith(signature):
                return sniffed
        if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
            return "image/webp"
    raise DownloadError(f"download from {host}: not an image (Content-Type {media or 'missing'!r}, "
                        f"{len(content)} bytes)")


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds, from delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _redirect_target(url: httpx.URL, response: httpx.Response) -> httpx.URL:
    location = response.headers.get("Location", "")
    try:
        target = url.join(location)
    except httpx.InvalidURL as exc:
        raise DownloadError(f"download from {url.host}: redirect to a bad URL") from exc
    if not location or target.scheme not in ("http", "https"):
        raise DownloadError(f"download from {url.host}: redirect to {_short(location, 80)!r}, not http(s)")
    return target


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return round(value)
    return None


def _progress(value: Any) -> int | None:
    number = _as_int(value)
    return None if number is None else max(0, min(100, number))


def _safe_text(msg: str) -> str | None:
    """The gateway's message, if it is short plain text fit to show a chat user."""
    text = msg.strip().rstrip(".")
    if not text or len(text) > _SAFE_MSG_MAX or not text.isprintable():
        return None
    if any(c in text for c in "<>{}`\\") or "://" in text:
        return None
    return text


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["Download", "GatewayClient", "TaskRecord", "TaskStage"]
