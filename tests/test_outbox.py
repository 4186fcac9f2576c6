"""The outbox on its own: latest wins, the final status is never dropped, Retry-After, shared budgets, ticks.

The sends are our own coroutines here (the outbox is the boundary under test); the Slack and Discord
suites drive it through the fake platforms.
"""

from __future__ import annotations

import asyncio
import time

from imagine_bot.core.errors import ChatRateLimited
from imagine_bot.core.jobs.lull import Lull
from imagine_bot.core.jobs.outbox import FINAL_ATTEMPTS, Outbox, Pace

FAST = Pace("w1", rate_per_s=1000.0, burst=1000, min_interval_s=0.0)


class Channel:
    """Records what was sent; a send can be made to block until released, or to answer 429 first."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []
        self.started: list[str] = []
        self.gate: asyncio.Event | None = None
        self.limited: dict[str, float] = {}  # text -> Retry-After, answered once
        self.changed = asyncio.Event()

    def send(self, text: str):
        async def go() -> None:
            self.started.append(text)
            if text in self.limited:
                raise ChatRateLimited(self.limited.pop(text))
            if self.gate is not None and text.startswith("slow"):
                await self.gate.wait()
            self.sent.append((text, time.monotonic()))
            self.changed.set()
        return go

    async def wait_sent(self, count: int) -> None:
        while len(self.sent) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)

    @property
    def texts(self) -> list[str]:
        return [text for text, _ in self.sent]


async def test_latest_wins_while_a_send_is_in_flight():
    outbox, chat = Outbox(), Channel()
    chat.gate = asyncio.Event()
    outbox.put("j1", chat.send("slow 1"), pace=FAST)
    await asyncio.sleep(0)  # the worker starts the first send, which blocks
    for n in (2, 3, 4):
        outbox.put("j1", chat.send(f"status {n}"), pace=FAST)
    assert chat.started == ["slow 1"]
    chat.gate.set()
    await outbox.wait_idle()
    assert chat.texts == ["slow 1", "status 4"]  # 2 and 3 were replaced while waiting
    assert outbox.coalesced == 2


async def test_the_final_status_goes_after_the_send_in_flight_and_closes_the_job():
    outbox, chat = Outbox(), Channel()
    chat.gate = asyncio.Event()
    slow_pace = Pace("w1", rate_per_s=1000.0, burst=1000, min_interval_s=60.0)
    outbox.put("j1", chat.send("slow progress"), pace=slow_pace)
    await asyncio.sleep(0)
    outbox.put("j1", chat.send("waiting progress"), pace=slow_pace)
    outbox.put("j1", chat.send("failed"), pace=slow_pace, final=True)
    outbox.put("j1", chat.send("too late"), pace=slow_pace)  # nothing after the final
    chat.gate.set()
    await outbox.wait_idle()
    # the final one ignores the 60 s interval, replaced the waiting one and came after the one in flight
    assert chat.texts == ["slow progress", "failed"]


async def test_a_429_pauses_the_whole_budget_for_retry_after_and_the_status_is_sent_again():
    outbox, chat = Outbox(), Channel()
    chat.limited["j1 status"] = 0.3
    outbox.put("j1", chat.send("j1 status"), pace=FAST)
    await asyncio.sleep(0.01)
    refused_at = time.monotonic()
    outbox.put("j2", chat.send("j2 status"), pace=FAST)  # another job of the same workspace
    outbox.put("j3", chat.send("j3 status"), pace=Pace("w2", 1000.0, 1000, 0.0))  # another workspace
    await outbox.wait_idle()
    sent = dict(chat.sent)
    assert set(sent) == {"j1 status", "j2 status", "j3 status"}
    assert sent["j1 status"] - refused_at >= 0.25  # retried only after Retry-After
    assert sent["j2 status"] - refused_at >= 0.25  # the workspace's budget waited too
    assert sent["j3 status"] < sent["j2 status"]  # other workspaces are not held up


async def test_a_rate_limited_final_status_is_retried_not_dropped():
    outbox, chat = Outbox(), Channel()
    chat.limited["done"] = 0.05
    outbox.put("j1", chat.send("done"), pace=FAST, final=True)
    await outbox.wait_idle()
    assert chat.started == ["done", "done"] and chat.texts == ["done"]


async def test_jobs_of_one_workspace_share_its_budget_fairly():
    outbox, chat = Outbox(), Channel()
    pace = Pace("w1", rate_per_s=20.0, burst=1, min_interval_s=0.0)
    for n in range(6):
        outbox.put(f"j{n}", chat.send(f"j{n}"), pace=pace)
    await outbox.wait_idle()
    # one at a time at 20 a second: the six went out in the order they came, spread over about 0.25 s
    assert chat.texts == [f"j{n}" for n in range(6)]
    times = [at for _, at in chat.sent]
    assert times[-1] - times[0] >= 0.2


async def test_a_job_gets_at_most_one_status_per_interval_newest_first():
    outbox, chat = Outbox(), Channel()
    pace = Pace("w1", rate_per_s=1000.0, burst=1000, min_interval_s=0.2)
    outbox.put("j1", chat.send("first"), pace=pace)
    await chat.wait_sent(1)
    for n in range(5):
        outbox.put("j1", chat.send(f"later {n}"), pace=pace)
    await outbox.wait_idle()
    assert chat.texts == ["first", "later 4"]
    assert chat.sent[1][1] - chat.sent[0][1] >= 0.18


async def test_ticks_refresh_a_quiet_status_and_slow_down_when_many_jobs_share_the_budget():
    outbox, chat = Outbox(), Channel()
    pace = Pace("w1", rate_per_s=1000.0, burst=1000, min_interval_s=0.0, tick_s=0.02)
    outbox.put("j1", chat.send("at 0"), pace=pace, refresh=lambda later: chat.send(f"tick {later >= 0.02}"))
    await chat.wait_sent(3)
    assert chat.texts[:3] == ["at 0", "tick True", "tick True"]
    outbox.abort("j1")

    busy = Pace("w2", rate_per_s=1.0, burst=1, min_interval_s=1.0, tick_s=10.0)
    for n in range(40):
        outbox.put(f"k{n}", chat.send(f"k{n}"), pace=busy, refresh=lambda later: chat.send("tick"))
    # 40 jobs ticking on 1 edit a second may use half of it: each ticks every 80 s, not every 10 s
    assert outbox.tick_interval(busy) == 80.0
    await outbox.close()


async def test_hold_drops_what_waits_and_abort_cancels_the_send_in_flight():
    outbox, chat = Outbox(), Channel()
    chat.gate = asyncio.Event()
    pace = Pace("w1", rate_per_s=1000.0, burst=1000, min_interval_s=10.0)
    outbox.put("j1", chat.send("slow 1"), pace=pace)
    await asyncio.sleep(0)
    outbox.put("j1", chat.send("waiting"), pace=pace)
    outbox.hold("j1")  # delivering: the waiting status goes, the one in flight may finish
    outbox.put("j1", chat.send("progress after hold"), pace=pace)
    assert outbox.pending("j1")
    chat.gate.set()
    await outbox.wait_idle()
    assert chat.texts == ["slow 1"]

    chat.gate = asyncio.Event()
    outbox.put("j2", chat.send("slow 2"), pace=pace)
    await asyncio.sleep(0)
    outbox.abort("j2")
    await outbox.wait_idle()
    assert "slow 2" in chat.started and "slow 2" not in chat.texts
    await outbox.close()


async def test_shutting_down_sends_the_final_statuses_and_drops_the_rest():
    outbox, chat = Outbox(), Channel()
    pace = Pace("w1", rate_per_s=1000.0, burst=1000, min_interval_s=10.0)
    outbox.put("j1", chat.send("j1 first"), pace=pace)
    outbox.put("j2", chat.send("j2 first"), pace=pace)
    await chat.wait_sent(2)
    outbox.put("j1", chat.send("j1 progress"), pace=pace)  # waits its 10 s
    outbox.put("j2", chat.send("j2 failed"), pace=pace, final=True)
    await asyncio.wait_for(outbox.flush_finals(), 5)
    assert sorted(chat.texts) == ["j1 first", "j2 failed", "j2 first"]
    await outbox.close()


async def test_a_final_status_rate_limited_eight_times_is_given_up_and_logged(caplog):
    outbox, chat = Outbox(), Channel()
    tries: list[float] = []

    async def always_limited() -> None:
        tries.append(time.monotonic())
        raise ChatRateLimited(0.01)

    outbox.put("j1", always_limited, pace=FAST, final=True)
    await asyncio.wait_for(outbox.wait_idle(), 5)
    assert len(tries) == FINAL_ATTEMPTS == 8
    assert "job j1: final status not sent after 8 rate-limited attempts" in caplog.text
    assert not outbox.pending("j1") and outbox.sent == 0
    outbox.put("j2", chat.send("the next job"), pace=FAST)  # the budget is not stuck
    await asyncio.wait_for(outbox.wait_idle(), 5)
    assert chat.texts == ["the next job"]


async def test_a_status_that_fails_otherwise_is_logged_and_not_tried_again(caplog):
    outbox, chat = Outbox(), Channel()
    tries: list[str] = []

    def failing(text: str):
        async def send() -> None:
            tries.append(text)
            raise RuntimeError("channel_not_found")
        return send

    outbox.put("j1", failing("failed"), pace=FAST, final=True)
    outbox.put("j2", failing("progress"), pace=FAST)
    await asyncio.wait_for(outbox.wait_idle(), 5)
    assert sorted(tries) == ["failed", "progress"]  # once each: only a 429 is tried again
    assert caplog.text.count("status message failed") == 2 and outbox.sent == 0
    outbox.put("j2", chat.send("a later status"), pace=FAST)  # the job's outbox goes on
    await asyncio.wait_for(outbox.wait_idle(), 5)
    assert chat.texts == ["a later status"]
    await outbox.close()


async def test_statuses_put_during_a_burst_start_from_one_task_after_it_newest_first_and_aborted_ones_never():
    """While commands are being answered no worker starts per job: one task waits for the lull for all of
    them; then each job's newest status goes, in the order the jobs came, and a job aborted meanwhile sends
    nothing."""
    lull = Lull(quiet_s=0.0, most_s=3600)
    outbox, chat = Outbox(lull=lull), Channel()
    with lull.command():
        for n in range(3):
            outbox.put(f"j{n}", chat.send(f"accepted {n}"), pace=FAST)
        outbox.put("j0", chat.send("queued 0"), pace=FAST)
        outbox.abort("j1")
        for _ in range(20):
            await asyncio.sleep(0)
        assert lull.waiting == 1 and chat.started == [] and outbox.busy == 2
    await outbox.wait_idle()
    assert chat.texts == ["queued 0", "accepted 2"]
    assert outbox.coalesced == 2  # accepted 0 replaced, accepted 1 dropped
