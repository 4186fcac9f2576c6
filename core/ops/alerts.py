"""Telling the operators: a DM on each platform they are on, through the front ends' ``OperatorNotifier``.

An alert has a *cause* (``out_of_credits``, ``gateway_auth``, ``gateway_feature_disabled``, ...):

- ``once=True``: said once until the cause is ``clear``ed (the gateway account is paused until credits are
  back: one DM when it pauses, not one per refused job);
- otherwise at most once per ``min_interval_s`` (an hour) per cause (a 401 or 505 on every job).

Sending never holds up a job: the DMs go out in background tasks (the pipeline waits on no chat API).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.frontend import OperatorNotifier

log = logging.getLogger(__name__)

ALERT_EVERY_S = 3600.0


class Alerts:
    def __init__(self, operators: Iterable[str], *, min_interval_s: float = ALERT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.operators = [UserRef.parse(key) for key in operators]
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.notifiers: dict[str, OperatorNotifier] = {}
        #: cause -> when it was last said (monotonic)
        self.said: dict[str, float] = {}
        self._sticky: set[str] = set()
        self._sending: set[asyncio.Task[None]] = set()

    def register(self, notifier: OperatorNotifier) -> None:
        self.notifiers[notifier.platform] = notifier

    def alert(self, cause: str, text: str, *, once: bool = False) -> bool:
        """Tell every operator (unless this cause was said too recently); True if it goes out."""
        now = self.clock()
        if cause in self._sticky or (cause in self.said and now - self.said[cause] < self.min_interval_s):
            return False
        self.said[cause] = now
        if once:
            self._sticky.add(cause)
        log.error("operator alert (%s): %s", cause, text)
        for platform, notifier in self.notifiers.items():
            operators = [op for op in self.operators if op.platform == platform]
            if operators:
                task = asyncio.create_task(self._send(notifier, operators, text), name=f"alert-{cause}-{platform}")
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        return True

    def clear(self, cause: str) -> None:
        """The trouble is over: the next alert for this cause goes out again."""
        self._sticky.discard(cause)
        self.said.pop(cause, None)

    async def _send(self, notifier: OperatorNotifier, operators: list[UserRef], text: str) -> None:
        try:
            await notifier.notify_operators(operators, text)
        except Exception:
            log.exception("could not tell the %s operators", notifier.platform)

    async def wait_sent(self) -> None:
        """Wait until every alert has been handed to its front end (tests, shutdown)."""
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)

    async def close(self) -> None:
        await self.wait_sent()
