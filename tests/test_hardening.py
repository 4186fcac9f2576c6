"""Hardening: result downloads, reference URLs, the gateway address, the database file's mode, and callbacks.

Result downloads go only to public addresses, on the URL and on every redirect hop, unless the gateway
itself is local. The sandbox is on 127.0.0.1, so these tests tell the client to act as for a non-local
gateway (``allow_private_results = False``): its own origin stays trusted, anything else inward is refused,
and the job fails with a message and a refund.

Reference URLs (``--image``, attachments) follow the same rule on every hop, with real servers on 127.0.0.1:
the first one stands for a place the bot trusts (configured as its Discord address), and redirects to an
open port, a closed port, localhost, the metadata service or a private address all get the same answer."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from PIL import Image
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.errors import ConfigError, DownloadError, UserInputError
from imagine_bot.core.events import Failed, Progress
from imagine_bot.core.gateway.catalog import SEEDREAM_45_EDIT
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.media.netaddr import is_public_address
from imagine_bot.core.media.references import MAX_REDIRECTS, Reference, ReferenceChecker
from imagine_bot.core.media.refstore import RefStore
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


# ---------------------------------------------------------------------- reference URLs: every hop
def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 140, 200)).save(out, format="PNG")
    return out.getvalue()


@asynccontextmanager
async def _site(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> AsyncIterator[tuple[str, list[str]]]:
    """A web server on 127.0.0.1 answering ``routes`` (path: status, headers, body); yields its base URL and
    the paths it was asked for."""
    asked: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.path)
        status, headers, body = routes.get(request.path, (404, {}, b""))
        return web.Response(status=status, headers=headers, body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner, port = await start_web(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}", asked
    finally:
        await runner.cleanup()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


NOT_PUBLIC = messages.references_refused([messages.reference_not_public("photo.png")])


@pytest.mark.parametrize("target", ["an open port", "a closed port", "localhost", "the metadata service",
                                    "a private address", "a relative path to a closed port"])
async def test_a_reference_redirected_inward_gets_one_answer_whatever_is_there(make_settings, target: str):
    async with _site({"/secret.png": (200, {"Content-Type": "image/png"}, _png())}) as (inner, inner_asked):
        inner_port = inner.rsplit(":", 1)[1]
        closed = _closed_port()
        location = {
            "an open port": f"{inner}/secret.png",
            "a closed port": f"http://127.0.0.1:{closed}/x.png",
            "localhost": f"http://localhost:{inner_port}/secret.png",
            "the metadata service": METADATA,
            "a private address": "http://10.1.2.3/x.png",
            "a relative path to a closed port": f"//127.0.0.1:{closed}/x.png",
        }[target]
        async with _site({"/photo.png": (302, {"Location": location}, b"")}) as (cdn, cdn_asked):
            # the first host is one the bot trusts (its configured Discord address, as for attachments)
            async with ImagineCore.open(make_settings(DISCORD_API_BASE=f"{cdn}/api/v10")) as core:
                with pytest.raises(UserInputError) as refused:
                    await core.imagine(ALICE, ReplyTo("terminal", "t"), "make it winter",
                                       references=[Reference("photo.png", url=f"{cdn}/photo.png")])
                assert core.ledger.balance(ALICE).available == 180
    # the same words for an open port, a closed one and an address that answers nothing: no port scan
    assert refused.value.user_message == NOT_PUBLIC
    assert cdn_asked == ["/photo.png"] and inner_asked == []  # the hop inward was never made


async def test_redirects_between_allowed_places_are_followed_and_counted(make_settings):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {
        "/a.png": (302, {"Location": "/b.png"}, b""), "/b.png": (301, {"Location": "/c.png"}, b""),
        "/c.png": (200, {"Content-Type": "image/png"}, _png()),
        **{f"/loop{n}": (302, {"Location": f"/loop{n + 1}"}, b"") for n in range(MAX_REDIRECTS + 2)},
    }
    async with _site(routes) as (cdn, asked), ImagineCore.open(
            make_settings(DISCORD_API_BASE=f"{cdn}/api/v10")) as core:
        urls = (await core.references.prepare(SEEDREAM_45_EDIT, [Reference("a.png", url=f"{cdn}/a.png")])).image_urls
        assert urls == [f"{cdn}/a.png"] and asked == ["/a.png", "/b.png", "/c.png"]
        with pytest.raises(UserInputError, match=f"more than {MAX_REDIRECTS} redirects"):
            await core.references.prepare(SEEDREAM_45_EDIT, [Reference("loop", url=f"{cdn}/loop0")])


async def test_trust_is_for_an_origin_not_every_port_of_its_host(core):
    """The sandbox gateway is trusted at 127.0.0.1:its port; another port on 127.0.0.1 is not."""
    assert httpx.URL(core.gateway.base_url).host == "127.0.0.1"
    url = f"http://127.0.0.1:{_closed_port()}/photo.png"
    with pytest.raises(UserInputError) as refused:
        await core.references.prepare(SEEDREAM_45_EDIT, [Reference("photo.png", url=url)])
    assert refused.value.user_message == NOT_PUBLIC


async def test_names_that_do_not_resolve_are_refused_like_private_ones(tmp_path: Path):
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host == "intranet.example":
            return ["10.0.0.7"]
        raise OSError(f"{host}: no such name")

    store = RefStore(tmp_path / "refs", tmp_path / "spool", b"k" * 32)
    async with httpx.AsyncClient() as http:
        checker = ReferenceChecker(store, http, resolve=resolve)
        for url in ("http://photos.invalid/photo.png", "http://intranet.example/photo.png"):
            with pytest.raises(UserInputError) as refused:
                await checker.prepare(SEEDREAM_45_EDIT, [Reference("photo.png", url=url)])
            assert refused.value.user_message == NOT_PUBLIC
    assert asked == ["photos.invalid", "intranet.example"]


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
