"""The operator's gateway account through the real discord.py stack: a 402 pauses new jobs (nothing charged),
the operators hear about it once, /healthz says degraded, and jobs resume by themselves on a refill."""

from __future__ import annotations

import asyncio

import httpx

from imagine_bot.core.web.server import build_web_app, start_web

from .conftest import ALICE, BOB, CAROL, discord_user

OPERATOR = "444444444444444444"
PAUSED_TEXT = "Image making is paused"


async def _private(bot, payload) -> str:
    callback = await bot.callback(payload)
    data = callback.json["data"]
    assert data["flags"] & 64
    return data["content"]


async def test_402_pauses_tells_operators_once_and_resumes_on_refill(open_bot, sandbox):
    async with open_bot(ADMINS=f"discord:{OPERATOR}", GATEWAY_BALANCE_CHECK_S=0.2) as bot:
        runner, port = await start_web(build_web_app(bot.core), "127.0.0.1", 0)
        try:
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
                assert health["status"] == "ok"

                await bot.final_edit(await bot.imagine(ALICE, "before the drought"))
                await bot.idle()

                sandbox.credits = 0  # the operator's ModKie account is empty: createTask answers 402
                # whichever notices first pauses new jobs: this job's createTask (a 402: the job fails and is
                # refunded) or the balance read every 0.2 s (the job is refused before anything is reserved);
                # the createTask path alone, with no balance reads racing it: tests/slack/test_gateway_account.py
                hit = await bot.imagine(ALICE, "hits the 402")
                answer = await bot.callback(hit)
                await bot.idle()
                jobs = bot.core.jobs.recent()
                if len(jobs) == 2:  # its createTask noticed: the job failed, refunded, told in its response
                    assert answer.json["type"] == 5
                    assert jobs[0].error_code == "gateway_out_of_credits" and jobs[0].state.final
                    failed = await bot.final_edit(hit)
                    assert "image budget is used up for now" in failed.json["content"]
                else:  # the balance read noticed first: refused privately, before anything was reserved
                    assert len(jobs) == 1
                    if answer.json["type"] == 4:  # before the answer
                        refusal = answer.json["data"]
                    else:  # between the public answer and the job: the placeholder goes, a private followup
                        await bot.fake.wait_for("DELETE", rf"/webhooks/\d+/{hit['token']}/messages/@original")
                        refusal = (await bot.fake.wait_for("POST", rf"/webhooks/\d+/{hit['token']}$"))[0].json
                    assert refusal["flags"] & 64 and refusal["content"].startswith(PAUSED_TEXT)
                created = len(jobs)

                # while paused: refused privately before anything is reserved or sent
                for user in (BOB, CAROL, ALICE):
                    assert (await _private(bot, await bot.imagine(user, "while paused"))).startswith(PAUSED_TEXT)
                await bot.idle()
                assert sandbox.requests["createTask"] == created  # nothing was sent while paused
                assert [bot.core.ledger.balance(discord_user(u)).balance for u in (ALICE, BOB, CAROL)] == [
                    180 - 18, 180, 180]
                assert bot.core.ledger.verify() == []

                health = (await http.get(f"http://127.0.0.1:{port}/healthz"))
                assert health.status_code == 200  # degraded, not down
                assert health.json()["status"] == "degraded"
                assert health.json()["gateway"]["paused"] == "out_of_credits"

                # the operators were told once, by DM
                await bot.core.alerts.wait_sent()
                dm = bot.fake.dm_channels[OPERATOR]
                told = bot.fake.find("POST", rf"/channels/{dm}/messages")
                assert len(told) == 1 and "out of credits" in told[0].json["content"]

                sandbox.credits = 10_000  # refilled: submissions resume by themselves
                await asyncio.wait_for(bot.core.account.resumed.wait(), 10)
                await bot.final_edit(await bot.imagine(BOB, "after the rain"))
                await bot.idle()
                assert bot.core.ledger.balance(discord_user(BOB)).balance == 180 - 18
                assert (await http.get(f"http://127.0.0.1:{port}/healthz")).json()["status"] == "ok"
                paused_dms = [c for c in bot.fake.find("POST", rf"/channels/{dm}/messages")
                              if "out of credits" in c.json["content"]]
                assert len(paused_dms) == 1
        finally:
            await runner.cleanup()
