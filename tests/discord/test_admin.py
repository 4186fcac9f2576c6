"""/credits, /help and the /imagine-admin group (ADMINS, or Manage Server in that server)."""

from __future__ import annotations

import csv
import io

from imagine_bot.core import messages

from .conftest import ALICE, BOB, discord_user

MANAGE_GUILD = 0x20


def _user_option(user_id: str) -> dict:
    return {"name": "user", "type": 6, "value": user_id}


async def _private_answer(bot, payload) -> dict:
    callback = await bot.callback(payload)
    assert callback.json["type"] == 4
    data = callback.json["data"]
    assert data["flags"] & 64, "only the user who asked should see this"
    assert data["allowed_mentions"] == {"parse": []}
    return {**data, "_files": callback.files}


async def test_a_member_without_rights_is_refused_and_nothing_changes(open_bot):
    async with open_bot() as bot:
        sent = bot.admin("grant", ALICE, [_user_option(BOB), {"name": "credits", "type": 4, "value": 90}],
                         resolved_users=(BOB,))
        answer = await _private_answer(bot, sent)
        assert answer["content"] == "Sorry, only image-bot admins can do that. Nothing was changed."
        assert bot.core.ledger.history(discord_user(BOB)) == []
        report = bot.admin("report", ALICE)
        answer = await _private_answer(bot, report)
        assert "only image-bot admins" in answer["content"] and not answer["_files"]


async def test_admins_listed_in_ADMINS_may_grant(open_bot):
    async with open_bot(ADMINS=f"discord:{ALICE}") as bot:
        sent = bot.admin("grant", ALICE, [_user_option(BOB), {"name": "credits", "type": 4, "value": 90},
                                          {"name": "note", "type": 3, "value": "prize"}], resolved_users=(BOB,))
        answer = await _private_answer(bot, sent)
        balance = bot.core.ledger.balance(discord_user(BOB))
        assert balance.available == 180 + 90
        assert answer["content"] == messages.granted(f"<@{BOB}>", 90, balance)
        entry = bot.core.ledger.history(discord_user(BOB), limit=1)[0]
        assert (entry.kind, entry.actor, entry.note) == ("grant", f"discord:{ALICE}", "prize")


async def test_members_with_manage_server_are_admins_there(open_bot):
    async with open_bot() as bot:
        sent = bot.admin("allowance", ALICE, [_user_option(BOB), {"name": "credits", "type": 4, "value": 360}],
                         resolved_users=(BOB,), permissions=MANAGE_GUILD)
        answer = await _private_answer(bot, sent)
        balance = bot.core.ledger.balance(discord_user(BOB))
        assert balance.allowance == 360
        assert answer["content"] == messages.allowance_set(f"<@{BOB}>", balance)

        back = bot.admin("allowance", ALICE, [_user_option(BOB)], resolved_users=(BOB,), permissions=MANAGE_GUILD)
        await _private_answer(bot, back)
        assert bot.core.ledger.balance(discord_user(BOB)).allowance == 180

        report = bot.admin("report", ALICE, permissions=MANAGE_GUILD)
        answer = await _private_answer(bot, report)
        assert answer["content"].startswith("Usage report:")
        (csv_file,) = answer["_files"]
        assert csv_file.filename.endswith(".csv")
        rows = list(csv.DictReader(io.StringIO(csv_file.data.decode())))
        assert f"discord:{BOB}" in {r["account"] for r in rows}


async def test_credits_and_help_answer_privately(open_bot):
    async with open_bot() as bot:
        answer = await _private_answer(bot, bot.command("credits", ALICE))
        assert answer["content"].startswith("You have 180 credits.")

        answer = await _private_answer(bot, bot.command("help", ALICE))
        assert "/imagine <prompt>" in answer["content"] and "/credits" in answer["content"]
        assert "--ar" in answer["content"]
        assert "/imagine-admin" not in answer["content"]

        answer = await _private_answer(bot, bot.command("help", BOB, permissions=MANAGE_GUILD))
        assert "/imagine-admin grant" in answer["content"]
