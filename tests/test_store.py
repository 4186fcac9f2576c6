"""The state seam (core/storage/base.py): today's SQLite store satisfies the interface a PostgreSQL one would
implement, and its one transaction spans both the ledger and the jobs (all or nothing)."""

from __future__ import annotations

import pytest

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.jobs.model import JobRequest, ReplyTo
from imagine_bot.core.storage.base import CreditStore, JobRepository, Store
from imagine_bot.core.storage.sqlite import SqliteStores

# every test here runs on SQLite and on PostgreSQL (conftest's ``backend``)
pytestmark = pytest.mark.usefixtures("backend")

ALICE = UserRef("terminal", "local", "alice")


def test_the_core_keeps_its_state_behind_the_store(core):
    assert isinstance(core.store, SqliteStores) and isinstance(core.store, Store)
    assert isinstance(core.store.ledger, CreditStore) and isinstance(core.store.jobs, JobRepository)
    # the orchestrator works on the very objects the store holds
    assert core.store.ledger is core.orchestrator.ledger and core.store.jobs is core.orchestrator.jobs
    core.store.ping()


def test_one_transaction_spans_credits_and_jobs(core):
    store = core.store
    before = store.ledger.balance(ALICE)
    request = JobRequest(requester=ALICE, reply=ReplyTo("terminal", "t"), prompt="a fox", params={})
    with pytest.raises(RuntimeError), store.transaction():
        store.ledger.reserve(ALICE, "j-rolled-back", 18)
        store.jobs.insert(request, model="m", cost=18, job_id="j-rolled-back")
        raise RuntimeError("the process dies between the two writes")
    assert store.jobs.find("j-rolled-back") is None
    assert store.ledger.balance(ALICE) == before
    with store.transaction():
        store.ledger.reserve(ALICE, "j-kept", 18)
        store.jobs.insert(request, model="m", cost=18, job_id="j-kept")
    assert store.jobs.get("j-kept").cost == 18 and store.ledger.balance(ALICE).held == 18
    assert store.ledger.verify() == []


def test_empty_lists_ask_for_nothing_on_either_database(core):
    """``IN ()`` is SQLite's only: an empty list of ids or states is answered without a query."""
    assert core.store.jobs.release_leases(core.orchestrator.owner, []) == 0
    assert core.store.jobs.recent(states=[]) == []
