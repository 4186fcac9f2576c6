#!/usr/bin/env python3
"""``make container-test``: build the image and run docs/deployment.md's Docker section, command by command, checking
what an operator relies on. Prints each check as it passes; exits 1 on the first that fails.

- The engine is Docker when a Docker daemon answers, else podman (installed from Debian when missing and
  this runs as root). Under podman, the deployment guide's ``docker`` is podman with ``--format docker`` on build (so
  the HEALTHCHECK is kept) and settings that fit this machine (``podman_conf``).
- The base image (the Dockerfile's ``FROM``) is pulled; where it cannot be (no Docker Hub here), a stand-in
  is built from Debian packages with mmdebstrap (python3, python3-venv, python3-pip), given the base's name,
  and kept for the next run. The output says so.
- The deployment guide's commands run in a scratch copy of the repository (its ``.env`` is not yours), with the
  guide's own names: containers ``imagine-bot`` and ``imagine-sandbox``, the volume ``imagine-data`` and
  the folder ``/srv/imagine-bot``, all removed before and after. Only ``.env`` is filled in (a Slack token
  and signing secret, Slack's address pointed at a closed local port) as the guide tells the reader to.
- "SKIPPED: <reason>", exit 0, only when this machine cannot run a container at all; under ``CI=true`` that
  is a failure (exit 1): CI must run what it claims to.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE, BOT, SANDBOX, VOLUME, BIND = "imagine-bot", "imagine-bot", "imagine-sandbox", "imagine-data", "/srv/imagine-bot"
STOP_LIMIT_S = 3.0
STAND_IN_LABEL = "imagine-bot.stand-in"
STARTED = time.monotonic()


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


def say(text: str) -> None:
    print(text, flush=True)


def passed(what: str, seconds: float | None = None) -> None:
    Run.checks += 1
    say(f"ok   {what}" + (f"  ({seconds:.1f} s)" if seconds is not None else ""))


def sh(args: list[str] | str, *, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None,
       cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, shell=isinstance(args, str), capture_output=True, text=True, timeout=timeout,
                            env=env, cwd=cwd, input=stdin, executable="/bin/bash" if isinstance(args, str) else None)
    if check and result.returncode != 0:
        shown = args if isinstance(args, str) else shlex.join(args)
        raise CheckFailed(f"`{shown}` exited {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}")
    return result


@dataclass
class Engine:
    name: str  # docker | podman
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh([self.name, *args], timeout=timeout, check=check, env=self.env)

    def shell_prelude(self) -> str:
        """Bash functions that make the deployment guide's `docker` (and `sudo`, as root) mean this engine."""
        lines = []
        if self.name == "podman":
            lines.append('docker() { if [ "$1" = build ]; then shift; podman build --format docker "$@"; '
                         'else podman "$@"; fi; }')
        if os.geteuid() == 0 and not shutil.which("sudo"):
            lines.append('sudo() { "$@"; }')
        return "\n".join(lines) + "\n"

    def health(self, container: str) -> str:
        state = json.loads(self("inspect", container).stdout)[0]["State"]
        health = state.get("Health") or state.get("Healthcheck") or {}
        return str(health.get("Status", "none"))

    def exit_code(self, container: str) -> int:
        return int(json.loads(self("inspect", container).stdout)[0]["State"]["ExitCode"])


class Run:
    checks = 0


# ---------------------------------------------------------------------------------------------- the engine
def find_engine() -> Engine:
    if shutil.which("docker") and sh(["docker", "info"], check=False, timeout=30).returncode == 0:
        return Engine("docker")
    if not shutil.which("podman"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise Skip("no Docker daemon answers, podman is not installed, and this is not a root Debian machine "
                       "that could install it")
        say("podman not found and no Docker daemon: installing podman from Debian (apt-get)")
        apt_install("podman", "runc")
    engine = Engine("podman")
    engine.env["CONTAINERS_CONF"] = str(podman_conf())
    info = engine("info", check=False, timeout=120)
    if info.returncode != 0:
        raise Skip(f"podman cannot start here: {(info.stderr or info.stdout).strip().splitlines()[-1:]}")
    return engine


def podman_conf(nofile: int = 20000, nproc: int = 32768) -> Path:
    """podman's settings for this machine: container limits no higher than what the container's parent may
    set (podman asks for more than these machines allow, and without CAP_SYS_RESOURCE runc then fails with
    "error setting rlimit"), and runc, which works here where crun does not."""
    ulimits = []
    for name, limit, cap in (("nofile", resource.RLIMIT_NOFILE, nofile), ("nproc", resource.RLIMIT_NPROC, nproc)):
        hard = resource.getrlimit(limit)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        ulimits.append(f'"{name}={value}:{value}"')
    path = Path(tempfile.gettempdir()) / "imagine-bot-container-test.conf"
    path.write_text(f"[containers]\ndefault_ulimits = [{', '.join(ulimits)}]\n\n[engine]\nruntime = \"runc\"\n")
    return path


def probe(engine: Engine, image: str) -> None:
    """Run one container; lower podman's limits once if they are refused; skip only if no container can run."""
    result = engine("run", "--rm", "--network", "none", image, "python", "--version", check=False, timeout=120)
    if result.returncode != 0 and engine.name == "podman" and "rlimit" in result.stderr:
        say("NOTE podman's container limits were refused here: trying nofile=1024, nproc=4096")
        engine.env["CONTAINERS_CONF"] = str(podman_conf(1024, 4096))
        result = engine("run", "--rm", "--network", "none", image, "python", "--version", check=False, timeout=120)
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if re.search(r"namespace|unshare|operation not permitted|permission denied", error, re.I):
            raise Skip(f"{engine.name} cannot start a container on this machine: {error}")
        raise CheckFailed(f"a container of {image} does not run: {error}")
    passed(f"a container runs ({image}: {result.stdout.strip()})")


def apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-q"], timeout=600, env=env)
    sh(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", *packages], timeout=1200, env=env)


# ---------------------------------------------------------------------------------------------- the base image
def base_image() -> str:
    bases = re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    return bases[0]


def ensure_base(engine: Engine, base: str) -> str:
    """The base image, pulled or built as a stand-in; returns its full name."""
    qualified = base if "/" in base else f"docker.io/library/{base}"
    found = engine("image", "inspect", qualified, check=False)
    if found.returncode == 0:
        labels = json.loads(found.stdout)[0].get("Config", {}).get("Labels") or {}
        if STAND_IN_LABEL in labels:
            say(f"NOTE base image {base}: using the stand-in built from Debian packages on an earlier run "
                f"({labels[STAND_IN_LABEL]}), not the real image")
        else:
            say(f"base image {base}: present")
        return qualified
    started = time.monotonic()
    pulled = engine("pull", qualified, check=False, timeout=300)
    if pulled.returncode == 0:
        passed(f"base image {base} pulled", time.monotonic() - started)
        return qualified
    reason = (pulled.stderr.strip().splitlines() or ["no answer"])[-1][:200]
    say(f"NOTE base image {base} cannot be pulled ({reason}).")
    build_stand_in(engine, qualified)
    passed(f"stand-in for {base} built from Debian packages and tagged with its name", time.monotonic() - started)
    return qualified


def build_stand_in(engine: Engine, qualified: str) -> None:
    """A stand-in for python:3.11.x-slim-<suite>: Debian's minbase with python3, venv and pip."""
    named = re.search(r"-(bookworm|trixie|bullseye)\b", qualified)
    suite = named.group(1) if named else "bookworm"
    if not shutil.which("mmdebstrap"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise CheckFailed("the base image cannot be pulled and mmdebstrap is missing (apt-get install mmdebstrap)")
        apt_install("mmdebstrap")
    packages = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd"
    hooks = []
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_ca.exists():
        # pip inside the build reaches PyPI through whatever this machine trusts (an intercepting proxy here)
        hooks.append(f"--customize-hook=upload {host_ca} /etc/ssl/certs/ca-certificates.crt")
    label = f"Debian {suite} minbase + {packages.replace(',', ' ')}"
    say(f"NOTE building a stand-in from Debian {suite} packages ({packages}) with mmdebstrap: its Python is "
        "Debian's python3, not the official image's build")
    with tempfile.TemporaryDirectory(prefix="imagine-stand-in-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        sh(["mmdebstrap", "--variant=minbase", f"--include={packages}", *hooks, suite, str(tar)],
           timeout=1800)
        engine("import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
               "--change", f"LABEL {STAND_IN_LABEL}=\"{label}\"", str(tar), qualified, timeout=600)


# ---------------------------------------------------------------------------------------------- helpers
def free_port(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, within_s: float, engine: Engine, container: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        state = json.loads(engine("inspect", container).stdout)[0]["State"]
        if not state.get("Running"):
            logs = engine("logs", container, check=False)
            raise CheckFailed(f"{container} exited {state.get('ExitCode')}:\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(0.3)
    raise CheckFailed(f"{url} did not answer within {within_s:.0f} s")


def readme_commands() -> list[str]:
    text = (ROOT / "docs" / "deployment.md").read_text()
    match = re.search(r"<!-- container-test:start -->(.*?)<!-- container-test:end -->", text, re.S)
    if not match:
        raise CheckFailed("docs/deployment.md has no <!-- container-test:start/end --> section")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", match.group(1), re.S):
        commands += [line for line in block.splitlines() if line.strip()]
    return commands


def cleanup(engine: Engine) -> None:
    for name in (BOT, SANDBOX):
        engine("rm", "-f", name, check=False)
    engine("volume", "rm", "-f", VOLUME, check=False)
    shutil.rmtree(BIND, ignore_errors=True)


def scratch_copy() -> Path:
    """The repository's files (tracked and new, not ignored) in a scratch folder: the guide's `cp .env.example
    .env` must not overwrite a developer's own `.env`."""
    listed = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    work = Path(tempfile.mkdtemp(prefix="imagine-container-test-"))
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if source.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / rel)
    return work


# ---------------------------------------------------------------------------------------------- the run
class ReadmeRun:
    def __init__(self, engine: Engine, work: Path) -> None:
        self.engine = engine
        self.work = work
        self.port_map: dict[str, str] = {}
        for port in ("3000", "8787"):
            if not free_port(int(port)):
                other = str(any_free_port())
                self.port_map[port] = other
                say(f"NOTE host port {port} is taken on this machine: `-p {port}:{port}` runs as `-p {other}:{port}`")

    def host_port(self, port: str) -> str:
        return self.port_map.get(port, port)

    def command(self, line: str, *, timeout: float = 1800, check: bool = True,
                echo: bool = True) -> tuple[subprocess.CompletedProcess[str], float]:
        for port, other in self.port_map.items():
            line = line.replace(f"-p {port}:{port}", f"-p {other}:{port}")
        if echo:
            say(f"$ {line}")
        started = time.monotonic()
        result = sh(self.engine.shell_prelude() + line, timeout=timeout, check=check, env=self.engine.env,
                    cwd=self.work)
        return result, time.monotonic() - started

    def stop(self, line: str, container: str) -> None:
        _, seconds = self.command(line)
        code = self.engine.exit_code(container)
        if seconds >= STOP_LIMIT_S or code != 0:
            raise CheckFailed(f"`{line}` took {seconds:.1f} s (limit {STOP_LIMIT_S} s), exit code {code}")
        passed(f"`docker stop {container}` under {STOP_LIMIT_S:.0f} s, exit code 0", seconds)
        self.engine("rm", "-f", container)


def run_readme(engine: Engine) -> None:
    commands = readme_commands()
    work = scratch_copy()
    run = ReadmeRun(engine, work)
    done: list[str] = []

    def step(pattern: str) -> str:
        """The next command of the guide, which must match `pattern` (the guide and this script move together)."""
        line = commands[len(done)]
        if not re.search(pattern, line):
            raise CheckFailed(f"deployment guide command {len(done) + 1} is `{line}`; this check expected /{pattern}/")
        done.append(line)
        return line

    try:
        # 1. build
        _, seconds = run.command(step(r"^docker build -t imagine-bot \.$"))
        size = json.loads(engine("image", "inspect", IMAGE).stdout)[0].get("Size", 0) / 1e6
        passed(f"image built: {size:.0f} MB", seconds)
        inspected = json.loads(engine("image", "inspect", IMAGE).stdout)[0]
        config = inspected["Config"]
        healthcheck = config.get("Healthcheck") or inspected.get("Healthcheck")  # Docker's place, podman's
        if config.get("User") in (None, "", "root", "0") or not healthcheck:
            raise CheckFailed(f"the image has user {config.get('User')!r}, healthcheck {healthcheck}")
        uid = engine("run", "--rm", IMAGE, "id", "-u").stdout.strip()
        if uid == "0":
            raise CheckFailed("the container runs as root")
        passed(f"runs as a non-root user (uid {uid}; image USER {config['User']}), HEALTHCHECK kept in the image")

        # 2. a sandbox image made inside the container
        result, seconds = run.command(step(r"^docker run --rm imagine-bot imagine-bot --sandbox imagine "))
        saved = re.search(r"saved (\S+\.png)", result.stdout)
        if not saved:
            raise CheckFailed(f"no image saved:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        passed(f"a sandbox image made inside the container: {saved.group(1)}", seconds)

        # 3. the deployment guide's --env-file run keeps its database in the volume
        run.command(step(r"^cp \.env\.example \.env"))
        fill_env(work / ".env")
        run.command(step(r"^docker run -d --name imagine-bot --env-file \.env -p 3000:3000 -v imagine-data:/data "
                         r"imagine-bot$"))
        up = wait_http(f"http://127.0.0.1:{run.host_port('3000')}/healthz", 90, engine, BOT)
        passed("`imagine-bot run` answers /healthz through the published port", up)
        check_health(engine, BOT)
        logs_line = step(r"^docker logs imagine-bot")
        for attempt in range(60):  # "running" comes once the front end is up and the jobs left are resumed
            logs, _ = run.command(logs_line, echo=attempt == 0)
            said = logs.stdout + logs.stderr
            if "imagine-bot running: slack" in said:
                break
            time.sleep(0.5)
        if "database /data/imagine-bot.db" not in said or "imagine-bot running: slack" not in said:
            raise CheckFailed(f"the log does not say where the database is, then running:\n{said[-2000:]}")
        passed("the log says: database /data/imagine-bot.db ... imagine-bot running: slack")
        listing = engine("exec", BOT, "sh", "-c", "ls -a /data /home/imagine").stdout
        if "imagine-bot.db" not in listing.split("/home/imagine:")[0] or "imagine-bot.db" in listing.split(
                "/home/imagine:")[1]:
            raise CheckFailed(f"the database is not (only) in /data:\n{listing}")
        run.stop(step(r"^docker stop imagine-bot"), BOT)
        in_volume = engine("run", "--rm", "-v", f"{VOLUME}:/data", IMAGE, "ls", "/data").stdout.split()
        if "imagine-bot.db" not in in_volume:
            raise CheckFailed(f"after the container is gone the volume holds {in_volume}")
        passed(f"the database is in the volume {VOLUME} after the container is removed: {' '.join(in_volume)}")

        # 4. an unwritable /data: one line naming the path and the fix; then the deployment guide's chown makes it work
        chown = step(r"^sudo mkdir -p /srv/imagine-bot && sudo chown -R 10001 /srv/imagine-bot$")
        bind_run = step(r"^docker run -d --name imagine-bot --env-file \.env -p 3000:3000 -v /srv/imagine-bot:/data "
                        r"imagine-bot$")
        say(f"(first without the chown: {BIND} as root creates it)")
        Path(BIND).mkdir(parents=True, exist_ok=True)
        os.chmod(BIND, 0o755)
        run.command(bind_run)
        code = int(engine("wait", BOT, timeout=60).stdout.strip().splitlines()[-1])
        out = engine("logs", BOT)
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
        if code != 2 or len(lines) != 1 or "/data/imagine-bot.db" not in lines[0] or "chown" not in lines[0]:
            raise CheckFailed(f"expected exit 2 and one line naming /data/imagine-bot.db and chown; got exit {code}:\n"
                              + "\n".join(lines[-40:]))
        passed(f"unwritable /data: exit 2 and one line: {lines[0]}")
        engine("rm", "-f", BOT)
        run.command(chown)
        run.command(bind_run)
        up = wait_http(f"http://127.0.0.1:{run.host_port('3000')}/healthz", 90, engine, BOT)
        if not (Path(BIND) / "imagine-bot.db").exists():
            raise CheckFailed(f"no {BIND}/imagine-bot.db after the chown")
        passed(f"after the deployment guide's chown the bind-mounted folder works: {BIND}/imagine-bot.db", up)
        engine("stop", BOT)
        engine("rm", "-f", BOT)

        # 5. the sandbox gateway alone, and its stop
        run.command(step(r"^docker run -d --name imagine-sandbox -p 8787:8787 imagine-bot imagine-bot sandbox "))
        up = wait_http(f"http://127.0.0.1:{run.host_port('8787')}/healthz", 60, engine, SANDBOX)
        passed("`imagine-bot sandbox` answers /healthz through the published port", up)
        run.stop(step(r"^docker stop imagine-sandbox$"), SANDBOX)

        # 6. one image for SQLite and PostgreSQL: the postgres extra's driver is in it (DATABASE_URL)
        driver = engine("run", "--rm", IMAGE, "python", "-c",
                        "import psycopg, psycopg_pool; print(psycopg.__version__, psycopg.pq.__impl__)").stdout
        passed(f"the image has psycopg {driver.strip()} and psycopg_pool, for DATABASE_URL")
        if len(done) != len(commands):
            raise CheckFailed(f"commands of docs/deployment.md this check did not run: {commands[len(done):]}")
        passed(f"every command of the Docker section of docs/deployment.md ran ({len(commands)})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fill_env(env_file: Path) -> None:
    """What the guide asks the reader to fill in: a front end (Slack in HTTP mode, its API at a closed port,
    so no network is needed) and, for MODKIE_*, the embedded sandbox (no key, no network); the rest stays as
    .env.example has it."""
    values = {"SLACK_BOT_TOKEN": "xoxb-container-test", "SLACK_SIGNING_SECRET": "container-test-signing-secret",
              "SLACK_API_URL": "http://127.0.0.1:9/api/", "MODKIE_BASE_URL": "sandbox"}
    text = env_file.read_text()
    for name, value in values.items():
        text, count = re.subn(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M)
        if count != 1:
            raise CheckFailed(f".env.example has no single {name}= line to fill in")
    env_file.write_text(text)
    say("(filled in .env: " + ", ".join(values) + ")")


def check_health(engine: Engine, container: str) -> None:
    """The image's HEALTHCHECK: podman runs it on demand; Docker on its own schedule (first after 30 s)."""
    started = time.monotonic()
    if engine.name == "podman":
        result = engine("healthcheck", "run", container, check=False, timeout=60)
        if result.returncode != 0:
            raise CheckFailed(f"podman healthcheck run {container}: {result.stdout}{result.stderr}")
    deadline = started + 120
    status = engine.health(container)
    while status != "healthy" and time.monotonic() < deadline:
        time.sleep(1)
        status = engine.health(container)
    if status != "healthy":
        raise CheckFailed(f"HEALTHCHECK status of {container} is {status!r}")
    passed("the HEALTHCHECK reports healthy on `imagine-bot run`", time.monotonic() - started)


def main() -> int:
    say("container-test: build the image and run the Docker section of docs/deployment.md")
    try:
        engine = find_engine()
        say(f"engine: {engine.name} ({engine('--version').stdout.strip()})")
        probe(engine, ensure_base(engine, base_image()))
        cleanup(engine)
        try:
            run_readme(engine)
        finally:
            cleanup(engine)
    except Skip as reason:
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            say(f"FAIL no container could run, and a skip fails under CI=true: {reason}")
            say(f"container-test: {Run.checks} passed, 1 failed")
            return 1
        say(f"container-test: SKIPPED: {reason}")
        return 0
    except (CheckFailed, subprocess.TimeoutExpired) as failure:
        say(f"FAIL {failure}")
        say(f"took {time.monotonic() - STARTED:.0f} s")
        say(f"container-test: {Run.checks} passed, 1 failed")
        return 1
    say(f"took {time.monotonic() - STARTED:.0f} s")
    say(f"container-test: {Run.checks} passed, 0 failed")  # the plain closing line CI reads
    return 0


if __name__ == "__main__":
    sys.exit(main())
