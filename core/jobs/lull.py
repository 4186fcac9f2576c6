"""The lull: work that decides no answer waits while commands are being answered (issue 22).

A burst of commands shares one event loop with the work each accepted job starts: its worker (admission,
lease, ``createTask``) and its status messages. Run at once, that work interleaves with the commands still
waiting for their acknowledgement and pushes every later ack back. So front ends mark each command from its
arrival to its ack (``command``), the orchestrator marks each command it decides (``touch``: a submit, a
precheck), and the work that follows an ack waits here (``wait``: a job's worker, its statuses, and on
Discord the submit itself, which follows the placeholder: ``Orchestrator.after_answers``) until no command
is being answered, none was decided for ``quiet_s`` and the loop turned ``CALM_TURNS`` times since; or for
``most_s`` at most, so that a steady stream of commands never starves the jobs themselves. Work that comes
while the lull holds gets no task of its own: a ``LullQueue`` (the orchestrator's jobs, the outbox's first
statuses) keeps it in order and one task waits here for all of it (a task each cost every command of a
burst two task starts and two waits).

Nothing that decides an answer waits here: a refusal is decided before the ack, and on Slack the
reservation is committed before it, as before (on Discord the precheck decides the refusals before the
placeholder, and a refusal at the submit withdraws it). What waits is only what came after the ack anyway,
and it waits in order (first in, first out); a job's createTask goes out at most ``most_s`` later than it
would have, usually ``quiet_s``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, KeysView
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)

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
        #: ``release`` calls so far (a ``LullQueue`` lets all of its work go after one)
        self.releases = 0
        self._command = _Answering(self)
        #: the garbage collector waits for the lull too (``imagine-bot run`` turns this on): see ``_pause``
        self.pauses_collector = False
        self._paused_at: float | None = None

    def touch(self) -> None:
        """A command is being decided now: hold the work that waits a little longer."""
        self._last = time.monotonic()
        self._touched = True

    def command(self) -> AbstractContextManager[None]:
        """A front end answers a command inside this: nothing waiting here starts until it is answered."""
        return self._command

    @property
    def quiet(self) -> bool:
        return not self.answering and time.monotonic() - self._last >= self.quiet_s

    @property
    def holding(self) -> bool:
        """Whether ``wait`` would wait now: a command is being answered or was decided lately, or others wait."""
        return bool(self._waiters) or not self.quiet

    @property
    def waiting(self) -> int:
        return sum(not fut.done() for _, fut in self._waiters)

    async def wait(self, since: float | None = None) -> None:
        """Return once no command has been answered or decided for ``quiet_s`` and for a few turns of
        the event loop (at once when none was), or after ``most_s`` at most. Waiters go in the order they came.

        ``since``: when the work that waits came (``time.monotonic``), if before now: ``most_s`` counts from
        then, and it goes in its place among the other waiters."""
        if self.quiet and not self._waiters:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        deadline = (time.monotonic() if since is None else since) + self.most_s
        place = len(self._waiters)
        while place and self._waiters[place - 1][0] > deadline:  # deadlines grow in the order of arrival
            place -= 1
        self._waiters.insert(place, (deadline, fut))
        self.held += 1
        if self._timer is None:
            self._calm = 0
            self._schedule(loop)
        elif place == 0 and not self.quiet:  # the nearest deadline now: look at it in time
            self._timer.cancel()
            self._schedule(loop)
        await fut

    def release(self) -> None:
        """Let every waiter go now (tests; a stop)."""
        self.releases += 1
        self._resume()
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

    # ------------------------------------------------------------------ the garbage collector
    def _pause(self) -> None:
        """A command came while the collector runs: turn it off until the lull (``_collector_check``).

        Every command of a burst keeps objects alive until its ack (its request, its coroutines, its
        job), so each of the burst's young collections walked more of them: about 20 collections and 14 to
        22 ms of a burst of 200 Socket Mode slash commands, a tenth of its time (issue 22).
        Objects freed by their last reference go at once as always; only cycles wait, ``most_s`` at most.
        A collector someone else turned off stays off (``_paused_at`` is set only when we turn it off)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing would turn it back on
            return
        if not gc.isenabled():
            return
        gc.disable()
        self._paused_at = time.monotonic()
        loop.call_later(self.quiet_s, self._collector_check, loop)

    def _collector_check(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._paused_at is None:
            return  # resumed already (``release``)
        if self.quiet or time.monotonic() - self._paused_at >= self.most_s:
            self._resume()
        else:
            loop.call_later(max(self.quiet_s, 0.005), self._collector_check, loop)

    def _resume(self) -> None:
        if self._paused_at is not None:
            self._paused_at = None
            gc.enable()

    @property
    def collector_paused(self) -> bool:
        return self._paused_at is not None


class _Answering(AbstractContextManager[None]):
    """``Lull.command``: one object, no generator (it is entered for every command of a burst)."""

    __slots__ = ("lull",)

    def __init__(self, lull: Lull) -> None:
        self.lull = lull

    def __enter__(self) -> None:
        lull = self.lull
        lull.answering += 1
        lull.touch()
        if lull.pauses_collector and not lull.collector_paused:
            lull._pause()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.lull.answering -= 1
        self.lull.touch()


class LullQueue(Generic[K]):
    """Work that waits for the lull in one task instead of a task each: a burst's jobs (the orchestrator),
    their first statuses (the outbox). ``add`` queues a key; ``start`` is called for each key, first in,
    first out, once the lull comes, or once that key has waited ``most_s`` (a steady stream of commands:
    each key as its own ``wait`` would have). Whoever queues looks at ``holding`` first: when it is False,
    nothing waits and the work starts at once."""

    def __init__(self, lull: Lull, start: Callable[[K], None], *, name: str) -> None:
        self.lull = lull
        self._start = start
        self._name = name
        self._since: dict[K, float] = {}  # key -> when it came, in that order
        #: the task waiting for the lull (None when nothing is queued)
        self.task: asyncio.Task[None] | None = None

    @property
    def holding(self) -> bool:
        """Whether work coming now must queue: the lull holds, or earlier work is queued (it goes first)."""
        return bool(self._since) or self.lull.holding

    def add(self, key: K) -> None:
        self._since.setdefault(key, time.monotonic())
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=self._name)

    def discard(self, key: K) -> None:
        self._since.pop(key, None)

    def clear(self) -> int:
        """Start none of the queued work; returns how much there was."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        count = len(self._since)
        self._since.clear()
        return count

    def keys(self) -> KeysView[K]:
        return self._since.keys()

    def __contains__(self, key: object) -> bool:
        return key in self._since

    def __len__(self) -> int:
        return len(self._since)

    async def _run(self) -> None:
        try:
            while self._since:
                releases = self.lull.releases
                await self.lull.wait(since=next(iter(self._since.values())))
                everything = self.lull.quiet or self.lull.releases != releases
                due = math.inf if everything else time.monotonic() - self.lull.most_s
                while self._since:
                    key, since = next(iter(self._since.items()))
                    if since > due:
                        break
                    del self._since[key]
                    try:
                        self._start(key)
                    except Exception:  # a bug: the others still start (a job's lease is freed as idle)
                        log.exception("%s: could not start %s", self._name, key)
        finally:
            if self.task is asyncio.current_task():
                self.task = None
