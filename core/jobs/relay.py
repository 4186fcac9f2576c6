"""Callbacks that land on the wrong process: several ``imagine-bot run`` processes share one database
behind one load balancer, and the gateway's callback for a task reaches whichever process the balancer
picks, not necessarily the one tracking the task (its job's lease owner).

The process that receives a callback it does not track writes it to ``callback_relay`` (one short
insert: the task id and, for a verified final account webhook, its answer). Every process reads the
rows it has not seen yet once a second (``RELAY_EVERY_S``, one indexed query however many jobs are in
flight) and hands each one to its orchestrator's ``notify``, exactly as if it had arrived there: a final
answer is delivered with no recordInfo, a hint is confirmed with one. Rows older than ``KEEP_S`` are
deleted. On PostgreSQL a new row also wakes every other process at once (``LISTEN``/``NOTIFY``): the
callback is handed over in milliseconds, and the poll stays as the fallback (a notification lost to a
reconnection, or PgBouncer in transaction mode, which cannot ``LISTEN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta

from imagine_bot.core.gateway import TaskRecord, TaskStage
from imagine_bot.core.jobs.orchestrator import Orchestrator
from imagine_bot.core.storage.base import RelayStore
from imagine_bot.core.storage.db import utcnow

log = logging.getLogger(__name__)

RELAY_EVERY_S = 1.0
KEEP_S = 3600.0


def record_to_json(record: TaskRecord) -> str:
    return json.dumps(asdict(record))


def record_from_json(raw: str) -> TaskRecord:
    data = json.loads(raw)
    return TaskRecord(**{**data, "stage": TaskStage(data["stage"]), "result_urls": tuple(data["result_urls"])})


class CallbackRelay:
    """Passes callbacks between the processes that share one database."""

    def __init__(self, store: RelayStore, orchestrator: Orchestrator, *, every_s: float = RELAY_EVERY_S) -> None:
        self.store = store
        self.orchestrator = orchestrator
        self.every_s = every_s
        self.origin = secrets.token_hex(6)
        self._seen = store.last_id()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop_listening: Callable[[], None] | None = None

    def publish(self, task_id: str, final: TaskRecord | None) -> None:
        """A callback for a task this process does not track: leave it for the one that does."""
        self.store.put(task_id, record_to_json(final) if final is not None else None, self.origin)

    def poll_once(self) -> int:
        """Hand the callbacks other processes received to this one's trackers; returns how many woke one."""
        rows = self.store.after(self._seen, self.origin)
        woke = 0
        for row_id, task_id, final in rows:
            self._seen = max(self._seen, row_id)
            try:
                record = record_from_json(final) if final else None
            except (ValueError, TypeError, KeyError):
                log.warning("relayed callback %d for task %s is unreadable; treated as a hint", row_id, task_id)
                record = None
            if task_id in self.orchestrator.tracking:
                woke += self.orchestrator.notify(task_id, record)
        if rows:
            # the highest id so far is still seen by max(); rows older than KEEP_S are of no use to anyone
            self.store.prune(utcnow() - timedelta(seconds=KEEP_S))
        return woke

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()

            def wake() -> None:  # from the listening thread
                loop.call_soon_threadsafe(self._wake.set)

            self._stop_listening = self.store.listen(wake)
            self._task = asyncio.create_task(self._run(), name="callback-relay")

    async def stop(self) -> None:
        if self._stop_listening is not None:
            await asyncio.to_thread(self._stop_listening)
            self._stop_listening = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            # woken by a notification (PostgreSQL), else every ``every_s``: polling stays the fallback.
            # (asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that arrives as the
            # event is set, and stop() would then wait for this task for ever)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                woke = self.poll_once()
            except Exception:
                log.exception("callback relay: reading relayed callbacks failed")
                continue
            if woke:
                log.info("callback relay: %d callback(s) from other processes woke their jobs here", woke)
