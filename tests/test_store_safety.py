"""The ledger and job store under real deployment conditions: a failure after the job insert rolls the
reservation back too; a rollback never masks the real error; reads take no write lock (an admin report
in another process cannot freeze the bot); sizes beyond reason are refused in plain words; the spool
path does not depend on the working directory."""

from __future__ import annotations

import asyncio
import io
import logging
import sqlite3

import pytest
from rich.console import Console

from imagine_bot.bots.cli.main import main
from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import UserInputError
from imagine_bot.core.jobs.model import JobRequest, JobState, ReplyTo
from imagine_bot.core.settings import load_settings
from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
from imagine_bot.core.storage.db import open_db, transaction
from imagine_bot.core.storage.jobs import SqliteJobStore as JobStore
from imagine_bot.core.storage.ledger import SqliteLedger as Ledger
from tests.conftest import until

ALICE = UserRef("terminal", "local", "alice")


def test_a_failure_after_the_insert_rolls_back_reserve_and_insert(tmp_path):
    db = open_db(tmp_path / "t.db")
    ledger, jobs = Ledger(db, budgets=Budgets(db, default_amount=None), allowance=180, period="month"), JobStore(db)
    request = JobRequest(requester=ALICE, reply=ReplyTo("terminal", "t"), prompt="a cat", params={})
    with pytest.raises(RuntimeError, match="after the insert"), transaction(db):
        ledger.reserve(ALICE, "j1", 18)
        jobs.insert(request, model="m", cost=18, job_id="j1")
        raise RuntimeError("something failed after the insert")
    assert jobs.find("j1") is None
    assert ledger.balance(ALICE).held == 0
    assert [e.kind for e in ledger.history(ALICE)] == ["refill"]
    assert ledger.verify() == []


def test_a_rollback_never_masks_the_real_error(tmp_path):
    db = open_db(tmp_path / "t.db")
    with pytest.raises(ValueError, match="the real error"), transaction(db) as conn:
        conn.execute("COMMIT")  # something ended the transaction early (as sqlite-utils' insert used to)
        raise ValueError("the real error")


def test_reads_take_no_write_lock(tmp_path):
    path = tmp_path / "t.db"
    db = open_db(path, busy_timeout_s=0.2)
    ledger = Ledger(db, budgets=Budgets(db, default_amount=None), allowance=180, period="month")
    ledger.grant(ALICE, 10, actor="test")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process (an admin command) holds the write lock
    try:
        # a read that asked for the write lock would raise "database is locked" after the 0.2 s busy timeout
        assert ledger.balance(ALICE).available == 190
        assert [b.account for b in ledger.accounts()] == [ALICE.key]
        assert ledger.report_rows()[0]["granted"] == 10
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_grants_beyond_reason_are_refused_in_plain_words(tmp_path, capsys):
    db = open_db(tmp_path / "t.db")
    ledger = Ledger(db, budgets=Budgets(db, default_amount=None), allowance=180, period="month")
    for amount in (10**30, -(10**30), 10**10):
        with pytest.raises(UserInputError, match="more than one change may move"):
            ledger.grant(ALICE, amount, actor="test")
    with pytest.raises(UserInputError):
        ledger.set_allowance(ALICE, 10**25, actor="test")
    assert ledger.verify() == []
    db = str(tmp_path / "t.db")
    assert main(["--db", db, "credits", "grant", "bob", str(10**30)]) == 1
    err = capsys.readouterr().err
    assert "1,000,000,000" in err and "Traceback" not in err and err.count("\n") == 1  # one plain line


def test_budgets_and_member_caps_beyond_reason_are_refused_in_plain_words(tmp_path):
    """The store refuses them too, whoever calls it (the parsers in front already do)."""
    budgets = Budgets(open_db(tmp_path / "t.db"), default_amount=None)
    for amount in (10**40, 1_000_000_001, -1):
        with pytest.raises(UserInputError, match="from 0 to 1,000,000,000 credits"):
            budgets.set_amount("discord:42", amount, actor="test")
        with pytest.raises(UserInputError, match="from 0 to 1,000,000,000 credits"):
            budgets.set_member_cap("discord:42", amount, actor="test")
    assert budgets.set_amount("discord:42", 1_000_000_000, actor="test").amount == 1_000_000_000
    assert budgets.set_member_cap("discord:42", 1_000_000_000, actor="test").member_cap == 1_000_000_000


def test_the_spool_is_an_absolute_path_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(_env_file=None, IMAGINE_DB_PATH="bot.db")  # under the default data folder, ./data
    assert settings.spool_dir.is_absolute()
    assert settings.spool_dir == tmp_path / "data" / "bot-files"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_settings(_env_file=None, IMAGINE_DB_PATH=str(tmp_path / "data/bot.db")).spool_dir == settings.spool_dir


async def test_a_write_lock_held_elsewhere_while_the_task_id_is_saved_never_fails_the_job(
        make_settings, sandbox, tmp_path, caplog):
    """The gateway accepted the task (and will bill it) while another process holds the write lock for longer
    than the busy timeout: the task id is logged first, the save is tried again until the lock is gone, and
    the job is delivered and charged once; it is never failed, its task id never lost."""
    settings = make_settings(DB_BUSY_TIMEOUT_S=0.1)
    caplog.set_level(logging.INFO, logger="imagine_bot.core.jobs.orchestrator")
    async with ImagineCore.open(settings) as core:
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core))
        sandbox.inject("createTask", hang=0.3)  # the gateway takes a moment to accept
        job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "saved through a lock")
        await until(lambda: sandbox.requests["createTask"] == 1)  # on the wire; the row says submitting
        other = sqlite3.connect(settings.IMAGINE_DB_PATH, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # an admin command in another process holds the write lock
        try:
            await until(lambda: [r for r in caplog.records if r.levelno == logging.WARNING and sandbox.tasks
                                 and next(iter(sandbox.tasks)) in r.getMessage()])
            [task_id] = sandbox.tasks
            row = core.jobs.get(job.id)
            assert (row.state, row.task_id) == (JobState.SUBMITTING, None)  # not saved yet, but in the log:
            assert any(task_id in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
        finally:
            other.execute("ROLLBACK")  # released later
            other.close()
        await asyncio.wait_for(core.orchestrator.wait_idle(), 30)
        row = core.jobs.get(job.id)
        assert (row.state, row.task_id) == (JobState.DELIVERED, task_id), (row.error_code, row.error_message)
        assert sandbox.requests["createTask"] == 1
        kinds = sorted(e.kind for e in core.ledger.history(ALICE) if e.job_id == job.id)
        assert kinds == ["capture", "reserve"]
        assert core.ledger.balance(ALICE).balance == 180 - 18 and core.ledger.verify() == []


def locker(settings) -> sqlite3.Connection:
    """A second connection to the bot's database, as another process (an admin command) would hold it."""
    return sqlite3.connect(settings.IMAGINE_DB_PATH, isolation_level=None)


def logged(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


async def test_a_failure_that_cannot_be_recorded_under_a_lock_is_recorded_once_the_lock_is_gone(
        make_settings, sandbox, tmp_path, caplog):
    """The gateway says the task failed while another process holds the write lock: the failure cannot be
    written, so the job is left as it was (no crash of its worker) and resumes; once the lock is gone it is
    failed, refunded once and its user told once."""
    settings = make_settings(DB_BUSY_TIMEOUT_S=0.1, JOB_LEASE_S=0.6)
    caplog.set_level(logging.INFO)
    async with ImagineCore.open(settings) as core:
        fe = TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core)
        core.register(fe)
        await core.start()
        sandbox.inject("recordInfo", hang=0.5)  # the first look answers late: by then the task has failed
        job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "a lost cause sandbox:fail")
        await until(lambda: sandbox.requests["recordInfo"] == 1)
        assert core.jobs.get(job.id).state is JobState.RUNNING
        other = locker(settings)
        other.execute("BEGIN IMMEDIATE")
        try:
            await until(lambda: logged(caplog, "could not record its failure"))
        finally:
            other.execute("ROLLBACK")
            other.close()
        await until(lambda: core.jobs.get(job.id).state is JobState.FAILED)
        await core.orchestrator.wait_idle()
        row = core.jobs.get(job.id)
        assert row.error_code == "generation_failed"
        kinds = sorted(e.kind for e in core.ledger.history(ALICE) if e.job_id == job.id)
        assert kinds == ["release", "reserve"]
        assert core.ledger.balance(ALICE).available == 180 and core.ledger.verify() == []
        assert not logged(caplog, "never retrieved") and not logged(caplog, "crashed")


class LockedAfterPosting(TerminalFrontEnd):
    """Posts the result, then another process takes the write lock before the core can charge it."""

    def __init__(self, *args, other: sqlite3.Connection, **kw) -> None:
        super().__init__(*args, **kw)
        self.other = other
        self.posts = 0

    async def publish(self, event):
        await super().publish(event)
        if type(event).__name__ == "Delivered":
            self.posts += 1
            if self.posts == 1:
                self.other.execute("BEGIN IMMEDIATE")


async def test_a_lock_between_the_post_and_the_charge_never_refunds_the_posted_image(
        make_settings, sandbox, tmp_path, caplog):
    """The image is posted, then the charge meets a write lock held past the busy timeout: a busy database is
    never the job's failure. The job stays ``delivering`` and resumes with its receipt once the lock is
    gone: posted once, charged once, never refunded, never said to have failed."""
    settings = make_settings(DB_BUSY_TIMEOUT_S=0.1, JOB_LEASE_S=0.6)
    caplog.set_level(logging.INFO)
    other = locker(settings)
    async with ImagineCore.open(settings) as core:
        fe = LockedAfterPosting(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core, other=other)
        core.register(fe)
        await core.start()
        job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "posted, then locked out")
        try:
            await until(lambda: logged(caplog, "left as it is"))
            assert core.jobs.get(job.id).state is JobState.DELIVERING
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
        await until(lambda: core.jobs.get(job.id).state is JobState.DELIVERED)
        await core.orchestrator.wait_idle()
        assert fe.posts == 2 and len(fe.saved[job.id]) == 1  # handed again with its receipt: saved once
        kinds = sorted(e.kind for e in core.ledger.history(ALICE) if e.job_id == job.id)
        assert kinds == ["capture", "reserve"]
        assert core.ledger.balance(ALICE).balance == 180 - 18 and core.ledger.verify() == []
        assert not logged(caplog, f"job {job.id} failed")
