"""The job orchestrator against the real sandbox gateway, with a recording (terminal) front end."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import DeliveryError, InsufficientCredits, TooManyActiveJobs
from imagine_bot.core.events import Accepted, Delivered, Failed, Progress, Queued
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.web.server import build_web_app, start_web
from tests.conftest import until

ALICE = UserRef("terminal", "local", "alice")
BOB = UserRef("terminal", "local", "bob")
REPLY = ReplyTo("terminal", "test")


def recorder(tmp_path: Path) -> TerminalFrontEnd:
    return TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False)


async def run_one(core: ImagineCore, text: str, who: UserRef = ALICE, **kw):
    job = await core.imagine(who, REPLY, text, **kw)
    await core.orchestrator.wait_idle()
    return core.jobs.get(job.id)


async def test_happy_path_charges_once_and_delivers_a_real_png(core, tmp_path, sandbox):
    fe = recorder(tmp_path)
    core.register(fe)
    job = await run_one(core, "a lighthouse at dusk --ar 16:9")

    assert job.state is JobState.DELIVERED
    kinds = [type(e) for e in fe.events]
    assert kinds[0] is Accepted and kinds[-1] is Delivered
    assert Progress in kinds
    delivered = fe.events[-1]
    assert isinstance(delivered, Delivered)
    assert delivered.balance == 180 - 18
    saved = fe.saved[job.id]
    with Image.open(saved[0]) as img:
        width, height = img.size
        assert img.format == "PNG"
    assert abs(width / height - 16 / 9) < 0.02

    balance = core.ledger.balance(ALICE)
    assert (balance.balance, balance.held) == (180 - 18, 0)
    assert core.ledger.verify() == []
    assert [e.kind for e in core.ledger.history(ALICE)][:2] == ["capture", "reserve"]
    # the gateway saw every input field, defaults included; the image stays in the spool for Vary and Remix
    task = sandbox.tasks[job.task_id]
    sent = task["input"] if isinstance(task, dict) else task.input
    assert sent["aspect_ratio"] == "16:9" and sent["quality"] == "basic" and "nsfw_checker" in sent
    assert [p.name for p in (core.settings.spool_dir / job.id).iterdir()] == [f"{job.id}-0.png"]


async def test_gateway_failure_refunds_and_says_why(core, tmp_path):
    fe = recorder(tmp_path)
    core.register(fe)
    job = await run_one(core, "a broken dream sandbox:fail")
    assert job.state is JobState.FAILED
    assert job.error_code == "generation_failed"
    failed = fe.events[-1]
    assert isinstance(failed, Failed) and failed.refunded
    assert "refunded" in failed.error.user_message
    balance = core.ledger.balance(ALICE)
    assert (balance.balance, balance.held) == (180, 0)
    assert core.ledger.verify() == []


async def test_insufficient_credits_refused_before_anything_is_sent(make_settings, tmp_path, sandbox):
    async with ImagineCore.open(make_settings(CREDITS_ALLOWANCE=10)) as core:
        core.register(recorder(tmp_path))
        with pytest.raises(InsufficientCredits) as info:
            await core.imagine(ALICE, REPLY, "a cat")
        assert "costs 18" in info.value.user_message and "you have 10" in info.value.user_message
        assert "refills" in info.value.user_message
        assert core.jobs.recent() == []
        assert sandbox.requests["createTask"] == 0


async def test_per_user_limit(make_settings, tmp_path):
    async with ImagineCore.open(make_settings(MAX_ACTIVE_JOBS_PER_USER=1)) as core:
        core.register(recorder(tmp_path))
        await core.imagine(ALICE, REPLY, "first sandbox:slow")
        with pytest.raises(TooManyActiveJobs, match="1 image in progress"):
            await core.imagine(ALICE, REPLY, "second")
        # another user is not limited by Alice's jobs
        await core.imagine(BOB, REPLY, "bob's")
        assert core.ledger.balance(ALICE).held == 18


async def test_global_cap_queues_with_place(make_settings, tmp_path):
    async with ImagineCore.open(make_settings(MAX_ACTIVE_JOBS=1)) as core:
        fe = recorder(tmp_path)
        core.register(fe)
        first = await core.imagine(ALICE, REPLY, "one")
        second = await core.imagine(BOB, REPLY, "two")
        await core.orchestrator.wait_idle()
        queued = [e for e in fe.events if isinstance(e, Queued)]
        assert [(e.job.id, e.position) for e in queued] == [(second.id, 1)]
        assert core.jobs.get(first.id).state is JobState.DELIVERED
        assert core.jobs.get(second.id).state is JobState.DELIVERED


async def test_redelivered_request_makes_no_second_job(core, tmp_path, sandbox):
    core.register(recorder(tmp_path))
    a = await core.imagine(ALICE, REPLY, "a cat", dedupe_key="slack:T1:trigger-1")
    b = await core.imagine(ALICE, REPLY, "a cat", dedupe_key="slack:T1:trigger-1")
    await core.orchestrator.wait_idle()
    assert a.id == b.id
    assert sandbox.requests["createTask"] == 1
    assert core.ledger.balance(ALICE).balance == 180 - 18


async def test_timeout_fails_and_refunds(make_settings, tmp_path):
    async with ImagineCore.open(make_settings(JOB_TIMEOUT_S=0.3)) as core:
        fe = recorder(tmp_path)
        core.register(fe)
        job = await run_one(core, "a slow one sandbox:slow")
        assert job.state is JobState.FAILED and job.error_code == "timed_out"
        assert "too long" in fe.events[-1].error.user_message
        assert core.ledger.balance(ALICE).available == 180


class RefusingFrontEnd(TerminalFrontEnd):
    async def publish(self, event):
        await super().publish(event)
        if isinstance(event, Delivered):
            raise DeliveryError("channel gone", user_message="I could not post in that channel.")


async def test_delivery_failure_refunds(core, tmp_path):
    fe = RefusingFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False)
    core.register(fe)
    job = await run_one(core, "a cat")
    assert job.state is JobState.FAILED and job.error_code == "delivery_failed"
    assert core.ledger.balance(ALICE).available == 180
    assert isinstance(fe.events[-1], Failed)


async def test_callback_completes_the_job_with_two_gateway_requests(make_settings, tmp_path, sandbox):
    # the callback server is our own web app; PUBLIC_URL points at it
    settings = make_settings()
    async with ImagineCore.open(settings) as core:
        runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
        try:
            core.orchestrator.callback_url = f"http://127.0.0.1:{port}/callbacks/modkie"
            fe = recorder(tmp_path)
            core.register(fe)
            job = await asyncio.wait_for(run_one(core, "a callback cat"), timeout=10)
        finally:
            await runner.cleanup()
    assert job.state is JobState.DELIVERED
    # createTask once, one recordInfo to confirm the callback (no polling before the fallback time)
    assert sandbox.requests["createTask"] == 1
    assert sandbox.requests["recordInfo"] == 1


async def test_resume_after_stop_finishes_running_job(make_settings, tmp_path, sandbox):
    settings = make_settings()
    async with ImagineCore.open(settings) as core:
        core.register(recorder(tmp_path))
        job = await core.imagine(ALICE, REPLY, "survive a restart sandbox:slow")
        for _ in range(200):
            if core.jobs.get(job.id).state is JobState.RUNNING:
                break
            await asyncio.sleep(0.01)
        # the process goes away mid-job: workers cancelled, the row stays as it is
    async with ImagineCore.open(settings) as core:
        assert core.jobs.get(job.id).state is JobState.RUNNING
        fe = recorder(tmp_path)
        core.register(fe)
        assert await core.start() == 1
        await core.orchestrator.wait_idle()
        assert core.jobs.get(job.id).state is JobState.DELIVERED
        assert sandbox.requests["createTask"] == 1  # never submitted twice
        assert core.ledger.balance(ALICE).balance == 180 - 18
        assert core.ledger.verify() == []


async def test_job_caught_mid_submit_is_refunded_not_resent(make_settings, tmp_path, sandbox):
    settings = make_settings()
    async with ImagineCore.open(settings) as core:
        core.register(recorder(tmp_path))
        job = await core.imagine(ALICE, REPLY, "a cat")
        await core.orchestrator.stop()
        core.jobs.update(job.id, state=JobState.SUBMITTING, task_id=None)  # as if killed mid-createTask
        sent_before = sandbox.requests["createTask"]
    async with ImagineCore.open(settings) as core:
        fe = recorder(tmp_path)
        core.register(fe)
        await core.start()
        await core.orchestrator.wait_idle()
        row = core.jobs.get(job.id)
        assert row.state is JobState.FAILED and row.error_code == "interrupted"
        assert "restarted" in fe.events[-1].error.user_message
        assert sandbox.requests["createTask"] == sent_before
        assert core.ledger.balance(ALICE).available == 180


async def test_polling_shares_one_rate_across_all_jobs(make_settings, tmp_path, sandbox):
    import time

    async with ImagineCore.open(make_settings(POLL_RATE_PER_S=10, MAX_ACTIVE_JOBS_PER_USER=20)) as core:
        core.register(recorder(tmp_path))
        started = time.monotonic()
        for n in range(12):
            await core.imagine(UserRef("terminal", "local", f"u{n}"), REPLY, f"image {n} sandbox:slow")
        await core.orchestrator.wait_idle()
        elapsed = time.monotonic() - started
        assert all(j.state is JobState.DELIVERED for j in core.jobs.recent(limit=20))
    # each job alone would poll every 0.02-0.05 s; together they may not pass 10/s (+ the burst of 10)
    assert sandbox.requests["recordInfo"] <= 10 * elapsed + 10 + 1


async def test_a_create_task_429_goes_back_to_admission_and_the_job_keeps_its_place(make_settings, tmp_path,
                                                                                    sandbox):
    async with ImagineCore.open(make_settings(MAX_ACTIVE_JOBS=1)) as core:
        core.register(recorder(tmp_path))
        sandbox.inject("createTask", status=429, code=429, headers={"Retry-After": "2"})
        first = await core.imagine(ALICE, REPLY, "first in line")
        second = await core.imagine(BOB, REPLY, "second in line")
        # refused: back in the admission line (queued, not held in submitting while the client sleeps)
        await until(lambda: sandbox.requests["createTask"] == 1 and core.jobs.get(first.id).state is JobState.QUEUED,
                    within=1.5)
        assert core.jobs.get(second.id).state is JobState.QUEUED  # and nobody passed it
        await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
        assert core.jobs.get(first.id).state is JobState.DELIVERED
        assert core.jobs.get(second.id).state is JobState.DELIVERED
    # the refused job was sent again first (it kept its place), and the client itself did not resend it
    created = sorted(sandbox.tasks.values(), key=lambda t: t.created)
    assert [t.input["prompt"] for t in created] == ["first in line", "second in line"]
    assert sandbox.requests["createTask"] == 3


def test_a_refused_create_waits_what_the_gateway_says_zero_as_soon_and_none_as_the_default():
    from imagine_bot.core.errors import GatewayRateLimited
    from imagine_bot.core.jobs.orchestrator import RETRY_AFTER_DEFAULT_S, RETRY_AFTER_MIN_S, _retry_after

    def refused(after: float | None) -> GatewayRateLimited:
        return GatewayRateLimited("createTask: HTTP 429", status=429, retry_after=after)

    assert _retry_after(refused(30.0)) == 30.0
    assert _retry_after(refused(0.0)) == RETRY_AFTER_MIN_S < RETRY_AFTER_DEFAULT_S  # "now", not "no answer"
    assert _retry_after(refused(None)) == RETRY_AFTER_DEFAULT_S
