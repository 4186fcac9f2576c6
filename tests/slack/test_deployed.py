"""`imagine-bot run` as deployed: a real subprocess in Slack HTTP mode, stopped with SIGTERM mid-job and
started again; the job survives the stop and is delivered (and charged) once by the next process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.sandbox import SandboxGateway
from imagine_bot.core.storage.db import open_db
from imagine_bot.core.storage.jobs import SqliteJobStore as JobStore
from tests.fakes.slack_api import FakeSlackAPI
from tests.slack.conftest import BOT_TOKEN, SIGNING_SECRET, TEAM, sign

SCRIPT = Path(sys.executable).parent / "imagine-bot"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_bot(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(str(SCRIPT), "run", "--only", "slack", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError((await proc.stderr.read()).decode()[-3000:])


async def wait_state(store: JobStore, state: JobState, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        jobs = store.recent(limit=5)
        if jobs and jobs[0].state is state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no job reached {state}: {store.recent(limit=5)}")


@pytest.mark.slow
async def test_sigterm_mid_job_then_restart(tmp_path):
    gateway = SandboxGateway(delays={"waiting": 0.5, "queuing": 0.5, "generating": 2.0}, image_scale=0.1)
    await gateway.start()
    port = free_port()
    db = tmp_path / "bot.db"
    async with FakeSlackAPI(bot_token=BOT_TOKEN, team_id=TEAM) as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "MODKIE_"))}
        env.update(MODKIE_BASE_URL=gateway.base_url, MODKIE_API_KEY="deployed-test-key", IMAGINE_DB_PATH=str(db),
                   SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=fake.api_url,
                   HTTP_HOST="127.0.0.1", HTTP_PORT=str(port), POLL_INTERVAL_S="0.1", POLL_MAX_INTERVAL_S="0.2")
        try:
            bot = await start_bot(env, port)
            body = urllib.parse.urlencode({
                "team_id": TEAM, "channel_id": "C1", "user_id": "U1", "user_name": "u1", "command": "/imagine",
                "text": "a lighthouse at dusk --ar 16:9", "response_url": fake.response_url(),
                "trigger_id": "trigger.deployed", "api_app_id": "A0001",
            })
            ts = str(int(time.time()))
            async with httpx.AsyncClient() as http:
                answer = await http.post(f"http://127.0.0.1:{port}/slack/events", content=body, headers={
                    "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
                    "X-Slack-Signature": sign(body, ts)})
            assert answer.status_code == 200
            store = JobStore(open_db(db))
            await wait_state(store, JobState.RUNNING)

            bot.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(bot.wait(), timeout=20) == 0
            assert store.recent(limit=1)[0].state is JobState.RUNNING  # left for the next start, not failed

            bot = await start_bot(env, port)
            await wait_state(store, JobState.DELIVERED)
            upload = await fake.wait_for("files.completeUploadExternal", timeout=10)
            assert upload.params.get("thread_ts")
            bot.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(bot.wait(), timeout=20) == 0
        finally:
            if bot.returncode is None:
                bot.kill()
                await bot.wait()
            await gateway.stop()
    assert gateway.requests["createTask"] == 1
    account = store.db.execute("SELECT balance, held FROM accounts WHERE account = ?", [f"slack:{TEAM}:U1"]).fetchone()
    assert tuple(account) == (180 - 18, 0)
