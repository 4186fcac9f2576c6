"""The one web server: /healthz, gateway callbacks (signed and not), and requests built to break it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import httpx

from imagine_bot.core.app import ImagineCore
from imagine_bot.core.web.server import build_web_app, start_web


async def serve(core: ImagineCore):
    runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{port}"


async def test_healthz(core):
    runner, base = await serve(core)
    try:
        async with httpx.AsyncClient() as http:
            answer = await http.get(base + "/healthz")
        assert answer.status_code == 200
        body = answer.json()
        assert body["ok"] is True and body["jobs_in_flight"] == 0
    finally:
        await runner.cleanup()


async def test_healthz_shows_the_gateway_balance_only_to_whoever_may_read_metrics(make_settings, sandbox):
    sandbox.credits = 73_219
    async with ImagineCore.open(make_settings(METRICS_TOKEN="scrape-me")) as core:
        assert await core.account.refresh() == 73_219
        runner, base = await serve(core)
        try:
            async with httpx.AsyncClient() as http:
                anyone = await http.get(base + "/healthz")
                wrong = await http.get(base + "/healthz", headers={"Authorization": "Bearer nope"})
                scraper = await http.get(base + "/healthz", headers={"Authorization": "Bearer scrape-me"})
        finally:
            await runner.cleanup()
    for answer in (anyone, wrong):
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
        assert "balance" not in answer.json()["gateway"] and "73219" not in answer.text
    assert scraper.json()["gateway"]["balance"] == 73_219
    # without METRICS_TOKEN /metrics is open to the same people, and so is the figure here
    async with ImagineCore.open(make_settings()) as core:
        await core.account.refresh()
        runner, base = await serve(core)
        try:
            async with httpx.AsyncClient() as http:
                assert (await http.get(base + "/healthz")).json()["gateway"]["balance"] == 73_219
        finally:
            await runner.cleanup()


async def _raw_status(base: str, path: bytes, headers: bytes = b"") -> int:
    """The status of a GET written byte for byte (httpx will not send bytes that are not UTF-8)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + headers
                 + b"Connection: close\r\n\r\n")
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    await writer.wait_closed()
    return status


async def test_signatures_with_characters_past_ascii_are_refused_not_a_500(make_settings):
    """``hmac.compare_digest`` raises on a str with non-ASCII characters: a forged /refs/ token, dashboard
    cookie or metrics token that has one is refused like any other forgery."""
    async with ImagineCore.open(make_settings(METRICS_TOKEN="scrape-me")) as core:
        runner, base = await serve(core)
        try:
            key, expires, _sig = core.refs.token("up:" + "0" * 32).split(".")
            async with httpx.AsyncClient() as http:
                for signature in ("é" * 32, "☃" * 8, "A" * 31 + "é"):
                    assert (await http.get(f"{base}/refs/{key}.{expires}.{signature}")).status_code == 403
                assert (await http.get(f"{base}/refs/{key}.{'9' * 5000}.{'A' * 32}")).status_code == 403
                for cookie in ("e30.é", "é.é", "e30." + "A" * 42 + "☃"):
                    page = await http.get(base + "/admin/usage",
                                          headers={"Cookie": f"imagine_dashboard={cookie}".encode()})
                    assert page.status_code == 401, cookie
                metrics = await http.get(base + "/metrics", headers={"Authorization": "Bearer scrap€-me".encode()})
                assert metrics.status_code == 401
            # bytes that are not UTF-8 at all reach the handlers as lone surrogates
            assert await _raw_status(base, b"/admin/usage", b"Cookie: imagine_dashboard=e30.\xff\xfe\r\n") == 401
            assert await _raw_status(base, b"/admin/usage", b"Cookie: imagine_dashboard=\xff.AAAA\r\n") == 401
            assert await _raw_status(base, b"/metrics", b"Authorization: Bearer \xffscrape-me\r\n") == 401
            assert await _raw_status(base, b"/healthz", b"Authorization: Bearer \xff\r\n") == 200
        finally:
            await runner.cleanup()


def kie_signature(task_id: str, secret: str) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"{task_id}.{ts}".encode(), hashlib.sha256).digest()
    return {"X-Webhook-Timestamp": ts, "X-Webhook-Signature": base64.b64encode(digest).decode()}


async def test_callbacks_verified_when_a_secret_is_set(make_settings):
    async with ImagineCore.open(make_settings(MODKIE_WEBHOOK_SECRET="whsec-test")) as core:
        runner, base = await serve(core)
        body = {"code": 200, "msg": "success", "data": {"taskId": "task_1", "state": "success"}}
        try:
            async with httpx.AsyncClient() as http:
                signed = kie_signature("task_1", "whsec-test")
                ok = await http.post(base + "/callbacks/modkie", json=body, headers=signed)
                forged = await http.post(base + "/callbacks/modkie", json=body,
                                         headers=kie_signature("task_1", "not-the-secret"))
                unsigned = await http.post(base + "/callbacks/modkie", json=body)
                garbage = await http.post(base + "/callbacks/modkie", content=b"{nope",
                                          headers=kie_signature("task_1", "whsec-test"))
        finally:
            await runner.cleanup()
    assert ok.status_code == 200
    assert forged.status_code == 401 and unsigned.status_code == 401
    assert garbage.status_code in (400, 401)


async def test_unsigned_callbacks_accepted_without_a_secret(core):
    runner, base = await serve(core)
    try:
        async with httpx.AsyncClient() as http:
            answer = await http.post(base + "/callbacks/modkie",
                                     content=json.dumps({"event": "task.completed", "taskId": "t9"}))
        assert answer.status_code == 200 and answer.json() == {"ok": True}
    finally:
        await runner.cleanup()
