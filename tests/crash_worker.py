"""A bot process for the crash tests: ``python -m tests.crash_worker DB GATEWAY_URL submit N`` submits N
jobs and runs until killed; ``... resume`` resumes what is left, delivers and exits. Deliveries are
appended to ``DB.deliveries`` (one job id a line) so the test can count them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from core.app import ImagineCore
from core.events import Delivered, JobEvent
from core.identity import UserRef
from core.jobs import ReplyTo
from core.settings import load_settings


class FileRecorder:
    platform = "terminal"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def publish(self, event: JobEvent) -> None:
        if isinstance(event, Delivered):
            with self.path.open("a") as fh:
                fh.write(event.job.id + "\n")


async def main(db: str, gateway: str, mode: str, count: int) -> None:
    settings = load_settings(_env_file=None, MODKIE_BASE_URL=gateway, MODKIE_API_KEY="crash-test-key",
                             IMAGINE_DB_PATH=db, POLL_INTERVAL_S=0.05, POLL_MAX_INTERVAL_S=0.1, JOB_TIMEOUT_S=60,
                             MAX_ACTIVE_JOBS_PER_USER=100, CREDITS_ALLOWANCE=10_000)
    async with ImagineCore.open(settings) as core:
        core.register(FileRecorder(Path(db + ".deliveries")))
        await core.start()
        if mode == "submit":
            for n in range(count):
                await core.imagine(UserRef("terminal", "local", f"user{n % 3}"), ReplyTo("terminal", "crash"),
                                   f"crash test image {n}")
            print("submitted", flush=True)
            await asyncio.Event().wait()  # until killed
        await core.orchestrator.wait_idle()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0))
