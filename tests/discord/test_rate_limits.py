"""Discord status edits never hold up a job: they go through the core's outbox, in the background.

The issue's scenario on Discord: ``MAX_ACTIVE_JOBS=1``, three short jobs, and a fake Discord that answers
every status edit (a PATCH of the placeholder with text only) after 5 s. Before the outbox, the job
awaited its status edits, so each job started (and held the gateway slot) 5 s after the one before.
"""

from __future__ import annotations

import asyncio

from .conftest import ALICE


def status_edit(call) -> bool:
    body = call.json if isinstance(call.json, dict) else {}
    return "content" in body and "embeds" not in body and not call.files


async def test_every_job_reaches_the_gateway_while_the_status_edits_hang(open_bot, sandbox):
    async with open_bot(MAX_ACTIVE_JOBS=1, MAX_ACTIVE_JOBS_PER_USER=3) as bot:
        bot.fake.slow("PATCH", r"/webhooks/.*/messages/@original", 5.0, where=status_edit)
        submitted: list[str] = []
        three = asyncio.Event()
        create_task = bot.core.gateway.create_task

        async def noting(*args, **kwargs):  # the real call, noted
            task_id = await create_task(*args, **kwargs)
            submitted.append(task_id)
            if len(submitted) == 3:
                three.set()
            return task_id

        bot.core.gateway.create_task = noting
        for n in range(3):
            await bot.imagine(ALICE, f"short job {n}")
        await asyncio.wait_for(three.wait(), 4.0)
        assert sandbox.requests["createTask"] == 3
        # one after the other through the single slot, while not one status edit has been answered
        assert not [c for c in bot.fake.find("PATCH", r"/messages/@original") if status_edit(c)]
