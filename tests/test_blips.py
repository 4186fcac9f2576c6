"""Network blips are not failures: recordInfo is idempotent, so every transport error and every answer
that is not final means "look again, with backoff" until JOB_TIMEOUT_S. Only ``fail``, 501, an envelope
408 and an unknown task after the grace period end a job. And a callback that comes before the tracker
waits is remembered, so a fast task is delivered at once, not at the 45 s fallback poll."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import (
    GatewayAuthError,
    GatewayMaintenance,
    GatewayProtocolError,
    GatewayRateLimited,
    GatewayServerError,
    GatewayTimeout,
    GenerationFailed,
    UnknownTask,
    is_transient,
)
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.web.server import build_web_app, start_web

ALICE = UserRef("terminal", "local", "alice")
REPLY = ReplyTo("terminal", "test")

# more times than the client's own retries (4), so the job itself must keep looking
BLIPS = [
    ("read-timeout", {"hang": 2}),
    ("401-key-rotation", {"status": 401, "code": 401}),
    ("500", {"status": 500, "code": 500}),
    ("502-html", {"status": 502, "body": b"<html>502 Bad Gateway</html>"}),
    ("429", {"status": 429, "code": 429, "headers": {"Retry-After": "0"}}),
    ("455", {"code": 455}),
    ("malformed", {"body": b"{this is not json"}),
]


@pytest.mark.parametrize("fault", [b[1] for b in BLIPS], ids=[b[0] for b in BLIPS])
async def test_a_record_info_blip_is_looked_at_again_and_the_image_delivered(make_settings, sandbox, tmp_path,
                                                                            fault):
    async with ImagineCore.open(make_settings(MODKIE_TIMEOUT_S=0.2)) as core:
        core.gateway.backoff_base = 0.01
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core))
        sandbox.inject("recordInfo", **fault, times=7)
        job = await core.imagine(ALICE, REPLY, "through the blip")
        await asyncio.wait_for(core.orchestrator.wait_idle(), 30)
        row = core.jobs.get(job.id)
        assert row.state is JobState.DELIVERED, (row.error_code, row.error_message)
        assert sandbox.requests["createTask"] == 1 and sandbox.requests["recordInfo"] > 7
        assert core.ledger.balance(ALICE).balance == 180 - 18


@pytest.mark.parametrize(("fault", "code"), [
    ({"code": 408, "msg": "no result upstream for 10 minutes"}, "timed_out"),
    ({"code": 501, "msg": "generation failed"}, "generation_failed"),
    ({"state": "fail"}, "generation_failed"),
])
async def test_only_final_answers_end_the_job(core, sandbox, tmp_path, fault, code):
    core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core))
    sandbox.inject("recordInfo", **fault, times=50)
    job = await core.imagine(ALICE, REPLY, "a final answer")
    await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
    row = core.jobs.get(job.id)
    assert (row.state, row.error_code) == (JobState.FAILED, code)
    assert core.ledger.balance(ALICE).available == 180


def test_one_predicate_decides_what_is_transient():
    assert all(is_transient(e) for e in (
        GatewayTimeout("read timeout", transport=True), GatewayServerError("502"), GatewayRateLimited("429"),
        GatewayMaintenance("455"), GatewayAuthError("401"), GatewayProtocolError("garbled")))
    assert not any(is_transient(e) for e in (
        GatewayTimeout("envelope 408", gateway_code=408), GenerationFailed("501"), UnknownTask("404"),
        ValueError("not ours")))


async def test_a_callback_before_the_tracker_waits_is_remembered(make_settings, make_sandbox, tmp_path):
    sandbox = await make_sandbox(delays={"waiting": 0, "queuing": 0, "generating": 0})
    async with ImagineCore.open(make_settings(MODKIE_BASE_URL=sandbox.base_url)) as core:
        runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
        try:
            core.orchestrator.callback_url = f"http://127.0.0.1:{port}/callbacks/modkie"
            core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core))
            create_task = core.gateway.create_task

            async def accepted_then_called_back(*args, **kwargs):
                task_id = await create_task(*args, **kwargs)
                await sandbox.drain()  # the instant task's callback has reached us before we track it
                assert sandbox.requests["callback"] == 1
                return task_id

            core.gateway.create_task = accepted_then_called_back
            job = await core.imagine(ALICE, REPLY, "an instant image")
            # at once, not after the 45 s fallback poll
            await asyncio.wait_for(core.orchestrator.wait_idle(), 10)
            assert core.jobs.get(job.id).state is JobState.DELIVERED
            assert sandbox.requests["recordInfo"] == 1
        finally:
            await runner.cleanup()


def settled(core, job) -> list[str]:
    """The ledger entries of one job, by kind."""
    return sorted(e.kind for e in core.ledger.history(job.requester) if e.job_id == job.id)


@pytest.mark.parametrize("fault", [{"status": 503}, {"hang": 2}, {"status": 429, "headers": {"Retry-After": "0"}}],
                         ids=["503", "read-timeout", "429"])
async def test_a_result_host_blip_is_asked_again_and_the_image_delivered(make_settings, sandbox, tmp_path, fault):
    """The gateway billed the task: a result host that fails more times than the client's own attempts (4)
    is asked again with backoff until JOB_TIMEOUT_S; the image is delivered and charged once."""
    async with ImagineCore.open(make_settings(MODKIE_TIMEOUT_S=0.2)) as core:
        core.gateway.backoff_base = 0.01
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core))
        sandbox.inject("download", **fault, times=9)
        job = await core.imagine(ALICE, REPLY, "through the result host's blip")
        await asyncio.wait_for(core.orchestrator.wait_idle(), 30)
        row = core.jobs.get(job.id)
        assert row.state is JobState.DELIVERED, (row.error_code, row.error_message)
        assert sandbox.requests["download"] == 10 and sandbox.requests["createTask"] == 1
        assert settled(core, row) == ["capture", "reserve"]
        assert core.ledger.balance(ALICE).balance == 180 - 18 and core.ledger.verify() == []


async def test_a_result_the_host_refuses_for_good_is_not_asked_again(make_settings, sandbox, tmp_path):
    async with ImagineCore.open(make_settings()) as core:
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core))
        sandbox.inject("download", status=403, times=50)
        job = await core.imagine(ALICE, REPLY, "a result nobody may fetch")
        await asyncio.wait_for(core.orchestrator.wait_idle(), 30)
        row = core.jobs.get(job.id)
        assert (row.state, row.error_code) == (JobState.FAILED, "download_failed")
        assert sandbox.requests["download"] == 1
        assert settled(core, row) == ["release", "reserve"]
