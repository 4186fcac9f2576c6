"""Shared fixtures: a real sandbox gateway on 127.0.0.1, settings pointing at it, and a running core.

Every outside service is a real local server; nothing here touches the internet.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest

from imagine_bot.core.app import ImagineCore
from imagine_bot.core.sandbox import SandboxGateway
from imagine_bot.core.settings import Settings, load_settings
from tests import pg
from tests.pg import PgCluster

TEST_API_KEY = "mk-test-secret-key-0123456789"
FAST_DELAYS = {"waiting": 0.02, "queuing": 0.02, "generating": 0.04}
#: the embedded sandbox (``--sandbox`` in a subprocess) at a twentieth of its delays: 0.14 s a job, not 2.8 s
FAST_SANDBOX_ENV = {"SANDBOX_DELAY_SCALE": "0.05"}

#: under CI=true a skip fails (tests/no_skips_in_ci.py); pytester runs the suite's own plugins in tests
pytest_plugins = ["tests.no_skips_in_ci", "pytester"]

# no wall-clock bound in a test, hypothesis's either: its 200 ms deadline per example (and its health check of
# slow data generation) trip on a busy machine, with the suite's workers sharing 2 cores
hypothesis.settings.register_profile("suite", deadline=None,
                                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("suite")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (pyproject.toml's addopts): two workers a core. Most of the suite's time is waiting (on
    subprocesses, local servers, timeouts), not computing, so more workers than cores keep the cores busy.
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` (pytest-xdist's own setting) still wins; ``-n0`` runs in this process."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist's own hook reads it
    return 2 * len(os.sched_getaffinity(0))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``slow`` tests (several processes: 10 to 40 s each on a busy machine) first, in their order, then
    the others in theirs: pytest-xdist hands tests out in this order, so the long ones start while the short
    ones fill the gaps, instead of one starting near the end with the other workers idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """``main()`` sets up logging on the root logger (to the captured stderr): put it back after every test
    (later tests read caplog)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer .env or exported setting leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("MODKIE_", "SLACK_", "DISCORD_", "CREDITS_", "IMAGINE_", "HTTP_", "MAX_",
                            "POLL_", "JOB_", "PUBLIC_URL", "ADMINS", "BANNED_WORDS", "DATABASE_", "SANDBOX_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def make_sandbox() -> AsyncIterator[Callable[..., Awaitable[SandboxGateway]]]:
    """Start sandbox gateways (fast delays, small images unless told otherwise); all stopped at the end."""
    started: list[SandboxGateway] = []

    async def make(**kwargs: Any) -> SandboxGateway:
        gateway = SandboxGateway(**{"delays": dict(FAST_DELAYS), "image_scale": 0.125, **kwargs})
        await gateway.start()
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        await gateway.stop()


@pytest.fixture
async def sandbox(make_sandbox: Callable[..., Awaitable[SandboxGateway]]) -> SandboxGateway:
    return await make_sandbox()


@pytest.fixture
def make_settings(tmp_path: Path, sandbox: SandboxGateway) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "_env_file": None,
            "MODKIE_BASE_URL": sandbox.base_url,
            "MODKIE_API_KEY": TEST_API_KEY,
            "IMAGINE_DB_PATH": tmp_path / "imagine.db",
            "POLL_INTERVAL_S": 0.02,
            "POLL_MAX_INTERVAL_S": 0.05,
            # the real share of 8 recordInfo a second over all jobs held a test's few jobs up (the sandbox's
            # jobs take 0.08 s); tests/test_orchestrator.py tests the shared rate with its own
            "POLL_RATE_PER_S": 100,
            "JOB_TIMEOUT_S": 20,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": 0,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
async def core(make_settings: Callable[..., Settings]) -> AsyncIterator[ImagineCore]:
    async with ImagineCore.open(make_settings()) as opened:
        yield opened


async def until(predicate: Callable[[], object], within: float = 10.0) -> None:
    """Wait until ``predicate()`` holds: for facts that live in SQLite rows (a job's state, its owner),
    written by code that signals nothing; fails after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - a database row has no event to wait on
            await asyncio.sleep(0.005)


# ---------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the whole session (``tests/pg.py``): under pytest-xdist, one per
    worker process that runs a PostgreSQL test (each its own folder and free port). Without the server
    binaries the PostgreSQL tests are skipped with the reason, and named at the end of the run; under
    ``CI=true`` they fail instead: CI installs the binaries (``.ci/run``), so a skip there would hide a
    missing step."""
    reason = pg.missing_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    cluster = pg.PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database of the session's cluster: its ``postgresql://`` URL."""
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The note that PostgreSQL tests were skipped, read from the skips' reports: they reach this process
    from the xdist workers that ran them, as they do without xdist."""
    reason = pg.missing_reason()
    if reason is not None and any(reason in str(report.longrepr)
                                  for report in terminalreporter.stats.get("skipped", [])):
        terminalreporter.write_line(f"NOTE: {reason}", yellow=True, bold=True)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on both databases: ``postgres`` sets ``DATABASE_URL`` to a fresh database of the session's
    cluster, which every ``make_settings``/``load_settings`` after it reads. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("backend")``."""
    if request.param == "postgres":
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("pg_url"))
    return str(request.param)


def db_args(settings: Settings) -> list[str]:
    """The command line's option for the database of ``settings``: ``--db FILE`` on SQLite; nothing on
    PostgreSQL (``DATABASE_URL``, which ``--db`` would override)."""
    return [] if settings.database_url else ["--db", str(settings.IMAGINE_DB_PATH)]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An empty, migrated database of each kind, for the stores' contract tests."""
    if request.param == "postgres":
        from imagine_bot.core.storage.postgres import open_postgres

        db: Any = open_postgres(request.getfixturevalue("pg_url"), busy_timeout_s=5)
    else:
        from imagine_bot.core.storage.db import open_db

        db = open_db(":memory:")
    yield db
    db.close()
