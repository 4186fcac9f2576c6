"""The outbox: every job's status message goes out in the background, paced, newest first.

The job pipeline never waits on a chat API, except to deliver. The orchestrator *puts* each non-final
event (``Accepted``, ``Queued``, ``Progress``) here and goes on at once; one worker per job sends it
when the job's ``Pace`` allows, once commands stop arriving (``core.jobs.lull``: a status decides no ack).
Written once here, used by every front end, which only renders an event and sends it (one chat call, no
throttling of its own).

- **Latest wins.** A newer status replaces one still waiting; a job has at most one send in flight and
  its sends go out in order, at most one per ``min_interval_s``.
- **One budget per key** (a Slack workspace, a Discord application): ``rate_per_s`` with a ``burst``,
  shared by every job of the key in FIFO order, so a busy workspace gets fewer edits per job instead of
  a storm of 429s. Final statuses go before routine ones.
- **Retry-After is honoured.** A send that raises ``ChatRateLimited`` pauses the whole budget for
  Retry-After and is tried again then, unless a newer status replaced it meanwhile.
- **The final status is never dropped.** ``put(..., final=True)`` replaces anything waiting, goes out
  after the send in flight (so an older edit cannot land on top of it), ignores ``min_interval_s``, is
  retried on 429, and closes the job: later statuses are ignored.
- **Ticks.** A status put with ``refresh`` is sent again every ``tick_s`` with nothing new to say (the
  elapsed time keeps moving); when many jobs share a budget the ticks slow down so that they use at most
  ``TICK_SHARE`` of it.

``hold(job)`` is for delivery: pending statuses and ticks are dropped, a send in flight may finish (a
final status put later goes after it). ``abort(job)`` also cancels the send in flight (Discord, whose
delivery edit shares the status edit's rate-limit bucket and must not wait behind it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from imagine_bot.core.errors import ChatRateLimited
from imagine_bot.core.jobs.lull import Lull, LullQueue
from imagine_bot.core.jobs.ratelimit import RateLimiter

log = logging.getLogger(__name__)

Send = Callable[[], Awaitable[None]]
#: given the seconds since the status was made, a send of the same status brought up to date
Refresh = Callable[[float], Send]

#: the share of a budget that ticks (refreshes with nothing new) may use
TICK_SHARE = 0.5
#: a final status is tried this many times on 429 before the outbox gives up (and logs it)
FINAL_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast a front end may send status messages: a budget shared by ``key``, a per-job interval."""

    key: str
    rate_per_s: float
    burst: int = 1
    min_interval_s: float = 1.0
    tick_s: float = 0.0


#: a pace, or how to find it when the status is about to go out (a front end's budget may change once its
#: first message is posted)
PaceOf = Pace | Callable[[], Pace]

#: for front ends with no chat API to spare (the terminal): no budget, no interval, no ticks
UNPACED = Pace("unpaced", rate_per_s=1000.0, burst=1000, min_interval_s=0.0)


@dataclass(eq=False)
class _Box:
    """One job's outbox."""

    job_id: str
    pace_of: PaceOf
    pace: Pace
    pending: Send | None = None
    final: bool = False  # the pending send is the job's last
    closed: bool = False  # a final status was put: nothing else is taken
    held: bool = False  # the job is being delivered: no more statuses, no ticks
    refresh: Refresh | None = None
    made_at: float = 0.0
    last_sent: float = -math.inf
    not_before: float = -math.inf
    attempts: int = 0
    in_flight: bool = False
    worker: asyncio.Task[None] | None = None
    news: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def busy(self) -> bool:
        return self.pending is not None or self.in_flight


class Outbox:
    def __init__(self, clock: Callable[[], float] = time.monotonic, *, lull: Lull | None = None) -> None:
        self.clock = clock
        #: statuses go out once commands stop arriving (``core.jobs.lull``): none decides an ack
        self.lull = lull or Lull(quiet_s=0.0, most_s=0.0)
        self._boxes: dict[str, _Box] = {}
        self._budgets: dict[str, RateLimiter] = {}
        self._changed = asyncio.Event()
        #: jobs whose worker starts once the commands being answered are: one task waits for the lull for
        #: all of them, instead of a worker each during a burst
        self._later: LullQueue[_Box] = LullQueue(self.lull, self._start_later, name="outbox-starter")
        #: statuses sent, and statuses dropped because a newer one replaced them (for tests and benchmarks)
        self.sent = 0
        self.coalesced = 0

    # ------------------------------------------------------------------ the orchestrator's and front ends' side
    def put(self, job_id: str, send: Send, *, pace: PaceOf = UNPACED, final: bool = False,
            refresh: Refresh | None = None) -> None:
        """Queue ``send`` as the job's newest status (never waits)."""
        box = self._boxes.get(job_id)
        if box is None:
            # a pace to look up (a front end may read the job's row for it) waits for the worker: ``put``
            # runs before a command is acknowledged, the worker after
            box = self._boxes[job_id] = _Box(job_id, pace, pace if isinstance(pace, Pace) else UNPACED)
        if box.closed or (box.held and not final):
            return
        if box.pending is not None:
            self.coalesced += 1
        box.pace_of = pace
        box.pending, box.final, box.closed = send, final, final
        box.refresh = None if final else refresh
        box.made_at = self.clock()
        box.attempts = 0
        box.news.set()
        if box.worker is not None or box in self._later:
            return
        if self._later.holding:  # a burst: the worker starts with the others once it is answered
            self._later.add(box)
        else:
            box.worker = asyncio.create_task(self._work(box), name=f"outbox-{job_id}")

    def _start_later(self, box: _Box) -> None:
        if self._boxes.get(box.job_id) is box and box.worker is None:  # not aborted meanwhile
            box.worker = asyncio.create_task(self._work(box, waited=True), name=f"outbox-{box.job_id}")

    def hold(self, job_id: str) -> None:
        """The job is being delivered: drop what waits and stop ticking; a send in flight may finish."""
        box = self._boxes.get(job_id)
        if box is None:
            return
        if not box.in_flight:
            self.abort(job_id)
            return
        box.held = True
        self._drop(box)

    def abort(self, job_id: str) -> None:
        """Drop everything of the job, cancelling the send in flight too."""
        box = self._boxes.pop(job_id, None)
        if box is not None:
            self._drop(box)
            box.pending = None
            if box.worker is not None:
                box.worker.cancel()
                box.worker = None
            self._poke()

    def _drop(self, box: _Box) -> None:
        if box.pending is not None and not box.final:
            box.pending = None
            self.coalesced += 1
        box.refresh = None
        box.news.set()

    def pending(self, job_id: str) -> bool:
        box = self._boxes.get(job_id)
        return box is not None and box.busy

    @property
    def busy(self) -> int:
        """Jobs with a status waiting or in flight."""
        return sum(box.busy for box in self._boxes.values())

    async def wait_idle(self) -> None:
        """Wait until no status waits or is in flight (ticking jobs count as idle)."""
        while self.busy:
            await self._changed.wait()

    def _poke(self) -> None:
        """Wake ``wait_idle``: set the current event and start a new one."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def flush_finals(self) -> None:
        """Shutting down: drop every status but the final ones, stop ticking, and wait for the finals."""
        for box in self._boxes.values():
            box.held = True
            self._drop(box)
        await self.wait_idle()

    async def close(self) -> None:
        """Cancel every worker (statuses not sent are lost; the jobs themselves are saved)."""
        workers = [box.worker for box in self._boxes.values() if box.worker is not None]
        if self._later.task is not None:
            workers.append(self._later.task)
        self._later.clear()
        self._boxes.clear()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    # ------------------------------------------------------------------ pacing
    def budget(self, pace: Pace) -> RateLimiter:
        limiter = self._budgets.get(pace.key)
        if limiter is None:
            limiter = self._budgets[pace.key] = RateLimiter(pace.rate_per_s, burst=pace.burst,
                                                            urgent_burst=pace.burst)
        return limiter

    def tick_interval(self, pace: Pace) -> float:
        """``tick_s``, or longer when the jobs ticking on this budget would use more than their share."""
        ticking = sum(1 for box in self._boxes.values()
                      if box.pace.key == pace.key and box.refresh is not None and not box.held)
        return max(pace.tick_s, ticking / (pace.rate_per_s * TICK_SHARE))

    async def _news_within(self, box: _Box, seconds: float) -> bool:
        """Wait up to ``seconds`` for a new status of the job; True if one came."""
        try:
            await asyncio.wait_for(box.news.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ one job's worker
    async def _work(self, box: _Box, *, waited: bool = False) -> None:
        """``waited``: started after the lull (``_start_later``): the first status goes at once."""
        try:
            while True:
                box.news.clear()
                if box.pending is None:
                    self._poke()
                    if box.closed or box.held or box.refresh is None or box.pace.tick_s <= 0:
                        return
                    if not await self._news_within(box, self.tick_interval(box.pace)) and box.refresh is not None:
                        box.pending = box.refresh(self.clock() - box.made_at)
                    continue
                if waited:
                    waited = False
                else:
                    await self.lull.wait()
                if box.pending is None:
                    continue
                box.pace = _resolve(box.pace_of)
                interval = 0.0 if box.final else box.pace.min_interval_s
                delay = max(box.not_before, box.last_sent + interval) - self.clock()
                if delay > 0:
                    await self._news_within(box, delay)
                    continue
                await self.budget(box.pace).acquire(urgent=box.final)
                if box.pending is None:
                    continue
                await self._send(box)
        finally:
            if box.worker is asyncio.current_task():
                box.worker = None
            if not box.busy and (box.closed or box.held) and self._boxes.get(box.job_id) is box:
                del self._boxes[box.job_id]
            self._poke()

    async def _send(self, box: _Box) -> None:
        send, final = box.pending, box.final
        assert send is not None
        box.pending, box.in_flight, box.last_sent = None, True, self.clock()
        box.attempts += 1
        try:
            await send()
        except ChatRateLimited as limited:
            box.not_before = self.clock() + limited.retry_after
            self.budget(box.pace).pause(limited.retry_after)
            keep = box.pending is None and (final or not box.held) and (not final or box.attempts < FINAL_ATTEMPTS)
            if keep:
                box.pending, box.final = send, final
            elif final:
                log.error("job %s: final status not sent after %d rate-limited attempts", box.job_id,
                          box.attempts)
            log.info("job %s: status edit rate limited; next try in %.1fs", box.job_id, limited.retry_after)
        except Exception:
            log.exception("job %s: status message failed", box.job_id)
        else:
            self.sent += 1
        finally:
            box.in_flight = False


def _resolve(pace: PaceOf) -> Pace:
    return pace if isinstance(pace, Pace) else pace()
