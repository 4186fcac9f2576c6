"""Admission: a fair FIFO queue with a global cap and a token bucket in front of createTask."""

from __future__ import annotations

import asyncio

from core.admission import Admission, TokenBucket


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


def test_rate_limiter_spaces_calls_after_a_burst():
    from core.admission import RateLimiter

    now = [100.0]
    limiter = RateLimiter(rate=4, burst=2, clock=lambda: now[0])
    waits = [limiter.reserve() for _ in range(6)]
    assert waits[:2] == [0.0, 0.0]  # the burst
    assert waits[2:] == [0.25, 0.5, 0.75, 1.0]  # then one every 1/rate seconds, in order
    now[0] += 10  # idle time does not bank more than the burst
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 0.25]
