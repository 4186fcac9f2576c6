"""Shared fixtures: a real sandbox gateway on 127.0.0.1, settings pointing at it, and a running core.

Every outside service is a real local server; nothing here touches the internet.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from imagine_bot.core.app import ImagineCore
from imagine_bot.core.sandbox import SandboxGateway
from imagine_bot.core.settings import Settings, load_settings

TEST_API_KEY = "mk-test-secret-key-0123456789"
FAST_DELAYS = {"waiting": 0.02, "queuing": 0.02, "generating": 0.04}

#: under CI=true a skip fails (tests/no_skips_in_ci.py); pytester runs the suite's own plugins in tests
pytest_plugins = ["tests.no_skips_in_ci", "pytester"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer .env or exported setting leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("MODKIE_", "SLACK_", "DISCORD_", "CREDITS_", "IMAGINE_", "HTTP_", "MAX_",
                            "POLL_", "JOB_", "PUBLIC_URL", "ADMINS", "BANNED_WORDS")):
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
