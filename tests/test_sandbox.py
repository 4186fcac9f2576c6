"""The sandbox gateway, spoken to over raw HTTP: the state walk, validation, magic words, callbacks,
rendering."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from PIL import Image

from imagine_bot.core.gateway import parse_callback
from imagine_bot.core.gateway.catalog import KIE_ASPECT_RATIOS
from imagine_bot.core.sandbox import SandboxGateway, image_size, render_png, stage_at
from tests.conftest import FAST_DELAYS, until

MODEL = "seedream/4.5-text-to-image"
DELAYS = FAST_DELAYS
SECRET = "whsec-sandbox"
Receiver = tuple[str, "asyncio.Queue[tuple[dict[str, str], bytes]]"]


def job(prompt: str = "a quiet harbour at dawn", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "input": {"prompt": prompt, "aspect_ratio": "1:1", "quality": "basic"}}
    body["input"].update({k: v for k, v in extra.items() if k != "callBackUrl"})
    if "callBackUrl" in extra:
        body["callBackUrl"] = extra["callBackUrl"]
    return body


@pytest.fixture
async def sb(make_sandbox: Callable[..., Awaitable[SandboxGateway]]) -> SandboxGateway:
    return await make_sandbox()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real aiohttp server that records each callback it gets."""
    got: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def handle(request: web.Request) -> web.Response:
        await got.put((dict(request.headers), await request.read()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/callbacks/modkie", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/callbacks/modkie", got
    await runner.cleanup()


async def create(http: httpx.AsyncClient, sb: SandboxGateway, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(f"{sb.base_url}/api/v1/jobs/createTask", json=body)
    assert response.status_code == 200
    return response.json()


async def record(http: httpx.AsyncClient, sb: SandboxGateway, task_id: str) -> dict[str, Any]:
    response = await http.get(f"{sb.base_url}/api/v1/jobs/recordInfo", params={"taskId": task_id})
    assert response.status_code == 200
    return response.json()


async def walk(http: httpx.AsyncClient, sb: SandboxGateway, task_id: str) -> list[dict[str, Any]]:
    """Poll until the task ends; every distinct-state answer, in order."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while True:
            data = (await record(http, sb, task_id))["data"]
            if not seen or seen[-1]["state"] != data["state"]:
                seen.append(data)
            if data["state"] in ("success", "fail"):
                return seen
            await asyncio.sleep(0.003)


# ---------------------------------------------------------------------------------------------- the state walk
@pytest.mark.parametrize(("elapsed", "expected"), [
    (0.0, ("waiting", None)), (0.99, ("waiting", None)), (1.0, ("queuing", None)), (2.5, ("generating", 25)),
    (3.0, ("generating", 50)), (3.99, ("generating", 99)), (4.0, ("success", 100)), (99.0, ("success", 100)),
])
def test_stage_at(elapsed: float, expected: tuple[str, int | None]) -> None:
    assert stage_at(elapsed, {"waiting": 1.0, "queuing": 1.0, "generating": 2.0}) == expected


def test_stage_at_fail_and_zero_delays() -> None:
    assert stage_at(10.0, {"waiting": 1.0}, fails=True) == ("fail", None)
    assert stage_at(0.0, {"waiting": 0.0, "queuing": 0.0, "generating": 0.0}) == ("success", 100)


async def test_kie_walk(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    created = await create(http, sb, job())
    assert created["code"] == 200 and created["msg"] == "success"
    task_id = created["data"]["taskId"]
    assert re.fullmatch(r"task_seedream_\d{17}", task_id)
    seen = await walk(http, sb, task_id)
    states = [d["state"] for d in seen]
    order = ["waiting", "queuing", "generating", "success"]
    assert states[0] == "waiting" and states[-1] == "success"
    assert states == sorted(states, key=order.index)
    for data in seen:
        assert isinstance(data["param"], str)
        assert json.loads(data["param"])["input"] == job()["input"]
        if data["state"] == "generating":
            assert 0 <= data["progress"] <= 100
        if data["state"] != "success":
            assert (data["resultJson"], data["failCode"], data["failMsg"]) == ("", "", "")
            assert "consumeCredits" not in data
    done = seen[-1]
    assert json.loads(done["resultJson"]) == {"resultUrls": [f"{sb.base_url}/files/{task_id}/0.png"]}
    assert (done["consumeCredits"], done["remainedCredits"], done["progress"]) == (18, 100000 - 18, 100)
    assert done["completeTime"] >= done["createTime"]
    assert sb.requests["createTask"] == 1 and sb.requests["recordInfo"] >= len(seen)


async def test_modkie_walk(http: httpx.AsyncClient, make_sandbox: Callable[..., Awaitable[SandboxGateway]]) -> None:
    sb = await make_sandbox(dialect="modkie")
    task_id = (await create(http, sb, job()))["data"]["taskId"]
    seen = await walk(http, sb, task_id)
    states = [d["state"] for d in seen]
    assert states[0] == "pending" and states[-1] == "success" and set(states) <= {"pending", "processing", "success"}
    assert seen[0]["resultJson"] is None and seen[0]["failMsg"] is None
    assert seen[-1]["resultJson"] == {"resultUrls": [f"{sb.base_url}/files/{task_id}/0.png"]}


async def test_task_ids_are_unique(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    answers = await asyncio.gather(*(create(http, sb, job()) for _ in range(30)))
    assert len({a["data"]["taskId"] for a in answers}) == 30 == len(sb.tasks)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("body", "field"), [
    ({"model": "seedream/9", "input": {"prompt": "x", "aspect_ratio": "1:1", "quality": "basic"}}, "model"),
    ({"model": MODEL}, "input"),
    (job(""), "input.prompt"),
    (job("   "), "input.prompt"),
    (job("x" * 3001), "input.prompt"),
    (job(aspect_ratio="5:4"), "input.aspect_ratio"),
    ({"model": MODEL, "input": {"prompt": "x", "quality": "basic"}}, "input.aspect_ratio"),
    (job(quality="ultra"), "input.quality"),
    (job(nsfw_checker="no"), "input.nsfw_checker"),
    (job(callBackUrl="ftp://x"), "callBackUrl"),
])
async def test_create_task_validation(http: httpx.AsyncClient, sb: SandboxGateway, body: dict[str, Any],
                                      field: str) -> None:
    answer = await create(http, sb, body)
    assert answer["code"] == 422 and answer["msg"].startswith(field) and not sb.tasks


async def test_limits_are_accepted(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    for ratio in KIE_ASPECT_RATIOS:
        assert (await create(http, sb, job("x" * 3000, aspect_ratio=ratio, quality="high")))["code"] == 200


async def test_unknown_task(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    assert await record(http, sb, "task_nope") == {"code": 422, "msg": "recordInfo is null", "data": None}


async def test_api_key(http: httpx.AsyncClient, make_sandbox: Callable[..., Awaitable[SandboxGateway]]) -> None:
    sb = await make_sandbox(api_key="sk-sandbox")
    refused = await http.get(f"{sb.base_url}/api/v1/chat/credit", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and refused.json()["code"] == 401
    assert (await http.get(f"{sb.base_url}/api/v1/chat/credit")).status_code == 401
    ok = await http.get(f"{sb.base_url}/api/v1/chat/credit", headers={"Authorization": "Bearer sk-sandbox"})
    assert ok.json() == {"code": 200, "msg": "success", "data": 100000}
    assert (await http.get(f"{sb.base_url}/healthz")).json()["ok"] is True


async def test_models_and_credit(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    models = (await http.get(f"{sb.base_url}/api/v1/models")).json()
    assert models["data"] == [{"model": MODEL, "name": "Seedream 4.5", "capability": "image", "creditCost": 18},
                              {"model": "seedream/4.5-edit", "name": "Seedream 4.5 Edit", "capability": "image",
                               "creditCost": 18}]


async def test_latency_is_added(http: httpx.AsyncClient,
                                make_sandbox: Callable[..., Awaitable[SandboxGateway]]) -> None:
    sb = await make_sandbox(latency=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await http.get(f"{sb.base_url}/api/v1/chat/credit")).status_code == 200
    assert loop.time() - started >= 0.05


async def test_out_of_credits(http: httpx.AsyncClient, make_sandbox: Callable[..., Awaitable[SandboxGateway]]) -> None:
    sb = await make_sandbox(credits=10)
    assert (await create(http, sb, job()))["code"] == 402


# ---------------------------------------------------------------------------------------------- magic words
async def test_magic_fail_charges_nothing(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    task_id = (await create(http, sb, job("a storm sandbox:fail")))["data"]["taskId"]
    done = (await walk(http, sb, task_id))[-1]
    assert done["state"] == "fail" and done["failMsg"] == "sandbox: generation failed on request"
    assert done["resultJson"] == "" and done["consumeCredits"] == 0
    assert (await http.get(f"{sb.base_url}/api/v1/chat/credit")).json()["data"] == 100000
    assert (await http.get(f"{sb.base_url}/files/{task_id}/0.png")).status_code == 404


async def test_magic_slow(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    slow = (await create(http, sb, job("sandbox:slow snail")))["data"]["taskId"]
    normal = (await create(http, sb, job("hare")))["data"]["taskId"]
    assert sb.tasks[slow].delays == {state: seconds * 10 for state, seconds in DELAYS.items()}
    assert sb.tasks[normal].delays == DELAYS
    assert (await walk(http, sb, normal))[-1]["state"] == "success"
    assert (await record(http, sb, slow))["data"]["state"] != "success"


async def test_credits_charged_once_on_success(http: httpx.AsyncClient, make_sandbox) -> None:
    # a task that waits 2 s before it starts: the first look at the balance comes well before its success,
    # however busy the machine (with the 80 ms of the fast delays, a loaded machine could look after it)
    sb = await make_sandbox(delays={**DELAYS, "waiting": 2.0})
    task_id = (await create(http, sb, job()))["data"]["taskId"]
    assert (await http.get(f"{sb.base_url}/api/v1/chat/credit")).json()["data"] == 100000
    await walk(http, sb, task_id)
    await record(http, sb, task_id)
    assert (await http.get(f"{sb.base_url}/api/v1/chat/credit")).json()["data"] == 100000 - 18


# ---------------------------------------------------------------------------------------------- files
async def test_file_is_rendered_once(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    task_id = (await create(http, sb, job(aspect_ratio="21:9", quality="high")))["data"]["taskId"]
    url = f"{sb.base_url}/files/{task_id}/0.png"
    assert (await http.get(url)).status_code == 404  # not done yet
    await walk(http, sb, task_id)
    first, second = await asyncio.gather(http.get(url), http.get(url))
    assert first.headers["Content-Type"] == "image/png" and first.content == second.content
    assert list(sb.tasks[task_id].images) == [0]
    with Image.open(io.BytesIO(first.content)) as image:
        assert image.size == image_size("21:9", "high", 0.125) == (256, 110)
    assert (await http.get(f"{sb.base_url}/files/{task_id}/1.png")).status_code == 404


# ---------------------------------------------------------------------------------------------- inject
async def test_inject_counts_down(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    sb.inject("createTask", code=455, msg="maintenance", times=2)
    sb.inject("createTask", status=429, headers={"Retry-After": "7"})
    assert (await create(http, sb, job())) == {"code": 455, "msg": "maintenance", "data": None}
    assert (await create(http, sb, job()))["code"] == 455
    limited = await http.post(f"{sb.base_url}/api/v1/jobs/createTask", json=job())
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert (await create(http, sb, job()))["code"] == 200
    assert sb.requests["createTask"] == 4 and len(sb.tasks) == 1


async def test_inject_raw_body_and_state(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    task_id = (await create(http, sb, job()))["data"]["taskId"]
    sb.inject("recordInfo", body=b"{oops")
    sb.inject("recordInfo", state="weird")
    garbled = await http.get(f"{sb.base_url}/api/v1/jobs/recordInfo", params={"taskId": task_id})
    assert garbled.content == b"{oops"
    assert (await record(http, sb, task_id))["data"]["state"] == "weird"


def test_inject_refuses_unknown_endpoints(sb: SandboxGateway) -> None:
    with pytest.raises(ValueError, match="unknown endpoint"):
        sb.inject("createtask")


async def test_stop_ends_a_hung_request(http: httpx.AsyncClient,
                                        make_sandbox: Callable[..., Awaitable[SandboxGateway]]) -> None:
    sb = await make_sandbox()
    sb.inject("recordInfo", hang=60)
    hung = asyncio.create_task(http.get(f"{sb.base_url}/api/v1/jobs/recordInfo", params={"taskId": "t"},
                                        timeout=30))
    await until(lambda: sb.requests["recordInfo"] == 1)
    await sb.stop()
    # the hang itself ended and the request was answered; had stop() left it to the runner's 1 s shutdown
    # timeout, the handler would have been cancelled and the connection dropped without an answer
    answer = await hung
    assert answer.status_code == 200 and answer.json()["code"] != 200


# ---------------------------------------------------------------------------------------------- callbacks
@pytest.mark.parametrize(("prompt", "code", "state"), [("a kite", 200, "success"), ("sandbox:fail", 501, "fail")])
async def test_signed_callback(http: httpx.AsyncClient, make_sandbox: Callable[..., Awaitable[SandboxGateway]],
                               receiver: Receiver, prompt: str, code: int, state: str) -> None:
    sb = await make_sandbox(webhook_secret=SECRET)
    url, got = receiver
    task_id = (await create(http, sb, job(prompt, callBackUrl=url)))["data"]["taskId"]
    async with asyncio.timeout(5):
        headers, body = await got.get()
    assert parse_callback(body, headers, SECRET) == task_id
    envelope = json.loads(body)
    assert envelope["code"] == code and envelope["data"]["state"] == state
    assert envelope["data"]["consumeCredits"] == (18 if code == 200 else 0)
    assert "remainedCredits" in envelope["data"]
    assert sb.requests["callback"] == 1 and got.empty()


async def test_unsigned_callback_without_secret(http: httpx.AsyncClient, sb: SandboxGateway,
                                                receiver: Receiver) -> None:
    url, got = receiver
    task_id = (await create(http, sb, job(callBackUrl=url)))["data"]["taskId"]
    async with asyncio.timeout(5):
        headers, body = await got.get()
    assert "X-Webhook-Signature" not in headers and parse_callback(body, headers, None) == task_id


async def test_callback_receiver_down_is_tolerated(http: httpx.AsyncClient, sb: SandboxGateway) -> None:
    dead = SandboxGateway()
    dead_url = await dead.start()
    await dead.stop()
    task_id = (await create(http, sb, job(callBackUrl=f"{dead_url}/callbacks/modkie")))["data"]["taskId"]
    async with asyncio.timeout(5):
        await sb.drain()
    assert sb.requests["callback"] == 1
    assert (await record(http, sb, task_id))["data"]["state"] == "success"


async def test_stop_cancels_pending_callbacks(http: httpx.AsyncClient,
                                              make_sandbox: Callable[..., Awaitable[SandboxGateway]],
                                              receiver: Receiver) -> None:
    sb = await make_sandbox(delays={"waiting": 60})
    await create(http, sb, job(callBackUrl=receiver[0]))
    async with asyncio.timeout(3):
        await sb.stop()
    assert sb.requests["callback"] == 0


# ---------------------------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("quality", ["basic", "high"])
@pytest.mark.parametrize("ratio", KIE_ASPECT_RATIOS)
def test_render_sizes(ratio: str, quality: str) -> None:
    png = render_png("a lighthouse on a cliff", ratio, quality, scale=0.25)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size == image_size(ratio, quality, 0.25)
        long_side = {"basic": 256, "high": 512}[quality]
        assert max(image.size) == long_side
        w, h = (int(p) for p in ratio.split(":"))
        assert image.size[0] / image.size[1] == pytest.approx(w / h, rel=0.02)


def test_full_size_and_minimum() -> None:
    assert image_size("16:9", "basic") == (1024, 576)
    assert image_size("9:16", "high") == (1152, 2048)
    assert image_size("21:9", "basic", 0.01) == (64, 64)


def test_render_is_deterministic_per_prompt() -> None:
    a = render_png("a red fox", "1:1", "basic", 0.125)
    assert a == render_png("a red fox", "1:1", "basic", 0.125)
    assert a != render_png("a blue fox", "1:1", "basic", 0.125)
    long_prompt = render_png("word " * 600, "4:3", "basic", 0.125)  # wrapped and truncated, still a PNG
    assert long_prompt.startswith(b"\x89PNG")


def test_an_edit_shows_no_fragment_of_the_old_caption() -> None:
    """A plain grey sandbox image with a tall caption (a long prompt), edited with a short prompt at the same
    shape: above the new, one-line caption the edit is as plain as the reference was."""
    from PIL import ImageStat

    from imagine_bot.core.sandbox import render

    reference = Image.new("RGBA", image_size("16:9", "basic", 0.5), (128, 128, 128, 255))
    old_top = render._caption(reference, "a lighthouse at dusk on a cliff over a stormy sea " * 6)
    edited = render.render_edit_png([render._png(reference, old_top)], "ink", "16:9", "basic", scale=0.5)
    with Image.open(io.BytesIO(edited)) as image:
        assert image.size == reference.size
        new_top = render._caption(Image.new("RGBA", image.size), "ink")
        assert old_top < new_top  # the old band was taller: without care, its top lines would show
        above = image.convert("L").crop((0, 0, image.width, new_top))
        low, high = ImageStat.Stat(above).extrema[0]
        assert high - low <= 2, f"pixel values {low}..{high} above the caption: a fragment of the old one"
