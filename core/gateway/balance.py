"""The operator's gateway account: its ModKie balance, and pausing new jobs when it cannot pay for them.

The balance (``GET /api/v1/chat/credit``) is read at start and every ``GATEWAY_BALANCE_CHECK_S``. When it
cannot cover one job, or ``createTask`` answers 402/433 (``GatewayOutOfCredits``), new submissions are
*paused*: users get a plain message (``GatewayPaused``) and nothing is charged, the operators are told once
by DM (``core.ops.alerts``), ``/healthz`` says ``degraded`` and ``imagine-bot credits show`` says why. While
paused the balance is read every ``min(30 s, GATEWAY_BALANCE_CHECK_S)``; once it covers a job again,
submissions resume by themselves. Jobs already at the gateway go on.

A 401 (the key) or 505 (the model is not enabled for the account) alerts the operators the same way, at
most once an hour per cause; they fail the job (refunded) but do not pause.

The state is kept in one shared row (``GatewayAccountStore``: ``core.storage.gateway_account``), so every
process, the command line and dashboards (``snapshot``) see the same thing. Every balance read is also
kept (for ``BALANCE_LOG_DAYS``): the dashboard sets each day's drop beside what delivered jobs were charged.

Billed but not delivered: a job whose task the gateway reported successful (so it charged the account)
but which then failed is counted from the job rows (``JobRepository.billed_not_delivered``). When today's
total reaches ``UNDELIVERED_ALERT_CREDITS`` the operators get one DM (``check_undelivered``, after every
such failure and every balance read), once a day however many processes share the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from imagine_bot.core.chat import messages
from imagine_bot.core.credits.periods import period_start
from imagine_bot.core.errors import (
    GatewayAuthError,
    GatewayError,
    GatewayFeatureDisabled,
    GatewayOutOfCredits,
    GatewayPaused,
    ImagineError,
)
from imagine_bot.core.gateway import GatewayClient
from imagine_bot.core.jobs.model import Job
from imagine_bot.core.ops.alerts import Alerts
from imagine_bot.core.storage.db import iso, utcnow

if TYPE_CHECKING:  # the store protocols name AccountState: imported for types only
    from imagine_bot.core.storage.base import GatewayAccountStore, JobRepository

log = logging.getLogger(__name__)

OUT_OF_CREDITS = "out_of_credits"
UNDELIVERED = "billed_not_delivered"
PAUSED_RECHECK_S = 30.0
#: ``check`` answers from the state read at most this long ago (a burst of commands reads the row once);
#: a pause or resume made by this process counts at once, one made by another process within this time
ACCOUNT_FRESH_S = 1.0
#: balance readings older than this are dropped (the dashboard shows 90 days at most)
BALANCE_LOG_DAYS = 100


@dataclass(frozen=True, slots=True)
class AccountState:
    """What is known of the gateway account. ``paused``: why new jobs wait (None: they don't)."""

    balance: int | None
    checked_at: datetime | None
    paused: str | None
    paused_since: datetime | None
    detail: str | None

    @property
    def status(self) -> str:
        return "degraded" if self.paused else "ok"


class GatewayAccount:
    def __init__(self, store: GatewayAccountStore, jobs: JobRepository, gateway: GatewayClient, alerts: Alerts, *,
                 cost: int, check_every_s: float, undelivered_alert_credits: int = 0,
                 clock: Callable[[], datetime] = utcnow, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.jobs = jobs
        self.gateway = gateway
        self.alerts = alerts
        self.cost = cost
        self.check_every_s = check_every_s
        #: tell the operators when today's billed-but-not-delivered credits reach this (0: never)
        self.undelivered_alert_credits = undelivered_alert_credits
        self.clock = clock
        self.monotonic = monotonic
        #: the state ``check`` last read, and when (``monotonic``); None: read at the next ``check``
        self._checked: tuple[AccountState, float] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: set while new jobs are taken (cleared while paused)
        self.resumed = asyncio.Event()

    # ------------------------------------------------------------------ state
    def state(self) -> AccountState:
        return self.store.read()

    def snapshot(self) -> dict[str, object]:
        """Plain values for ``/healthz``, metrics and dashboards."""
        state = self.state()
        return {"status": state.status, "balance": state.balance, "paused": state.paused,
                "checked_at": state.checked_at and iso(state.checked_at),
                "paused_since": state.paused_since and iso(state.paused_since)}

    def check(self) -> None:
        """Raise ``GatewayPaused`` while new jobs are paused: as read at most ``ACCOUNT_FRESH_S`` ago (every
        change this process makes is seen at once; another process's within that time)."""
        now = self.monotonic()
        if self._checked is None or now - self._checked[1] >= ACCOUNT_FRESH_S or now < self._checked[1]:
            self._checked = (self.state(), now)
        state = self._checked[0]
        if state.paused:
            raise GatewayPaused(f"submissions paused: {state.paused} ({state.detail})")

    # ------------------------------------------------------------------ pausing
    # each change is a compare-and-set on the shared row (True only for the one process that made it), so
    # that with several processes on one database the operators still hear once per pause
    def pause(self, cause: str, detail: str) -> None:
        self.resumed.clear()
        self._checked = None
        self._wake.set()  # recheck soon
        if self.store.pause(cause, self.clock(), detail[:500]):
            log.error("pausing new jobs: the gateway account is %s (%s)", cause.replace("_", " "), detail)
            self.alerts.clear(cause)  # once per pause, however soon after the last one
            self.alerts.alert(cause, messages.operator_paused(detail))

    def resume(self, balance: int) -> None:
        self.resumed.set()
        self._checked = None
        if self.store.resume():
            log.warning("resuming new jobs: the gateway account has %d credits again", balance)
            self.alerts.clear("resumed")
            self.alerts.alert("resumed", messages.operator_resumed(balance))

    # ------------------------------------------------------------------ billed but not delivered
    def check_undelivered(self) -> bool:
        """Tell the operators (once a day, whichever process gets there first) when the credits the gateway
        billed today for images nobody received reach ``undelivered_alert_credits``. True if told now."""
        if not self.undelivered_alert_credits:
            return False
        now = self.clock()
        midnight = period_start(now, "day")
        credits, jobs = self.jobs.billed_not_delivered(since=midnight)
        if credits < self.undelivered_alert_credits:
            return False
        day = now.astimezone(UTC).date().isoformat()
        if not self.store.mark_undelivered_told(day):
            return False
        log.error("billed but not delivered today: %d credits (%d jobs), at or over UNDELIVERED_ALERT_CREDITS (%d)",
                  credits, jobs, self.undelivered_alert_credits)
        self.alerts.clear(UNDELIVERED)  # once a day, however soon after yesterday's
        self.alerts.alert(UNDELIVERED, messages.operator_undelivered(credits, jobs, self.undelivered_alert_credits))
        return True

    def on_job_failed(self, job: Job, error: ImagineError) -> None:
        """A job failed (the orchestrator's hook): gateway errors as ``on_error``; one the gateway had billed
        adds to today's undelivered credits."""
        self.on_error(error)
        if job.billed_at is not None:
            self.check_undelivered()

    def on_error(self, error: ImagineError) -> None:
        """A job met a gateway error: out of credits pauses; a bad key or a disabled model alerts (hourly)."""
        if isinstance(error, GatewayOutOfCredits):
            self.pause(OUT_OF_CREDITS, error.admin_message)
        elif isinstance(error, GatewayAuthError | GatewayFeatureDisabled):
            self.alerts.alert(error.code, messages.operator_gateway_error(error.code, error.admin_message))

    # ------------------------------------------------------------------ reading the balance
    async def refresh(self) -> int | None:
        """Read the balance now; pause or resume on what it says. None if it could not be read."""
        try:
            balance = await self.gateway.credit()
        except GatewayOutOfCredits as error:
            self.pause(OUT_OF_CREDITS, error.admin_message)
            return None
        except GatewayError as error:
            log.warning("could not read the gateway balance: %s", error.admin_message)
            self.on_error(error)
            return None
        now = self.clock()
        self.store.record_balance(balance, now, forget_before=now - timedelta(days=BALANCE_LOG_DAYS))
        if balance < self.cost:
            self.pause(OUT_OF_CREDITS, f"the balance is {balance} credits, less than one image ({self.cost})")
        else:
            self.resume(balance)
        return balance

    async def run(self) -> None:
        """Read the balance every few minutes (every 30 s at most while paused); ``refresh`` once first."""
        while True:
            every = min(PAUSED_RECHECK_S, self.check_every_s) if self.state().paused else self.check_every_s
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=every)
                await asyncio.sleep(min(1.0, every))  # a pause was just noted: look again shortly, not at once
            except TimeoutError:
                pass
            self._wake.clear()
            await self.refresh()
            try:  # failures another process (or `imagine-bot jobs fail`) decided count too
                self.check_undelivered()
            except Exception:
                log.exception("could not check the undelivered credits")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="gateway-account")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.alerts.close()
