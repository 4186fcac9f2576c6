"""Rate limits shared by the pipeline: the sliding window that admits ``createTask`` calls
(``core.jobs.admission``) and the per-workspace budgets of chat edits (``core.jobs.outbox``).

A ``RateLimiter`` hands out slots in order; a 429's ``Retry-After`` pauses it for everyone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: int, per: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(rate)
        self.tokens = float(rate)
        self.fill_per_s = rate / per
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.fill_per_s)
        self.stamp = now

    def wait_time(self, keep: float = 0.0) -> float:
        """Seconds until a token can be taken leaving ``keep`` tokens in the bucket (0 when it can now)."""
        self._refill()
        need = 1.0 + keep
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.fill_per_s

    def take(self) -> None:
        self._refill()
        self.tokens -= 1

    def take_until(self, seconds: float) -> None:
        """Empty the bucket so that the next token comes ``seconds`` from now at the earliest."""
        self._refill()
        self.tokens = min(self.tokens, 1.0 - seconds * self.fill_per_s)


class SlidingWindow:
    """At most ``rate`` events in any window of ``per`` seconds: the times of the last ``rate`` events are
    kept, and the next may go once the oldest of them is ``per`` seconds old."""

    def __init__(self, rate: int, per: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.per = per
        self.clock = clock
        self.stamps: deque[float] = deque(maxlen=rate)

    def wait_time(self) -> float:
        """Seconds until the next event may happen (0 when it can now)."""
        if len(self.stamps) < self.rate:
            return 0.0
        return max(0.0, self.stamps[0] + self.per - self.clock())

    def take(self) -> None:
        self.stamps.append(self.clock())


class RateLimiter:
    """A shared budget of ``rate`` calls a second for every job's recordInfo.

    So a thousand jobs in flight still ask the gateway no more than ``rate`` times a second on average
    (recordInfo allows about 10/s per key); each job is simply polled less often. Callers wait in two
    FIFO lines. ``urgent`` callers (confirming a callback: an image is ready) go first and may use the
    whole bucket (``urgent_burst``), so a cluster of finished jobs is confirmed at once; routine polls
    leave that reserve alone and get at most ``burst`` in a row.
    """

    def __init__(self, rate: float, burst: int = 1, urgent_burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = max(1, burst)
        capacity = max(self.burst, urgent_burst or self.burst)
        self.bucket = TokenBucket(capacity, capacity / rate, clock)
        self._keep = (0.0, float(capacity - self.burst))  # tokens each line leaves: urgent, routine
        self._lines: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (deque(), deque())
        self._timer: asyncio.TimerHandle | None = None

    def _waiting_in(self, line: int) -> int:
        return sum(not f.done() for f in self._lines[line])

    @property
    def waiting(self) -> int:
        return self._waiting_in(0) + self._waiting_in(1)

    async def acquire(self, *, urgent: bool = False) -> None:
        line = 0 if urgent else 1
        ahead = self._waiting_in(0) + (self._waiting_in(1) if line else 0)  # an urgent caller passes polls
        if not ahead and self.bucket.wait_time(self._keep[line]) == 0.0:
            self.bucket.take()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lines[line].append(future)
        self._schedule()
        await future  # a cancelled waiter is skipped when its turn comes

    def pause(self, seconds: float) -> None:
        """Let no caller through for ``seconds`` (the server answered 429 with this Retry-After)."""
        self.bucket.take_until(seconds)
        if self.waiting:
            self._schedule()

    def _schedule(self) -> None:
        """Wake at the first moment a waiting caller can go (sooner if an urgent one just came)."""
        loop = asyncio.get_running_loop()
        waits = [self.bucket.wait_time(keep) for n, keep in enumerate(self._keep) if self._waiting_in(n)]
        when = loop.time() + min(waits, default=0.0)
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._release)

    def _release(self) -> None:
        self._timer = None
        for keep, line in zip(self._keep, self._lines, strict=True):
            while line and self.bucket.wait_time(keep) == 0.0:
                future = line.popleft()
                if not future.done():
                    self.bucket.take()
                    future.set_result(None)
            if line is self._lines[0] and self._waiting_in(0):
                break  # routine polls never pass a confirmation that is still waiting
        if self.waiting:
            self._schedule()
