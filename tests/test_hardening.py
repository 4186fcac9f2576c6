"""Hardening: result downloads, the gateway address, the database file's mode, and callbacks.

Result downloads go only to public addresses, on the URL and on every redirect hop, unless the gateway
itself is local. The sandbox is on 127.0.0.1, so these tests tell the client to act as for a non-local
gateway (``allow_private_results = False``): its own origin stays trusted, anything else inward is refused,
and the job fails with a message and a refund."""

from __future__ import annotations

import asyncio
import io
import json
import stat
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ConfigError, DownloadError
from imagine_bot.core.events import Failed, Progress
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.media.netaddr import is_public_address
from imagine_bot.core.settings import load_settings
from imagine_bot.core.storage.db import open_db
from imagine_bot.core.storage.sqlite import SqliteStores
from imagine_bot.core.web.server import build_web_app, start_web

ALICE = UserRef("terminal", "local", "alice")
METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


def _success_with(urls: list[str]) -> bytes:
    data = {"state": "success", "resultJson": json.dumps({"resultUrls": urls}), "failCode": "", "failMsg": ""}
    return json.dumps({"code": 200, "msg": "success", "data": data}).encode()


@pytest.mark.parametrize("case", ["inner host", "metadata", "redirect to metadata", "redirect to inner host"])
async def test_inward_result_urls_are_refused_and_the_job_is_refunded(make_settings, make_sandbox, sandbox,
                                                                       tmp_path: Path, case: str):
    inner = await make_sandbox()  # another server on 127.0.0.1: "inside the network"
    async with ImagineCore.open(make_settings()) as core:
        core.gateway.allow_private_results = False  # act as for a non-local gateway
        frontend = TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False)
        core.register(frontend)
        inner_url = f"{inner.base_url}/files/task_x/0.png"
        if case == "inner host":
            sandbox.inject("recordInfo", body=_success_with([inner_url]), times=50)
        elif case == "metadata":
            sandbox.inject("recordInfo", body=_success_with([METADATA]), times=50)
        else:  # the gateway's own file URL answers with a redirect inward
            target = METADATA if case == "redirect to metadata" else inner_url
            sandbox.inject("download", status=302, headers={"Location": target}, times=10)

        job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "a lighthouse at dusk")
        await core.orchestrator.wait_idle()
        job = core.jobs.get(job.id)

        assert job.state is JobState.FAILED and job.error_code == DownloadError.code
        assert "non-public address" in (job.error_message or "")
        failed = [e for e in frontend.events if isinstance(e, Failed)]
        assert len(failed) == 1 and failed[0].refunded
        assert failed[0].error.user_message == DownloadError.default_user_message
        balance = core.ledger.balance(ALICE)
        assert (balance.balance, balance.held) == (180, 0)
        assert core.ledger.verify() == []
    assert inner.requests["download"] == 0  # never contacted


async def test_a_local_gateway_may_hand_out_local_urls(core, tmp_path: Path):
    assert core.gateway.allow_private_results  # the sandbox on 127.0.0.1 is a local gateway
    frontend = TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False)
    core.register(frontend)
    job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "a lighthouse at dusk")
    await core.orchestrator.wait_idle()
    assert core.jobs.get(job.id).state is JobState.DELIVERED


@pytest.mark.parametrize(("address", "public"), [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.10", False), ("172.16.5.4", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False), ("fe80::1", False),
    ("fd00::1", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False), ("8.8.8.8", True),
    ("2606:4700:4700::1111", True),
])
def test_which_addresses_count_as_public(address: str, public: bool):
    assert is_public_address(address) is public


# ---------------------------------------------------------------------- the key never travels in clear
@pytest.mark.parametrize(("url", "ok"), [
    ("http://127.0.0.1:8787", True), ("http://localhost:8787", True), ("http://[::1]:8787", True),
    ("https://modkie.com", True), ("sandbox", True),
    ("http://modkie.com", False), ("http://10.0.0.5:8787", False), ("http://gateway.internal", False),
])
def test_plain_http_gateway_only_on_this_machine(url: str, ok: bool):
    if ok:
        assert load_settings(_env_file=None, MODKIE_BASE_URL=url).MODKIE_BASE_URL == url
    else:
        with pytest.raises(ConfigError, match=r"MODKIE_BASE_URL.*in clear"):
            load_settings(_env_file=None, MODKIE_BASE_URL=url)


# ---------------------------------------------------------------------- the database is the owner's
def test_the_database_file_is_created_owner_only(tmp_path: Path):
    path = tmp_path / "data" / "imagine.db"
    db = open_db(path)
    db.execute("CREATE TABLE t (x)")  # a write, so the WAL files exist too
    for file in [path, *tmp_path.glob("data/imagine.db-*")]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    db.conn.close()


# ---------------------------------------------------------------------- callbacks
@pytest.mark.parametrize("task_id", ["", "x" * 129, "task/../../etc", "task id", "task\nFAKE LOG LINE", "täsk",
                                     "<script>"])
async def test_callback_task_ids_are_checked_before_use(core, task_id: str):
    runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"http://127.0.0.1:{port}/callbacks/modkie", json={"taskId": task_id})
        assert answer.status_code == 400
    finally:
        await runner.cleanup()


async def test_callback_bodies_over_256_kb_are_refused(core):
    runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{port}/callbacks/modkie"
            big = json.dumps({"taskId": "task_1", "pad": "x" * (256 * 1024)}).encode()
            assert (await http.post(url, content=big)).status_code == 413

            async def chunks():  # no Content-Length: the size is found while reading
                for _ in range(300):
                    yield b"x" * 1024

            assert (await http.post(url, content=chunks())).status_code == 413
            assert (await http.post(url, json={"taskId": "task_1"})).status_code == 200
    finally:
        await runner.cleanup()


async def test_a_flood_of_forged_callbacks_does_not_starve_polling(make_settings, make_sandbox, tmp_path: Path):
    slow = await make_sandbox(delays={"waiting": 0.1, "queuing": 0.1, "generating": 1.5})
    settings = make_settings(MODKIE_BASE_URL=slow.base_url, PUBLIC_URL="http://127.0.0.1:9")
    async with ImagineCore.open(settings) as core:
        runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
        core.orchestrator.callback_url = f"http://127.0.0.1:{port}/callbacks/modkie"
        submitted = asyncio.Event()

        class Watching(TerminalFrontEnd):
            async def publish(self, event):
                await super().publish(event)
                if isinstance(event, Progress) and event.stage == "submitted":
                    submitted.set()

        core.register(Watching(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        try:
            job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "a lighthouse at dusk")
            await asyncio.wait_for(submitted.wait(), 10)
            task_id = core.jobs.get(job.id).task_id
            before = slow.requests["recordInfo"]
            async with httpx.AsyncClient() as http:
                url = f"http://127.0.0.1:{port}/callbacks/modkie"
                for _ in range(50):  # a steady stream of forged hints, one after the other, for about a second
                    assert (await http.post(url, json={"taskId": task_id})).status_code == 200
                    await asyncio.sleep(0.02)
            # one urgent look for the first, none for the others until URGENT_EVERY_S is up
            assert slow.requests["recordInfo"] - before <= 2
            await core.orchestrator.wait_idle()
            assert core.jobs.get(job.id).state is JobState.DELIVERED
        finally:
            await runner.cleanup()


# ---------------------------------------------------------------------- the NSFW filter
@pytest.mark.parametrize(("setting", "asked", "sent"), [
    (None, None, True),  # on by default, for every front end (Slack and the terminal pass nothing)
    (False, None, False),  # the operator turned it off
    (False, True, True),  # a front end may tighten it
    (True, False, True),  # ... but never loosen it (only Discord NSFW channels, when allowed: see tests/discord)
])
async def test_nsfw_checker_defaults_on_and_front_ends_only_tighten(make_settings, sandbox, tmp_path: Path,
                                                                    setting, asked, sent):
    overrides = {} if setting is None else {"MODKIE_NSFW_CHECKER": setting}
    async with ImagineCore.open(make_settings(**overrides)) as core:
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        extra = {} if asked is None else {"nsfw_checker": asked}
        job = await core.imagine(ALICE, ReplyTo("terminal", "t"), "a lighthouse", extra_input=extra)
        await core.orchestrator.wait_idle()
        assert sandbox.tasks[core.jobs.get(job.id).task_id].input["nsfw_checker"] is sent


# ---------------------------------------------------------------------- one pause, one word, however many processes
class _Notebook:
    platform = "slack"

    def __init__(self) -> None:
        self.said: list[str] = []

    async def notify_operators(self, operators, text: str) -> None:
        self.said.extend(f"{op.key}: {text}" for op in operators)


async def test_several_processes_tell_the_operators_once_per_pause(make_settings, sandbox, tmp_path: Path):
    from imagine_bot.core.errors import GatewayOutOfCredits
    from imagine_bot.core.gateway.balance import GatewayAccount
    from imagine_bot.core.ops.alerts import Alerts

    settings = make_settings(ADMINS="slack:T1:UOPS")
    async with ImagineCore.open(settings) as core:
        notebooks = [_Notebook() for _ in range(4)]
        accounts = []
        for notebook in notebooks:  # four processes on one database, each with its own alerts
            alerts = Alerts(settings.ADMINS)
            alerts.register(notebook)
            stores = SqliteStores.open(settings)
            accounts.append(GatewayAccount(stores.gateway_account, stores.jobs, core.gateway, alerts, cost=18,
                                           check_every_s=300))
        for account in accounts:
            account.on_error(GatewayOutOfCredits("createTask: HTTP 402"))
            account.on_error(GatewayOutOfCredits("createTask: HTTP 402"))
        for account in accounts:
            await account.alerts.wait_sent()
        assert sum(len(n.said) for n in notebooks) == 1
        assert all(a.state().paused == "out_of_credits" for a in accounts)

        assert await accounts[2].refresh() == sandbox.credits  # the balance covers an image: resume, once
        for account in accounts:
            await account.refresh()
            await account.alerts.wait_sent()
        said = [line for n in notebooks for line in n.said]
        assert len(said) == 2 and "credits again" in said[1]

        accounts[3].on_error(GatewayOutOfCredits("createTask: HTTP 402"))  # a second pause is told again
        await accounts[3].alerts.wait_sent()
        assert sum(len(n.said) for n in notebooks) == 3
        for account in accounts:
            account.store.db.conn.close()


async def test_several_processes_tell_the_operators_once_a_day_of_undelivered_credits(make_settings, tmp_path: Path):
    from datetime import timedelta

    from imagine_bot.core.gateway.balance import GatewayAccount
    from imagine_bot.core.ops.alerts import Alerts
    from imagine_bot.core.storage.db import iso, transaction, utcnow

    from .test_orchestrator import RefusingFrontEnd

    settings = make_settings(ADMINS="slack:T1:UOPS", UNDELIVERED_ALERT_CREDITS=36)
    async with ImagineCore.open(settings) as core:
        core.register(RefusingFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        for n in range(2):  # two images the gateway finished and billed, which could not be posted
            job = await core.imagine(UserRef("terminal", "local", f"u{n}"), ReplyTo("terminal", "t"), f"lost {n}")
            await core.orchestrator.wait_idle()
            assert core.jobs.get(job.id).billed_at is not None
        await core.alerts.wait_sent()  # (nobody registered to tell in this core)

        now = [utcnow()]
        notebooks = [_Notebook() for _ in range(4)]
        accounts = []
        for notebook in notebooks:  # four processes on one database, each with its own alerts
            alerts = Alerts(settings.ADMINS)
            alerts.register(notebook)
            stores = SqliteStores.open(settings)
            accounts.append(GatewayAccount(stores.gateway_account, stores.jobs, core.gateway, alerts, cost=18,
                                           check_every_s=300, undelivered_alert_credits=36, clock=lambda: now[0]))

        async def check_all() -> int:
            for account in accounts:
                account.check_undelivered()
                account.check_undelivered()
            for account in accounts:
                await account.alerts.wait_sent()
            return sum(len(n.said) for n in notebooks)

        assert core.stores.db.execute("SELECT undelivered_told_day FROM gateway_account").fetchone()[0] == (
            now[0].date().isoformat())  # the core itself claimed today when its second job failed
        assert await check_all() == 0  # ... so no other process tells again

        now[0] += timedelta(days=1)  # tomorrow: yesterday's failures do not count
        assert await check_all() == 0
        with transaction(core.stores.db):  # ... two failures tomorrow do
            core.stores.db.execute("UPDATE jobs SET finished_at = ? WHERE billed_at IS NOT NULL", [iso(now[0])])
        assert await check_all() == 1
        [said] = [line for n in notebooks for line in n.said]
        assert said.startswith("slack:T1:UOPS: ") and "36 credits for 2 images that were never delivered" in said
        for account in accounts:
            account.store.db.conn.close()
