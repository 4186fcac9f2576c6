"""Trusted callbacks: a ModKie account webhook signed over its whole body with a final state is acted on
with no confirming recordInfo; every other callback stays a hint, confirmed with recordInfo. The sandbox
gateway (a real server) sends the signed webhooks; the hints are posted by hand to the bot's web server.
Signatures are built here from the contract's definition, not with the module's own helpers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagine_bot.core.app import ImagineCore
from imagine_bot.core.gateway.webhooks import WebhookState, register_account_webhook
from imagine_bot.core.jobs.model import Job, JobState
from imagine_bot.core.sandbox import SandboxGateway
from imagine_bot.core.settings import Settings
from imagine_bot.core.web.server import build_web_app, start_web

from .conftest import TEST_API_KEY
from .test_orchestrator import ALICE, REPLY, recorder

SECRET = "whsec-trusted-4242"


def modkie_signed(body: bytes, secret: str = SECRET, encoding: str = "hex") -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    value = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    return {"X-ModKie-Signature": f"sha256={value}", "Content-Type": "application/json"}


def kie_signed(task_id: str, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"{task_id}.{ts}".encode(), hashlib.sha256).digest()
    return {"X-Webhook-Timestamp": ts, "X-Webhook-Signature": base64.b64encode(digest).decode()}


def account_payload(task_id: str, state: str, urls: list[str] | None) -> bytes:
    return json.dumps({"event": "task.completed", "taskId": task_id, "state": state, "provider": "seedream",
                       "capability": "image", "model": "seedream/4.5-text-to-image",
                       "result": {"resultUrls": urls} if urls is not None else None, "failMsg": None,
                       "creditsCharged": 18, "timestamp": "2026-11-25T12:00:00Z"}).encode()


@dataclass
class Bot:
    core: ImagineCore
    settings: Settings
    base: str

    async def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.post(self.base + "/callbacks/modkie", content=body, headers=headers)


@pytest.fixture
def open_bot(make_settings: Callable[..., Settings], tmp_path: Path):
    """A core with its web server up and PUBLIC_URL pointing at it."""

    @asynccontextmanager
    async def open_(**overrides: Any) -> AsyncIterator[Bot]:
        settings = make_settings(**overrides)
        async with ImagineCore.open(settings) as core:
            runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
            settings = settings.model_copy(update={"PUBLIC_URL": f"http://127.0.0.1:{port}"})
            core.orchestrator.callback_url = settings.callback_url
            core.register(recorder(tmp_path))
            try:
                yield Bot(core, settings, f"http://127.0.0.1:{port}")
            finally:
                await core.orchestrator.stop()
                await runner.cleanup()

    return open_


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def finished(core: ImagineCore, job: Job) -> Job:
    await asyncio.wait_for(core.orchestrator.wait_idle(), 10)
    return core.jobs.get(job.id)


async def test_signed_final_webhook_delivers_with_no_recordinfo(open_bot, sandbox: SandboxGateway):
    async with open_bot(MODKIE_WEBHOOK_SECRET=SECRET) as bot:
        registration = await register_account_webhook(bot.core.gateway, bot.settings)
        assert registration.state is WebhookState.REGISTERED
        assert sandbox.account_webhook == (f"{bot.base}/callbacks/modkie", SECRET)
        async with httpx.AsyncClient() as http:  # the sandbox shows the URL, never the secret
            shown = (await http.get(f"{sandbox.base_url}/api/gateway/webhooks",
                                    headers={"Authorization": f"Bearer {TEST_API_KEY}"})).json()
        assert shown["data"] == {"url": f"{bot.base}/callbacks/modkie", "signed": True}
        assert SECRET not in json.dumps(shown)
        bot.core.orchestrator.account_webhook = registration.registered
        job = await finished(bot.core, await bot.core.imagine(ALICE, REPLY, "a trusted fox"))
        assert job.state is JobState.DELIVERED
        balance = bot.core.ledger.balance(ALICE)
        assert (balance.balance, balance.held) == (180 - 18, 0)
        assert bot.core.ledger.verify() == []
    # one createTask, the download, and not a single recordInfo: the signed webhook was the answer
    assert sandbox.requests["webhook"] == 1
    assert sandbox.requests["createTask"] == 1 and sandbox.requests["download"] == 1
    assert sandbox.requests["recordInfo"] == 0
    # no per-task callBackUrl was sent: its unsigned callback would have cost a confirmation
    assert sandbox.tasks[job.task_id].callback_url is None


async def test_signed_final_failure_refunds_with_no_recordinfo(open_bot, sandbox: SandboxGateway):
    async with open_bot(MODKIE_WEBHOOK_SECRET=SECRET) as bot:
        bot.core.orchestrator.account_webhook = (await register_account_webhook(bot.core.gateway,
                                                                               bot.settings)).registered
        job = await finished(bot.core, await bot.core.imagine(ALICE, REPLY, "a cat sandbox:fail"))
        assert job.state is JobState.FAILED and job.error_code == "generation_failed"
        balance = bot.core.ledger.balance(ALICE)
        assert (balance.balance, balance.held) == (180, 0)
    assert sandbox.requests["webhook"] == 1 and sandbox.requests["recordInfo"] == 0


async def test_a_refused_registration_is_a_warning_and_callbacks_stay_hints(open_bot, sandbox, caplog):
    # a 401 is asked again (it may be a key rotation: errors.is_transient); one that persists is a refusal
    sandbox.inject("webhooks", code=401, msg="You do not have access permissions", times=10)
    async with open_bot(MODKIE_WEBHOOK_SECRET=SECRET) as bot:
        bot.core.gateway.backoff_base = 0.01
        registration = await register_account_webhook(bot.core.gateway, bot.settings)
        assert registration.state is WebhookState.FAILED and not registration.registered
        assert "refused the account webhook" in caplog.text
        assert SECRET not in caplog.text
    async with open_bot() as bot:  # no secret: nothing to register
        assert (await register_account_webhook(bot.core.gateway, bot.settings)).state is WebhookState.NOT_CONFIGURED
    assert sandbox.account_webhook is None


async def running(bot: Bot, sandbox: SandboxGateway, prompt: str) -> Job:
    """A job whose task is done at the gateway but whose tracker waits for a callback (fallback in 45 s).

    ``account_webhook`` is on and the sandbox has none registered: no callback comes by itself.
    """
    bot.core.orchestrator.account_webhook = True
    job = await bot.core.imagine(ALICE, REPLY, prompt)
    await until(lambda: bot.core.jobs.get(job.id).task_id in bot.core.orchestrator.tracking)
    job = bot.core.jobs.get(job.id)
    task = sandbox.tasks[job.task_id]
    loop = asyncio.get_running_loop()
    await until(lambda: loop.time() - task.created > task.duration)
    return job


HINTS = {
    "kie-signed final envelope": lambda task_id, url: (
        json.dumps({"code": 200, "msg": "success", "data": {
            "taskId": task_id, "state": "success", "resultJson": json.dumps({"resultUrls": [url]})}}).encode(),
        kie_signed(task_id)),
    "modkie-signed, not final": lambda task_id, url: (
        account_payload(task_id, "processing", None), modkie_signed(account_payload(task_id, "processing", None))),
    "modkie-signed success without result URLs": lambda task_id, url: (
        account_payload(task_id, "success", []), modkie_signed(account_payload(task_id, "success", []))),
}


@pytest.mark.parametrize("kind", list(HINTS))
async def test_other_callbacks_are_hints_confirmed_with_recordinfo(open_bot, sandbox, kind):
    async with open_bot(MODKIE_WEBHOOK_SECRET=SECRET) as bot:
        job = await running(bot, sandbox, f"a hinted heron ({kind})")
        # a URL the gateway never made: a hint's content is never used, only recordInfo's
        body, headers = HINTS[kind](job.task_id, "http://127.0.0.1:9/forged.png")
        answer = await bot.post(body, headers)
        assert answer.status_code == 200
        job = await finished(bot.core, job)
    assert job.state is JobState.DELIVERED
    assert sandbox.requests["recordInfo"] == 1  # the confirmation
    assert sandbox.requests["download"] == 1


async def test_unsigned_final_webhook_is_a_hint_without_a_secret(open_bot, sandbox):
    async with open_bot() as bot:
        job = await running(bot, sandbox, "an unsigned owl")
        body = account_payload(job.task_id, "success", ["http://127.0.0.1:9/forged.png"])
        assert (await bot.post(body, {"Content-Type": "application/json"})).status_code == 200
        job = await finished(bot.core, job)
    assert job.state is JobState.DELIVERED
    assert sandbox.requests["recordInfo"] == 1


@pytest.mark.parametrize("encoding", ["hex", "base64"])
async def test_a_forged_final_webhook_is_refused_and_the_job_still_confirms(open_bot, sandbox, encoding):
    async with open_bot(MODKIE_WEBHOOK_SECRET=SECRET) as bot:
        job = await running(bot, sandbox, "a forged finch")
        body = account_payload(job.task_id, "success", ["http://127.0.0.1:9/forged.png"])
        forged = await bot.post(body, modkie_signed(body, secret="not-the-secret", encoding=encoding))
        assert forged.status_code == 401
        assert bot.core.jobs.get(job.id).state is JobState.RUNNING
        # the real answer comes as a hint: one confirmation, then the gateway's own image
        assert (await bot.post(*HINTS["kie-signed final envelope"](job.task_id, "x"))).status_code == 200
        job = await finished(bot.core, job)
    assert job.state is JobState.DELIVERED
    assert sandbox.requests["recordInfo"] == 1


async def test_a_signed_final_webhook_posted_by_hand_is_trusted_in_base64_too(open_bot, sandbox):
    async with open_bot(MODKIE_WEBHOOK_SECRET=SECRET) as bot:
        job = await running(bot, sandbox, "a base64 badger")
        url = f"{sandbox.base_url}/files/{job.task_id}/0.png"
        body = account_payload(job.task_id, "success", [url])
        assert (await bot.post(body, modkie_signed(body, encoding="base64"))).status_code == 200
        job = await finished(bot.core, job)
    assert job.state is JobState.DELIVERED
    assert sandbox.requests["recordInfo"] == 0 and sandbox.requests["download"] == 1


@pytest.mark.parametrize("secret", [SECRET, None], ids=["signed final", "unsigned hint"])
async def test_a_callback_landing_on_another_process_reaches_the_tracker(make_settings, tmp_path, sandbox, secret):
    """Two processes on one database behind one load balancer: the gateway's webhook reaches B, the job's
    tracker runs in A. B relays it through the database; A acts on it within about a second (not at the
    45 s fallback): a signed final one with no recordInfo, a hint with one."""
    await _relayed(make_settings, tmp_path, sandbox, secret)


@pytest.mark.parametrize("secret", [SECRET, None], ids=["signed final", "unsigned hint"])
async def test_on_postgresql_the_relayed_callback_wakes_the_tracker_with_no_poll(make_settings, tmp_path, sandbox,
                                                                                 secret, pg_url, monkeypatch):
    """The same on two hosts sharing PostgreSQL, with the relay's poll an hour apart: only NOTIFY can have
    woken A (SQLite has no such push: there the poll above does it)."""
    monkeypatch.setenv("DATABASE_URL", pg_url)
    await _relayed(make_settings, tmp_path, sandbox, secret, relay_every_s=3600)


async def _relayed(make_settings, tmp_path, sandbox, secret, *, relay_every_s: float | None = None) -> None:
    overrides = {"MODKIE_WEBHOOK_SECRET": secret} if secret else {}
    async with ImagineCore.open(make_settings(**overrides)) as a, ImagineCore.open(make_settings(**overrides)) as b:
        runners = [await start_web(build_web_app(core), "127.0.0.1", 0) for core in (a, b)]
        if relay_every_s is not None:
            a.relay.every_s = b.relay.every_s = relay_every_s
        try:
            for core in (a, b):
                core.register(recorder(tmp_path / core.orchestrator.owner.replace(":", "-")))
                await core.start()
            b_url = f"http://127.0.0.1:{runners[1][1]}"
            settings_b = b.settings.model_copy(update={"PUBLIC_URL": b_url})
            if secret:
                assert (await register_account_webhook(b.gateway, settings_b)).registered
            else:  # no secret: register by hand, the sandbox then sends the webhook unsigned
                sandbox.account_webhook = (settings_b.callback_url, None)
            for core in (a, b):
                core.orchestrator.callback_url = settings_b.callback_url
                core.orchestrator.account_webhook = True
            job = await a.imagine(ALICE, REPLY, "a relayed robin")
            job = await finished(a, job)
            assert job.state is JobState.DELIVERED
            assert b.jobs.get(job.id).state is JobState.DELIVERED  # the same database
        finally:
            for runner, _port in runners:
                await runner.cleanup()
    assert sandbox.requests["webhook"] == 1
    assert sandbox.requests["recordInfo"] == (0 if secret else 1)
