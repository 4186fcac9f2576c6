"""Admission: a fair FIFO queue with a global cap and a sliding-window rate limit in front of createTask."""

from __future__ import annotations

import asyncio

from imagine_bot.core.jobs.admission import Admission
from imagine_bot.core.jobs.ratelimit import SlidingWindow, TokenBucket


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=3, per=10.0, clock=lambda: now[0])
    for _ in range(3):
        assert bucket.wait_time() == 0.0
        bucket.take()
    assert abs(bucket.wait_time() - 10 / 3) < 1e-9  # one token every 3.33 s
    now[0] += 10 / 3
    assert bucket.wait_time() == 0.0
    now[0] += 1000
    bucket.take()
    assert bucket.tokens <= 3  # never more than the burst


async def test_fifo_with_a_cap_and_places_reported():
    admission = Admission(max_active=2, rate=1000)
    order: list[str] = []
    places: dict[str, list[int]] = {}

    async def job(name: str, hold: asyncio.Event) -> None:
        async def report(place: int) -> None:
            places.setdefault(name, []).append(place)

        await admission.enter(name, report)
        order.append(name)
        await hold.wait()
        admission.leave(name)

    holds = {n: asyncio.Event() for n in "abcde"}
    tasks = []
    for name in "abcde":
        tasks.append(asyncio.create_task(job(name, holds[name])))
        await asyncio.sleep(0)  # arrive in this order
    await asyncio.sleep(0.01)
    assert order == ["a", "b"] and admission.waiting == 3
    assert places["c"] == [1] and places["d"] == [2] and places["e"] == [3]
    holds["a"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "c"]
    assert places["d"][-1] == 1 and places["e"][-1] == 2  # everyone moved up and was told
    for hold in holds.values():
        hold.set()
    await asyncio.gather(*tasks)
    assert order == list("abcde") and not admission.active


async def test_a_cancelled_waiter_leaves_the_queue():
    admission = Admission(max_active=1, rate=1000)
    await admission.enter("a")
    waiter = asyncio.create_task(admission.enter("b"))
    await asyncio.sleep(0.01)
    assert admission.position("b") == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert admission.position("b") is None
    admission.leave("a")
    await asyncio.wait_for(admission.enter("c"), 1)
    assert admission.active == {"c"}


async def test_rate_limit_holds_the_head_of_the_queue():
    admission = Admission(max_active=100, rate=2, per=0.3)
    admitted: list[str] = []

    async def job(name: str) -> None:
        await admission.enter(name)
        admitted.append(name)

    tasks = [asyncio.create_task(job(n)) for n in "abcd"]
    await asyncio.sleep(0.05)
    assert admitted == ["a", "b"]  # the burst; c and d wait for tokens
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert admitted == ["a", "b", "c", "d"]


async def test_rate_limiter_serves_urgent_callers_first_within_the_rate():
    import time

    from imagine_bot.core.jobs.ratelimit import RateLimiter

    limiter = RateLimiter(rate=50, burst=2)
    order: list[str] = []

    async def call(name: str, urgent: bool = False) -> None:
        await limiter.acquire(urgent=urgent)
        order.append(name)

    started = time.monotonic()
    tasks = [asyncio.create_task(call(f"poll{n}")) for n in range(4)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(call(f"confirm{n}", urgent=True)) for n in range(2)]
    cancelled = asyncio.create_task(call("gone"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    assert order == ["poll0", "poll1", "confirm0", "confirm1", "poll2", "poll3"]  # the burst, then urgent first
    assert elapsed >= 4 / 50 * 0.9  # four calls past the burst, 50 a second
    assert limiter.waiting == 0


async def test_confirmations_may_use_the_reserve_that_routine_polls_leave():
    from imagine_bot.core.jobs.ratelimit import RateLimiter

    limiter = RateLimiter(rate=5, burst=2, urgent_burst=5)
    routine = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert sum(t.done() for t in routine) == 2  # routine polls: a burst of 2 only
    urgent = [asyncio.create_task(limiter.acquire(urgent=True)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert all(t.done() for t in urgent)  # confirmations: the rest of the bucket at once
    assert not routine[2].done()
    await asyncio.wait_for(routine[2], timeout=2)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def busiest_window(limiter, clock: FakeClock, *, per: float = 10.0, seconds: float = 60.0) -> int:
    """Saturating demand (always someone waiting) for ``seconds``: the most admissions any ``per``-second
    window saw."""
    times: list[float] = []
    while clock.now < seconds:
        while limiter.wait_time() <= 0.0:
            limiter.take()
            times.append(clock.now)
        clock.now = round(clock.now + 0.01, 2)
    return max(sum(1 for t in times if start <= t < start + per) for start in times)


def test_create_rate_holds_in_every_10_second_window():
    clock = FakeClock()
    assert busiest_window(SlidingWindow(18, 10.0, clock), clock) == 18
    # what it replaced: a full bucket plus its refill let about twice the limit through the first window
    clock = FakeClock()
    assert busiest_window(TokenBucket(18, 10.0, clock), clock) > 30


async def settle() -> None:
    """Let every waiter in the line look again (each hand-over takes a few turns of the loop)."""
    for _ in range(200):
        await asyncio.sleep(0)


async def test_the_admission_itself_never_exceeds_the_window():
    clock = FakeClock()
    admission = Admission(max_active=1000, rate=3, per=10.0, clock=clock)
    admitted: list[float] = []

    async def job(name: str) -> None:
        await admission.enter(name)
        admitted.append(clock.now)
        admission.leave(name)  # done at once: only the window holds the line back

    line = [asyncio.create_task(job(f"j{n}")) for n in range(9)]
    await settle()
    while clock.now < 40 and len(admitted) < 9:
        clock.now = round(clock.now + 0.5, 1)
        # a job resumed after a restart takes a slot and ends: the line looks again at the (fake) time
        admission.hold("resumed")
        admission.leave("resumed")
        await settle()
    await asyncio.gather(*line)
    assert admitted == [0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 20.0, 20.0, 20.0]


async def test_a_refused_job_goes_back_first_and_everyone_waits_for_retry_after():
    admission = Admission(max_active=1, rate=1000)
    order: list[str] = []

    async def job(name: str, first: bool = False) -> None:
        await admission.enter(name, first=first)
        order.append(name)
        admission.leave(name)

    await admission.enter("a")  # a is at the gateway; b and c wait behind it
    waiting = [asyncio.create_task(job("b")), asyncio.create_task(job("c"))]
    await asyncio.sleep(0.01)
    admission.leave("a")  # the gateway said 429 to a: back in line at the head, nobody goes for 0.2 s
    admission.pause(0.2)
    again = asyncio.create_task(job("a", first=True))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(asyncio.gather(again, *waiting), 5)
    assert order == ["a", "b", "c"]
    assert loop.time() - started >= 0.19
