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
from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import BudgetExhausted, ImagineError
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.storage.budgets import SqliteBudgets as Budgets
from imagine_bot.core.storage.db import open_db
from imagine_bot.core.storage.ledger import SqliteLedger as Ledger
from tests.conftest import until

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

    db = str(settings.IMAGINE_DB_PATH)
    assert main(["--db", db, "jobs", "fail", job.id]) == 0
    assert f"{job.id} failed and refunded 18 credits" in capsys.readouterr().out
    async with ImagineCore.open(settings) as core:
        assert core.jobs.get(job.id).state is JobState.FAILED
        account = core.ledger.balance(USERS[0])
        assert (account.balance, account.held) == (180, 0)
        assert {b.scope: (b.held, b.spent) for b in core.budgets.all()} == {
            channel: (0, 0), GUILD: (0, 0), "global": (0, 0)}
        assert core.budgets.status(channel).remaining == 100
    assert main(["--db", db, "credits", "verify"]) == 0
    assert "every hold belongs to an image in progress" in capsys.readouterr().out


async def test_verify_reports_holds_that_no_active_job_owns(make_settings, frontend, capsys):
    settings = make_settings()
    async with ImagineCore.open(settings) as core:
        core.register(frontend)
        running = await core.imagine(actor(0), ReplyTo("discord", "C1"), "still going sandbox:slow")
        await until(lambda: core.jobs.get(running.id).state is JobState.RUNNING)
        await core.orchestrator.stop()
        db = str(settings.IMAGINE_DB_PATH)
        assert main(["--db", db, "credits", "verify"]) == 0  # a job in progress owns its holds
        capsys.readouterr()

        # a budget hold left behind by a job that is gone (as `jobs fail` used to leave them), on purpose
        core.budgets.reserve((GUILD,), "jgone", USERS[1].key, "C1", 18)
        # ... and a user's hold whose job never existed
        core.ledger.reserve(USERS[2], "jghost", 18)
        assert core.ledger.verify() == []  # every sum agrees: only the owners are missing

    assert main(["--db", db, "credits", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"budget {GUILD}: 18 credits held for job jgone ({USERS[1].key}), which is not a known job" in out
    assert "budget global: 18 credits held for job jgone" in out
    assert f"{USERS[2].key}: 18 credits held for job jghost, which is not a known job" in out
    assert "budget global: 18 credits held for job jghost" in out
    assert "4 hold(s) owned by no active job" in out
    assert running.id not in out
