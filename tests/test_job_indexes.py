"""The jobs' indexes after migration m112 (core/storage/db.py), on SQLite: no ``jobs_state`` (``jobs_lease``
starts with ``state``), a partial ``jobs_task`` (only jobs with a task id), whether the database is new or
was made before the migration; and the lookups of jobs by state and by task id still use an index.
PostgreSQL's side is in tests/test_postgres.py (it uses ``lookups`` from here)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.errors import LeaseLost
from imagine_bot.core.jobs.model import JobRequest, JobState, ReplyTo
from imagine_bot.core.storage import db as dbmod
from imagine_bot.core.storage.db import open_db, utcnow
from imagine_bot.core.storage.jobs import SqliteJobStore

#: how many migrations a database made just before m112 has
BEFORE_M112 = [name for name, _ in dbmod.MIGRATIONS].index("m112_jobs_fewer_indexes")
ALICE = UserRef("terminal", "local", "alice")
OWNER = "host:1:abc"


def jobs_indexes(db: sqlite_utils.Database) -> dict[str, str]:
    """The jobs table's own indexes (not the primary key's and UNIQUE's): name -> CREATE statement."""
    return {name: sql for name, sql in db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                                                  " AND tbl_name = 'jobs' AND sql IS NOT NULL").fetchall()}


def lookups() -> dict[str, list[tuple[str, list[Any]]]]:
    """The statements the job store runs (with their parameters) to find jobs by state (the sweep's
    ``claimable``, ``active``, the lease renewal and release) and by task id (a gateway callback), read
    from the calls themselves on a new in-memory database: the same SQL runs on PostgreSQL."""
    db = open_db(":memory:")
    jobs = SqliteJobStore(db)
    calls: dict[str, Callable[[], object]] = {
        "claimable": lambda: jobs.claimable(now=utcnow()),
        "active": jobs.active,
        "renew": lambda: jobs.renew(OWNER, utcnow()),
        "release_leases": lambda: jobs.release_leases(OWNER),
        "by_task_id": lambda: jobs.by_task_id("task-1"),
    }
    found: dict[str, list[tuple[str, list[Any]]]] = {}
    seen: list[tuple[str, list[Any]]] = []
    with db.tracer(lambda sql, params: seen.append((sql, list(params or [])))):
        for name, call in calls.items():
            start = len(seen)
            call()
            found[name] = [(sql, params) for sql, params in seen[start:] if " jobs " in f" {sql} "]
            assert found[name], name  # the call ran a statement on jobs
    db.close()
    return found


def _request(n: int) -> JobRequest:
    return JobRequest(requester=ALICE, reply=ReplyTo("terminal", "t"), prompt=f"a fox {n}", params={},
                      dedupe_key=f"k{n}")


def test_a_new_database_has_no_jobs_state_and_a_partial_jobs_task():
    db = open_db(":memory:")
    indexes = jobs_indexes(db)
    assert "jobs_state" not in indexes
    assert "jobs_lease" in indexes and "jobs_account" in indexes
    assert " ".join(indexes["jobs_task"].split()).endswith("ON jobs(task_id) WHERE task_id IS NOT NULL")


def test_the_migration_changes_a_database_made_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "old.db"
    with monkeypatch.context() as m:  # the database as the version before m112 left it
        m.setattr(dbmod, "MIGRATIONS", dbmod.MIGRATIONS[:BEFORE_M112])
        old = open_db(path)
        jobs = SqliteJobStore(old)
        queued, sent = (jobs.insert(_request(n), model="m", cost=1, owner=OWNER,
                                    lease_until=utcnow() + timedelta(minutes=1)) for n in (1, 2))
        jobs.transition(sent.id, JobState.QUEUED, JobState.SUBMITTING, owner=OWNER)
        jobs.transition(sent.id, JobState.SUBMITTING, JobState.RUNNING, owner=OWNER, task_id="task-2")
        before = jobs_indexes(old)
        assert "jobs_state" in before and "WHERE" not in before["jobs_task"]
        old.close()
    db = open_db(path)  # every migration: m112 is applied now
    applied = {r[0] for r in db.execute("SELECT name FROM _migrations")}
    assert applied == {name for name, _ in dbmod.MIGRATIONS}
    after = jobs_indexes(db)
    assert "jobs_state" not in after and after["jobs_task"].endswith("WHERE task_id IS NOT NULL")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    jobs = SqliteJobStore(db)
    found = jobs.by_task_id("task-2")
    assert found is not None and found.id == sent.id
    assert {j.id for j in jobs.claimable(now=utcnow() + timedelta(minutes=2))} == {queued.id, sent.id}
    # the partial index holds the one job with a task id, not the queued job's NULL
    assert db.execute("SELECT COUNT(*) FROM jobs INDEXED BY jobs_task WHERE task_id IS NOT NULL").fetchone() == (1,)


def test_the_lookups_by_state_and_task_id_use_an_index():
    """``EXPLAIN QUERY PLAN`` of each statement: a search through ``jobs_lease`` (by state) or ``jobs_task``
    (by task id), never a ``SCAN jobs`` of the whole table."""
    db = open_db(":memory:")
    for name, statements in lookups().items():
        index = "jobs_task" if name == "by_task_id" else "jobs_lease"
        for sql, params in statements:
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
            assert any(f"USING INDEX {index} " in line for line in plan), (name, sql, plan)
            assert not any(line.startswith("SCAN jobs") for line in plan), (name, sql, plan)



def test_a_change_that_keeps_the_state_leaves_it_out_of_the_update():
    """The gateway's bill (``billed_at`` on a running job) keeps the state: the ``UPDATE`` sets only its
    fields (``jobs_lease``, keyed by the state, is not rewritten), still as a compare-and-set on the state
    and the owner."""
    db = open_db(":memory:")
    jobs = SqliteJobStore(db)
    job = jobs.insert(_request(1), model="m", cost=1, owner=OWNER, lease_until=utcnow() + timedelta(minutes=1))
    jobs.transition(job.id, JobState.QUEUED, JobState.SUBMITTING, owner=OWNER)
    jobs.transition(job.id, JobState.SUBMITTING, JobState.RUNNING, owner=OWNER, task_id="task-1")
    seen: list[str] = []
    with db.tracer(lambda sql, params: seen.append(sql)):
        billed = jobs.transition(job.id, JobState.RUNNING, JobState.RUNNING, owner=OWNER, gateway_cost=18)
    [update] = [sql for sql in seen if sql.startswith("UPDATE jobs")]
    assert "state" not in update.split(" WHERE ")[0] and "state = ?" in update.split(" WHERE ")[1]
    assert billed.state is JobState.RUNNING and billed.gateway_cost == 18
    with pytest.raises(LeaseLost):  # still a compare-and-set: not from a state the job is not in
        jobs.transition(job.id, JobState.QUEUED, JobState.QUEUED, owner=OWNER, gateway_cost=1)
    with pytest.raises(LeaseLost):  # ... nor for another owner
        jobs.transition(job.id, JobState.RUNNING, JobState.RUNNING, owner="other", gateway_cost=1)
    assert jobs.get(job.id).gateway_cost == 18
