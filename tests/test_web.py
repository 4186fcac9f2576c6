"""The one web server: /healthz and gateway callbacks (signed and not)."""

from __future__ import annotations

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
