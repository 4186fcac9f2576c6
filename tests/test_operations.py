"""The bot as an operator runs it: where the data goes, what an unwritable data folder says, how commands
stop on SIGTERM, and the embedded sandbox keeping its tasks across a restart. ``make container-test``
checks the same things on the built image."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "imagine-bot"
ALICE = UserRef("terminal", "local", "alice")


def image_env() -> dict[str, str]:
    """The final stage's ENV, then `.env.example` on top, as `docker run --env-file .env` merges them."""
    final = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", final, re.M):
        env.update(re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")))
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def test_the_readme_docker_run_keeps_the_database_in_the_volume(monkeypatch):
    env = image_env()
    assert env["IMAGINE_DATA_DIR"] == "/data"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert settings.IMAGINE_DB_PATH == Path("/data/imagine-bot.db")
    assert settings.spool_dir.parent == Path("/data")
    assert settings.sandbox_state_path is not None and settings.sandbox_state_path.parent == Path("/data")


def test_relative_paths_are_under_the_data_dir_and_absolute_ones_stay(tmp_path):
    # default: ./data (resolved when read, so a later chdir or thread cannot move it), with everything else the
    # bot keeps beside the database in that one folder
    default = load_settings(_env_file=None)
    data = Path("data").resolve()
    assert default.IMAGINE_DB_PATH == data / "imagine-bot.db"
    assert {default.spool_dir.parent, default.refs_dir.parent, default.sandbox_state_path.parent} == {data}
    settings = load_settings(_env_file=None, IMAGINE_DATA_DIR=tmp_path, IMAGINE_DB_PATH="./bot.db")
    assert settings.IMAGINE_DB_PATH == tmp_path / "bot.db"
    absolute = load_settings(_env_file=None, IMAGINE_DATA_DIR=tmp_path, IMAGINE_DB_PATH="/srv/x.db")
    assert absolute.IMAGINE_DB_PATH == Path("/srv/x.db")


def cli(*args: str, env: dict[str, str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODKIE_", "SLACK_", "DISCORD_", "IMAGINE_"))}
    return subprocess.run([str(SCRIPT), *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**clean, **env})


@pytest.mark.parametrize("command", [
    ["--sandbox", "imagine", "a cat"], ["--sandbox", "chat"], ["credits", "show"], ["jobs", "list"],
    ["run", "--sandbox"],
])
def test_a_data_folder_that_cannot_be_written_is_one_line_naming_it_and_the_fix(tmp_path, command):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")
    env = {"IMAGINE_DATA_DIR": str(blocker), "DISCORD_TOKEN": "x" * 30, "HTTP_PORT": "0"}
    result = cli(*command, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(blocker / "imagine-bot.db") in lines[0] and "chown" in lines[0] and "IMAGINE_DB_PATH" in lines[0]


NOBODY = 65534
REFUSE_READ_ONLY = """
import sys
from imagine_bot.core.storage.db import open_db
from imagine_bot.core.errors import DataNotWritable
try:
    open_db(sys.argv[1])
except DataNotWritable as refused:
    print(refused)
    sys.exit(2)
"""


def test_a_read_only_folder_is_refused_before_sqlite_is_asked(tmp_path):
    """As a user who may not write there: root may write anywhere, so as root the check runs as ``nobody``
    (setpriv drops every privilege), as the image's uid 10001 would."""
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="imagine-ro-")) if as_root else tmp_path
    folder = base / "ro"
    folder.mkdir()
    try:
        if as_root:
            os.chown(base, NOBODY, NOBODY)
            os.chown(folder, NOBODY, NOBODY)
            base.chmod(0o755)
        folder.chmod(0o555)
        command = [sys.executable, "-c", REFUSE_READ_ONLY, str(folder / "imagine-bot.db")]
        if as_root:
            command = [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                       "--clear-groups", "--inh-caps=-all", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=base)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "chown -R" in result.stdout and str(folder) in result.stdout
        assert not (folder / "imagine-bot.db").exists()
    finally:
        folder.chmod(0o755)
        if as_root:
            shutil.rmtree(base)


async def test_the_embedded_sandbox_keeps_its_tasks_so_a_job_in_flight_resumes(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    settings = load_settings(_env_file=None, MODKIE_BASE_URL="sandbox", IMAGINE_DATA_DIR=tmp_path,
                             POLL_INTERVAL_S=0.05, POLL_MAX_INTERVAL_S=0.1, JOB_TIMEOUT_S=30)
    reply = ReplyTo("terminal", "test")
    async with ImagineCore.open(settings) as core:
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        job = await core.imagine(ALICE, reply, "a lighthouse at dusk")
        for _ in range(400):
            if core.jobs.get(job.id).state is JobState.RUNNING:
                break
            await asyncio.sleep(0.01)
        assert core.jobs.get(job.id).state is JobState.RUNNING
        # the bot stops mid-job (the embedded sandbox with it) and starts again
    assert f"database {tmp_path / 'imagine-bot.db'}" in caplog.text
    # the demo's delays (SANDBOX_DELAY_SCALE 1): the terminal has a stage to show for each
    [saved] = json.loads((tmp_path / "imagine-bot-sandbox.json").read_text())["tasks"]
    assert saved["delays"] == {"waiting": 0.4, "queuing": 0.4, "generating": 2.0}
    async with ImagineCore.open(settings) as core:
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        assert await core.start() == 1
        await asyncio.wait_for(core.orchestrator.wait_idle(), timeout=20)
        done = core.jobs.get(job.id)
        assert done.state is JobState.DELIVERED, (done.state, done.error_message)
        assert core.ledger.balance(ALICE).balance == 180 - 18
        assert core.ledger.verify() == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_with_sigterm(proc: subprocess.Popen[str]) -> float:
    """SIGTERM, then the seconds until the process has exited (0 is required)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return time.monotonic() - started


@pytest.mark.parametrize("command", [["sandbox", "--port", "{port}"], ["--sandbox", "chat"]])
def test_long_running_commands_stop_promptly_on_sigterm(tmp_path, command):
    """`docker stop` sends SIGTERM; a command without a handler would be killed 10 s later. `chat` waits on
    an open stdin that never ends, as under `docker run -i`."""
    args = [arg.format(port=free_port()) for arg in command]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODKIE_", "IMAGINE_"))}
    with subprocess.Popen([str(SCRIPT), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=clean) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the sandbox's address, or the chat's greeting: it is up
        assert "listening on" in first or "imagine-bot chat" in first, first
        assert stop_with_sigterm(proc) < 3
