"""Gateway faults end to end: each ends with plain words to the user, credits released, and the job row
marked with the cause. Faults are played by the real sandbox gateway (``inject``), not mocks."""

from __future__ import annotations

import io
import json
import logging

import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.events import Delivered, Failed
from imagine_bot.core.jobs.model import JobState, ReplyTo
from tests.conftest import TEST_API_KEY

ALICE = UserRef("terminal", "local", "alice")

BAD_RESULT_JSON = json.dumps({"code": 200, "msg": "success", "data": {
    "taskId": "x", "state": "success", "resultJson": "{not json", "failCode": "", "failMsg": ""}}).encode()

FAULTS = [
    # (id, inject(endpoint, **kw), settings overrides, expected error code, words the user reads)
    ("401", ("createTask", {"status": 401, "code": 401, "msg": "You do not have access permissions"}), {},
     "gateway_auth", "not configured"),
    ("402", ("createTask", {"code": 402, "msg": "Credits insufficient"}), {}, "gateway_out_of_credits",
     "budget is used up"),
    ("433", ("createTask", {"code": 433, "msg": "usage cap"}), {}, "gateway_out_of_credits", "budget"),
    ("422", ("createTask", {"code": 422, "msg": "aspect_ratio is not supported"}), {}, "gateway_invalid_input",
     "refused"),
    ("429-persistent", ("createTask", {"status": 429, "code": 429, "headers": {"Retry-After": "30"}, "times": 50}),
     {"JOB_TIMEOUT_S": 3}, "gateway_rate_limited", "busy"),
    ("455", ("createTask", {"code": 455, "msg": "maintenance", "times": 50}), {"JOB_TIMEOUT_S": 3},
     "gateway_maintenance", "maintenance"),
    ("500-create", ("createTask", {"status": 500, "code": 500, "msg": "server error"}), {},
     "gateway_server_error", "problem"),
    ("501", ("recordInfo", {"code": 501, "msg": "generation failed", "times": 50}), {}, "generation_failed",
     "could not make this image"),
    ("505", ("createTask", {"code": 505, "msg": "feature disabled"}), {}, "gateway_feature_disabled",
     "not enabled"),
    ("fail-state", ("recordInfo", {"state": "fail", "times": 50}), {}, "generation_failed", "could not make"),
    ("hung-create", ("createTask", {"hang": 5}), {"MODKIE_TIMEOUT_S": 0.3}, "timed_out", "too long"),
    # an unreadable recordInfo answer is a blip (asked again until JOB_TIMEOUT_S: tests/test_blips.py); one
    # that never gets better ends as a timeout
    ("malformed-json", ("recordInfo", {"body": b"{this is not json", "times": 500}), {"JOB_TIMEOUT_S": 1.5},
     "timed_out", "too long"),
    ("resultjson-not-json", ("recordInfo", {"body": BAD_RESULT_JSON, "times": 500}), {"JOB_TIMEOUT_S": 1.5},
     "timed_out", "too long"),
    ("download-404", ("download", {"status": 404, "times": 50}), {}, "download_failed", "could not fetch"),
    ("download-not-image", ("download", {"body": b"<html>nope</html>", "headers": {"Content-Type": "text/html"},
                                         "times": 50}), {}, "download_failed", "could not fetch"),
    ("download-too-large", None, {"MAX_DOWNLOAD_MB": 0.001}, "download_failed", "could not fetch"),
]


@pytest.mark.parametrize(("inject", "overrides", "code", "words"), [f[1:] for f in FAULTS],
                         ids=[f[0] for f in FAULTS])
async def test_fault_is_explained_refunded_and_recorded(make_settings, sandbox, tmp_path, caplog, inject,
                                                         overrides, code, words):
    caplog.set_level(logging.DEBUG)
    if inject:
        endpoint, kwargs = inject
        sandbox.inject(endpoint, **kwargs)
    async with ImagineCore.open(make_settings(**overrides)) as core:
        core.gateway.backoff_base = 0.01  # keep retries quick; their count is unchanged
        fe = TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False)
        core.register(fe)
        job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "a lighthouse at dusk")
        await core.orchestrator.wait_idle()

        row = core.jobs.get(job.id)
        assert row.state is JobState.FAILED
        assert row.error_code == code
        assert row.error_message
        failed = fe.events[-1]
        assert isinstance(failed, Failed) and failed.refunded
        text = failed.error.user_message
        assert words in text.lower()
        assert "nothing was charged" in text.lower() or "refunded" in text.lower()
        assert "Traceback" not in text and "{" not in text
        balance = core.ledger.balance(ALICE)
        assert (balance.balance, balance.held) == (180, 0)
        assert core.ledger.verify() == []
    assert TEST_API_KEY not in caplog.text


async def test_transient_429_on_create_is_retried_and_charged_once(make_settings, sandbox, tmp_path):
    # Retry-After 1 s: the job waits that long in admission each time (the least it waits: a "0" is 1 s too)
    sandbox.inject("createTask", status=429, code=429, headers={"Retry-After": "1"}, times=2)
    async with ImagineCore.open(make_settings()) as core:
        core.gateway.backoff_base = 0.01
        fe = TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False)
        core.register(fe)
        job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "a lighthouse")
        await core.orchestrator.wait_idle()
        assert core.jobs.get(job.id).state is JobState.DELIVERED
        assert isinstance(fe.events[-1], Delivered)
        assert sandbox.requests["createTask"] == 3  # two refusals (not queued by the gateway), one accepted
        assert len(sandbox.tasks) == 1
        assert core.ledger.balance(ALICE).balance == 180 - 18


async def test_transient_recordinfo_errors_do_not_fail_the_job(make_settings, sandbox, tmp_path):
    sandbox.inject("recordInfo", status=500, code=500, times=3)
    sandbox.inject("recordInfo", code=422, msg="recordInfo is null", times=2)  # just created: grace period
    async with ImagineCore.open(make_settings()) as core:
        core.gateway.backoff_base = 0.01
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "a lighthouse")
        await core.orchestrator.wait_idle()
        assert core.jobs.get(job.id).state is JobState.DELIVERED
        assert sandbox.requests["createTask"] == 1
