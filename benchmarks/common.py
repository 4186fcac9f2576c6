"""What the benchmarks share: helper processes, the sandbox gateway in its own process, settings, a
recording front end, an event-loop lag ticker, memory readings, percentiles and the figure format.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.events import Accepted, Delivered, Failed, JobEvent, Progress, Queued
from imagine_bot.core.jobs.model import ReplyTo
from imagine_bot.core.settings import Settings, load_settings

HOST = "127.0.0.1"
API_KEY = "bench-sandbox-key-0123456789"
#: the front end the core-level benchmarks register (jobs are addressed to it through ReplyTo)
PLATFORM = "terminal"
REPLY = ReplyTo(PLATFORM, "bench")


def user(n: int, prefix: str = "u") -> UserRef:
    return UserRef(PLATFORM, "local", f"{prefix}{n:05d}")


def say(message: str) -> None:
    """A progress line (benchmarks run in a child process; its stdout goes to the terminal)."""
    print(f"  {message}", flush=True)


# ---------------------------------------------------------------------- statistics


def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0-100), linear between the closest ranks (numpy's default); NaN if empty."""
    data = sorted(values)
    if not data:
        return math.nan
    k = (len(data) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary(values: Iterable[float], scale: float = 1.0) -> dict[str, float]:
    """count, p50, p90, p99, max and mean, each multiplied by ``scale`` (1000 for seconds -> ms)."""
    data = [v * scale for v in values]
    if not data:
        return {"count": 0}
    return {"count": len(data), "p50": percentile(data, 50), "p90": percentile(data, 90),
            "p99": percentile(data, 99), "max": max(data), "mean": sum(data) / len(data)}


def fig(label: str, value: str, goal: str = "", met: bool | None = None, **data: Any) -> dict[str, Any]:
    """One row of the results table; ``data`` keeps the raw numbers for latest.json."""
    return {"label": label, "value": value, "goal": goal, "met": met, "data": data}


def ms(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:.0f} ms" if x >= 100 else f"{x:.1f} ms"


# ---------------------------------------------------------------------- memory


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Resident memory now (VmRSS), MiB."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else math.nan


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM, else ru_maxrss), MiB."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------- event-loop lag


class LoopLag:
    """A ticker task: sleeps ``interval`` again and again and records how late each wake-up is."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - start - self.interval))

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="loop-lag")

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        return summary(self.lags, 1000)


# ---------------------------------------------------------------------- a recording front end


@dataclass
class Stamp:
    wall: float  # time.time(): comparable with the sandbox process's clock
    mono: float  # time.perf_counter(): for intervals inside this process


def stamp() -> Stamp:
    return Stamp(time.time(), time.perf_counter())


@dataclass
class Recorder:
    """A front end that only notes when each event arrives (``publish`` returns at once)."""

    platform: str = PLATFORM
    accepted: dict[str, Stamp] = field(default_factory=dict)
    delivered: dict[str, Stamp] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    task_of: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    expected: int = 0
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, event: JobEvent) -> None:
        now = stamp()
        self.counts[type(event).__name__] += 1
        job = event.job
        if isinstance(event, Accepted):
            self.accepted[job.id] = now
        elif isinstance(event, Delivered):
            self.delivered[job.id] = now
            if job.task_id:
                self.task_of[job.id] = job.task_id
        elif isinstance(event, Failed):
            self.failed[job.id] = event.error.code
        elif not isinstance(event, Queued | Progress):
            raise TypeError(f"unexpected event {event!r}")
        if isinstance(event, Delivered | Failed) and self.finished >= self.expected > 0:
            self._done.set()

    @property
    def finished(self) -> int:
        return len(self.delivered) + len(self.failed)

    async def wait(self, expected: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until ``expected`` jobs have been delivered or failed; False on timeout."""
        self.expected = expected
        self._done.clear()
        if self.finished >= expected:
            return True
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            return False
        return True


# ---------------------------------------------------------------------- settings


def bench_settings(db_dir: Path, base_url: str, **overrides: Any) -> Settings:
    """Settings for a core pointed at ``base_url``, with nothing read from ``.env`` (and, since the
    benchmark runs in a child process with a cleaned environment, nothing from exported variables)."""
    values: dict[str, Any] = {
        "_env_file": None,
        "MODKIE_BASE_URL": base_url,
        "MODKIE_API_KEY": API_KEY,
        "IMAGINE_DB_PATH": db_dir / "imagine.db",
        "HTTP_HOST": HOST,
        "HTTP_PORT": 0,
        "LOG_LEVEL": "WARNING",
    }
    values.update(overrides)
    return load_settings(**values)


# ---------------------------------------------------------------------- helper processes


def _helper_entry(target: str, conn: multiprocessing.connection.Connection, kwargs: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s [helper] %(name)s: %(message)s")
    module, name = target.split(":")
    fn = getattr(importlib.import_module(module), name)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(fn(conn, **kwargs))
    conn.close()


def recv_or_none(conn: multiprocessing.connection.Connection) -> Any:
    """The next message, or None when the other end has gone away."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


class Helper:
    """A spawned helper process running ``async target(conn, **kwargs)``, spoken to over a pipe.

    Protocol: the helper sends one "ready" message first; then every request gets one reply; a request
    ``{"op": "stop"}`` (or the pipe closing) makes it shut down after a last reply.
    """

    def __init__(self, target: str, **kwargs: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_helper_entry, args=(target, child, kwargs), name=target)
        self.process.start()
        child.close()

    async def _recv(self, timeout: float) -> Any:  # noqa: ASYNC109
        ready = await asyncio.to_thread(self._conn.poll, timeout)
        if not ready:
            raise TimeoutError(f"helper {self.process.name} did not answer within {timeout}s")
        try:
            return self._conn.recv()
        except EOFError:
            await asyncio.to_thread(self.process.join, 5)
            raise RuntimeError(f"helper {self.process.name} exited (code {self.process.exitcode})") from None

    async def ready(self, timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        return await self._recv(timeout)

    async def ask(self, message: dict[str, Any], timeout: float = 60.0) -> Any:  # noqa: ASYNC109
        self._conn.send(message)
        return await self._recv(timeout)

    async def stop(self, timeout: float = 15.0) -> Any:  # noqa: ASYNC109
        """Ask the helper to stop; returns its last reply (None if it had gone). Kills it if it hangs."""
        last = None
        try:
            last = await self.ask({"op": "stop"}, timeout)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        finally:
            self._conn.close()
            await asyncio.to_thread(self.process.join, timeout)
            if self.process.is_alive():
                self.process.kill()
                await asyncio.to_thread(self.process.join, 5)
        return last


# ---------------------------------------------------------------------- the sandbox gateway, in its own process


class _JitteredTasks(dict):  # type: ignore[type-arg]
    """The sandbox's task table, stretching each new task's ``generating`` time by a random factor, so
    that completions do not all line up with the pollers' phase (real jobs vary in length)."""

    def __init__(self, spread: float, seed: int) -> None:
        super().__init__()
        self.spread = spread
        self.rng = random.Random(seed)

    def __setitem__(self, key: str, task: Any) -> None:
        if key not in self and self.spread > 0:
            task.delays["generating"] *= self.rng.uniform(1 - self.spread, 1 + self.spread)
        super().__setitem__(key, task)


class _TimedRequests(Counter[str]):
    """The sandbox's request counter (its middleware does ``requests[endpoint] += 1`` as each request
    arrives), also noting when (``time.monotonic()``) each recordInfo request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.recordinfo_at: list[float] = []

    def __setitem__(self, key: str, value: int) -> None:
        if key == "recordInfo":
            self.recordinfo_at.append(time.monotonic())
        super().__setitem__(key, value)

    def clear(self) -> None:
        super().clear()
        self.recordinfo_at.clear()


def busiest_second(times: Iterable[float]) -> int:
    """The most events in any sliding window of 1 s, [t, t + 1)."""
    data = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(data):
        while data[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def per_second(times: Iterable[float]) -> list[int]:
    """Events in each fixed 1-s window, counted from the first event."""
    data = sorted(times)
    if not data:
        return []
    counts = [0] * (int(data[-1] - data[0]) + 1)
    for t in data:
        counts[int(t - data[0])] += 1
    return counts


async def sandbox_helper(conn: multiprocessing.connection.Connection, *, delays: dict[str, float],
                         image_scale: float, latency: float, jitter: float, seed: int) -> None:
    """The sandbox gateway in a helper process. Replies to ``stats`` with its request counts, the arrival
    rate of recordInfo requests (from each request's arrival time), and when (wall clock) each task reached
    its end state; ``delays`` changes the delays of the tasks created from then on (e.g. after a warm-up)."""
    from imagine_bot.core.sandbox import SandboxGateway

    gateway = SandboxGateway(delays=delays, image_scale=image_scale, latency=latency, api_key=API_KEY)
    gateway.tasks = _JitteredTasks(jitter, seed)
    requests = _TimedRequests()
    gateway.requests = requests
    base_url = await gateway.start(HOST, 0)
    conn.send({"base_url": base_url, "pid": os.getpid()})

    def stats() -> dict[str, Any]:
        loop_now, wall_now = asyncio.get_running_loop().time(), time.time()
        done = {tid: wall_now - (loop_now - task.created) + task.duration for tid, task in gateway.tasks.items()}
        arrivals = requests.recordinfo_at
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
        return {"requests": dict(gateway.requests), "done_at": done,
                "recordinfo": {"count": len(arrivals), "span_s": span,
                               "mean_per_s": (len(arrivals) - 1) / span if span > 0 else 0.0,
                               "busiest_second": busiest_second(arrivals),
                               "busiest_fixed_second": max(per_second(arrivals), default=0),
                               "per_second": per_second(arrivals)},
                "peak_rss_mb": peak_rss_mb(), "cpu_s": cpu_seconds()}

    try:
        while True:
            message = await asyncio.to_thread(recv_or_none, conn)
            if message is None:
                break
            if message.get("op") == "stats":
                conn.send(stats())
            elif message.get("op") == "reset":
                gateway.requests.clear()
                conn.send({"ok": True})
            elif message.get("op") == "delays":
                gateway.delays = {**gateway.delays, **message["delays"]}
                conn.send({"ok": True})
            elif message.get("op") == "stop":
                conn.send(stats())
                break
    finally:
        await gateway.stop()


@contextlib.asynccontextmanager
async def sandbox_process(*, delays: dict[str, float], image_scale: float = 0.125, latency: float = 0.0,
                          jitter: float = 0.0, seed: int = 1) -> AsyncIterator[tuple[str, Helper]]:
    """Run the sandbox gateway in its own process; yields its base URL and the helper (for ``stats``)."""
    helper = Helper("benchmarks.common:sandbox_helper", delays=delays, image_scale=image_scale, latency=latency,
                    jitter=jitter, seed=seed)
    try:
        info = await helper.ready()
        yield info["base_url"], helper
    finally:
        await helper.stop()


async def drain(core: Any, timeout: float = 60.0) -> bool:  # noqa: ASYNC109
    """After a measurement: lift the admission limits and the shared recordInfo rate so every job left
    finishes soon, and wait for them, so that nothing is cut off in the middle of a gateway request at
    shutdown. False if they did not finish. (Only for clean-up: no figure is measured while draining; a
    poll already waiting for its slot keeps it, later polls take the new, unbounded limiter.)"""
    from imagine_bot.core.jobs.ratelimit import RateLimiter, SlidingWindow

    admission = core.orchestrator.admission
    admission.max_active = 1_000_000
    admission.window = SlidingWindow(1_000_000, 1.0)
    core.orchestrator.poll_limiter = RateLimiter(1_000_000.0, burst=1_000_000)
    try:
        await asyncio.wait_for(core.orchestrator.wait_idle(), timeout)
    except TimeoutError:
        return False
    return True


def timed_downloads(gateway: Any) -> dict[str, float]:
    """Wrap ``gateway.download`` (on this instance only) to note how long each result URL took to fetch.

    Returns the dict it fills: URL -> seconds. The orchestrator calls the same instance, so its downloads
    are timed without changing any core code.
    """
    took: dict[str, float] = {}
    original = gateway.download

    async def download(url: str) -> Any:
        start = time.perf_counter()
        try:
            return await original(url)
        finally:
            took[url] = time.perf_counter() - start

    gateway.download = download
    return took


def task_of_url(url: str) -> str:
    """The sandbox's result URLs are ``{base}/files/{task_id}/{n}.png``."""
    return url.rstrip("/").split("/")[-2]


#: the account-webhook secret the benchmarks register (``callbacks_served(..., account_webhook=True)``)
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"


@contextlib.asynccontextmanager
async def callbacks_served(core: Any, enabled: bool, *, account_webhook: bool = False) -> AsyncIterator[None]:
    """With ``enabled``: serve the core's web app on ``HOST`` and have jobs ask the gateway to call back there.

    With ``account_webhook`` too: register that URL as the ModKie account webhook, as ``imagine-bot run``
    does (the core's settings must carry ``MODKIE_WEBHOOK_SECRET=WEBHOOK_SECRET``), so that every task's
    end arrives signed over its whole body and needs no recordInfo.
    """
    if not enabled:
        yield
        return
    from imagine_bot.core.gateway.webhooks import register_account_webhook
    from imagine_bot.core.web.server import build_web_app, start_web

    runner, port = await start_web(build_web_app(core), HOST, 0)
    core.orchestrator.callback_url = f"http://{HOST}:{port}/callbacks/modkie"
    try:
        if account_webhook:
            settings = core.settings.model_copy(update={"PUBLIC_URL": f"http://{HOST}:{port}"})
            registration = await register_account_webhook(core.gateway, settings)
            if not registration.registered:
                raise RuntimeError(f"account webhook not registered: {registration.detail}")
            core.orchestrator.account_webhook = True
        yield
    finally:
        await runner.cleanup()
