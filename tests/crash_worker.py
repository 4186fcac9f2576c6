"""A bot process for the crash and deploy tests (and the rolling-deploy benchmark).

``python -m tests.crash_worker DB GATEWAY_URL submit N`` submits N jobs and keeps running them until
killed; ``... resume`` resumes what is left (taking over the jobs of a killed process once their lease
expired: ``JOB_LEASE_S`` is 1 s here), delivers and exits when no job is left in flight. ``... serve N``
submits N jobs, prints ``submitted`` and, on SIGTERM, drains as ``imagine-bot run`` does (``DRAIN_S``)
and exits 0; ``... follow`` is a second process on the same file that works on whatever it may claim
and exits when no job is left in flight. The channel line is ``JOB_ID PID`` (who posted).

With ``DATABASE_URL`` set (PostgreSQL) and ``CRASH_HOST_DIR``, the process is a host of its own: its data
folder (the spool of images waiting for delivery) is that folder, shared with no other process, as on two
machines; ``DB`` then only names the shared channel. The "channel" is the file
``DB.deliveries`` (one job id a line). It keeps the ``FrontEnd`` contract the way a chat front end must:
right after a post it records a receipt with the core, and a ``Delivered`` handed again with that receipt
(after a crash between post and charge, or a takeover by another process) is not posted again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.events import Delivered, Failed, JobEvent
from imagine_bot.core.jobs.model import ReplyTo
from imagine_bot.core.settings import load_settings


class FileChannel:
    platform = "terminal"

    def __init__(self, path: Path, core: ImagineCore) -> None:
        self.path = path
        self.core = core

    async def publish(self, event: JobEvent) -> None:
        if isinstance(event, Delivered):
            if event.receipt.get("line"):
                return  # posted by an earlier attempt: finish without posting again
            await asyncio.sleep(0.05)  # an upload takes a moment: a kill may land in the middle
            with self.path.open("a") as fh:
                fh.write(f"{event.job.id} {os.getpid()}\n")
                line = fh.tell()
            self.core.record_receipt(event.job.id, line=line)
        elif isinstance(event, Failed):
            with self.path.with_suffix(".failures").open("a") as fh:
                fh.write(f"{event.job.id} {event.error.code} {event.refunded}\n")


async def main(db: str, gateway: str, mode: str, count: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    settings = load_settings(_env_file=None, MODKIE_BASE_URL=gateway, MODKIE_API_KEY="crash-test-key",
                             IMAGINE_DB_PATH=Path(os.environ.get("CRASH_HOST_DIR") or Path(db).parent) / Path(db).name,
                             POLL_INTERVAL_S=0.05, POLL_MAX_INTERVAL_S=0.1, JOB_TIMEOUT_S=60,
                             MAX_ACTIVE_JOBS_PER_USER=1000, CREATE_RATE_PER_10S=1000,
                             CREDITS_ALLOWANCE=10_000, JOB_LEASE_S=1.0, DRAIN_S=15,
                             MAX_ACTIVE_JOBS=int(os.environ.get("CRASH_MAX_ACTIVE", "8")))
    async with ImagineCore.open(settings) as core:
        core.register(FileChannel(Path(db + ".deliveries"), core))
        await core.start()
        if mode in ("submit", "serve"):
            for n in range(count):
                await core.imagine(UserRef("terminal", "local", f"user{n % 3}"), ReplyTo("terminal", "crash"),
                                   f"crash test image {n}")
            print("submitted", flush=True)
            await stop.wait()  # until killed (submit) or told to stop (serve)
            await core.orchestrator.drain(settings.DRAIN_S)
            return
        while not stop.is_set() and (core.jobs.active() or core.orchestrator.in_flight):  # noqa: ASYNC110 core.jobs.active() or core.orchestrator.in_flight:  # noqa: ASYNC110 - rows in SQLite
            await asyncio.sleep(0.1)  # rows in SQLite: nothing to wait on


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0))
