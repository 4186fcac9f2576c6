"""Budgets above the user and the places' own rules, through the core with Actors (front ends are tested
in tests/discord and tests/slack): the global SPEND_CAP, channel budgets, member caps, period resets,
channels, defaults."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from imagine_bot.bots.cli.main import main
from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.authority import GLOBAL, Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.credits.budgets import MAX_CREDITS_CHANGE
from imagine_bot.core.errors import BudgetExhausted, ImagineError, UserInputError
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
from imagine_bot.core.storage.db import open_db
from imagine_bot.core.storage.ledger import SqliteLedger as Ledger
from tests.conftest import db_args, until

# every test here runs on SQLite and on PostgreSQL (conftest's ``backend``)
pytestmark = pytest.mark.usefixtures("backend")

GUILD = "discord:900"
USERS = [UserRef("discord", "-", str(n)) for n in range(101, 106)]


def actor(n: int, channel: str = "C1", *, admin: bool = False) -> Actor:
    return Actor(USERS[n], place=GUILD, channel=channel, community_admin=admin)


async def make(core: ImagineCore, who: Actor, text: str = "a lighthouse"):
    job = await core.imagine(who, ReplyTo("discord", who.channel or "C1"), text)
    await core.orchestrator.wait_idle()
    return core.jobs.get(job.id)


@pytest.fixture
def frontend(tmp_path: Path) -> TerminalFrontEnd:
    fe = TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False)
    fe.platform = "discord"  # the jobs say discord; this records them
    return fe


async def test_spend_cap_stops_everything_past_it(make_settings, frontend):
    async with ImagineCore.open(make_settings(SPEND_CAP=36, SPEND_CAP_PERIOD="day")) as core:
        core.register(frontend)
        assert (await make(core, actor(0))).state is JobState.DELIVERED
        assert (await make(core, Actor(UserRef("terminal", "local", "t")))).state is JobState.DELIVERED
        with pytest.raises(BudgetExhausted) as refused:
            await make(core, actor(1))
        assert refused.value.user_message == (
            "This bot's image budget for today is used up; it refills at 00:00 UTC. Nothing was charged.")
        assert core.ledger.balance(USERS[1]).balance == 180 and core.ledger.verify() == []


async def test_a_channel_budget_and_a_member_cap(make_settings, frontend):
    async with ImagineCore.open(make_settings(ADMINS="discord:1")) as core:
        core.register(frontend)
        operator = Actor(UserRef("discord", "-", "1"), place=GUILD, channel="C1")
        core.admin_budget_set(operator, f"{GUILD}#C2", 18)
        core.admin_member_cap(actor(4, admin=True), 36)  # a community admin may cap members

        assert (await make(core, actor(0, "C2"))).state is JobState.DELIVERED
        with pytest.raises(BudgetExhausted, match="This channel's image budget for "):
            await make(core, actor(1, "C2"))
        assert (await make(core, actor(1, "C1"))).state is JobState.DELIVERED  # other channels go on

        assert (await make(core, actor(0, "C1"))).state is JobState.DELIVERED  # 36 of the member cap
        with pytest.raises(BudgetExhausted, match="You have used your share of this server's image budget"):
            await make(core, actor(0, "C1"))
        statuses = {b.scope: b for b in core.admin_budget_show(operator)}
        assert statuses[GUILD].spent == 54 and statuses[f"{GUILD}#C2"].spent == 18
        assert core.ledger.verify() == []


async def test_community_admins_choose_channels_and_defaults_but_never_budgets(make_settings, frontend, sandbox):
    async with ImagineCore.open(make_settings()) as core:
        core.register(frontend)
        admin = actor(4, "C7", admin=True)
        assert core.admin_channels(admin, ("C7",)) == ("C7",)
        with pytest.raises(ImagineError) as refused:
            await make(core, actor(0, "C1"))
        assert refused.value.user_message == "In this server I make images only in <#C7>."
        core.admin_defaults(admin, {"aspect_ratio": "16:9", "quality": "high"})
        job = await make(core, actor(0, "C7"), "a fox --quality basic")
        assert job.params["aspect_ratio"] == "16:9" and job.params["quality"] == "basic"  # a flag still wins

        with pytest.raises(ImagineError) as refused:
            core.admin_budget_set(admin, GUILD, 10_000)
        assert refused.value.user_message.startswith("Only the bot's operators")
        with pytest.raises(ImagineError) as refused:
            core.admin_scope_report(admin, "discord:901")
        assert "only manage the server or workspace you are an admin of" in refused.value.user_message
        elsewhere = Actor(USERS[4], place="discord:901", channel="C1", community_admin=True)
        core.admin_ban(elsewhere, USERS[0])  # banned in 901 ...
        assert (await make(core, actor(0, "C7"))).state is JobState.DELIVERED  # ... not in 900


def test_budgets_reset_at_the_period_boundary(tmp_path: Path):
    now = [datetime(2026, 11, 30, 23, 0, tzinfo=UTC)]
    db = open_db(tmp_path / "b.db")
    ledger = Ledger(db, budgets=Budgets(db, default_amount=36, clock=lambda: now[0]), allowance=1000, period="never",
                    clock=lambda: now[0])
    for n in range(2):
        ledger.reserve(USERS[n], f"j{n}", 18, scopes=(GUILD,))
        ledger.capture(f"j{n}")
    with pytest.raises(BudgetExhausted, match="for November is used up; it refills on 1 Dec"):
        ledger.reserve(USERS[2], "j2", 18, scopes=(GUILD,))
    now[0] = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    ledger.reserve(USERS[2], "j2", 18, scopes=(GUILD,))  # a new month: the budget is whole again
    status = ledger.budgets.status(GUILD)
    assert (status.spent, status.held, status.remaining) == (0, 18, 18)
    assert ledger.verify() == []
    ledger.db.conn.close()


# ---------------------------------------------------------------------- the command line moves budgets too
async def test_jobs_fail_on_the_command_line_releases_the_budget_holds_too(make_settings, frontend, capsys):
    """``imagine-bot jobs fail`` used to build a ledger without its budgets: the user was refunded and the
    channel's, server's and global holds stayed for good (each budget 18 smaller), unseen by verify."""
    settings = make_settings()
    channel = f"{GUILD}#C7"
    async with ImagineCore.open(settings) as core:
        core.register(frontend)
        core.budgets.set_amount(channel, 100, actor="cli:test")
        job = await core.imagine(actor(0, "C7"), ReplyTo("discord", "C7"), "a stranded one sandbox:slow")
        await until(lambda: core.jobs.get(job.id).state is JobState.RUNNING)
        assert {b.scope: b.held for b in core.budgets.all()} == {channel: 18, GUILD: 18, "global": 18}
        await core.orchestrator.stop()  # the process goes away: the job stays running, its lease released

    db = db_args(settings)
    assert main([*db, "jobs", "fail", job.id]) == 0
    assert f"{job.id} failed and refunded 18 credits" in capsys.readouterr().out
    async with ImagineCore.open(settings) as core:
        assert core.jobs.get(job.id).state is JobState.FAILED
        account = core.ledger.balance(USERS[0])
        assert (account.balance, account.held) == (180, 0)
        assert {b.scope: (b.held, b.spent) for b in core.budgets.all()} == {
            channel: (0, 0), GUILD: (0, 0), "global": (0, 0)}
        assert core.budgets.status(channel).remaining == 100
    assert main([*db, "credits", "verify"]) == 0
    assert "every hold belongs to an image in progress" in capsys.readouterr().out


async def test_verify_reports_holds_that_no_active_job_owns(make_settings, frontend, capsys):
    settings = make_settings()
    async with ImagineCore.open(settings) as core:
        core.register(frontend)
        running = await core.imagine(actor(0), ReplyTo("discord", "C1"), "still going sandbox:slow")
        await until(lambda: core.jobs.get(running.id).state is JobState.RUNNING)
        await core.orchestrator.stop()
        db = db_args(settings)
        assert main([*db, "credits", "verify"]) == 0  # a job in progress owns its holds
        capsys.readouterr()

        # a budget hold left behind by a job that is gone (as `jobs fail` used to leave them), on purpose
        core.budgets.reserve((GUILD,), "jgone", USERS[1].key, "C1", 18)
        # ... and a user's hold whose job never existed
        core.ledger.reserve(USERS[2], "jghost", 18)
        assert core.ledger.verify() == []  # every sum agrees: only the owners are missing

    assert main([*db, "credits", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"budget {GUILD}: 18 credits held for job jgone ({USERS[1].key}), which is not a known job" in out
    assert "budget global: 18 credits held for job jgone" in out
    assert f"{USERS[2].key}: 18 credits held for job jghost, which is not a known job" in out
    assert "budget global: 18 credits held for job jghost" in out
    assert "4 hold(s) owned by no active job" in out
    assert running.id not in out


# --- member caps: what counts, and for how long


class Books:
    """A ledger with budgets on a clock the test moves (a fresh ``Budgets`` is a restart with new settings)."""

    def __init__(self, path: Path, now: datetime, **budget_settings) -> None:
        self.now = now
        self.db = open_db(path)
        self.restart(**budget_settings)

    def restart(self, **budget_settings) -> Budgets:
        settings = {"default_amount": None, **budget_settings}
        self.budgets = Budgets(self.db, clock=lambda: self.now, **settings)
        self.ledger = Ledger(self.db, budgets=self.budgets, allowance=10_000, period="never", clock=lambda: self.now)
        return self.budgets

    def job(self, user: int, job_id: str, outcome: str = "capture", scope: str = GUILD) -> None:
        self.ledger.reserve(USERS[user], job_id, 18, scopes=(scope,))
        if outcome == "capture":
            self.ledger.capture(job_id)
        elif outcome == "release":
            self.ledger.release(job_id)


@pytest.fixture
def books(tmp_path: Path):
    made = Books(tmp_path / "books.db", datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    yield made
    assert made.ledger.verify() == []
    made.ledger.db.conn.close()


async def test_a_refunded_job_gives_the_member_their_share_back(make_settings, frontend):
    async with ImagineCore.open(make_settings()) as core:
        core.register(frontend)
        core.admin_member_cap(actor(4, admin=True), 36)
        failed = await make(core, actor(0), "a broken dream sandbox:fail")
        assert failed.state is JobState.FAILED  # refunded: it uses none of the member's 36
        assert (await make(core, actor(0))).state is JobState.DELIVERED
        assert (await make(core, actor(0))).state is JobState.DELIVERED
        with pytest.raises(BudgetExhausted, match="You have used your share of this server's image budget"):
            await make(core, actor(0))
        assert (await make(core, actor(1))).state is JobState.DELIVERED  # a cap per member, not for all
        assert core.ledger.balance(USERS[0]).balance == 180 - 36 and core.ledger.verify() == []


def test_a_job_in_flight_counts_against_the_member_cap_until_it_is_settled(books):
    books.budgets.set_member_cap(GUILD, 36, actor="discord:admin")
    books.job(0, "j0", outcome="hold")
    books.job(0, "j1", outcome="hold")
    with pytest.raises(BudgetExhausted) as refused:
        books.job(0, "j2")
    assert refused.value.remaining == 0 and refused.value.scope == GUILD
    books.ledger.release("j1")  # j1 failed: its share comes back
    books.job(0, "j2")
    books.ledger.capture("j0")  # j0 delivered: its share stays used
    with pytest.raises(BudgetExhausted):
        books.job(0, "j3")


def test_a_member_cap_counts_this_period_only(books):
    books.budgets.set_member_cap(GUILD, 36, actor="discord:admin")
    books.job(0, "nov-1")
    books.job(0, "nov-2")
    with pytest.raises(BudgetExhausted, match=r"for November .*; it refills on 1 Dec"):
        books.job(0, "nov-3")
    books.now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    books.job(0, "dec-1")  # a new month: November's spend no longer counts
    books.job(0, "dec-2")
    with pytest.raises(BudgetExhausted, match="for December"):
        books.job(0, "dec-3")
    assert books.budgets.status(GUILD).spent == 36


def test_changing_a_budgets_period_starts_a_period_of_the_new_kind(books):
    books.budgets.set_amount(GUILD, 36, actor="discord:1")  # per month, the default period
    books.job(0, "j0")
    books.job(1, "j1")
    with pytest.raises(BudgetExhausted, match="for November"):
        books.job(2, "j2")
    status = books.budgets.set_amount(GUILD, 36, actor="discord:1", period="day")
    assert (status.period, status.period_start, status.next_reset) == (
        "day", datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    with pytest.raises(BudgetExhausted, match="for today is used up; it refills at 00:00 UTC"):
        books.job(2, "j2")  # today's spend stays spent
    books.now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    books.job(2, "j2")
    books.now = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)  # and again the day after: daily now
    assert books.budgets.status(GUILD).spent == 0
    never = books.budgets.set_amount(GUILD, 18, actor="discord:1", period="never")
    assert (never.period, never.next_reset) == ("never", None)
    books.job(3, "j3")
    books.now = datetime(2027, 6, 1, tzinfo=UTC)
    with pytest.raises(BudgetExhausted, match="it does not refill by itself"):
        books.job(3, "j4")


def test_changing_spend_cap_period_starts_a_period_of_the_new_kind(books):
    books.restart(cap=36, cap_period="month")
    books.job(0, "j0", scope="discord:1")
    books.job(1, "j1", scope="slack:T1")  # the cap covers every place
    with pytest.raises(BudgetExhausted, match="This bot's image budget for November is used up"):
        books.job(2, "j2", scope="slack:T1")
    books.restart(cap=36, cap_period="day")  # SPEND_CAP_PERIOD=day, then a restart
    status = books.budgets.status(GLOBAL)
    assert (status.period, status.spent, status.next_reset) == ("day", 0, datetime(2026, 12, 1, tzinfo=UTC))
    books.job(2, "j2")
    books.job(3, "j3")
    with pytest.raises(BudgetExhausted, match="for today is used up"):
        books.job(4, "j4")
    books.now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    books.job(4, "j4")


@pytest.mark.parametrize(("change", "refusal"), [
    (lambda b: b.set_amount(GLOBAL, 100, actor="op"), "The global cap is the SPEND_CAP setting"),
    (lambda b: b.set_amount(GUILD, -1, actor="op"), "A budget must be from 0 to"),
    (lambda b: b.set_amount(GUILD, 100, actor="op", period="fortnight"),
     "A budget period is one of day, week, month, never."),
    (lambda b: b.set_member_cap(GUILD, -18, actor="admin"), "A member cap must be from 0 to"),
])
def test_refused_budget_changes_change_nothing(books, change, refusal):
    books.budgets.set_amount(GUILD, 36, actor="op")
    books.budgets.set_member_cap(GUILD, 18, actor="admin")
    before = (books.budgets.status(GUILD), books.budgets.status(GLOBAL))
    with pytest.raises(UserInputError) as refused:
        change(books.budgets)
    assert refused.value.user_message.startswith(refusal)
    assert (books.budgets.status(GUILD), books.budgets.status(GLOBAL)) == before
    books.job(0, "j0")  # the member cap of 18 still holds
    with pytest.raises(BudgetExhausted, match="your share"):
        books.job(0, "j1")


@pytest.mark.parametrize(("setting", "kwargs"), [
    ("SCOPE_BUDGET_PERIOD", {"period": "fortnight"}), ("SPEND_CAP_PERIOD", {"cap_period": "hourly"}),
])
def test_a_bad_period_setting_is_refused_naming_it(tmp_path: Path, setting, kwargs):
    db = open_db(tmp_path / "b.db")
    with pytest.raises(ValueError, match=f"{setting} must be one of day, week, month, never"):
        Budgets(db, default_amount=None, **kwargs)
    db.conn.close()


def test_check_raises_what_a_reservation_would_meet_and_changes_nothing(books):
    books.budgets.set_amount(GUILD, 36, actor="op")
    books.budgets.set_member_cap(GUILD, 18, actor="admin")
    books.budgets.check((GUILD,), USERS[0].key, 18)  # room: no refusal
    books.job(0, "j0", outcome="hold")
    before = (books.budgets.status(GUILD), books.budgets.status(GLOBAL))
    with pytest.raises(BudgetExhausted, match="your share") as refused:
        books.budgets.check((GUILD,), USERS[0].key, 18)  # the member's share is held
    assert (refused.value.scope, refused.value.remaining) == (GUILD, 0)
    with pytest.raises(BudgetExhausted, match=r"\(18 credits left, an image costs 36\)"):
        books.budgets.check((GUILD,), USERS[1].key, 36)  # the server's budget
    books.budgets.check((GUILD,), USERS[1].key, 18)
    assert (books.budgets.status(GUILD), books.budgets.status(GLOBAL)) == before  # nothing held by a check
    books.job(1, "j1")  # the 18 left are still there to reserve
    assert books.budgets.status(GUILD).remaining == 0


def test_a_budget_of_zero_stops_a_place_and_unlimited_lifts_every_limit(books):
    stopped = books.budgets.set_amount(GUILD, 0, actor="op")  # the operator stops a place for now
    assert (stopped.amount, stopped.remaining, stopped.default) == (0, 0, False)
    with pytest.raises(BudgetExhausted, match="This server's image budget for November is used up"):
        books.job(0, "j0")
    books.restart(default_amount=18)  # DEFAULT_SCOPE_BUDGET=18 for the other places
    lifted = books.budgets.set_amount(GUILD, None, actor="op", unlimited=True)
    assert (lifted.amount, lifted.remaining, lifted.default) == (None, None, False)
    for n in range(3):
        books.job(n, f"j{n}")  # no limit here, though the default elsewhere is 18
    back = books.budgets.set_amount(GUILD, None, actor="op")  # back to the default
    assert (back.amount, back.default) == (18, True)
    most = books.budgets.set_amount(GUILD, MAX_CREDITS_CHANGE, actor="op")  # the largest budget there is
    assert most.amount == MAX_CREDITS_CHANGE
    with pytest.raises(UserInputError):
        books.budgets.set_amount(GUILD, MAX_CREDITS_CHANGE + 1, actor="op")


def test_a_member_cap_on_a_budget_that_never_refills_counts_all_time(books):
    books.budgets.set_amount(GUILD, 1000, actor="op", period="never")
    books.budgets.set_member_cap(GUILD, 36, actor="admin")
    books.job(0, "j0")
    books.now = datetime(2027, 6, 1, tzinfo=UTC)  # months later: still the same budget
    books.job(0, "j1")
    with pytest.raises(BudgetExhausted, match="your share") as refused:
        books.job(0, "j2")
    assert "it does not refill by itself" in refused.value.user_message
    books.job(1, "j3")  # another member has their own 36


def test_every_budget_change_is_in_the_audit_trail_with_who_made_it(books):
    books.budgets.set_amount(GUILD, 36, actor="discord:1")
    books.budgets.set_amount(GUILD, None, actor="discord:1", period="week")
    books.budgets.set_amount(GUILD, None, actor="discord:2", unlimited=True)
    books.budgets.set_member_cap(GUILD, 0, actor="discord:3")  # members may spend nothing of it for now
    books.budgets.set_member_cap(GUILD, MAX_CREDITS_CHANGE, actor="discord:3")
    books.budgets.set_member_cap(GUILD, None, actor="discord:4")
    with pytest.raises(UserInputError):
        books.budgets.set_member_cap(GUILD, MAX_CREDITS_CHANGE + 1, actor="discord:4")
    rows = books.db.execute("SELECT actor, note FROM budget_ledger WHERE scope = ? AND kind = 'set' ORDER BY id",
                            [GUILD]).fetchall()
    assert rows == [("discord:1", "budget 36 per month"), ("discord:1", "budget the default per week"),
                    ("discord:2", "budget unlimited per week"), ("discord:3", "member cap 0"),
                    ("discord:3", f"member cap {MAX_CREDITS_CHANGE}"), ("discord:4", "member cap none")]


async def test_one_reservation_holds_every_budget_over_it_in_order(make_settings):
    """The holds of a reservation are written together (one update and one insert, issue 22): each budget
    holds the cost once, with its own row, the place first and the global cap last."""
    async with ImagineCore.open(make_settings()) as core:
        core.budgets.set_amount(f"{GUILD}#C2", 100, actor="test")
        core.ledger.reserve(USERS[0], "j1", 18, scopes=(GUILD, f"{GUILD}#C2"), channel="C2")
        core.ledger.reserve(USERS[1], "j2", 18, scopes=(GUILD, f"{GUILD}#C1"), channel="C1")  # no budget: skipped
        assert core.budgets.job_scopes("j1") == [GUILD, f"{GUILD}#C2", GLOBAL]
        assert core.budgets.job_scopes("j2") == [GUILD, GLOBAL]
        held = {s: core.budgets.status(s).held for s in (GUILD, f"{GUILD}#C2", GLOBAL)}
        assert held == {GUILD: 36, f"{GUILD}#C2": 18, GLOBAL: 36}
        after = core.stores.db.execute(
            "SELECT scope, held_after FROM budget_ledger WHERE job_id = 'j2' ORDER BY id").fetchall()
        assert [tuple(r) for r in after] == [(GUILD, 36), (GLOBAL, 36)]
        core.ledger.release("j1")
        assert [core.budgets.status(s).held for s in (GUILD, f"{GUILD}#C2", GLOBAL)] == [18, 0, 18]
        core.ledger.capture("j2")
        assert [core.budgets.status(s).spent for s in (GUILD, f"{GUILD}#C2", GLOBAL)] == [18, 0, 18]
        assert core.ledger.verify() == [] and core.ledger.orphan_holds() == []


def test_a_check_where_no_budget_has_a_limit_is_one_read(books):
    """A precheck before an ack: where no budget over the job has a limit or a member cap, it refuses
    nothing and is decided by one read, with no write lock and no savepoint (it took both, for every
    command of a burst); where one has a limit, it still refuses what a reservation would."""
    statements: list[str] = []
    books.db.conn.set_trace_callback(statements.append)
    try:
        books.budgets.check((GUILD,), USERS[0].key, 18)
    finally:
        books.db.conn.set_trace_callback(None)
    assert len(statements) == 1 and statements[0].startswith("SELECT"), statements
    books.restart(default_amount=18)  # a place's budget not made yet, with a default of 18
    with pytest.raises(BudgetExhausted, match=r"\(18 credits left, an image costs 36\)"):
        books.budgets.check((GUILD,), USERS[0].key, 36)
    books.restart(default_amount=None, cap=18)  # the global cap
    with pytest.raises(BudgetExhausted):
        books.budgets.check((GUILD,), USERS[0].key, 36)
