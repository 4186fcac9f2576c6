"""The shared text commands (help, credits, admin) as a chat transcript through the terminal front end."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.chat.commands import dispatch
from imagine_bot.core.jobs.model import JobState, ReplyTo

ADMIN = UserRef("terminal", "local", "root")
ALICE = UserRef("terminal", "local", "alice")
REPLY = ReplyTo("terminal", "chat")


def resolve(raw: str) -> UserRef | None:
    raw = raw.lstrip("@")
    return UserRef("terminal", "local", raw) if raw.isidentifier() else None


async def say(core, who, text, **kw):
    return await dispatch(core, who, text, REPLY, resolve_user=resolve, **kw)


async def test_help_and_credits(core):
    reply = await say(core, ALICE, "help")
    assert "/imagine <prompt>" in reply.text and "18 credits" in reply.text and reply.ephemeral
    assert "admin grant" not in reply.text
    reply = await say(core, ALICE, "credits")
    assert "You have 180 credits" in reply.text and "refills" in reply.text
    assert (await say(core, ALICE, "")).text == (await say(core, ALICE, "help")).text


async def test_command_words_first_are_never_a_paid_image(core, sandbox):
    from imagine_bot.bots.terminal import TerminalFrontEnd

    core.register(TerminalFrontEnd(core.settings.spool_dir / "out", bar=False))
    for text in ("admin grnt @bob 100", "credits please", "balance now", "help me draw a cat", "Admin"):
        reply = await say(core, ALICE, text)
        assert reply.job is None, text
        assert "Nothing was made or charged" in reply.text and "put another word first" in reply.text, text
    assert "not an admin command" not in (await say(core, ALICE, "admin grnt @bob 100")).text  # not an admin
    assert sandbox.requests["createTask"] == 0 and core.jobs.recent() == []
    assert "reserve" not in [e.kind for e in core.ledger.history(ALICE)]
    # another word first makes it a prompt
    reply = await say(core, ALICE, "a help desk at dawn")
    assert reply.job is not None and reply.job.prompt == "a help desk at dawn"
    assert reply.text == ""  # the job's Accepted event says "Got it" (no text built for an ack that shows none)
    await core.orchestrator.wait_idle()


async def test_admin_commands_refused_for_non_admins(core):
    before = core.ledger.balance(ALICE)
    for text in ("admin grant @alice 90", "admin allowance @alice 999", "admin report", "admin history @alice"):
        reply = await say(core, ALICE, text)
        assert "only image-bot admins" in reply.text.lower(), text
        assert reply.attachment is None
    after = core.ledger.balance(ALICE)
    assert (after.balance, after.allowance) == (before.balance, before.allowance)
    assert [e.kind for e in core.ledger.history(ALICE)] == ["refill"]


async def test_admin_commands_for_admins(make_settings):
    from imagine_bot.core.app import ImagineCore

    async with ImagineCore.open(make_settings(ADMINS="terminal:root")) as core:
        reply = await say(core, ADMIN, "admin grant @alice 90 launch week")
        assert reply.text == "Granted 90 credits to @alice; they now have 270."
        reply = await say(core, ADMIN, "admin grant @alice -20")
        assert "Revoked 20 credits from @alice" in reply.text
        reply = await say(core, ADMIN, "admin allowance @alice 360")
        assert "360 credits a month" in reply.text
        reply = await say(core, ADMIN, "admin history @alice")
        assert "grant" in reply.text and "by terminal:root" in reply.text
        reply = await say(core, ADMIN, "admin report")
        assert reply.attachment is not None
        rows = list(csv.DictReader(io.StringIO(reply.attachment[1].decode())))
        alice = next(r for r in rows if r["account"] == ALICE.key)
        assert int(alice["granted"]) == 70
        # mistakes get usage, not a crash
        assert "Usage" in (await say(core, ADMIN, "admin grant @alice")).text
        assert "whole number" in (await say(core, ADMIN, "admin grant @alice lots")).text
        assert "don't know who" in (await say(core, ADMIN, "admin grant <#C123> 5")).text
        # a community admin (Discord's Manage Server, a Slack workspace admin) never mints
        server_admin = Actor(ALICE, place="discord:42", channel="C1", community_admin=True)
        reply = await say(core, server_admin, "admin grant @bob 5")
        assert reply.text.startswith("Only the bot's operators can do that") and "Nothing was changed" in reply.text
        assert core.ledger.history(UserRef("terminal", "local", "bob")) == []
        assert core.ledger.verify() == []


HUGE = str(10**40)
LONG = "7" * 5000  # past Python's 4300-digit limit for int()


@pytest.mark.parametrize("text", [
    f"admin grant @alice {HUGE}", f"admin grant @alice -{HUGE}", f"admin grant @alice {LONG}",
    f"admin allowance @alice {HUGE}", f"admin budget set discord:42 {HUGE}", f"admin budget set discord:42 {LONG}",
    f"admin member-cap {HUGE}", f"admin member-cap {LONG}", "admin member-cap 1000000001",
])
async def test_numbers_past_reason_get_one_plain_line_and_change_nothing(make_settings, text):
    from imagine_bot.core.app import ImagineCore

    async with ImagineCore.open(make_settings(ADMINS="terminal:root")) as core:
        operator = Actor(ADMIN, place="discord:42", channel="C1")
        reply = await say(core, operator, text)
        assert reply.text.startswith("Credits: `") and "is not a whole number from" in reply.text, reply.text
        assert "1,000,000,000." in reply.text and "\n" not in reply.text and len(reply.text) < 120
        assert core.ledger.history(ALICE) == [] and core.budgets.all() == []
        assert core.ledger.verify() == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.one_of(st.sampled_from(["admin", "grant", "allowance", "report", "history", "show",
                                                "@alice", "@bob", "-5", "90", "default", "1e9", "'; DROP TABLE"]),
                               st.text(max_size=12)), max_size=6).map(" ".join))
async def test_hostile_admin_text_never_crashes_or_charges(core, text):
    reply = await say(core, ALICE, "admin " + text)  # not an admin: refused, or taken as a prompt
    assert reply.text
    await core.orchestrator.wait_idle()
    assert core.ledger.verify() == []
    delivered = core.jobs.recent(ALICE.key, limit=1000, states=[JobState.DELIVERED])
    assert core.ledger.balance(ALICE).balance == 180 - 18 * len(delivered)  # charged only for delivered jobs
