"""Job ownership across processes: who owns a job, for how long, and the housekeeping loop.

One process works on a job at a time. Each process has an ``owner`` id (``host:pid:random``); it claims
a job with a compare-and-set ``UPDATE`` on the job row (``JobRepository.claim``), renews the leases it holds
every third of ``lease_s`` (``JobRepository.renew``) and releases them when it stops
(``JobRepository.release_leases``). A job whose owner died keeps its lease until ``lease_until`` passes; then
the next sweep of any running process takes it over. A process that finds it no longer holds a job
(its lease expired while it was stalled, and another process took the job) stops its local worker.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

from imagine_bot.core.storage.db import utcnow


def new_owner_id() -> str:
    """This process's name on the jobs it owns: ``host:pid:random`` (the random part survives pid reuse)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class LeaseClock:
    """Lease arithmetic: until when a claim made now holds, and how often to renew it."""

    def __init__(self, lease_s: float) -> None:
        if lease_s <= 0:
            raise ValueError("a lease must last more than 0 seconds")
        self.lease_s = lease_s

    def until(self, now: datetime | None = None) -> datetime:
        return (now or utcnow()) + timedelta(seconds=self.lease_s)

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / 3
