"""The credit ledger: arithmetic, refusals, idempotency, refills, admin changes, reports and drift."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.credits.budgets import MAX_CREDITS_CHANGE
from imagine_bot.core.credits.periods import PERIODS, describe_refill
from imagine_bot.core.errors import ConfigError, InsufficientCredits, NotFound, UserInputError
from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
from imagine_bot.core.storage.db import Database, open_db, transaction
from imagine_bot.core.storage.ledger import SqliteLedger as Ledger

ALICE = UserRef("slack", "T1", "UALICE")
BOB = UserRef("discord", "-", "4242")
START = datetime(2025, 11, 19, 10, 0, tzinfo=UTC)  # a Wednesday


class Clock:
    """A fake clock the tests move by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def db(database: Database) -> Database:
    """Every test here runs on SQLite and on PostgreSQL (``database`` in conftest)."""
    return database


@pytest.fixture
def clock() -> Clock:
    return Clock()


LedgerFactory = Callable[..., Ledger]


@pytest.fixture
def make(db: Database, clock: Clock) -> LedgerFactory:
    def factory(*, allowance: int = 180, period: str = "month") -> Ledger:
        return Ledger(db, budgets=Budgets(db, default_amount=None, clock=clock), allowance=allowance, period=period,
                      clock=clock)

    return factory


@pytest.fixture
def ledger(make: LedgerFactory) -> Ledger:
    return make()


def spend(ledger: Ledger, who: UserRef, job_id: str, cost: int) -> None:
    ledger.reserve(who, job_id, cost)
    assert ledger.capture(job_id)


def kinds(ledger: Ledger, who: UserRef) -> list[str]:
    return [e.kind for e in reversed(ledger.history(who))]


# --- accounts and arithmetic


def test_new_account_gets_the_allowance(ledger: Ledger) -> None:
    b = ledger.balance(ALICE)
    assert (b.account, b.balance, b.held, b.available, b.allowance, b.period) == (
        "slack:T1:UALICE", 180, 0, 180, 180, "month"
    )
    assert b.next_refill == datetime(2025, 12, 1, tzinfo=UTC)
    [entry] = ledger.history(ALICE)
    assert (entry.kind, entry.delta_balance, entry.balance_after) == ("refill", 180, 180)
    assert entry.note == "new account"
    ledger.balance(ALICE)
    assert len(ledger.history(ALICE)) == 1, "a second look opens nothing new"
    assert ledger.verify() == []


def test_reserve_capture_release_arithmetic(ledger: Ledger) -> None:
    b = ledger.reserve(ALICE, "j1", 18)
    assert (b.balance, b.held, b.available) == (180, 18, 162)
    b = ledger.reserve(ALICE, "j2", 18)
    assert (b.balance, b.held, b.available) == (180, 36, 144)

    assert ledger.capture("j1") is True
    b = ledger.balance(ALICE)
    assert (b.balance, b.held, b.available) == (162, 18, 144)

    assert ledger.release("j2") is True
    b = ledger.balance(ALICE)
    assert (b.balance, b.held, b.available) == (162, 0, 162)

    rows = [(e.kind, e.delta_balance, e.delta_held, e.balance_after, e.held_after, e.job_id)
            for e in reversed(ledger.history(ALICE))]
    assert rows == [
        ("refill", 180, 0, 180, 0, None),
        ("reserve", 0, 18, 180, 18, "j1"),
        ("reserve", 0, 18, 180, 36, "j2"),
        ("capture", -18, -18, 162, 18, "j1"),
        ("release", 0, -18, 162, 0, "j2"),
    ]
    assert ledger.verify() == []


def test_refusal_names_balance_cost_and_next_refill(make: LedgerFactory) -> None:
    ledger = make(allowance=20)
    ledger.reserve(ALICE, "j1", 18)
    with pytest.raises(InsufficientCredits) as caught:
        ledger.reserve(ALICE, "j2", 18)
    err = caught.value
    assert (err.balance, err.cost) == (2, 18)
    assert err.next_refill == "on Mon 1 Dec at 00:00 UTC (in 12 days)"
    assert "costs 18 and you have 2" in err.user_message
    assert "refills on Mon 1 Dec at 00:00 UTC (in 12 days)" in err.user_message
    assert kinds(ledger, ALICE) == ["refill", "reserve"], "a refusal writes nothing"
    assert ledger.balance(ALICE).held == 18


def test_refusal_without_refill_says_so(make: LedgerFactory) -> None:
    ledger = make(allowance=10, period="never")
    with pytest.raises(InsufficientCredits) as caught:
        ledger.reserve(ALICE, "j1", 18)
    assert caught.value.next_refill is None
    assert "refill" not in caught.value.user_message
    assert "costs 18 and you have 10" in caught.value.user_message


def test_capture_and_release_are_idempotent_and_exclusive(ledger: Ledger) -> None:
    ledger.reserve(ALICE, "paid", 18)
    ledger.reserve(ALICE, "failed", 18)
    assert ledger.capture("paid") is True
    assert ledger.capture("paid") is False
    assert ledger.release("paid") is False
    assert ledger.release("failed") is True
    assert ledger.release("failed") is False
    assert ledger.capture("failed") is False
    b = ledger.balance(ALICE)
    assert (b.balance, b.held) == (162, 0), "charged once, for the job that delivered"
    assert kinds(ledger, ALICE) == ["refill", "reserve", "reserve", "capture", "release"]


def test_reserving_a_job_twice_is_a_no_op(ledger: Ledger) -> None:
    first = ledger.reserve(ALICE, "j1", 18)
    again = ledger.reserve(ALICE, "j1", 18)
    assert again == first
    assert kinds(ledger, ALICE) == ["refill", "reserve"]


def test_a_new_job_is_not_looked_up_but_the_database_still_refuses_a_second_reservation(ledger: Ledger) -> None:
    """``new_job=True`` (the orchestrator made the id just now) skips the "already reserved?" read; a
    caller wrong about it meets the unique index, and nothing of that reservation stays."""
    first = ledger.reserve(ALICE, "j1", 18, new_job=True)
    with pytest.raises(sqlite3.IntegrityError):
        ledger.reserve(ALICE, "j1", 18, new_job=True)
    assert ledger.balance(ALICE) == first
    assert kinds(ledger, ALICE) == ["refill", "reserve"]
    assert ledger.verify() == []


@pytest.mark.parametrize("new_job", [False, True])
def test_a_new_accounts_first_reservation_writes_the_rows_it_always_did(ledger: Ledger, db: Database,
                                                                       new_job: bool) -> None:
    """A new account is opened with its allowance in (and, for a new job, its hold): the same rows, with
    the same balances after, as opening it empty and then refilling and reserving."""
    new: dict[str, bool] = {"new_job": True} if new_job else {}
    b = ledger.reserve(ALICE, "j1", 18, scopes=("slack:T1",), channel="C1", **new)
    assert (b.balance, b.held, b.next_refill) == (180, 18, datetime(2025, 12, 1, tzinfo=UTC))
    rows = [(e.kind, e.delta_balance, e.delta_held, e.balance_after, e.held_after, e.job_id, e.note, e.ts)
            for e in reversed(ledger.history(ALICE))]
    assert rows == [("refill", 180, 0, 180, 0, None, "new account", START),
                    ("reserve", 0, 18, 180, 18, "j1", None, START)]
    with transaction(db):  # a caller that goes on after a refusal keeps the opening, and nothing held
        with pytest.raises(InsufficientCredits, match="costs 181 and you have 180"):
            ledger.reserve(BOB, "j2", 181, **new)
    assert kinds(ledger, BOB) == ["refill"]
    assert ledger.balance(BOB).held == 0
    assert ledger.budgets.status("slack:T1").held == 18
    assert ledger.verify() == []


@pytest.mark.parametrize("limit", [None, 100])
def test_the_budget_rows_of_reservations_carry_each_budgets_totals_after(ledger: Ledger, db: Database,
                                                                         limit: int | None) -> None:
    """Written from the rows read (SQLite; PostgreSQL: those read ``FOR UPDATE``, a limited budget) or read
    back (PostgreSQL's unlimited budgets, not locked): the same totals after either way."""
    if limit is not None:
        ledger.budgets.set_amount("slack:T1", limit, actor="op")
    ledger.reserve(ALICE, "j1", 18, scopes=("slack:T1",), new_job=True)
    ledger.reserve(BOB, "j2", 20, scopes=("slack:T1",))
    assert ledger.capture("j1")
    rows = db.execute("SELECT scope, kind, spent_after, held_after FROM budget_ledger WHERE job_id IS NOT NULL"
                      " ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [
        ("slack:T1", "reserve", 0, 18), ("global", "reserve", 0, 18), ("slack:T1", "reserve", 0, 38),
        ("global", "reserve", 0, 38), ("slack:T1", "capture", 18, 20), ("global", "capture", 18, 20)]
    assert ledger.verify() == []


def test_settling_an_unknown_job_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(NotFound):
        ledger.capture("nope")
    with pytest.raises(NotFound):
        ledger.release("nope")


def test_the_database_itself_forbids_a_second_capture(ledger: Ledger, db: Database) -> None:
    spend(ledger, ALICE, "j1", 18)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO ledger (ts, account, kind, delta_balance, delta_held, balance_after, held_after,"
            " job_id) VALUES ('x', ?, 'capture', -18, -18, 144, 0, 'j1')",
            [ALICE.key],
        )


def test_reserve_joins_the_callers_transaction(ledger: Ledger, db: Database) -> None:
    ledger.balance(ALICE)
    with pytest.raises(RuntimeError), transaction(db):
        ledger.reserve(ALICE, "j1", 18)
        raise RuntimeError("the job insert failed")
    assert ledger.balance(ALICE).held == 0
    assert kinds(ledger, ALICE) == ["refill"]
    with transaction(db):
        ledger.reserve(ALICE, "j1", 18)
    assert ledger.balance(ALICE).held == 18


def test_negative_cost_is_a_bug(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        ledger.reserve(ALICE, "j1", -1)


def test_bad_configuration_fails_naming_the_setting(db: Database) -> None:
    with pytest.raises(ConfigError, match="CREDITS_PERIOD"):
        Ledger(db, budgets=Budgets(db, default_amount=None), allowance=180, period="fortnight")
    with pytest.raises(ConfigError, match="CREDITS_ALLOWANCE"):
        Ledger(db, budgets=Budgets(db, default_amount=None), allowance=-1, period="day")


# --- refills


@pytest.mark.parametrize(
    ("period", "boundary", "following"),
    [
        ("day", datetime(2025, 11, 20, tzinfo=UTC), datetime(2025, 11, 21, tzinfo=UTC)),
        ("week", datetime(2025, 11, 24, tzinfo=UTC), datetime(2025, 12, 1, tzinfo=UTC)),
        ("month", datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_refill_tops_up_at_the_period_boundary(
    make: LedgerFactory, clock: Clock, period: str, boundary: datetime, following: datetime
) -> None:
    ledger = make(period=period)
    spend(ledger, ALICE, "j1", 18)
    spend(ledger, ALICE, "j2", 18)
    assert ledger.balance(ALICE).next_refill == boundary

    clock.now = boundary - timedelta(microseconds=1)
    assert ledger.balance(ALICE).balance == 144

    clock.now = boundary
    b = ledger.balance(ALICE)
    assert (b.balance, b.next_refill) == (180, following)
    refill = ledger.history(ALICE)[0]
    assert (refill.kind, refill.delta_balance, refill.ts) == ("refill", 36, boundary)
    assert ledger.verify() == []


def test_never_refills(make: LedgerFactory, clock: Clock) -> None:
    ledger = make(period="never")
    spend(ledger, ALICE, "j1", 18)
    clock.advance(days=400)
    b = ledger.balance(ALICE)
    assert (b.balance, b.next_refill) == (162, None)
    assert kinds(ledger, ALICE) == ["refill", "reserve", "capture"]


def test_grant_above_the_allowance_survives_a_refill(make: LedgerFactory, clock: Clock) -> None:
    ledger = make(period="day")
    ledger.grant(ALICE, 100, actor="slack:T1:UADMIN")
    spend(ledger, ALICE, "j1", 18)
    clock.advance(days=1)
    assert ledger.balance(ALICE).balance == 262
    assert kinds(ledger, ALICE) == ["refill", "grant", "reserve", "capture"], "no refill above the allowance"


def test_unused_allowance_does_not_pile_up(make: LedgerFactory, clock: Clock) -> None:
    ledger = make(period="day")
    ledger.balance(ALICE)
    clock.advance(days=3)
    assert ledger.balance(ALICE).balance == 180


def test_several_missed_periods_give_one_refill(make: LedgerFactory, clock: Clock) -> None:
    ledger = make(period="day")
    spend(ledger, ALICE, "j1", 50)
    clock.advance(days=10, hours=5)
    b = ledger.balance(ALICE)
    assert b.balance == 180
    assert b.next_refill == datetime(2025, 11, 30, tzinfo=UTC)
    assert kinds(ledger, ALICE) == ["refill", "reserve", "capture", "refill"]


def test_refill_counts_held_credits_as_owned(make: LedgerFactory, clock: Clock) -> None:
    ledger = make(period="day")
    ledger.reserve(ALICE, "j1", 18)
    clock.advance(days=1)
    assert ledger.capture("j1")
    b = ledger.balance(ALICE)
    assert (b.balance, b.held) == (162, 0)


def test_changing_the_period_setting_realigns(make: LedgerFactory, clock: Clock) -> None:
    spend(make(period="never"), ALICE, "j1", 18)
    clock.advance(days=2)
    b = make(period="week").balance(ALICE)
    assert (b.balance, b.next_refill) == (180, datetime(2025, 11, 24, tzinfo=UTC))
    spend(make(period="month"), ALICE, "j2", 18)
    assert make(period="month").balance(ALICE).balance == 162, "the month has not turned yet"


def test_zero_allowance_has_no_next_refill(make: LedgerFactory) -> None:
    assert make(allowance=0, period="day").balance(ALICE).next_refill is None


# --- admin changes


def test_grant_and_revoke(ledger: Ledger) -> None:
    b = ledger.grant(ALICE, 50, actor="slack:T1:UADMIN", note="hackathon")
    assert b.balance == 230
    ledger.reserve(ALICE, "j1", 18)
    with pytest.raises(UserInputError) as caught:
        ledger.grant(ALICE, -213, actor="slack:T1:UADMIN")
    assert caught.value.user_message == (
        f"Cannot take back 213 credits: {ALICE.key} has 230 with 18 held by images in progress, so at most 212"
        " can be taken back. Nothing was changed.")
    b = ledger.grant(ALICE, -212, actor="slack:T1:UADMIN", note="oops")
    assert (b.balance, b.held, b.available) == (18, 18, 0)
    revoke, grant = ledger.history(ALICE)[0], ledger.history(ALICE)[2]
    assert (revoke.kind, revoke.delta_balance, revoke.actor, revoke.note) == (
        "adjust", -212, "slack:T1:UADMIN", "oops")
    assert (grant.kind, grant.delta_balance, grant.note) == ("grant", 50, "hackathon")
    assert ledger.capture("j1"), "the held credits are still there to capture"
    assert ledger.balance(ALICE).balance == 0


def test_grant_of_zero_is_refused(ledger: Ledger) -> None:
    with pytest.raises(UserInputError) as caught:
        ledger.grant(ALICE, 0, actor="admin")
    assert caught.value.user_message == "Grant a number of credits other than 0 (negative to take credits back)."


def test_grants_of_one_credit_and_of_the_most_one_change_may_move(ledger: Ledger) -> None:
    assert ledger.grant(ALICE, 1, actor="admin").balance == 181
    assert ledger.history(ALICE)[0].kind == "grant"
    assert ledger.grant(ALICE, MAX_CREDITS_CHANGE, actor="admin").balance == 181 + MAX_CREDITS_CHANGE
    with pytest.raises(UserInputError) as caught:
        ledger.grant(ALICE, MAX_CREDITS_CHANGE + 1, actor="admin")
    assert caught.value.user_message == (
        f"{MAX_CREDITS_CHANGE + 1:,} credits is more than one change may move (at most {MAX_CREDITS_CHANGE:,})."
        " Nothing was changed.")


def test_set_allowance_raise_adds_the_raise_now(ledger: Ledger) -> None:
    spend(ledger, ALICE, "j1", 100)
    b = ledger.set_allowance(ALICE, 360, actor="slack:T1:UADMIN")
    assert (b.allowance, b.balance) == (360, 260)
    refill, adjust = ledger.history(ALICE)[:2]
    assert (adjust.kind, adjust.delta_balance, adjust.delta_held, adjust.actor, adjust.note) == (
        "adjust", 0, 0, "slack:T1:UADMIN", "allowance 180 -> 360")
    assert (refill.kind, refill.delta_balance, refill.note) == ("refill", 180, "allowance raised")


def test_set_allowance_raise_never_passes_the_new_allowance(ledger: Ledger) -> None:
    assert ledger.set_allowance(ALICE, 200, actor="admin").balance == 200
    ledger.grant(BOB, 100, actor="admin")
    assert ledger.set_allowance(BOB, 200, actor="admin").balance == 280
    assert kinds(ledger, BOB) == ["refill", "grant", "adjust"]


def test_set_allowance_cut_takes_nothing_back(ledger: Ledger, clock: Clock) -> None:
    b = ledger.set_allowance(ALICE, 100, actor="admin")
    assert (b.allowance, b.balance) == (100, 180)
    spend(ledger, ALICE, "j1", 130)
    clock.now = datetime(2025, 12, 1, tzinfo=UTC)
    assert ledger.balance(ALICE).balance == 100
    b = ledger.set_allowance(ALICE, None, actor="admin")
    assert (b.allowance, b.balance) == (180, 180)
    assert ledger.history(ALICE)[1].note == "allowance 100 -> 180 (the default)"
    assert ledger.verify() == []


def test_set_allowance_refuses_negative(ledger: Ledger) -> None:
    with pytest.raises(UserInputError):
        ledger.set_allowance(ALICE, -5, actor="admin")


# --- reading


def test_history_is_newest_first(ledger: Ledger, clock: Clock) -> None:
    ledger.balance(ALICE)
    clock.advance(minutes=1)
    ledger.reserve(BOB, "b1", 18)
    clock.advance(minutes=1)
    ledger.reserve(ALICE, "a1", 18)
    everyone = ledger.history()
    assert [(e.account, e.kind) for e in everyone] == [
        (ALICE.key, "reserve"), (BOB.key, "reserve"), (BOB.key, "refill"), (ALICE.key, "refill")]
    assert [e.id for e in everyone] == sorted((e.id for e in everyone), reverse=True)
    assert everyone[0].ts == START + timedelta(minutes=2)
    assert [e.job_id for e in ledger.history(ALICE, limit=1)] == ["a1"]
    assert ledger.history(UserRef("terminal", "local", "nobody")) == []
    assert [b.account for b in ledger.accounts()] == [BOB.key, ALICE.key]


def test_report_csv(ledger: Ledger, clock: Clock) -> None:
    spend(ledger, ALICE, "old", 18)
    clock.advance(days=1)
    since = clock.now
    ledger.grant(ALICE, 40, actor="admin")
    ledger.grant(ALICE, -10, actor="admin")
    spend(ledger, ALICE, "a1", 18)
    spend(ledger, ALICE, "a2", 18)
    ledger.reserve(ALICE, "a3", 18)
    ledger.release("a3")
    ledger.reserve(ALICE, "a4", 18)
    ledger.reserve(BOB, "b1", 18)
    clock.now = datetime(2025, 12, 1, tzinfo=UTC)  # Alice has 156 < 180: refilled by the report itself

    rows = list(csv.DictReader(io.StringIO(ledger.report_csv(since))))
    assert [r["account"] for r in rows] == [BOB.key, ALICE.key]
    bob, alice = rows
    assert alice == {
        "account": ALICE.key, "balance": "180", "held": "18", "allowance": "180", "granted": "30",
        "refilled": "24", "spent": "36", "jobs_charged": "2", "jobs_refunded": "1",
    }
    assert (bob["balance"], bob["held"], bob["refilled"], bob["spent"]) == ("180", "18", "180", "0")

    all_time = {r["account"]: r for r in ledger.report_rows()}
    assert (all_time[ALICE.key]["spent"], all_time[ALICE.key]["jobs_charged"]) == (54, 3)
    assert all_time[ALICE.key]["refilled"] == 180 + 24


def test_report_csv_header_when_empty(ledger: Ledger) -> None:
    assert ledger.report_csv().splitlines() == [
        "account,balance,held,allowance,granted,refilled,spent,jobs_charged,jobs_refunded"]


def test_verify_reports_drift(ledger: Ledger, db: Database) -> None:
    ledger.reserve(ALICE, "j1", 18)
    ledger.balance(BOB)
    assert ledger.verify() == []
    db.execute("UPDATE accounts SET balance = balance + 5 WHERE account = ?", [ALICE.key])
    [problem] = ledger.verify()
    assert problem == (
        f"{ALICE.key}: balance 185 but the ledger sums to 180; held 18 but the ledger sums to 18")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=20), "in under a minute"),
        (timedelta(minutes=1), "in 1 minute"),
        (timedelta(minutes=42), "in 42 minutes"),
        (timedelta(hours=1), "in 1 hour"),
        (timedelta(hours=3), "in 3 hours"),
        (timedelta(hours=2, minutes=50), "in 3 hours"),
        (timedelta(days=6), "on Mon 1 Dec at 00:00 UTC (in 6 days)"),
        (timedelta(days=1, hours=1), "on Wed 26 Nov at 01:00 UTC (in 1 day)"),
        (timedelta(days=37), "on Thu 1 Jan 2026 at 00:00 UTC (in 37 days)"),
    ],
)
def test_describe_refill(delta: timedelta, text: str) -> None:
    now = datetime(2025, 11, 25, tzinfo=UTC)
    assert describe_refill(now + delta, now) == text


def test_describe_refill_never() -> None:
    assert describe_refill(None, START) is None


# --- random sequences keep the books straight


USERS = st.sampled_from([ALICE, BOB, UserRef("terminal", "local", "me")])


class LedgerMachine(RuleBasedStateMachine):
    """Random operations on a few accounts; the books always balance and no CHECK ever fires."""

    def __init__(self) -> None:
        super().__init__()
        self.db = open_db(":memory:")
        self.clock = Clock()
        self.ledger = self._ledger(50, "day")
        self.open: dict[str, tuple[str, int]] = {}  # reserved job -> (account, cost)
        self.settled: set[str] = set()

    def teardown(self) -> None:
        self.db.conn.close()

    def _use(self, period: str, allowance: int) -> None:
        self.ledger = self._ledger(allowance, period)

    def _ledger(self, allowance: int, period: str) -> Ledger:
        return Ledger(self.db, budgets=Budgets(self.db, default_amount=None, clock=self.clock), allowance=allowance,
                      period=period, clock=self.clock)

    @initialize(period=st.sampled_from(PERIODS), allowance=st.integers(0, 100))
    def configure(self, period: str, allowance: int) -> None:
        self._use(period, allowance)

    @rule(period=st.sampled_from(PERIODS), allowance=st.integers(0, 100))
    def change_settings(self, period: str, allowance: int) -> None:
        self._use(period, allowance)

    @rule(who=USERS, cost=st.integers(0, 40))
    def reserve(self, who: UserRef, cost: int) -> None:
        job_id = f"job{len(self.open) + len(self.settled)}"
        try:
            self.ledger.reserve(who, job_id, cost)
        except InsufficientCredits as err:
            available = self.ledger.balance(who).available
            assert err.balance == available < cost
        else:
            self.open[job_id] = (who.key, cost)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def reserve_again(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.open)))
        who = UserRef.parse(self.open[job_id][0])
        before = self.ledger.balance(who)
        assert self.ledger.reserve(who, job_id, 1) == before

    @precondition(lambda self: bool(self.open or self.settled))
    @rule(data=st.data(), capture=st.booleans())
    def settle(self, data: st.DataObject, capture: bool) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.open.keys() | self.settled)))
        done = self.ledger.capture(job_id) if capture else self.ledger.release(job_id)
        assert done == (job_id in self.open)
        self.open.pop(job_id, None)
        self.settled.add(job_id)

    @rule(who=USERS, amount=st.integers(-80, 80).filter(bool))
    def grant(self, who: UserRef, amount: int) -> None:
        try:
            self.ledger.grant(who, amount, actor="admin")
        except UserInputError:
            assert -amount > self.ledger.balance(who).available

    @rule(who=USERS, allowance=st.none() | st.integers(0, 100))
    def set_allowance(self, who: UserRef, allowance: int | None) -> None:
        b = self.ledger.set_allowance(who, allowance, actor="admin")
        assert b.allowance == (self.ledger.allowance if allowance is None else allowance)

    @rule(hours=st.integers(1, 24 * 40))
    def wait(self, hours: int) -> None:
        self.clock.advance(hours=hours)

    @invariant()
    def books_balance(self) -> None:
        assert self.ledger.verify() == []
        for b in self.ledger.accounts():
            assert 0 <= b.held <= b.balance
            assert b.held == sum(cost for key, cost in self.open.values() if key == b.account)
        bad = "SELECT COUNT(*) FROM ledger WHERE held_after < 0 OR balance_after < held_after"
        assert self.db.execute(bad).fetchone()[0] == 0


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(
    max_examples=75, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _rows(db: Database) -> tuple[int, int]:
    return (db.execute("SELECT COUNT(*) FROM accounts").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])


@pytest.mark.parametrize("period", PERIODS)
def test_available_is_the_balance_as_it_would_be_and_writes_nothing(make: LedgerFactory, clock: Clock, db: Database,
                                                                    period: str) -> None:
    """A precheck before an ack reads ``available``: the balance ``balance`` would give (an account not
    opened yet with its allowance, a due refill as made), with no write; it was an account opened (and a
    refill written) in a write transaction of its own, for every first command of a burst."""
    ledger = make(period=period)

    def same_as_balance(who: UserRef) -> None:
        before = _rows(db)
        peeked = ledger.available(who)
        assert _rows(db) == before  # nothing written
        assert peeked == ledger.balance(who)  # the balance then opens or refills it, to the same figures

    same_as_balance(ALICE)  # not opened yet
    ledger.reserve(ALICE, "j1", 150)
    ledger.capture("j1")
    same_as_balance(ALICE)  # 30 left
    clock.advance(days=40)  # past every period's boundary: a refill is due (none for "never")
    same_as_balance(ALICE)
    ledger.set_allowance(BOB, 500, actor="admin")
    clock.advance(days=40)
    same_as_balance(BOB)  # a per-user allowance
