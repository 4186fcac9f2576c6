"""Admission: a fair FIFO queue in front of the gateway.

A job may send ``createTask`` when it is at the head of the queue, fewer than ``max_active`` jobs are
at the gateway (the global cap), and the sliding window allows it: at most ``rate`` admissions in ANY
``per``-second window (``CREATE_RATE_PER_10S``, below the gateway's ~20 createTask per 10 s; a token
bucket would let a full bucket plus its refill through in the first window). A job the gateway refused
with 429 comes back at the head of the line (``enter(first=True)``) and nobody is admitted until the
gateway's ``Retry-After`` has passed (``pause``). Waiting jobs learn their place whenever it changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from imagine_bot.core.jobs.ratelimit import SlidingWindow

PositionCallback = Callable[[int], Awaitable[None]]



class Admission:
    def __init__(self, max_active: int, rate: int, per: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_active = max_active
        self.window = SlidingWindow(rate, per, clock)
        self.clock = clock
        self._paused_until = 0.0
        self.active: set[str] = set()
        self._waiting: list[str] = []
        self._changed = asyncio.Event()

    def position(self, job_id: str) -> int | None:
        try:
            return self._waiting.index(job_id) + 1
        except ValueError:
            return None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _admissible(self, job_id: str) -> float | None:
        """None when the job can't go yet for lack of place or slot; else seconds to wait for a token."""
        if not self._waiting or self._waiting[0] != job_id or len(self.active) >= self.max_active:
            return None
        return max(self.window.wait_time(), self._paused_until - self.clock())

    def pause(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` (the gateway said 429 or 455: the limit is the whole account's)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    async def enter(self, job_id: str, on_position: PositionCallback | None = None, *, first: bool = False) -> None:
        """Wait for the job's turn; report its place (1-based) each time it changes. ``first``: back at the
        head of the line (a job the gateway refused keeps its place)."""
        if first:
            self._waiting.insert(0, job_id)
        else:
            self._waiting.append(job_id)
        last: int | None = None
        try:
            while True:
                changed = self._changed  # taken before the check, so no wake-up is lost
                wait = self._admissible(job_id)
                if wait is not None and wait <= 0.0:
                    self.window.take()
                    self._waiting.pop(0)
                    self.active.add(job_id)
                    self._wake()
                    return
                place = self.position(job_id)
                if on_position and place is not None and place != last:
                    last = place
                    await on_position(place)
                    continue
                try:
                    await asyncio.wait_for(changed.wait(), timeout=wait)
                except TimeoutError:
                    pass
        except BaseException:
            if job_id in self._waiting:
                self._waiting.remove(job_id)
                self._wake()
            raise

    def hold(self, job_id: str) -> None:
        """Take a slot at once (a job resumed after a restart is already at the gateway)."""
        self.active.add(job_id)

    def leave(self, job_id: str) -> None:
        if job_id in self.active:
            self.active.discard(job_id)
            self._wake()

    def _wake(self) -> None:
        """Wake every waiter: set the current event and start a new one."""
        self._changed.set()
        self._changed = asyncio.Event()
