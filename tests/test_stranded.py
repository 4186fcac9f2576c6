"""Stranded jobs: ``imagine-bot jobs fail JOB_ID`` refunds a job nobody works on and its user is told when
the platform's front end runs; jobs of a platform that is not running are failed after JOB_TIMEOUT_S;
``jobs list`` shows who owns each job and for how long."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from imagine_bot.bots.cli.main import main
from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.events import Failed
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.storage.db import iso
from tests.conftest import until

SLACK_USER = UserRef("slack", "T1", "U1")


class SlackRecorder(TerminalFrontEnd):
    platform = "slack"


def slack_recorder(tmp_path):
    return SlackRecorder(tmp_path / "out", Console(file=io.StringIO()), bar=False)


async def a_slack_job_left_behind(settings, tmp_path) -> str:
    """A Slack job in flight whose process stopped (its lease released), and no Slack front end since."""
    async with ImagineCore.open(settings) as core:
        core.register(slack_recorder(tmp_path))
        job = await core.imagine(SLACK_USER, ReplyTo("slack", "C1"), "left behind sandbox:slow")
    return job.id


async def test_jobs_fail_refunds_and_the_user_is_told_when_the_platform_runs(make_settings, tmp_path, capsys):
    settings = make_settings()
    job_id = await a_slack_job_left_behind(settings, tmp_path)
    db = str(settings.IMAGINE_DB_PATH)
    assert await asyncio.to_thread(main, ["--db", db, "jobs", "fail", job_id]) == 0
    assert "refunded 18 credits to slack:T1:U1" in capsys.readouterr().out
    async with ImagineCore.open(settings) as core:
        row = core.jobs.get(job_id)
        assert (row.state, row.error_code, row.notice_pending) == (JobState.FAILED, "failed_by_operator", True)
        assert row.error_message.startswith("failed by ") and row.error_message.endswith(
            " with `imagine-bot jobs fail` (was queued)")
        assert core.ledger.balance(SLACK_USER).available == 180
        assert core.ledger.verify() == []
        fe = slack_recorder(tmp_path)
        core.register(fe)
        await core.start()
        await core.orchestrator.wait_idle()  # notices go out through the outbox
        told = [e for e in fe.events if isinstance(e, Failed)]
        assert len(told) == 1 and told[0].job.id == job_id and told[0].refunded
        assert "refunded" in told[0].error.user_message
        assert not core.jobs.get(job_id).notice_pending
    async with ImagineCore.open(settings) as core:  # told once only
        fe = slack_recorder(tmp_path)
        core.register(fe)
        await core.start()
        await core.orchestrator.wait_idle()  # notices go out through the outbox
        assert not [e for e in fe.events if isinstance(e, Failed)]
    assert await asyncio.to_thread(main, ["--db", db, "jobs", "fail", job_id]) == 1
    assert "already failed" in capsys.readouterr().err


async def test_jobs_fail_refuses_a_job_a_live_process_holds_and_jobs_list_shows_the_owner(make_settings, tmp_path,
                                                                                        capsys):
    settings = make_settings()
    db = str(settings.IMAGINE_DB_PATH)
    async with ImagineCore.open(settings) as core:
        core.register(slack_recorder(tmp_path))
        job = await core.imagine(SLACK_USER, ReplyTo("slack", "C1"), "busy sandbox:slow")
        assert await asyncio.to_thread(main, ["--db", db, "jobs", "fail", job.id]) == 1
        lease = iso(core.jobs.get(job.id).lease_until)
        assert (f"Job {job.id} is being worked on by {core.orchestrator.owner} (lease until {lease}). Stop that "
                "process, or wait until its lease expires; nothing was changed.") in capsys.readouterr().err
        assert await asyncio.to_thread(main, ["--db", db, "jobs", "list"]) == 0
        listing = capsys.readouterr().out
        assert core.orchestrator.owner in listing and "s left" in listing
        assert core.jobs.get(job.id).state is not JobState.FAILED
    assert await asyncio.to_thread(main, ["--db", db, "jobs", "list"]) == 0
    assert "free" in capsys.readouterr().out  # stopped: released for the next process


async def test_jobs_of_a_platform_not_running_are_failed_after_the_job_timeout(make_settings, tmp_path):
    settings = make_settings(JOB_TIMEOUT_S=0.5)
    job_id = await a_slack_job_left_behind(settings, tmp_path)
    # younger than the timeout (an hour here: on a loaded machine opening a core alone can take 0.5 s)
    async with ImagineCore.open(make_settings(JOB_TIMEOUT_S=3600)) as core:
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        await core.start()
        await core.orchestrator.wait_idle()  # notices go out through the outbox
        assert core.jobs.get(job_id).state is JobState.QUEUED  # not yet: the platform may come back
    await asyncio.sleep(0.6)
    async with ImagineCore.open(settings) as core:
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        await core.start()
        await core.orchestrator.wait_idle()  # notices go out through the outbox
        row = core.jobs.get(job_id)
        assert (row.state, row.error_code, row.notice_pending) == (JobState.FAILED, "failed_by_operator", True)
        assert core.ledger.balance(SLACK_USER).available == 180


async def test_a_stranded_job_the_gateway_billed_is_counted_as_billed_not_delivered(make_settings, tmp_path):
    """A job left at the gateway (running) by a platform that never came back: the gateway made and billed
    its image, nobody received it. The sweep that fails it asks the gateway first, so the operator sees it."""
    settings = make_settings()
    async with ImagineCore.open(settings) as core:
        core.register(slack_recorder(tmp_path))
        job = await core.imagine(SLACK_USER, ReplyTo("slack", "C1"), "left at the gateway")
        await until(lambda: core.jobs.get(job.id).state is JobState.RUNNING)
        task_id = core.jobs.get(job.id).task_id
    async with ImagineCore.open(make_settings(JOB_TIMEOUT_S=0.5)) as core:
        assert task_id is not None
        # the gateway made the image (and billed it); a task's state there signals nothing
        while (await core.gateway.record_info(task_id)).stage.value != "success":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # stranded: older than JOB_TIMEOUT_S
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        await core.start()
        await core.orchestrator.wait_idle()
        row = core.jobs.get(job.id)
        assert (row.state, row.error_code) == (JobState.FAILED, "failed_by_operator")
        assert core.ledger.balance(SLACK_USER).available == 180  # refunded
        assert (row.billed_at is not None, row.gateway_cost) == (True, 18)
        assert core.jobs.billed_not_delivered() == (18, 1)
