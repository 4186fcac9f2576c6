"""The lull: work that decides no answer waits while commands are being answered (issue 22).

A burst of commands shares one event loop with the work each accepted job starts: its worker (admission,
lease, ``createTask``) and its status messages. Run at once, that work interleaves with the commands still
waiting for their acknowledgement and pushes every later ack back. So front ends mark each command from its
arrival to its ack (``command``), the orchestrator marks each command it decides (``touch``: a submit, a
precheck), and the work that follows an ack waits here (``wait``: a job's worker, its statuses, and on
Discord the submit itself, which follows the placeholder: ``Orchestrator.after_answers``) until no command
is being answered, none was decided for ``quiet_s`` and the loop turned ``CALM_TURNS`` times since; or for
``most_s`` at most, so that a steady stream of commands never starves the jobs themselves.

Nothing that decides an answer waits here: a refusal is decided before the ack, and on Slack the
reservation is committed before it, as before (on Discord the precheck decides the refusals before the
placeholder, and a refusal at the submit withdraws it). What waits is only what came after the ack anyway,
and it waits in order (first in, first out); a job's createTask goes out at most ``most_s`` later than it
would have, usually ``quiet_s``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

#: no command decided for this long: the burst is over (the last acks of a burst are on the wire before
#: the work behind them starts)
QUIET_S = 0.025
#: work waits at most this long, however steadily commands keep coming
MOST_S = 2.0
#: ... and the loop must have turned this many times in a row with no command decided
CALM_TURNS = 3


class Lull:
    def __init__(self, quiet_s: float = QUIET_S, most_s: float = MOST_S) -> None:
        self.quiet_s = quiet_s
        self.most_s = most_s
        self._last = -math.inf
        #: commands a front end is answering now (``command``): received, not yet acknowledged
        self.answering = 0
        self._touched = False
        self._calm = 0
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._timer: asyncio.Handle | None = None
        #: waits that were held (for tests and benchmarks)
        self.held = 0

    def touch(self) -> None:
        """A command is being decided now: hold the work that waits a little longer."""
        self._last = time.monotonic()
        self._touched = True

    @contextmanager
    def command(self) -> Iterator[None]:
        """A front end answers a command inside this: nothing waiting here starts until it is answered."""
        self.answering += 1
        self.touch()
        try:
            yield
        finally:
            self.answering -= 1
            self.touch()

    @property
    def quiet(self) -> bool:
        return not self.answering and time.monotonic() - self._last >= self.quiet_s

    @property
    def waiting(self) -> int:
        return sum(not fut.done() for _, fut in self._waiters)

    async def wait(self) -> None:
        """Return once no command has been answered or decided for ``quiet_s`` and for a few turns of
        the event loop (at once when none was), or after ``most_s`` at most. Waiters go in the order they came."""
        if self.quiet and not self._waiters:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append((time.monotonic() + self.most_s, fut))
        self.held += 1
        if self._timer is None:
            self._calm = 0
            self._schedule(loop)
        await fut

    def release(self) -> None:
        """Let every waiter go now (tests; a stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        at = self._last + self.quiet_s
        if self._waiters:  # deadlines grow in the order of arrival: the first is the nearest
            at = min(at, self._waiters[0][0])
        self._timer = loop.call_later(max(0.0, at - time.monotonic()), self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        """Quiet for ``quiet_s``, then for ``CALM_TURNS`` turns of the loop in a row (a turn of a busy loop
        can outlast ``quiet_s``: commands read in this turn start in the next), or past a waiter's deadline."""
        self._timer = None
        now = time.monotonic()
        if self.quiet:
            self._calm = 0 if self._touched else self._calm + 1
        else:
            self._calm = 0
        self._touched = False
        calm = self._calm >= CALM_TURNS
        while self._waiters:
            deadline, fut = self._waiters[0]
            if not calm and now < deadline:
                break
            self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        if not self._waiters:
            return
        if self.quiet:  # look again at the next turn
            self._timer = loop.call_soon(self._check, loop)
        else:
            self._schedule(loop)
