"""The work a command does before it is acknowledged (issue 22): only what decides the answer.

Deterministic measures, not timings: which statements a submit runs, and what ``Outbox.put`` calls.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.jobs.model import JobRequest, ReplyTo
from imagine_bot.core.jobs.outbox import Outbox, Pace

ALICE = UserRef("terminal", "local", "alice")
REPLY = ReplyTo("terminal", "test")


def test_insert_returns_the_job_exactly_as_stored(core):
    """``insert`` builds the job from what it wrote instead of reading the row back: every column of the
    table must come out the same as a read (a new column with a default would show here)."""
    request = JobRequest(requester=ALICE, reply=ReplyTo("terminal", "t", data={"k": "v"}), prompt="a fox",
                         params={"aspect_ratio": "16:9"}, dedupe_key="d1", extra_input={"nsfw_checker": True})
    with core.store.transaction():
        core.ledger.reserve(ALICE, "j-inserted", 18)
        inserted = core.jobs.insert(request, model="m", cost=18, job_id="j-inserted", owner="me",
                                    lease_until=core.orchestrator.leases.until())
    assert inserted == core.jobs.get("j-inserted")


async def test_a_submit_reads_no_job_row_before_it_returns(core, tmp_path: Path):
    """Accepting a job writes its row and reads nothing of it back (the state check after Accepted reads
    the state alone); each whole-row read costs a row's JSON parsing per command in a burst."""
    core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
    await core.imagine(ALICE, REPLY, "warm up")  # first statements, caches
    statements: list[str] = []
    core.stores.db.conn.set_trace_callback(statements.append)
    try:
        job = await core.imagine(ALICE, REPLY, "a lighthouse at dusk")
    finally:
        core.stores.db.conn.set_trace_callback(None)
    assert job.prompt == "a lighthouse at dusk"
    whole_rows = [s for s in statements if s.startswith("SELECT * FROM jobs WHERE id")]
    assert whole_rows == []
    assert sum(s == "COMMIT" for s in statements) == 1  # one write transaction: reserve and record
    await core.orchestrator.wait_idle()


async def test_put_leaves_the_pace_lookup_to_the_worker():
    """``put`` runs before the command is acknowledged: a pace the front end must look up (Slack reads
    the job's row to know whether its message exists) is looked up when the status goes out, not there."""
    outbox, looked_up, sent = Outbox(), [], asyncio.Event()

    def pace() -> Pace:
        looked_up.append(True)
        return Pace("w1", rate_per_s=1000.0, burst=1000, min_interval_s=0.0)

    async def send() -> None:
        sent.set()

    outbox.put("j1", send, pace=pace)
    assert looked_up == []
    await asyncio.wait_for(sent.wait(), 5)
    assert looked_up  # the worker did, before sending
    await outbox.wait_idle()


class Statuses:
    """A front end that notes the statuses it is given."""

    platform = "terminal"

    def __init__(self) -> None:
        self.events: list[str] = []

    async def publish(self, event: object) -> None:
        self.events.append(type(event).__name__)


async def test_a_jobs_work_waits_until_no_command_is_being_answered(core, sandbox):
    """Accepted while another command waits for its ack (a burst): the job is reserved and recorded at
    once, but its worker (createTask) and its status message go only once that command is answered."""
    statuses = Statuses()
    core.register(statuses)
    lull = core.orchestrator.lull
    lull.most_s = 3600.0  # only the end of the command lets the work go
    with core.answering():  # another command of the burst, not answered yet
        job = await core.imagine(ALICE, REPLY, "a lighthouse at dusk")
        assert core.ledger.balance(ALICE).held == job.cost  # reserved and recorded before its own ack
        for _ in range(50):
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        assert sandbox.requests["createTask"] == 0
        assert statuses.events == []
        assert core.jobs.state(job.id).value == "queued"
        assert lull.waiting == 2  # the job's worker and its Accepted status
    await core.orchestrator.wait_idle()
    assert core.jobs.state(job.id).value == "delivered"
    assert sandbox.requests["createTask"] == 1
    assert statuses.events[0] == "Accepted"


def test_a_reservation_reads_the_account_and_each_budget_once(core):
    """Before the ack (issue 22): a reservation against a place and a channel with a budget, for an account
    that exists, reads the account once, its reservation once (a second reserve of a job changes nothing)
    and each budget over it once, then writes; nothing is read back. (With the budgets' query helper and
    the read-backs it was about 20 statements.)"""
    bob = UserRef("slack", "T1", "U1")
    core.budgets.set_amount("slack:T1#C1", 1000, actor="test")
    core.ledger.reserve(bob, "j-first", 18, scopes=("slack:T1", "slack:T1#C1"), channel="C1")  # opens it
    statements: list[str] = []
    core.stores.db.conn.set_trace_callback(statements.append)
    try:
        balance = core.ledger.reserve(bob, "j-second", 18, scopes=("slack:T1", "slack:T1#C1"), channel="C1")
    finally:
        core.stores.db.conn.set_trace_callback(None)
    reads = [s for s in statements if s.startswith("SELECT")]
    # the budgets read at once, then again (locked) only the one with a limit to check: the channel's
    assert [r.split(" FROM ")[1].split()[0] for r in reads] == ["accounts", "ledger", "budgets", "budgets"], statements
    assert "IN (" in reads[2] and reads[3].endswith("'slack:T1#C1'"), reads
    assert not any("SAVEPOINT" in s for s in statements)
    assert len(statements) <= 14, statements  # BEGIN, 4 reads, 2 writes for the account, 2 a budget (3), COMMIT
    assert (balance.balance, balance.held) == (180, 36)
    assert core.budgets.job_scopes("j-second") == ["slack:T1", "slack:T1#C1", "global"]
    assert [core.budgets.status(s).held for s in ("slack:T1", "slack:T1#C1", "global")] == [36, 36, 36]
    assert core.ledger.verify() == []
