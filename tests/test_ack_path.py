"""The work a command does before it is acknowledged (issue 22): only what decides the answer.

Deterministic measures, not timings: which statements a submit runs, and what ``Outbox.put`` calls.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import datetime, timedelta
from enum import IntEnum
from pathlib import Path

import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import GatewayPaused, NotAllowedHere
from imagine_bot.core.events import Accepted
from imagine_bot.core.gateway.balance import ACCOUNT_FRESH_S
from imagine_bot.core.jobs.model import Job, JobRequest, ReplyTo
from imagine_bot.core.jobs.outbox import Outbox, Pace
from imagine_bot.core.storage import jobs as jobs_store
from imagine_bot.core.storage.db import open_database, utcnow
from imagine_bot.core.storage.gateway_account import SqliteGatewayAccount
from imagine_bot.core.storage.places import SqlitePlaces
from tests.conftest import until

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


class _Size(IntEnum):
    BIG = 2


class _Key(str):
    pass


@pytest.mark.parametrize("value", [
    {}, [], (), {"a": 1, "b": [1, (2, "x")], "c": {"d": None, "e": {}}}, {"f": 1.5, "g": -0.0, "h": 10**30},
    {"t": True, "u": False, "n": None}, {"s": "é \u2028 \udc80 \"q\""}, ("a", ["b"]),
    {1: "x"}, {"1": "a", 1: "b"}, {None: 1, True: 2, 2.5: 3}, {"x": float("nan")}, {"x": float("inf")},
    {"x": _Size.BIG}, {_Key("k"): 1}, {"x": _Key("v")}, {"x": {"y": [{"z": (1.0, -float("inf"))}]}},
])
def test_a_new_jobs_json_values_are_what_their_json_reads_back(value):
    """``insert`` builds its job's reply data and parameters from what it encoded, not by decoding the JSON it
    wrote: the value must be exactly what decoding gives (types too: a tuple becomes a list, a key a string),
    never shared with the request, and where it cannot tell (a key not a string, a float not finite, a
    subclass) the JSON is decoded."""
    text = json.dumps(value)
    read = jobs_store._read_back(value, text)
    assert repr(read) == repr(json.loads(text))
    if isinstance(value, (dict, list, tuple)):
        assert read is not value
    reply = ReplyTo("slack", "C1", data=value)  # type: ignore[arg-type]
    assert repr(jobs_store._reply_read_back(reply, reply.to_json())) == repr(ReplyTo.from_json(reply.to_json()))


def test_insert_returns_odd_values_as_read_back(core):
    """Reply data and parameters that JSON changes (tuples, keys not strings) come back from ``insert`` as
    ``get`` reads them."""
    request = JobRequest(requester=ALICE, reply=ReplyTo("terminal", "t", data={"k": ("v", 1), 2: {"x": [1.5]}}),
                         prompt="a fox", params={"aspect_ratio": "16:9", "n": (1, 2), "e": _Size.BIG},
                         extra_input={"nsfw_checker": True, "f": float("inf")})
    with core.store.transaction():
        core.ledger.reserve(ALICE, "j-odd", 18)
        inserted = core.jobs.insert(request, model="m", cost=18, job_id="j-odd")
    stored = core.jobs.get("j-odd")
    assert repr(inserted) == repr(stored) and inserted.params is not request.params
    assert inserted.reply.data == {"k": ["v", 1], "2": {"x": [1.5]}}


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
        assert lull.waiting == 1  # the job's start, its Accepted status with it
        assert not core.orchestrator.outbox._boxes  # nothing put for the job yet: put at its start
    await core.orchestrator.wait_idle()
    assert core.jobs.state(job.id).value == "delivered"
    assert sandbox.requests["createTask"] == 1
    assert statuses.events[0] == "Accepted"


def count_runs(core: ImagineCore) -> list[str]:
    """The jobs whose worker this process starts, in the order it starts them."""
    runs: list[str] = []
    run = core.orchestrator._run

    async def counted(job_id: str, **kw: bool) -> None:
        runs.append(job_id)
        await run(job_id, **kw)

    core.orchestrator._run = counted  # type: ignore[method-assign]
    return runs


async def test_jobs_accepted_during_a_burst_start_once_each_after_it_in_order(core, sandbox):
    """While commands are being answered, an accepted job gets no task of its own (nor does its first status):
    one task waits for the lull for all of them and then starts each once, first in, first out. Until then
    the job counts as in flight here, and a second start of it (a sweep, a redelivery) changes nothing."""
    statuses = Statuses()
    core.register(statuses)
    runs = count_runs(core)
    orchestrator = core.orchestrator
    orchestrator.lull.most_s = 3600.0  # only the end of the command lets the work go
    with core.answering():
        jobs = [await core.imagine(UserRef("terminal", "local", f"u{n}"), REPLY, f"burst {n}") for n in range(3)]
        for _ in range(50):
            await asyncio.sleep(0)
        assert orchestrator.in_flight == 3 and not orchestrator._tasks  # queued, no task each
        assert orchestrator.lull.waiting == 1  # one starter for the jobs (and their Accepted, put as they start)
        orchestrator._start(jobs[0])  # as a sweep or a cancelled submit would
        assert orchestrator.in_flight == 3
        assert runs == [] and sandbox.requests["createTask"] == 0 and statuses.events == []
    await orchestrator.wait_idle()
    assert runs == [job.id for job in jobs]
    assert sandbox.requests["createTask"] == 3
    assert [core.jobs.state(job.id).value for job in jobs] == ["delivered"] * 3
    assert statuses.events.count("Accepted") == 3


async def test_a_drain_leaves_the_jobs_queued_in_a_burst_unstarted_and_claimable(core, sandbox):
    """A drain during a burst starts none of the jobs queued for its end (as it cancels the workers still
    waiting): they stay queued, reserved, with no owner, for the next process."""
    core.register(Statuses())
    runs = count_runs(core)
    core.orchestrator.lull.most_s = 3600.0
    with core.answering():
        jobs = [await core.imagine(UserRef("terminal", "local", f"u{n}"), REPLY, f"drained {n}") for n in range(2)]
        await core.orchestrator.drain(5)
    for _ in range(50):
        await asyncio.sleep(0)
    assert runs == [] and sandbox.requests["createTask"] == 0
    assert core.orchestrator.in_flight == 0
    rows = [core.jobs.get(job.id) for job in jobs]
    assert [(row.state.value, row.owner) for row in rows] == [("queued", None)] * 2
    assert [core.jobs.claim(job.id, "next", utcnow() + timedelta(seconds=30)) is not None for job in jobs] == [True] * 2
    assert core.ledger.balance(jobs[0].requester).held == jobs[0].cost  # nothing refunded, nothing charged


async def test_housekeeping_keeps_a_queued_jobs_lease_and_drops_one_taken_over(make_settings, sandbox):
    """The lease housekeeping frees the leases of jobs nobody works on here; a job queued for the end of a
    burst is worked on here (its lease is kept), unless another process has taken it over meanwhile: then
    it is not started here."""
    async with ImagineCore.open(make_settings(JOB_LEASE_S=0.3)) as core:
        core.register(Statuses())
        await core.start()
        runs = count_runs(core)
        orchestrator = core.orchestrator
        orchestrator.lull.most_s = 3600.0
        passes: list[set[str]] = []
        renew = core.jobs.renew

        def counted(owner: str, until: datetime) -> set[str]:
            held = renew(owner, until)
            passes.append(held)
            return held

        core.jobs.renew = counted  # type: ignore[method-assign]
        with core.answering():
            kept = await core.imagine(UserRef("terminal", "local", "kept"), REPLY, "kept")
            taken = await core.imagine(UserRef("terminal", "local", "taken"), REPLY, "taken")
            core.jobs.update(taken.id, owner="another", lease_until=utcnow() + timedelta(seconds=60))
            await until(lambda: len(passes) >= 3)
            assert core.jobs.get(kept.id).owner == orchestrator.owner
            assert orchestrator.in_flight == 1  # the kept one, still queued
        await orchestrator.wait_idle()
        assert runs == [kept.id]
        assert core.jobs.state(kept.id).value == "delivered"
        assert [core.jobs.get(taken.id).state.value, core.jobs.get(taken.id).owner] == ["queued", "another"]
        assert sandbox.requests["createTask"] == 1


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
    assert _read_back(statements) == [], statements
    # BEGIN, 4 reads, 2 writes for the account, 2 for the budgets (all three at once), COMMIT (was 14: 2 a budget)
    assert len(statements) == 10, statements
    assert (balance.balance, balance.held) == (180, 36)
    assert core.budgets.job_scopes("j-second") == ["slack:T1", "slack:T1#C1", "global"]
    assert [core.budgets.status(s).held for s in ("slack:T1", "slack:T1#C1", "global")] == [36, 36, 36]
    assert core.stores.db.execute(  # each row with its budget's totals after it, in order
        "SELECT scope, kind, delta_held, spent_after, held_after, account, channel FROM budget_ledger"
        " WHERE job_id = 'j-second' ORDER BY id").fetchall() == [
        (scope, "reserve", 18, 0, 36, "slack:T1:U1", "C1") for scope in ("slack:T1", "slack:T1#C1", "global")]
    assert core.ledger.verify() == []

    statements.clear()  # a job the caller made just now (the orchestrator's): its reservation not looked up
    core.stores.db.conn.set_trace_callback(statements.append)
    try:
        balance = core.ledger.reserve(bob, "j-third", 18, scopes=("slack:T1", "slack:T1#C1"), channel="C1",
                                      new_job=True)
    finally:
        core.stores.db.conn.set_trace_callback(None)
    reads = [s.split(" FROM ")[1].split()[0] for s in statements if s.startswith("SELECT")]
    assert reads == ["accounts", "budgets", "budgets"], statements
    assert len(statements) == 9, statements
    assert (balance.balance, balance.held) == (180, 54)
    assert core.ledger.verify() == []


def _read_back(statements: list[str]) -> list[str]:
    """The writes that read a row back to fill in a ledger row (``INSERT ... SELECT``)."""
    return [s for s in statements if s.startswith("INSERT") and " SELECT " in s]


def test_a_new_accounts_reservation_opens_it_with_its_allowance_and_hold_in(core):
    """Before the ack, in a burst from new users (issue 22): the account is inserted with its allowance and
    the job's hold already in (no UPDATE after), its refill and reserve rows written in one statement with
    their balances (no read back), the job not looked up in the ledger (the caller made its id), the
    budgets moved at once. Was 14 statements with 4 reads."""
    scopes = ("slack:T1",)
    core.ledger.reserve(UserRef("slack", "T1", "U0"), "j-first", 18, scopes=scopes, channel="C1")  # the budgets
    statements: list[str] = []
    core.stores.db.conn.set_trace_callback(statements.append)
    try:
        balance = core.ledger.reserve(UserRef("slack", "T1", "U2"), "j-new", 18, scopes=scopes, channel="C1",
                                      new_job=True)
    finally:
        core.stores.db.conn.set_trace_callback(None)
    writes = [s.split()[0] + " " + s.split()[2 if s.startswith("INSERT") else 1] for s in statements
              if s.startswith(("INSERT", "UPDATE"))]
    assert writes == [
        "INSERT accounts", "INSERT ledger", "UPDATE budgets", "INSERT budget_ledger"], statements
    reads = [s.split(" FROM ")[1].split()[0] for s in statements if s.startswith("SELECT")]
    assert reads == ["accounts", "budgets"], statements
    assert _read_back(statements) == [], statements
    assert len(statements) == 8, statements  # BEGIN, 2 reads, 2 writes for the account, 2 for the budgets, COMMIT
    assert (balance.balance, balance.held) == (180, 18)
    history = reversed(core.ledger.history(UserRef("slack", "T1", "U2")))
    assert [(e.kind, e.balance_after, e.held_after) for e in history] == [("refill", 180, 0), ("reserve", 180, 18)]
    assert [core.budgets.status(s).held for s in ("slack:T1", "global")] == [36, 36]
    assert core.ledger.verify() == []


async def test_a_submit_tells_the_ledger_its_job_is_new(core, tmp_path: Path):
    """The orchestrator made the job's id just before reserving: the ledger does not look it up."""
    core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
    statements: list[str] = []
    core.stores.db.conn.set_trace_callback(statements.append)
    try:
        job = await core.imagine(ALICE, REPLY, "a lighthouse at dusk")  # a new account too
    finally:
        core.stores.db.conn.set_trace_callback(None)
    assert core.ledger.balance(ALICE).held == job.cost
    money = statements[statements.index("BEGIN IMMEDIATE"):statements.index("COMMIT")]
    assert not any(s.startswith("SELECT") and " FROM ledger " in s for s in money), money
    assert not any(s.startswith("UPDATE accounts") for s in money), money
    await core.orchestrator.wait_idle()


# ---------------------------------------------------------------------- the place checks (issue 22, round 2)
SLACK_ACTOR = Actor(UserRef("slack", "T1", "U1"), "slack:T1", "C1")
IN_C1 = ReplyTo("terminal", "C1")


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_command_reads_its_place_once_and_the_gateway_account_once_a_window(core, tmp_path: Path):
    """Before the ack: the ban and the place's preferences in one statement (they were read in three: the
    ban, the channels, then the defaults again), the gateway account's pause not read again within
    ``ACCOUNT_FRESH_S``, and a request's dedupe key looked up by a plain statement (no savepoint)."""
    core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
    core.account.monotonic = clock = Clock()
    await core.imagine(SLACK_ACTOR, IN_C1, "warm up", dedupe_key="k0")  # reads the account's row
    statements: list[str] = []
    core.stores.db.conn.set_trace_callback(statements.append)
    try:
        clock.now += ACCOUNT_FRESH_S / 2
        job = await core.imagine(SLACK_ACTOR, IN_C1, "a lighthouse at dusk", dedupe_key="k1")
    finally:
        core.stores.db.conn.set_trace_callback(None)
    assert job.prompt == "a lighthouse at dusk"
    before = statements[:statements.index("BEGIN IMMEDIATE")]
    place = [s for s in before if "place_" in s]
    assert len(place) == 1 and "place_bans" in place[0] and "place_prefs" in place[0], before
    # the channel's default preset and reviewers come with it (they were two more reads)
    assert "channel_presets" in place[0] and "approval_channels" in place[0], place
    assert not any("channel_presets" in s or "approval_channels" in s for s in statements if s != place[0])
    assert not any("gateway_account" in s for s in statements), statements
    assert not any("SAVEPOINT" in s for s in before), before
    assert len([s for s in before if "dedupe_key" in s]) == 1, before  # in imagine; submit trusts it
    assert len(before) <= 2, before  # the dedupe key and the place
    # the job's state is not read back before the ack (its worker reads it)
    assert not any(s.startswith("SELECT state FROM jobs") for s in statements), statements
    await core.orchestrator.wait_idle()


class CancelsOnAccepted:
    """A front end that ends the job it is told of (as Slack does when the bot cannot post there)."""

    platform = "terminal"

    def __init__(self, core: ImagineCore) -> None:
        self.core = core

    async def publish(self, event: object) -> None:
        if isinstance(event, Accepted):
            await self.core.cancel(event.job.id, NotAllowedHere("cannot post there"))


async def test_a_job_cancelled_when_accepted_is_not_started(core, sandbox):
    """The job's state is not read back after Accepted: a job its front end ended then is still handed to a
    worker, which reads the state first; it never reaches the gateway, and its hold is released once."""
    core.register(CancelsOnAccepted(core))
    job = await core.imagine(ALICE, REPLY, "a lighthouse at dusk")
    await core.orchestrator.wait_idle()
    assert core.jobs.state(job.id).value == "failed"
    assert job.id not in core.orchestrator._tasks
    assert sandbox.requests["createTask"] == 0
    assert core.ledger.balance(ALICE).held == 0
    assert [e.kind for e in core.ledger.history(ALICE) if e.job_id == job.id] == ["release", "reserve"]



def _other_process(core: ImagineCore) -> tuple[SqlitePlaces, SqliteGatewayAccount]:
    """The stores as another process (the command line, another bot) sees them: its own connection."""
    db = open_database(core.settings)
    return SqlitePlaces(db), SqliteGatewayAccount(db)


async def made(core: ImagineCore, prompt: str) -> Job:
    """A job made and finished (the job limit stays clear)."""
    job = await core.imagine(SLACK_ACTOR, IN_C1, prompt)
    await core.orchestrator.wait_idle()
    return job


@pytest.mark.usefixtures("backend")
async def test_an_admins_change_in_another_process_counts_at_the_next_command(core, tmp_path: Path):
    """A ban, the channels and the defaults are read at every command (never cached): a change made by
    another process a moment ago counts at once; a pause made there counts within ``ACCOUNT_FRESH_S``, one
    made by this process at once."""
    core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
    core.account.monotonic = clock = Clock()
    places, account = _other_process(core)
    first = await made(core, "warm up")
    assert first.params["aspect_ratio"] != "16:9"

    places.set_defaults("slack:T1", {"aspect_ratio": "16:9"}, actor="admin")
    assert (await made(core, "a fox")).params["aspect_ratio"] == "16:9"

    places.set_channels("slack:T1", ("C2",), actor="admin")
    with pytest.raises(NotAllowedHere, match="in channel C1"):
        await core.imagine(SLACK_ACTOR, IN_C1, "a fox")
    with pytest.raises(NotAllowedHere, match="in channel C1"):
        core.check_imagine(SLACK_ACTOR, "a fox")
    places.set_channels("slack:T1", (), actor="admin")

    places.ban("slack:T1", SLACK_ACTOR.key, actor="admin")
    held = core.ledger.balance(SLACK_ACTOR.user).held
    with pytest.raises(NotAllowedHere, match="is banned"):
        await core.imagine(SLACK_ACTOR, IN_C1, "a fox")
    with pytest.raises(NotAllowedHere, match="is banned"):
        core.prepare_checked(SLACK_ACTOR, "a fox")
    assert core.ledger.balance(SLACK_ACTOR.user).held == held  # nothing reserved
    places.unban("slack:T1", SLACK_ACTOR.key)
    await made(core, "a fox")

    assert account.pause("out_of_credits", utcnow(), "HTTP 402 (another process)")
    clock.now += ACCOUNT_FRESH_S  # the state this process read is that old now
    with pytest.raises(GatewayPaused):
        await core.imagine(SLACK_ACTOR, IN_C1, "a fox")
    assert account.resume()
    core.account.resume(1000)  # this process's own change: at once
    await made(core, "a fox")
    core.account.pause("out_of_credits", "HTTP 402")
    with pytest.raises(GatewayPaused):
        await core.imagine(SLACK_ACTOR, IN_C1, "a fox")
    core.account.resume(1000)
    await core.orchestrator.stop()
