"""A new user's first hour, as the README's first section tells it: every command between its
``<!-- first-hour:start -->`` and ``<!-- first-hour:end -->`` markers, run as written, one fresh shell each,
in a fresh copy of the repository (its tracked and new files, as a git repository of its own).

"Fresh shell": no virtualenv activated, only the system's PATH, no setting from this process's
environment; only HTTP_HOST/HTTP_PORT are set, so that `make dashboard` binds a free port on loopback
instead of 3000, and SANDBOX_DELAY_SCALE, so that the sandbox's jobs take 0.14 s instead of the demo's
2.8 s (tests/test_operations.py checks the demo's delays). `make test` is the one command not run (it runs
this suite); `make demo`'s install step is stood in for by a `.venv` of links to this checkout's (the
packaging test installs the wheel for real).
Afterwards `git status` is clean, and `make clean` leaves nothing the bot made.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import FAST_SANDBOX_ENV

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- first-hour:start -->", "<!-- first-hour:end -->"
LINK = re.compile(r"(http://\S+/admin/login\?t=[\w-]+)")


def readme_commands() -> list[str]:
    """Every command line of the ``sh`` blocks between the markers, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(START):text.index(END)]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def fresh_copy(target: Path) -> None:
    """The repository's files (tracked and new, not ignored), committed in a git repository of their own,
    and a .venv whose python and imagine-bot are this checkout's (newer than pyproject.toml: no reinstall)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
        elif source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).symlink_to(os.readlink(source))
    bin_dir = target / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "imagine-bot"):
        (bin_dir / tool).symlink_to(Path(sys.executable).parent / tool)
    (target / ".venv" / ".installed").touch()
    git = ["git", "-c", "user.name=first hour", "-c", "user.email=new@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "a fresh checkout"], cwd=target, check=True)


def shell_env(home: Path) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "USER": "newcomer",
           "HTTP_HOST": "127.0.0.1", "HTTP_PORT": "0", **FAST_SANDBOX_ENV}
    env.update({k: v for k, v in os.environ.items() if k in ("TMPDIR",)})
    return env


def run(command: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)  # `chat` reads its lines from stdin: here, none
    assert result.returncode == 0, f"`{command}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def serve_until_the_link_works(command: str, cwd: Path, env: dict[str, str]) -> str:
    """A command that serves (`make dashboard`): wait for its sign-in link, use it, then Ctrl-C."""
    with subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
        reader.start()
        said = []
        try:
            link = None
            while link is None:
                said.append(lines.get(timeout=120))
                found = LINK.search(said[-1])
                link = found.group(1) if found else None
            base = link.split("/admin/")[0]
            with httpx.Client() as http:
                assert http.get(link).status_code == 200  # the page with the sign-in button
                assert http.post(f"{base}/admin/login", data={"t": link.split("t=")[1]}).status_code == 303
                usage = http.get(f"{base}/admin/usage")
                assert usage.status_code == 200 and "Usage" in usage.text
                jobs = http.get(f"{base}/admin/jobs").text
                assert "as a watercolour" in jobs and "a lighthouse at dusk" in jobs  # the demo's database
                assert http.get(f"{base}/metrics").status_code == 200
                assert http.get(f"{base}/healthz").json()["ok"] is True
        finally:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a person stops it
            proc.wait(timeout=60)
            reader.join(timeout=10)
    return "".join(said)


# never while tests/test_packaging.py builds in the checkout (its staging folder would be copied half-made)
@pytest.mark.xdist_group("checkout")
def test_the_readme_first_section_runs_as_written_in_fresh_shells(tmp_path):
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"] and len(commands) >= 3, commands
    copy, home = tmp_path / "imagine-bot", tmp_path / "home"
    copy.mkdir()
    home.mkdir()
    fresh_copy(copy)
    env = shell_env(home)
    outputs = {}
    for command in commands:
        if command == "make test":
            continue  # the whole suite, this test among it
        if "dashboard" in command:
            outputs[command] = serve_until_the_link_works(command, copy, env)
        else:
            outputs[command] = run(command, copy, env)

    demo = outputs["make demo"]
    assert "You have 162 credits" in demo and (copy / "out" / "latest.png").exists()
    edits = [c for c in commands if "--image out/latest.png" in c]
    assert edits, "the README edits the demo's image by its stable name"
    assert "You have 144 credits" in outputs[edits[0]]  # the same database as the demo: both jobs charged
    saved = re.findall(r"^saved (\S+) \(also out/latest.png\)$", outputs[edits[0]], re.M)
    with Image.open(saved[-1]) as edited:
        assert edited.size == (1024, 576)  # the demo's 16:9, kept
    # everything the bot keeps is in data/, and git sees nothing new
    assert (copy / "data" / "imagine-bot.db").exists() and (copy / "data" / "imagine-bot-sandbox.json").exists()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=copy,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
    run("make clean", copy, env)
    left = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=copy,
                          capture_output=True, text=True, check=True).stdout
    assert left == "", left
