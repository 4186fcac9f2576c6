"""The gateway client against a real sandbox gateway (its fault injection for odd answers and headers);
``httpx.MockTransport`` only where the sandbox cannot stand in: hosts elsewhere (the key and redirects across
origins, non-public addresses by name), transport errors mid-request and a body streamed without end."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from PIL import Image

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
)
from imagine_bot.core.gateway import GatewayClient, TaskRecord, TaskStage
from imagine_bot.core.gateway.transport import gateway_http
from imagine_bot.core.sandbox import SandboxGateway, image_size

KEY = "mk-live-SECRET-do-not-leak-0123456789"
MODEL = "seedream/4.5-text-to-image"
DELAYS = {"waiting": 0.02, "queuing": 0.02, "generating": 0.04}
SCALE = 0.125
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class RecordingSleep:
    """A fake ``sleep``: records what it was asked to wait, waits for nothing."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def inputs(prompt: str = "a red fox in the snow", aspect_ratio: str = "16:9", quality: str = "basic") -> dict[str, Any]:
    return {"prompt": prompt, "aspect_ratio": aspect_ratio, "quality": quality, "nsfw_checker": False}


async def poll(client: GatewayClient, task_id: str) -> tuple[TaskRecord, list[str]]:
    """Poll until the task ends (5 s at most); returns the last record and the raw states seen."""
    states: list[str] = []
    async with asyncio.timeout(5):
        while True:
            record = await client.record_info(task_id)
            states.append(record.state)
            if record.stage in (TaskStage.SUCCESS, TaskStage.FAIL):
                return record, states
            await asyncio.sleep(0.005)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The client the bot talks to the gateway with (``core.gateway.transport``: httpx over aiohttp)."""
    async with gateway_http(100, user_agent="imagine-bot/test") as client:
        yield client


@pytest.fixture
def make_gateway(make_sandbox: Callable[..., Awaitable[SandboxGateway]]) -> Callable[..., Awaitable[SandboxGateway]]:
    """Sandbox gateways that insist on the test key."""

    def make(**kwargs: Any) -> Awaitable[SandboxGateway]:
        return make_sandbox(**{"delays": dict(DELAYS), "image_scale": SCALE, "api_key": KEY, **kwargs})

    return make


@pytest.fixture
async def gateway(make_gateway: Callable[..., Awaitable[SandboxGateway]]) -> SandboxGateway:
    return await make_gateway()


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_client(http: httpx.AsyncClient, sleeps: RecordingSleep) -> Callable[..., GatewayClient]:
    def make(base_url: str, **kwargs: Any) -> GatewayClient:
        kwargs = {"api_key": KEY, "sleep": sleeps, "request_timeout": 5.0, **kwargs}
        return GatewayClient(http, base_url=base_url, **kwargs)

    return make


@pytest.fixture
def client(gateway: SandboxGateway, make_client: Callable[..., GatewayClient]) -> GatewayClient:
    return make_client(gateway.base_url)


async def public_dns(host: str, port: int) -> list[str]:
    """A resolver for mock transports (no network): every name is public, except ``*.internal``."""
    return ["10.0.0.7"] if host.endswith(".internal") else ["93.184.216.34"]


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> GatewayClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    kwargs = {"api_key": KEY, "sleep": RecordingSleep(), "resolve": public_dns, **kwargs}
    return GatewayClient(http, base_url="https://gw.example.com", **kwargs)


# ---------------------------------------------------------------------------------------------- happy path
@pytest.mark.parametrize(("dialect", "aspect_ratio", "quality", "running"), [
    ("kie", "16:9", "basic", {"waiting", "queuing", "generating"}),
    ("modkie", "9:16", "high", {"pending", "processing"}),
])
async def test_happy_path(make_gateway: Callable[..., Awaitable[SandboxGateway]],
                          make_client: Callable[..., GatewayClient],
                          dialect: str, aspect_ratio: str, quality: str, running: set[str]) -> None:
    gateway = await make_gateway(dialect=dialect)
    client = make_client(gateway.base_url)

    task_id = await client.create_task(MODEL, inputs(aspect_ratio=aspect_ratio, quality=quality))
    record, states = await poll(client, task_id)

    assert task_id.startswith("task_seedream_")
    assert set(states[:-1]) <= running and states[0] in running
    assert record.stage is TaskStage.SUCCESS and record.state == "success"
    assert record.result_urls == (f"{gateway.base_url}/files/{task_id}/0.png",)
    assert (record.fail_code, record.fail_msg) == (None, None)
    assert record.consume_credits == 18 and record.remained_credits == 100000 - 18
    result = await client.download(record.result_urls[0])
    assert result.content_type == "image/png"
    with Image.open(io.BytesIO(result.content)) as image:
        assert image.format == "PNG"
        assert image.size == image_size(aspect_ratio, quality, SCALE)
        w, h = (int(p) for p in aspect_ratio.split(":"))
        assert image.size[0] / image.size[1] == pytest.approx(w / h, rel=0.02)
    assert await client.credit() == 100000 - 18
    assert client.requests_sent["createTask"] == 1 and client.requests_sent["download"] == 1
    assert client.requests_sent["recordInfo"] == len(states) and client.requests_sent["credit"] == 1


async def test_request_shape() -> None:
    """Headers, createTask body and recordInfo query exactly as the contract says."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("createTask"):
            return httpx.Response(200, json={"code": 200, "msg": "success", "data": {"taskId": "t-1"}})
        return httpx.Response(200, json={"code": 200, "msg": "success", "data": {"taskId": "t-1", "state": "waiting"}})

    client = mock_client(handler)
    assert await client.create_task(MODEL, inputs(), "https://bot.example.com/callbacks/modkie") == "t-1"
    assert await client.create_task(MODEL, inputs()) == "t-1"
    await client.record_info("t-1")

    with_cb, without_cb, poll_req = seen
    for request in seen:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert request.headers["User-Agent"] == f"imagine-bot/{__version__}"
    assert with_cb.method == "POST" and str(with_cb.url) == "https://gw.example.com/api/v1/jobs/createTask"
    assert json.loads(with_cb.content) == {"model": MODEL, "input": inputs(), "capability": "image",
                                           "callBackUrl": "https://bot.example.com/callbacks/modkie"}
    assert json.loads(without_cb.content) == {"model": MODEL, "input": inputs(), "capability": "image"}
    assert poll_req.method == "GET" and poll_req.url.path == "/api/v1/jobs/recordInfo"
    assert dict(poll_req.url.params) == {"taskId": "t-1", "capability": "image"}


# ---------------------------------------------------------------------------------------------- createTask faults
@pytest.mark.parametrize(("fault", "error", "status", "code"), [
    ({"status": 401}, GatewayAuthError, 401, 401),
    ({"status": 402}, GatewayOutOfCredits, 402, 402),
    ({"code": 402}, GatewayOutOfCredits, 200, 402),
    ({"code": 433}, GatewayOutOfCredits, 200, 433),
    ({"code": 455}, GatewayMaintenance, 200, 455),
    ({"status": 500}, GatewayServerError, 500, 500),
    ({"code": 500, "msg": "This field is required"}, GatewayServerError, 200, 500),
    ({"code": 505}, GatewayFeatureDisabled, 200, 505),
])
async def test_create_task_errors_are_mapped_and_never_resent(
        gateway: SandboxGateway, client: GatewayClient, sleeps: RecordingSleep,
        fault: dict[str, Any], error: type[GatewayError], status: int, code: int) -> None:
    gateway.inject("createTask", **fault)
    with pytest.raises(error) as caught:
        await client.create_task(MODEL, inputs())
    assert (caught.value.status, caught.value.gateway_code) == (status, code)
    assert gateway.requests["createTask"] == 1 and client.requests_sent["createTask"] == 1
    assert sleeps.calls == []


async def test_wrong_key_is_an_auth_error(gateway: SandboxGateway, make_client: Callable[..., GatewayClient]) -> None:
    client = make_client(gateway.base_url, api_key="mk-wrong")
    with pytest.raises(GatewayAuthError) as caught:
        await client.create_task(MODEL, inputs())
    assert caught.value.status == 401
    assert "not configured" in caught.value.user_message


async def test_invalid_input_names_the_field(client: GatewayClient) -> None:
    with pytest.raises(GatewayInvalidInput) as caught:
        await client.create_task(MODEL, inputs(aspect_ratio="5:4"))
    assert caught.value.gateway_code == 422
    assert "aspect_ratio" in caught.value.user_message
    assert caught.value.user_message.startswith("The image service refused this request: input.aspect_ratio")
    assert caught.value.user_message.endswith("Nothing was charged.")


async def test_injected_422_message_reaches_the_user(gateway: SandboxGateway, client: GatewayClient) -> None:
    gateway.inject("createTask", code=422, msg="input.quality must be basic or high.")
    with pytest.raises(GatewayInvalidInput) as caught:
        await client.create_task(MODEL, inputs())
    assert caught.value.user_message == (
        "The image service refused this request: input.quality must be basic or high. Nothing was charged.")


async def test_unsafe_gateway_message_is_not_shown_to_users(gateway: SandboxGateway, client: GatewayClient) -> None:
    gateway.inject("createTask", status=400, msg="<html><body>bad request</body></html>")
    with pytest.raises(GatewayInvalidInput) as caught:
        await client.create_task(MODEL, inputs())
    assert caught.value.user_message == GatewayInvalidInput.default_user_message
    assert "<html>" in caught.value.admin_message


async def test_create_task_429_goes_back_to_the_caller_at_once(
        gateway: SandboxGateway, client: GatewayClient, sleeps: RecordingSleep) -> None:
    # the orchestrator's admission line retries it (the job keeps its place); the client does not sleep on it
    gateway.inject("createTask", status=429, headers={"Retry-After": "3"})
    with pytest.raises(GatewayRateLimited) as caught:
        await client.create_task(MODEL, inputs())
    assert caught.value.retry_after == 3
    assert gateway.requests["createTask"] == 1 and sleeps.calls == []


async def test_create_task_429_longer_than_the_cap_goes_to_the_caller(
        gateway: SandboxGateway, client: GatewayClient, sleeps: RecordingSleep) -> None:
    gateway.inject("createTask", status=429, headers={"Retry-After": "120"})
    with pytest.raises(GatewayRateLimited) as caught:
        await client.create_task(MODEL, inputs())
    assert caught.value.retry_after == 120
    assert gateway.requests["createTask"] == 1 and sleeps.calls == []


async def test_create_task_hang_is_a_timeout_and_not_resent(
        gateway: SandboxGateway, make_client: Callable[..., GatewayClient], sleeps: RecordingSleep) -> None:
    client = make_client(gateway.base_url, request_timeout=0.2)
    gateway.inject("createTask", hang=10)
    with pytest.raises(GatewayTimeout) as raised:
        await client.create_task(MODEL, inputs())
    # sent once, never again (on a busy machine the 0.2 s can pass before the sandbox has read the request)
    assert not raised.value.unsent and client.requests_sent["createTask"] == 1 and sleeps.calls == []
    assert gateway.requests["createTask"] <= 1


async def test_create_task_connect_error_is_retried() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"code": 200, "msg": "success", "data": {"taskId": "t-2"}})

    client = mock_client(handler)
    assert await client.create_task(MODEL, inputs()) == "t-2"
    assert len(calls) == 2


async def test_create_task_never_sent_is_not_tried_again_once_told_to_stop() -> None:
    """A drain begins while createTask waits to try a refused connection again: no new attempt, and the error
    says the request never left (``unsent``)."""
    calls: list[int] = []
    stop = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    async def drain_begins_meanwhile(seconds: float) -> None:
        stop.set()

    client = mock_client(handler, sleep=drain_begins_meanwhile)
    with pytest.raises(GatewayServerError) as raised:
        await client.create_task(MODEL, inputs(), stop=stop)
    assert raised.value.unsent and len(calls) == 1
    with pytest.raises(GatewayServerError):  # already stopping: one attempt, no backoff
        await client.create_task(MODEL, inputs(), stop=stop)
    assert len(calls) == 2


async def test_create_task_is_bounded_as_a_whole(gateway: SandboxGateway,
                                                 make_client: Callable[..., GatewayClient]) -> None:
    """httpx's timeouts are per phase; ``create_timeout`` bounds the whole call (an unknown outcome: the
    request reached the gateway, so it is not ``unsent`` and not sent again)."""
    client = make_client(gateway.base_url, request_timeout=30.0, create_timeout=0.3)
    gateway.inject("createTask", hang=10)
    with pytest.raises(GatewayTimeout) as raised:
        await client.create_task(MODEL, inputs())
    assert not raised.value.unsent and raised.value.retryable
    assert gateway.requests["createTask"] == 1


async def test_create_task_does_not_back_off_past_its_bound() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    # a first wait drawn from 0 to 1e9 s: longer than what is left of 0.5 s (but for a 1 in 2e9 chance)
    client = mock_client(handler, create_timeout=0.5, backoff_base=1e9, backoff_cap=1e9)
    with pytest.raises(GatewayServerError) as raised:
        await client.create_task(MODEL, inputs())
    assert raised.value.unsent and len(calls) == 1


@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError])
async def test_create_task_is_not_resent_once_it_may_have_arrived(exc: type[httpx.HTTPError]) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise exc("lost", request=request)

    client = mock_client(handler)
    with pytest.raises(GatewayTimeout if exc is httpx.ReadTimeout else GatewayServerError):
        await client.create_task(MODEL, inputs())
    assert len(calls) == 1


async def test_gateway_down_is_a_server_error_after_retries(
        make_client: Callable[..., GatewayClient], sleeps: RecordingSleep) -> None:
    dead = SandboxGateway()
    base_url = await dead.start()
    await dead.stop()  # the port is now closed
    client = make_client(base_url, retries=3)
    with pytest.raises(GatewayServerError):
        await client.record_info("task_x")
    assert client.requests_sent["recordInfo"] == 3 and len(sleeps.calls) == 2


# ---------------------------------------------------------------------------------------------- recordInfo faults
async def test_record_info_429_is_retried(gateway: SandboxGateway, client: GatewayClient,
                                          sleeps: RecordingSleep) -> None:
    task_id = await client.create_task(MODEL, inputs())
    gateway.inject("recordInfo", status=429, headers={"Retry-After": "2"})
    record = await client.record_info(task_id)
    assert record.task_id == task_id
    assert gateway.requests["recordInfo"] == 2 and sleeps.calls[0] >= 2


async def test_record_info_429_http_date_retry_after(gateway: SandboxGateway, client: GatewayClient,
                                                     sleeps: RecordingSleep) -> None:
    task_id = await client.create_task(MODEL, inputs())
    later = email.utils.formatdate(time.time() + 8, usegmt=True)
    gateway.inject("recordInfo", status=429, code=429, headers={"Retry-After": later})
    assert (await client.record_info(task_id)).task_id == task_id
    assert gateway.requests["recordInfo"] == 2
    assert len(sleeps.calls) == 1 and 6 <= sleeps.calls[0] <= 8


@pytest.mark.parametrize("fault", [{"code": 455}, {"status": 455}, {"status": 500}, {"status": 503},
                                   {"code": 500}, {"hang": 10}])
async def test_record_info_transient_faults_are_retried(
        gateway: SandboxGateway, make_client: Callable[..., GatewayClient], sleeps: RecordingSleep,
        fault: dict[str, Any]) -> None:
    # the short timeout is for the hanging recordInfo only: the task is made with the usual one (a loaded
    # machine once took longer than 0.2 s to answer the createTask)
    task_id = await make_client(gateway.base_url).create_task(MODEL, inputs())
    client = make_client(gateway.base_url, request_timeout=0.5 if "hang" in fault else 5.0)
    gateway.inject("recordInfo", times=2, **fault)
    record = await client.record_info(task_id)
    assert record.task_id == task_id
    assert gateway.requests["recordInfo"] == 3 and len(sleeps.calls) == 2
    assert all(0 <= s <= 20 for s in sleeps.calls)


async def test_record_info_gives_up_after_retries(gateway: SandboxGateway, client: GatewayClient,
                                                  sleeps: RecordingSleep) -> None:
    task_id = await client.create_task(MODEL, inputs())
    gateway.inject("recordInfo", status=500, times=10)
    with pytest.raises(GatewayServerError) as caught:
        await client.record_info(task_id)
    assert caught.value.status == 500
    assert gateway.requests["recordInfo"] == 4 and len(sleeps.calls) == 3


async def test_record_info_hang_times_out(gateway: SandboxGateway, make_client: Callable[..., GatewayClient]) -> None:
    task_id = await make_client(gateway.base_url).create_task(MODEL, inputs())
    client = make_client(gateway.base_url, request_timeout=0.1, retries=2)
    gateway.inject("recordInfo", hang=10, times=2)
    with pytest.raises(GatewayTimeout):
        await client.record_info(task_id)
    assert gateway.requests["recordInfo"] == 2


@pytest.mark.parametrize(("fault", "error"), [
    ({"code": 501, "msg": "generation failed"}, GenerationFailed),
    ({"code": 408, "msg": "no result for 10 minutes"}, GatewayTimeout),
    ({"code": 505}, GatewayFeatureDisabled),
])
async def test_record_info_terminal_codes_are_not_retried(
        gateway: SandboxGateway, client: GatewayClient, fault: dict[str, Any], error: type[GatewayError]) -> None:
    task_id = await client.create_task(MODEL, inputs())
    gateway.inject("recordInfo", **fault)
    with pytest.raises(error) as caught:
        await client.record_info(task_id)
    assert caught.value.gateway_code == fault["code"]
    assert gateway.requests["recordInfo"] == 1


@pytest.mark.parametrize("fault", [{"code": 401}, {"status": 401}, {"body": b"{not json"}])
async def test_record_info_blips_are_asked_again(
        gateway: SandboxGateway, client: GatewayClient, fault: dict[str, Any]) -> None:
    # a 401 during a key rotation, a garbled answer: recordInfo is idempotent, so look again
    task_id = await client.create_task(MODEL, inputs())
    gateway.inject("recordInfo", **fault, times=2)
    record = await client.record_info(task_id)
    assert record.task_id == task_id
    assert gateway.requests["recordInfo"] == 3


async def test_unknown_task(gateway: SandboxGateway, client: GatewayClient) -> None:
    with pytest.raises(UnknownTask) as caught:
        await client.record_info("task_seedream_nope")
    assert caught.value.gateway_code == 422
    gateway.inject("recordInfo", status=404)
    with pytest.raises(UnknownTask) as caught:
        await client.record_info("task_seedream_nope")
    assert caught.value.status == 404


async def test_fail_state(client: GatewayClient) -> None:
    task_id = await client.create_task(MODEL, inputs("a boat sandbox:fail"))
    record, _ = await poll(client, task_id)
    assert record.stage is TaskStage.FAIL
    assert record.fail_msg == "sandbox: generation failed on request" and record.result_urls == ()
    error = client.failure(record)
    assert isinstance(error, GenerationFailed)
    assert "sandbox: generation failed on request" in error.admin_message and task_id in error.admin_message
    assert "sandbox" not in error.user_message


async def test_injected_fail_state(gateway: SandboxGateway, client: GatewayClient) -> None:
    task_id = await client.create_task(MODEL, inputs())
    gateway.inject("recordInfo", state="failed")
    record = await client.record_info(task_id)
    assert record.stage is TaskStage.FAIL and record.state == "failed" and record.fail_code == "500"


@pytest.mark.parametrize("body", [
    b"{not json",
    b"<html>502 Bad Gateway</html>",
    b"[1, 2]",
    b'{"msg": "no code"}',
    b'{"code": 200, "msg": "success"}',
    b'{"code": 200, "msg": "success", "data": {"taskId": "t", "state": "success", "resultJson": "not json{"}}',
    b'{"code": 200, "msg": "success", "data": {"taskId": "t", "state": "success", "resultJson": "[1]"}}',
    b'{"code": 200, "msg": "success", "data": {"taskId": "t", "state": "success", '
    b'"resultJson": {"resultUrls": "x"}}}',
    b'{"code": 200, "msg": "success", "data": {"taskId": "t"}}',
])
async def test_unreadable_record_info_is_a_protocol_error(
        gateway: SandboxGateway, client: GatewayClient, body: bytes) -> None:
    gateway.inject("recordInfo", body=body, times=client.retries)
    with pytest.raises(GatewayProtocolError):
        await client.record_info("t")
    assert gateway.requests["recordInfo"] == client.retries  # asked again, in case it was a blip


@pytest.mark.parametrize("body", [b"{not json", b'{"code": 200, "msg": "success"}',
                                  b'{"code": 200, "msg": "success", "data": {"id": "x"}}'])
async def test_unreadable_create_task_is_a_protocol_error(
        gateway: SandboxGateway, client: GatewayClient, body: bytes) -> None:
    gateway.inject("createTask", body=body)
    with pytest.raises(GatewayProtocolError):
        await client.create_task(MODEL, inputs())
    assert gateway.requests["createTask"] == 1


# ---------------------------------------------------------------------------------------------- downloads
async def finished(client: GatewayClient, prompt: str = "a lighthouse") -> TaskRecord:
    record, _ = await poll(client, await client.create_task(MODEL, inputs(prompt)))
    assert record.stage is TaskStage.SUCCESS
    return record


async def test_download_404(gateway: SandboxGateway, client: GatewayClient) -> None:
    with pytest.raises(DownloadError) as caught:
        await client.download(f"{gateway.base_url}/files/task_nope/0.png")
    assert caught.value.status == 404 and "404" in caught.value.admin_message
    assert client.requests_sent["download"] == 1


async def test_download_over_the_cap(gateway: SandboxGateway, make_client: Callable[..., GatewayClient]) -> None:
    client = make_client(gateway.base_url, max_download_bytes=200)
    record = await finished(client)
    with pytest.raises(DownloadError) as caught:
        await client.download(record.result_urls[0])
    assert "cap" in caught.value.admin_message


async def test_download_streamed_over_the_cap_stops_early() -> None:
    produced: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(1000):
            produced.append(1)
            yield b"\x89PNG\r\n\x1a\n" + bytes(1016)

    client = mock_client(lambda request: httpx.Response(200, content=chunks(), headers={"Content-Type": "image/png"}),
                         max_download_bytes=4096)
    with pytest.raises(DownloadError):
        await client.download("https://cdn.example.com/big.png")
    assert len(produced) < 10


@pytest.mark.parametrize(("body", "content_type"), [
    (b"<html>not found</html>", "text/html"),
    (b'{"error": "expired"}', "application/json"),
    (b"not an image at all", "application/octet-stream"),
])
async def test_download_not_an_image(gateway: SandboxGateway, client: GatewayClient,
                                     body: bytes, content_type: str) -> None:
    record = await finished(client)
    gateway.inject("download", body=body, headers={"Content-Type": content_type})
    with pytest.raises(DownloadError) as caught:
        await client.download(record.result_urls[0])
    assert "not an image" in caught.value.admin_message


async def test_download_octet_stream_png_is_sniffed(gateway: SandboxGateway, client: GatewayClient) -> None:
    record = await finished(client)
    gateway.inject("download", body=PNG_1PX, headers={"Content-Type": "application/octet-stream"})
    result = await client.download(record.result_urls[0])
    assert result.content_type == "image/png" and result.content == PNG_1PX


async def test_download_5xx_is_retried(gateway: SandboxGateway, client: GatewayClient) -> None:
    record = await finished(client)
    gateway.inject("download", status=503)
    result = await client.download(record.result_urls[0])
    assert result.content.startswith(b"\x89PNG") and gateway.requests["download"] == 2


async def test_download_sends_the_key_only_to_the_gateway_origin() -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[str(request.url)] = request.headers.get("Authorization")
        return httpx.Response(200, content=PNG_1PX, headers={"Content-Type": "image/png"})

    client = mock_client(handler)
    await client.download("https://gw.example.com/files/a.png")
    await client.download("https://gw.example.com:443/files/b.png")
    await client.download("https://cdn.example.com/files/c.png")
    await client.download("http://gw.example.com/files/d.png")
    assert seen == {
        "https://gw.example.com/files/a.png": f"Bearer {KEY}",
        "https://gw.example.com/files/b.png": f"Bearer {KEY}",  # httpx drops the default port
        "https://cdn.example.com/files/c.png": None,
        "http://gw.example.com/files/d.png": None,
    }


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/a.png", "http://169.254.169.254/latest/meta-data/", "https://10.1.2.3/a.png",
    "https://[::1]/a.png", "https://images.internal/a.png", "https://cdn.example.com/redirect-to-metadata",
    "https://cdn.example.com/redirect-to-internal", "https://cdn.example.com/redirect-to-loopback",
])
async def test_downloads_refuse_non_public_addresses_on_every_hop(url: str) -> None:
    fetched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        targets = {"/redirect-to-metadata": "http://169.254.169.254/latest/", "/redirect-to-loopback":
                   "http://localhost:8080/x.png", "/redirect-to-internal": "https://images.internal/x.png"}
        if request.url.path in targets:
            return httpx.Response(302, headers={"Location": targets[request.url.path]})
        return httpx.Response(200, content=PNG_1PX, headers={"Content-Type": "image/png"})

    client = mock_client(handler)
    assert not client.allow_private_results  # gw.example.com is not local
    with pytest.raises(DownloadError, match="non-public address"):
        await client.download(url)
    assert all(u.startswith("https://cdn.example.com/") for u in fetched)  # nothing inward was fetched


async def test_redirects_are_followed_by_hand_with_the_key_only_on_the_gateway_origin() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("Authorization")))
        if request.url.host == "gw.example.com":
            return httpx.Response(302, headers={"Location": "https://cdn.example.com/final.png"})
        return httpx.Response(200, content=PNG_1PX, headers={"Content-Type": "image/png"})

    result = await mock_client(handler).download("https://gw.example.com/files/a.png")
    assert result.content_type == "image/png"
    assert seen == [("https://gw.example.com/files/a.png", f"Bearer {KEY}"),
                    ("https://cdn.example.com/final.png", None)]


async def test_endless_redirects_are_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": f"https://cdn.example.com/{len(request.url.path)}x"})

    with pytest.raises(DownloadError, match="redirects"):
        await mock_client(handler).download("https://cdn.example.com/a")


# ---------------------------------------------------------------------------------------------- ModKie oddities
async def test_modkie_dialect_oddities(make_gateway: Callable[..., Awaitable[SandboxGateway]],
                                       make_client: Callable[..., GatewayClient],
                                       caplog: pytest.LogCaptureFixture) -> None:
    """Answers a ModKie gateway may give (a ModKie-dialect sandbox, its bodies replaced where they are odd):
    ``message`` for ``msg``, numbers as strings or floats, ``completed``/``failed``, a state nobody knows."""
    gateway = await make_gateway(dialect="modkie")
    client = make_client(gateway.base_url)
    answers = [
        {"code": 200, "message": "success", "data": {
            "taskId": "t-ok", "state": "completed", "resultJson": {"resultUrls": ["https://cdn.example.com/1.png"]},
            "failMsg": None, "failCode": None, "consumeCredits": "18", "remainedCredits": 82.0, "progress": 100}},
        {"code": 200, "message": "success", "data": {"taskId": "t-odd", "state": "rendering",
                                                     "resultJson": None, "progress": 42.4}},
        {"code": 200, "message": "success", "data": {"taskId": "t-odd", "state": "rendering",
                                                     "resultJson": None, "progress": 42.4}},
        {"code": 200, "message": "success", "data": {"taskId": "t-fail", "state": "failed",
                                                     "failCode": 400, "failMsg": ""}},
        {"code": 422, "message": "input.prompt is required"},
    ]
    for answer in answers:  # one per recordInfo, in this order
        gateway.inject("recordInfo", body=json.dumps(answer).encode())

    ok = await client.record_info("t-ok")
    assert ok == TaskRecord("t-ok", TaskStage.SUCCESS, "completed", ("https://cdn.example.com/1.png",),
                            None, None, 100, 18, 82)
    with caplog.at_level(logging.WARNING, logger="imagine_bot.core.gateway"):
        odd = await client.record_info("t-odd")
        await client.record_info("t-odd")
    assert (odd.stage, odd.state, odd.progress, odd.result_urls) == (TaskStage.GENERATING, "rendering", 42, ())
    assert [r.getMessage() for r in caplog.records].count(
        "recordInfo: unknown task state 'rendering', treating it as still running") == 1
    fail = await client.record_info("t-fail")
    assert (fail.stage, fail.fail_code, fail.fail_msg) == (TaskStage.FAIL, "400", None)
    assert isinstance(client.failure(fail), GenerationFailed) and client.failure(fail).gateway_code == 400
    with pytest.raises(GatewayInvalidInput) as caught:
        await client.record_info("t-bad")
    assert "input.prompt is required" in caught.value.user_message
    assert gateway.requests["recordInfo"] == len(answers)


async def test_credit_reads_the_balance(gateway: SandboxGateway, client: GatewayClient) -> None:
    assert await client.credit() == 100000
    gateway.inject("credit", body=b'{"code": 200, "msg": "success", "data": "lots"}', times=client.retries)
    with pytest.raises(GatewayProtocolError):
        await client.credit()


# ---------------------------------------------------------------------------------------------- the key never leaks
async def test_api_key_never_leaks(gateway: SandboxGateway, make_client: Callable[..., GatewayClient],
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # short enough for the hanging faults, long enough for the real requests on a loaded machine
    client = make_client(gateway.base_url, request_timeout=0.5, retries=2)
    task_id = await client.create_task(MODEL, inputs())
    record, _ = await poll(client, task_id)
    url = record.result_urls[0]
    echo = f"invalid key {KEY}"
    faults: list[tuple[str, dict[str, Any]]] = [
        ("createTask", {"status": 401, "msg": echo}), ("createTask", {"status": 402}),
        ("createTask", {"code": 433, "msg": echo}), ("createTask", {"code": 422, "msg": echo}),
        ("createTask", {"status": 429, "headers": {"Retry-After": "999"}}), ("createTask", {"code": 455}),
        ("createTask", {"status": 500, "msg": echo}), ("createTask", {"code": 505}), ("createTask", {"hang": 5}),
        ("createTask", {"body": b"{garbage " + KEY.encode()}),
        ("recordInfo", {"code": 501, "msg": echo}), ("recordInfo", {"status": 404}),
        ("recordInfo", {"code": 408}), ("recordInfo", {"status": 503, "msg": echo, "times": 2}),
        ("recordInfo", {"hang": 5, "times": 2}),
        ("recordInfo", {"body": json.dumps({"code": 200, "data": {"state": "x", "resultJson": KEY}}).encode(),
                        "times": 2}),
        ("download", {"status": 404, "msg": echo}),
        ("download", {"body": b"nope", "headers": {"Content-Type": "text/x"}}),
    ]
    errors: list[Exception] = []
    for endpoint, fault in faults:
        gateway.inject(endpoint, **fault)
        call = {"createTask": lambda: client.create_task(MODEL, inputs()),
                "recordInfo": lambda: client.record_info(task_id),
                "download": lambda: client.download(url)}[endpoint]
        with pytest.raises(GatewayError) as caught:
            await call()
        errors.append(caught.value)
    fail_answer = {"code": 200, "msg": "ok", "data": {"taskId": "t", "state": "fail", "failMsg": f"boom {KEY}"}}
    gateway.inject("recordInfo", body=json.dumps(fail_answer).encode())
    errors.append(client.failure(await client.record_info(task_id)))
    errors.append(await _raised(make_client(gateway.base_url, api_key="mk-wrong").create_task(MODEL, inputs())))

    assert len({type(e) for e in errors}) >= 10
    for error in errors:
        assert isinstance(error, GatewayError)
        for text in (str(error), repr(error), error.admin_message, error.user_message):
            assert KEY not in text, f"{type(error).__name__} leaks the key: {text}"
    assert KEY not in repr(client) and KEY not in repr(record)
    assert caplog.records and KEY not in caplog.text
    assert all(KEY not in r.getMessage() for r in caplog.records)


async def _raised(awaitable: Awaitable[Any]) -> Exception:
    try:
        await awaitable
    except Exception as exc:
        return exc
    raise AssertionError("expected an error")


async def test_requests_beyond_max_in_flight_wait_in_the_client_not_in_the_pool():
    """At most ``max_in_flight`` requests are at the gateway at once, calls and downloads together; the rest
    wait their turn in the client (httpcore's own queue is quadratic), and all of them complete."""
    from aiohttp import web

    busy, most = 0, 0

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        try:
            await asyncio.sleep(0.05)
            return await handler(request)
        finally:
            busy -= 1

    app = web.Application(middlewares=[count])

    async def credit(_: web.Request) -> web.Response:
        return web.json_response({"code": 200, "msg": "success", "data": 7})

    async def png(_: web.Request) -> web.Response:
        return web.Response(body=PNG_1PX, content_type="image/png")

    app.router.add_get("/api/v1/chat/credit", credit)
    app.router.add_get("/files/1.png", png)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50)) as http:
            client = GatewayClient(http, base_url=base, api_key=KEY, max_in_flight=3)
            results = await asyncio.gather(*(client.credit() for _ in range(10)),
                                           *(client.download(f"{base}/files/1.png") for _ in range(10)))
    finally:
        await runner.cleanup()
    assert results[:10] == [7] * 10 and all(r.content == PNG_1PX for r in results[10:])
    assert most == 3
