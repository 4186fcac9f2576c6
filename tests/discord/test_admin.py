"""/credits, /help and the /imagine-admin group: operators (ADMINS) mint; members with Manage Server are
community admins of *their* server only, and never mint."""

from __future__ import annotations

import csv
import io

from imagine_bot.core.chat import messages
from imagine_bot.core.jobs.model import JobState

from .conftest import ALICE, BOB, CAROL, discord_user

MANAGE_GUILD = 0x20
GUILD = "999999999999999999"  # the harness's server
OTHER_GUILD = "888888888888888888"
OPERATOR = "444444444444444444"


def _user_option(user_id: str) -> dict:
    return {"name": "user", "type": 6, "value": user_id}


async def _private_answer(bot, payload) -> dict:
    callback = await bot.callback(payload)
    assert callback.json["type"] == 4
    data = callback.json["data"]
    assert data["flags"] & 64, "only the user who asked should see this"
    assert data["allowed_mentions"] == {"parse": []}
    return {**data, "_files": callback.files}


def _report_rows(answer: dict) -> list[dict]:
    (csv_file,) = answer["_files"]
    assert csv_file.filename.endswith(".csv")
    return list(csv.DictReader(io.StringIO(csv_file.data.decode())))


async def test_a_member_without_rights_is_refused_and_nothing_changes(open_bot):
    async with open_bot() as bot:
        sent = await bot.admin("grant", ALICE, [_user_option(BOB), {"name": "credits", "type": 4, "value": 90}],
                         resolved_users=(BOB,))
        answer = await _private_answer(bot, sent)
        assert answer["content"] == "Sorry, only image-bot admins can do that. Nothing was changed."
        assert bot.core.ledger.history(discord_user(BOB)) == []
        report = await bot.admin("report", ALICE)
        answer = await _private_answer(bot, report)
        assert "only image-bot admins" in answer["content"] and not answer["_files"]


async def test_admins_listed_in_ADMINS_may_grant(open_bot):
    async with open_bot(ADMINS=f"discord:{ALICE}") as bot:
        sent = await bot.admin("grant", ALICE, [_user_option(BOB), {"name": "credits", "type": 4, "value": 90},
                                          {"name": "note", "type": 3, "value": "prize"}], resolved_users=(BOB,))
        answer = await _private_answer(bot, sent)
        balance = bot.core.ledger.balance(discord_user(BOB))
        assert balance.available == 180 + 90
        assert answer["content"] == messages.granted(f"<@{BOB}>", 90, balance)
        entry = bot.core.ledger.history(discord_user(BOB), limit=1)[0]
        assert (entry.kind, entry.actor, entry.note) == ("grant", f"discord:{ALICE}", "prize")


async def test_manage_server_never_mints_nor_reads_other_places(open_bot):
    """The escalation: anyone can invite the bot to a server they own. Manage Server there must not raise
    any balance or allowance, nor show another server's (or every account's) report; refusals are private."""
    async with open_bot(ADMINS=f"discord:{OPERATOR}") as bot:
        for sub, options in (("grant", [_user_option(ALICE), {"name": "credits", "type": 4, "value": 1_000_000}]),
                             ("grant", [_user_option(BOB), {"name": "credits", "type": 4, "value": 90}]),
                             ("allowance", [_user_option(ALICE), {"name": "credits", "type": 4, "value": 999_999}])):
            answer = await _private_answer(bot, await bot.admin(sub, ALICE, options, resolved_users=(ALICE, BOB),
                                                          permissions=MANAGE_GUILD))
            assert answer["content"].startswith("Only the bot's operators can do that")
            assert "Nothing was changed" in answer["content"]
        for who in (ALICE, BOB):
            assert [e.kind for e in bot.core.ledger.history(discord_user(who))] in ([], ["refill"])
            assert bot.core.ledger.balance(discord_user(who)).allowance == 180

        # a budget is the operator's too
        budget = await bot.admin("budget", ALICE, [{"name": "credits", "type": 4, "value": 100_000}],
                           permissions=MANAGE_GUILD)
        assert (await _private_answer(bot, budget))["content"].startswith("Only the bot's operators")
        assert bot.core.budgets.status(f"discord:{GUILD}").amount is None

        # someone else's server, a Slack workspace, every account: refused, no file
        for scope in (f"discord:{OTHER_GUILD}", "slack:T0001", "all", "global"):
            report = await bot.admin("report", ALICE, [{"name": "scope", "type": 3, "value": scope}],
                               permissions=MANAGE_GUILD)
            answer = await _private_answer(bot, report)
            assert not answer["_files"], scope
            assert "Nothing was changed" in answer["content"] or "operators" in answer["content"]

        # the same member in a server they do not manage is nobody special
        bot.interactions.guild_id = OTHER_GUILD
        answer = await _private_answer(bot, await bot.admin("report", ALICE))
        assert answer["content"] == "Sorry, only image-bot admins can do that. Nothing was changed."
        assert bot.core.ledger.verify() == []


async def test_a_community_admin_reads_their_own_servers_report(open_bot):
    async with open_bot() as bot:
        await bot.final_edit(await bot.imagine(BOB, "a red kite"))
        await bot.idle()
        bot.interactions.guild_id = OTHER_GUILD
        await bot.final_edit(await bot.imagine(CAROL, "a blue heron"))
        await bot.idle()
        bot.interactions.guild_id = GUILD
        answer = await _private_answer(bot, await bot.admin("report", ALICE, permissions=MANAGE_GUILD))
        assert answer["content"].startswith("This server spent 18 credits for ")
        assert f"<@{BOB}> 18 (1 image)" in answer["content"] and "By channel: <#555555555555555555> 18" in answer[
            "content"]
        rows = _report_rows(answer)
        assert [(r["account"], r["credits_spent"]) for r in rows] == [(f"discord:{BOB}", "18")]  # not CAROL's


async def test_a_community_admin_bans_a_member_in_their_server_only(open_bot):
    async with open_bot() as bot:
        answer = await _private_answer(bot, await bot.admin("ban", ALICE, [_user_option(BOB)], resolved_users=(BOB,),
                                                      permissions=MANAGE_GUILD))
        assert answer["content"] == f"<@{BOB}> can no longer use the image bot here."

        refused = await bot.imagine(BOB, "a banned fox")
        answer = await _private_answer(bot, refused)
        assert answer["content"] == "A server admin has turned the image bot off for you here."

        bot.interactions.guild_id = OTHER_GUILD  # another server: the ban does not reach
        elsewhere = await bot.imagine(BOB, "a free fox")
        await bot.final_edit(elsewhere)
        await bot.idle()
        jobs = bot.core.jobs.recent(discord_user(BOB).key)
        assert [j.prompt for j in jobs] == ["a free fox"] and jobs[0].state is JobState.DELIVERED
        assert bot.core.ledger.balance(discord_user(BOB)).balance == 180 - 18

        # and a member with Manage Server in the other server cannot lift a ban in the first
        answer = await _private_answer(bot, await bot.admin("unban", CAROL, [_user_option(BOB)], resolved_users=(BOB,),
                                                      permissions=MANAGE_GUILD))
        assert answer["content"] == f"<@{BOB}> was not banned here."
        assert bot.core.places.is_banned(f"discord:{GUILD}", discord_user(BOB).key)


async def test_a_server_budget_of_36_allows_exactly_two_jobs(open_bot):
    async with open_bot(ADMINS=f"discord:{OPERATOR}") as bot:
        answer = await _private_answer(bot, await bot.admin("budget", OPERATOR, [
            {"name": "credits", "type": 4, "value": 36}, {"name": "period", "type": 3, "value": "month"}]))
        assert answer["content"].startswith(f"Budget set: `discord:{GUILD}`: 36 per month")

        for user, prompt in ((ALICE, "first light"), (BOB, "second light")):
            await bot.final_edit(await bot.imagine(user, prompt))
            await bot.idle()
        refused = await bot.imagine(CAROL, "third light")
        answer = await _private_answer(bot, refused)
        assert answer["content"].startswith("This server's image budget for ")
        assert "is used up; it refills on 1 " in answer["content"] and "Nothing was charged" in answer["content"]
        await bot.idle()

        assert [j.state for j in bot.core.jobs.recent()] == [JobState.DELIVERED] * 2
        assert bot.core.ledger.balance(discord_user(CAROL)).balance == 180  # nothing charged
        budget = bot.core.budgets.status(f"discord:{GUILD}")
        assert (budget.spent, budget.held, budget.remaining) == (36, 0, 0)
        assert bot.core.ledger.verify() == []

        # /credits shows the balance and what the server has left
        answer = await _private_answer(bot, await bot.command("credits", CAROL))
        assert answer["content"].startswith("You have 180 credits.")
        assert "This server has 0 of 36 image credits left for " in answer["content"]

        # a server elsewhere is not held back by this one's budget
        bot.interactions.guild_id = OTHER_GUILD
        await bot.final_edit(await bot.imagine(CAROL, "third light elsewhere"))
        await bot.idle()
        assert bot.core.ledger.balance(discord_user(CAROL)).balance == 180 - 18


async def test_numbers_past_reason_from_discord_get_a_plain_refusal(open_bot):
    """Discord keeps its own number options within their ranges, but a payload is the client's to write: a
    budget, member cap or grant of 10^40 reaches the core as it is, and the core refuses it in one line."""
    huge = 10**40
    async with open_bot(ADMINS=f"discord:{OPERATOR}") as bot:
        for sub, options, users in (
            ("budget", [{"name": "credits", "type": 4, "value": huge}], ()),
            ("member-cap", [{"name": "credits", "type": 4, "value": huge}], ()),
            ("grant", [_user_option(BOB), {"name": "credits", "type": 4, "value": huge}], (BOB,)),
            ("grant", [_user_option(BOB), {"name": "credits", "type": 4, "value": -huge}], (BOB,)),
        ):
            answer = await _private_answer(bot, await bot.admin(sub, OPERATOR, options, resolved_users=users))
            assert "1,000,000,000" in answer["content"] and "Nothing was changed." in answer["content"], answer
            assert "\n" not in answer["content"] and "went wrong" not in answer["content"]
        assert bot.core.budgets.all() == [] and bot.core.ledger.history(discord_user(BOB)) == []


async def test_credits_and_help_answer_privately(open_bot):
    async with open_bot() as bot:
        answer = await _private_answer(bot, await bot.command("credits", ALICE))
        assert answer["content"].startswith("You have 180 credits.")

        answer = await _private_answer(bot, await bot.command("help", ALICE))
        assert "/imagine <prompt>" in answer["content"] and "/credits" in answer["content"]
        assert "--ar" in answer["content"]
        assert "/imagine-admin" not in answer["content"]

        answer = await _private_answer(bot, await bot.command("help", BOB, permissions=MANAGE_GUILD))
        assert "/imagine-admin ban" in answer["content"]


async def test_the_admin_group_is_hidden_outside_servers_and_from_non_managers(open_bot):
    async with open_bot() as bot:
        admin = next(c for c in bot.client.tree.get_commands() if c.name == "imagine-admin")
        payload = admin.to_dict(bot.client.tree)
        assert int(payload["default_member_permissions"]) == MANAGE_GUILD
        assert payload["contexts"] == [0]  # guild only
