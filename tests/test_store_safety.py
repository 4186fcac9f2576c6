"""The ledger and job store under real deployment conditions: a failure after the job insert rolls the
reservation back too; a rollback never masks the real error; reads take no write lock (an admin report
in another process cannot freeze the bot); sizes beyond reason are refused in plain words; the spool
path does not depend on the working directory."""

from __future__ import annotations

import sqlite3

import pytest

from imagine_bot.bots.cli import main
from imagine_bot.core.db import open_db, transaction
from imagine_bot.core.errors import UserInputError
from imagine_bot.core.identity import UserRef
from imagine_bot.core.jobs import JobRequest, JobStore, ReplyTo
from imagine_bot.core.ledger import Ledger
from imagine_bot.core.settings import load_settings

ALICE = UserRef("terminal", "local", "alice")


def test_a_failure_after_the_insert_rolls_back_reserve_and_insert(tmp_path):
    db = open_db(tmp_path / "t.db")
    ledger, jobs = Ledger(db, allowance=180, period="month"), JobStore(db)
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
    ledger = Ledger(db, allowance=180, period="month")
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
    ledger = Ledger(open_db(tmp_path / "t.db"), allowance=180, period="month")
    for amount in (10**30, -(10**30), 10**10):
        with pytest.raises(UserInputError, match="more than one change may move"):
            ledger.grant(ALICE, amount, actor="test")
    with pytest.raises(UserInputError):
        ledger.set_allowance(ALICE, 10**25, actor="test")
    assert ledger.verify() == []
    db = str(tmp_path / "t.db")
    assert main(["--db", db, "credits", "grant", "bob", str(10**30)]) == 1
    err = capsys.readouterr().err
    assert "more than one change may move" in err and "Traceback" not in err


def test_the_spool_is_an_absolute_path_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(_env_file=None, IMAGINE_DB_PATH="bot.db")  # under the default data folder, ./data
    assert settings.spool_dir.is_absolute()
    assert settings.spool_dir == tmp_path / "data" / "bot-files"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_settings(_env_file=None, IMAGINE_DB_PATH=str(tmp_path / "data/bot.db")).spool_dir == settings.spool_dir
