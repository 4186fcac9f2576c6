"""The refund fallbacks: the paths where a job cannot go the ordinary way, and money most easily goes
wrong. Each runs a real job (the sandbox gateway, a recording front end) into one of them and checks the
money: the user is charged only for an image they received, exactly once, and told.

- a job whose coroutine crashes (a bug, an unwritable spool) is refunded as an internal error;
- a "success" without result URLs fails and refunds, nothing delivered;
- a job found ``delivering`` with its spool files gone fetches them again and delivers;
- a front end raising ``TimeoutError``/``ConnectionError`` is a blip (posted again, charged once), until
  ``DELIVERY_RETRY_S``; anything else fails the delivery at once; both refund;
- an unknown task past the grace period fails and refunds (inside it: looked at again);
- ``cancel()`` stops the job's worker, refunds once, and nothing more is fetched;
- two deliveries of the same request racing into ``submit`` make one job and one reservation;
- an ``on_failure`` hook that raises does not stop the refund or the user's failure message;
- a job for a platform with no front end in the process is refunded, never charged as delivered.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.credits.refunds import fail_and_refund
from imagine_bot.core.errors import DeliveryError, ImagineError, JobFailedByOperator, LeaseLost, ShuttingDown
from imagine_bot.core.events import Delivered, Failed
from imagine_bot.core.jobs.model import Job, JobState, ReplyTo
from imagine_bot.core.storage.db import utcnow
from tests.conftest import until

ALICE = UserRef("terminal", "local", "alice")
REPLY = ReplyTo("terminal", "test")


class Recorder(TerminalFrontEnd):
    """The terminal front end (it records every event), which can be told to fail or stall deliveries."""

    def __init__(self, tmp_path: Path, core: ImagineCore | None = None) -> None:
        super().__init__(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core)
        self.raising: list[BaseException] = []  # raised by the next deliveries, one each
        self.stall = False
        self.delivering = asyncio.Event()
        self.attempts = 0

    async def publish(self, event) -> None:
        if isinstance(event, Delivered):
            self.attempts += 1
            self.delivering.set()
            if self.stall:
                await asyncio.Event().wait()  # the process dies mid-delivery
            if self.raising:
                raise self.raising.pop(0)
        await super().publish(event)

    def failures(self) -> list[Failed]:
        return [e for e in self.events if isinstance(e, Failed)]


async def run_one(core: ImagineCore, text: str = "a lighthouse", who: UserRef = ALICE):
    job = await core.imagine(who, REPLY, text)
    await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
    return core.jobs.get(job.id)


def assert_refunded(core: ImagineCore, fe: Recorder, job, code: str, who: UserRef = ALICE) -> None:
    assert (job.state, job.error_code) == (JobState.FAILED, code), job.error_message
    assert job.finished_at is not None
    balance = core.ledger.balance(who)
    assert (balance.balance, balance.held) == (180, 0)
    assert [e.kind for e in core.ledger.history(who)][:2] == ["release", "reserve"]
    (failed,) = fe.failures()
    assert failed.refunded and failed.job.id == job.id
    assert not [e for e in fe.events if isinstance(e, Delivered)] or fe.attempts
    assert core.ledger.verify() == []


async def test_a_job_whose_worker_crashes_is_refunded_as_an_internal_error(core, tmp_path, caplog):
    fe = Recorder(tmp_path)
    core.register(fe)
    core.settings.spool_dir.parent.mkdir(parents=True, exist_ok=True)
    core.settings.spool_dir.write_text("a file where the spool folder should be")  # the download cannot be kept
    job = await run_one(core)
    assert_refunded(core, fe, job, "error")
    assert "internal error: " in job.error_message and f"job {job.id} crashed" in caplog.text
    assert fe.failures()[0].error.user_message == "Something went wrong. Nothing was charged."


async def test_a_success_without_result_urls_fails_and_refunds(core, sandbox, tmp_path):
    fe = Recorder(tmp_path)
    core.register(fe)
    sandbox.inject("recordInfo", body=json.dumps({"code": 200, "msg": "success", "data": {
        "state": "success", "resultJson": {"resultUrls": []}}}).encode())
    job = await run_one(core)
    assert_refunded(core, fe, job, "gateway_protocol")
    assert "without result URLs" in job.error_message
    assert fe.attempts == 0 and sandbox.requests["download"] == 0
    assert sandbox.requests["createTask"] == 1


async def test_a_delivery_whose_spool_files_are_lost_fetches_them_again(make_settings, sandbox, tmp_path):
    settings = make_settings()
    async with ImagineCore.open(settings) as core:
        stalled = Recorder(tmp_path)
        stalled.stall = True
        core.register(stalled)
        job = await core.imagine(ALICE, REPLY, "a lighthouse")
        await asyncio.wait_for(stalled.delivering.wait(), 10)
        await core.orchestrator.stop()  # the process dies while posting: the job stays "delivering"
    assert sandbox.requests["download"] == 1
    shutil.rmtree(settings.spool_dir / job.id)  # ... and its spool is lost (another machine, a cleanup)
    async with ImagineCore.open(settings) as core:
        assert core.jobs.get(job.id).state is JobState.DELIVERING
        fe = Recorder(tmp_path, core)
        core.register(fe)
        assert await core.start() == 1
        await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
        row = core.jobs.get(job.id)
        assert row.state is JobState.DELIVERED
        assert sandbox.requests["download"] == 2 and sandbox.requests["createTask"] == 1
        assert [p.read_bytes() for p in fe.saved[job.id]] == [sandbox.tasks[row.task_id].images[0]]
        balance = core.ledger.balance(ALICE)
        assert (balance.balance, balance.held) == (180 - 18, 0) and core.ledger.verify() == []


@pytest.mark.parametrize("blip", [TimeoutError("read timed out"), ConnectionError("connection reset")],
                         ids=["TimeoutError", "ConnectionError"])
async def test_a_front_end_transport_error_is_a_blip_posted_again_and_charged_once(core, tmp_path, blip):
    core.orchestrator.delivery_backoff_s = (0.01,)
    fe = Recorder(tmp_path, core)
    fe.raising = [blip, blip]
    core.register(fe)
    job = await run_one(core)
    assert job.state is JobState.DELIVERED and fe.attempts == 3
    assert len(fe.saved[job.id]) == 1 and fe.failures() == []
    assert core.ledger.balance(ALICE).balance == 180 - 18 and core.ledger.verify() == []


async def test_a_blip_that_outlasts_delivery_retry_s_refunds(make_settings, tmp_path):
    async with ImagineCore.open(make_settings(DELIVERY_RETRY_S=0.2)) as core:
        core.orchestrator.delivery_backoff_s = (0.01,)
        fe = Recorder(tmp_path, core)
        fe.raising = [ConnectionError("connection reset")] * 1000
        core.register(fe)
        job = await run_one(core)
        assert_refunded(core, fe, job, "delivery_failed")
        assert fe.attempts > 2 and "ConnectionError: connection reset" in job.error_message


async def test_any_other_front_end_error_fails_the_delivery_at_once_and_refunds(core, tmp_path):
    core.orchestrator.delivery_backoff_s = (0.01,)
    fe = Recorder(tmp_path, core)
    fe.raising = [KeyError("a bug in the front end")]
    core.register(fe)
    job = await run_one(core)
    assert_refunded(core, fe, job, "delivery_failed")
    assert fe.attempts == 1  # not a blip: not handed again
    assert not (core.settings.spool_dir / job.id).exists()  # its downloaded image goes with it
    assert "could not deliver: KeyError" in job.error_message


async def stopped_while_running(settings, tmp_path: Path, text: str):
    """A job left ``running`` by a process that stopped mid-job."""
    async with ImagineCore.open(settings) as core:
        core.register(Recorder(tmp_path))
        job = await core.imagine(ALICE, REPLY, text)
        await until(lambda: core.jobs.get(job.id).state is JobState.RUNNING)
    return job


async def test_an_unknown_task_past_the_grace_period_fails_and_refunds(make_settings, sandbox, tmp_path):
    settings = make_settings(JOB_TIMEOUT_S=600)
    job = await stopped_while_running(settings, tmp_path, "forgotten sandbox:slow")
    async with ImagineCore.open(settings) as core:
        # the gateway lost the task, which it took two minutes ago: well past the grace for a new task
        core.jobs.update(job.id, submitted_at=utcnow() - timedelta(seconds=120))
        sandbox.inject("recordInfo", code=422, msg="recordInfo is null")
        fe = Recorder(tmp_path)
        core.register(fe)
        await core.start()
        await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
        assert_refunded(core, fe, core.jobs.get(job.id), "unknown_task")
        assert sandbox.requests["download"] == 0


async def test_an_unknown_task_within_the_grace_period_is_looked_at_again(make_settings, sandbox, tmp_path):
    settings = make_settings(JOB_TIMEOUT_S=600)
    job = await stopped_while_running(settings, tmp_path, "just made sandbox:slow")
    async with ImagineCore.open(settings) as core:
        sandbox.inject("recordInfo", code=422, msg="recordInfo is null", times=3)  # not listed yet
        fe = Recorder(tmp_path, core)
        core.register(fe)
        await core.start()
        await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
        assert core.jobs.get(job.id).state is JobState.DELIVERED
        assert core.ledger.balance(ALICE).balance == 180 - 18


async def test_cancel_stops_the_worker_refunds_once_and_fetches_nothing_more(core, sandbox, tmp_path):
    fe = Recorder(tmp_path, core)
    core.register(fe)
    job = await core.imagine(ALICE, REPLY, "a slow harbour sandbox:slow")
    await until(lambda: core.jobs.get(job.id).state is JobState.RUNNING)
    await core.orchestrator.cancel(job.id, DeliveryError("the channel is gone"))
    # counted where the requests start (one already on the wire may reach the sandbox just after the cancel)
    looked = core.gateway.requests_sent["recordInfo"]
    await core.orchestrator.cancel(job.id, DeliveryError("and again"))  # a second cancel changes nothing
    await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
    assert_refunded(core, fe, core.jobs.get(job.id), "delivery_failed")
    assert core.orchestrator.in_flight == 0
    await asyncio.sleep(0.3)  # many poll intervals (0.02 s): a worker still going would have asked again
    assert core.gateway.requests_sent["recordInfo"] == looked and core.gateway.requests_sent["download"] == 0
    assert sandbox.requests["download"] == 0 and fe.attempts == 0


async def test_an_on_failure_hook_that_raises_does_not_stop_the_refund_or_the_message(core, tmp_path, caplog):
    told: list[tuple[str, ImagineError]] = []

    def broken_hook(job: Job, error: ImagineError) -> None:
        told.append((job.id, error))
        raise RuntimeError("the alert could not be sent")

    core.orchestrator.on_failure = broken_hook
    fe = Recorder(tmp_path)
    core.register(fe)
    job = await run_one(core, "a broken dream sandbox:fail")
    assert_refunded(core, fe, job, "generation_failed")
    assert [(job_id, e.code) for job_id, e in told] == [(job.id, "generation_failed")]
    assert f"on_failure hook failed for job {job.id}" in caplog.text


async def test_a_job_for_a_platform_with_no_front_end_is_refunded_not_charged(core, sandbox, tmp_path):
    fe = Recorder(tmp_path)
    core.register(fe)  # the terminal only: no Discord front end in this process
    bob = UserRef("discord", "-", "222")
    job = await core.imagine(bob, ReplyTo("discord", "555"), "posted nowhere")
    await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
    row = core.jobs.get(job.id)
    assert (row.state, row.error_code) == (JobState.FAILED, "delivery_failed")
    assert "no discord front end" in row.error_message
    balance = core.ledger.balance(bob)
    assert (balance.balance, balance.held) == (180, 0) and core.ledger.verify() == []
    assert fe.events == []  # nothing of it reached another platform's front end


async def test_one_request_delivered_twice_at_once_to_two_processes_makes_one_job(make_settings, tmp_path):
    """Slack or Discord delivers a request again while the first delivery is being handled by another
    process: both look for the request's job before either has made it. The database decides: one job,
    one reservation, and both answer with that job."""
    settings = make_settings()
    began = [threading.Event(), threading.Event()]
    opened = [threading.Event(), threading.Event()]
    go = threading.Event()

    def process(n: int) -> str:
        async def main() -> str:
            async with ImagineCore.open(settings) as core:
                # the first write this process makes is the submit's transaction: by then it has looked
                core.stores.db.conn.set_trace_callback(
                    lambda sql: began[n].set() if sql.startswith("BEGIN IMMEDIATE") else None)
                opened[n].set()
                await asyncio.to_thread(go.wait, 30)
                job = await core.imagine(ALICE, REPLY, "asked once", dedupe_key="slack:T1:trigger-9")
                core.stores.db.conn.set_trace_callback(None)
                return job.id

        return asyncio.run(main())

    # the waits below are guards against a hang, not timings: opening a core in a thread of a loaded machine
    # once took more than 10 s
    processes = [asyncio.create_task(asyncio.to_thread(process, n)) for n in (0, 1)]
    for event in opened:
        assert await asyncio.to_thread(event.wait, 30)
    lock = sqlite3.connect(settings.IMAGINE_DB_PATH, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # a third writer holds the database while both look for the job
    go.set()
    try:
        for event in began:
            assert await asyncio.to_thread(event.wait, 30)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    first, second = await asyncio.wait_for(asyncio.gather(*processes), 60)
    assert first == second
    async with ImagineCore.open(settings) as core:
        assert [j.id for j in core.jobs.recent(limit=5)] == [first]
        assert [e.job_id for e in core.ledger.history(ALICE) if e.kind == "reserve"] == [first]
        assert core.ledger.balance(ALICE).held == 18 and core.ledger.verify() == []


async def test_fail_and_refund_acts_only_for_the_jobs_owner_and_only_once(core, tmp_path, caplog):
    core.register(Recorder(tmp_path))
    job = await core.imagine(ALICE, REPLY, "held sandbox:slow")
    await until(lambda: core.jobs.get(job.id).state is JobState.RUNNING)
    await core.orchestrator.stop()  # leaves it running, free for an owner
    core.jobs.claim(job.id, "operator:1", utcnow() + timedelta(seconds=60))
    row = core.jobs.get(job.id)
    error = JobFailedByOperator("failed by hand")
    with pytest.raises(LeaseLost):  # not the owner: nothing changes
        fail_and_refund(core.store, row, error, owner="someone-else")
    assert core.jobs.get(job.id).state is JobState.RUNNING and core.ledger.balance(ALICE).held == 18
    failed, refunded = fail_and_refund(core.store, row, error, owner="operator:1")
    assert refunded and failed.state is JobState.FAILED and failed.finished_at is not None
    assert (failed.error_code, failed.error_message, failed.notice_pending) == ("failed_by_operator", "failed by hand",
                                                                                False)
    assert core.ledger.balance(ALICE).held == 0
    with pytest.raises(LeaseLost):  # a second time: the job is no longer what it was
        fail_and_refund(core.store, row, error, owner="operator:1")
    assert "already settled" not in caplog.text


async def test_failing_a_job_whose_hold_was_already_settled_refunds_nothing_and_says_so(core, tmp_path, caplog):
    core.register(Recorder(tmp_path))
    job = await core.imagine(ALICE, REPLY, "held sandbox:slow")
    await until(lambda: core.jobs.get(job.id).state is JobState.RUNNING)
    await core.orchestrator.stop()
    core.ledger.capture(job.id)  # settled behind its back
    core.jobs.claim(job.id, "operator:1", utcnow() + timedelta(seconds=60))
    failed, refunded = fail_and_refund(core.store, core.jobs.get(job.id),
                                       JobFailedByOperator("late"), owner="operator:1")
    assert failed.state is JobState.FAILED and refunded is False
    assert core.ledger.balance(ALICE).balance == 180 - 18  # the capture stands: nothing refunded twice
    assert f"job {job.id} failed (failed_by_operator) but its credit hold was already settled" in caplog.text


async def test_a_halted_process_takes_nothing_more(core, tmp_path):
    core.register(Recorder(tmp_path))
    job = await core.imagine(ALICE, REPLY, "in flight sandbox:slow")
    await core.orchestrator.halt()
    assert core.orchestrator.in_flight == 0  # its workers have ended when halt returns
    with pytest.raises(ShuttingDown):
        await core.imagine(ALICE, REPLY, "after the crash")
    assert await core.orchestrator.resume() == 0
    assert core.jobs.get(job.id).owner == core.orchestrator.owner  # the lease stays until it expires


async def test_failures_the_operator_must_see_are_logged_as_errors_others_as_warnings(core, tmp_path, caplog):
    core.register(Recorder(tmp_path))
    failed = await run_one(core, "a broken dream sandbox:fail")  # the gateway said no: a warning
    core.settings.spool_dir.parent.mkdir(parents=True, exist_ok=True)
    core.settings.spool_dir.write_text("not a folder")
    crashed = await run_one(core)  # a bug ("error"): an error
    levels = {r.getMessage().split(":")[0]: r.levelname for r in caplog.records if " failed: " in r.getMessage()}
    assert levels == {f"job {failed.id} failed": "WARNING", f"job {crashed.id} failed": "ERROR"}


async def test_the_first_retry_of_a_delivery_waits_the_first_backoff(core, tmp_path):
    core.orchestrator.delivery_backoff_s = (0.01, 3600.0)  # were the second step taken first, this would hang
    fe = Recorder(tmp_path, core)
    fe.raising = [TimeoutError("read timed out")]
    core.register(fe)
    job = await run_one(core)
    assert job.state is JobState.DELIVERED and fe.attempts == 2


async def test_a_delivery_taken_over_during_its_backoff_is_not_posted_again_here(core, tmp_path):
    core.orchestrator.delivery_backoff_s = (1.0,)
    fe = Recorder(tmp_path, core)
    fe.raising = [ConnectionError("connection reset")]
    core.register(fe)
    job = await core.imagine(ALICE, REPLY, "a lighthouse")
    await asyncio.wait_for(fe.delivering.wait(), 10)
    # while this process waits to post again, its lease expired and another process took the job
    core.jobs.update(job.id, owner="other-process", lease_until=utcnow() + timedelta(seconds=60))
    await asyncio.wait_for(core.orchestrator.wait_idle(), 20)
    row = core.jobs.get(job.id)
    assert (row.state, row.owner) == (JobState.DELIVERING, "other-process")  # the new owner posts it
    assert fe.attempts == 1 and core.ledger.balance(ALICE).held == 18  # not posted twice, nothing settled here
