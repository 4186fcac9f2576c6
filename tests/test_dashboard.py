"""The dashboard's parts without a browser: sign-in links and cookies, the chat command and the CLI,
thumbnails and their retention. (tests/test_dashboard_browser.py drives the pages in Chromium.)"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from rich.console import Console

from imagine_bot.bots.cli.main import main
from imagine_bot.bots.dashboard import serve_dashboard
from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat.commands import dispatch
from imagine_bot.core.gateway import TaskStage
from imagine_bot.core.jobs.model import ReplyTo
from imagine_bot.core.settings import load_settings
from imagine_bot.core.storage.dashboard import Queries
from imagine_bot.core.storage.db import iso, open_db, transaction, utcnow
from imagine_bot.core.storage.sqlite import SqliteStores
from imagine_bot.core.web.dashboard.auth import Session, dashboard_auth
from imagine_bot.core.web.server import build_web_app, start_web

from .test_orchestrator import ALICE, RefusingFrontEnd, recorder, run_one

# every test here runs on SQLite and on PostgreSQL (conftest's ``backend``)
pytestmark = pytest.mark.usefixtures("backend")

OPERATOR = UserRef("terminal", "local", "root")
NOBODY = {"resolve_user": lambda raw: None}
LINK = re.compile(r"(http://\S+/admin/login\?t=[\w-]+)")


def _stores(db: Any) -> SqliteStores:
    return SqliteStores(db, load_settings(_env_file=None))


def test_links_work_once_and_only_in_time(tmp_path):
    db = open_db(tmp_path / "d.db")
    auth = dashboard_auth(_stores(db))
    link = auth.mint("http://bot", actor="cli:op", scope="discord:1")
    token = link.split("t=")[1]
    assert len(token) >= 40 and token not in str(list(db.query("SELECT * FROM dashboard_links")))  # stored hashed
    session = auth.redeem(token)
    assert session is not None and session.scope == "discord:1" and session.actor == "cli:op"
    assert auth.redeem(token) is None  # once
    old = auth.mint("http://bot", actor="cli:op", scope=None, now=utcnow() - timedelta(minutes=10, seconds=1))
    assert auth.redeem(old.split("t=")[1]) is None  # ten minutes
    assert auth.redeem("not-a-token") is None


def test_session_cookie_is_signed(tmp_path):
    db = open_db(tmp_path / "d.db")
    auth = dashboard_auth(_stores(db))
    session = auth.redeem(auth.mint("http://bot", actor="discord:5", scope="discord:1").split("t=")[1])
    cookie = auth.cookie(session)
    assert dashboard_auth(_stores(db)).session(cookie) == session  # another process (same database) agrees
    signature = cookie.split(".")[1]
    widened = auth.cookie(Session("discord:5", None, session.expires)).split(".")[0]
    assert auth.session(f"{widened}.{signature}") is None  # a scope changed by hand does not verify
    assert auth.session(cookie[:-2] + "xx") is None and auth.session(None) is None
    assert dashboard_auth(_stores(open_db(tmp_path / "other.db"))).session(cookie) is None  # another key


async def test_the_chat_command_gives_operators_everything_and_community_admins_their_place(make_settings):
    async with ImagineCore.open(make_settings(ADMINS="terminal:root")) as core:
        reply = await dispatch(core, OPERATOR, "admin dashboard", ReplyTo("terminal", "chat"), **NOBODY)
        assert reply.ephemeral and "every server and workspace" in reply.text
        assert core.dashboard_auth.redeem(LINK.search(reply.text).group(1).split("t=")[1]).scope is None

        admin = Actor(UserRef("discord", "-", "42"), place="discord:77", community_admin=True)
        reply = await dispatch(core, admin, "admin dashboard", ReplyTo("discord", "c1"), **NOBODY)
        assert "`discord:77` only" in reply.text
        assert core.dashboard_auth.redeem(LINK.search(reply.text).group(1).split("t=")[1]).scope == "discord:77"

        member = Actor(UserRef("discord", "-", "43"), place="discord:77")
        reply = await dispatch(core, member, "admin dashboard", ReplyTo("discord", "c1"), **NOBODY)
        assert not LINK.search(reply.text)
        assert core.stores.db.execute("SELECT COUNT(*) FROM dashboard_links").fetchone()[0] == 2


def test_dashboard_link_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGINE_DB_PATH", str(tmp_path / "cli.db"))
    monkeypatch.setenv("PUBLIC_URL", "https://imagine.example.com")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["dashboard-link"]) == 0
        assert main(["dashboard-link", "--scope", "nowhere"]) == 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr()
    link = out.out.strip().splitlines()[0]
    assert link.startswith("https://imagine.example.com/admin/login?t=") and "10 minutes" in out.err
    stores = SqliteStores.open(load_settings(_env_file=None))  # the database the command used (either kind)
    assert dashboard_auth(stores).redeem(link.split("t=")[1]).scope is None


async def test_a_delivered_job_keeps_a_small_webp_thumbnail(core, tmp_path):
    core.register(recorder(tmp_path))
    job = await run_one(core, "a lighthouse at dusk --ar 16:9")
    failed = await run_one(core, "a broken dream sandbox:fail")
    thumb = core.thumbnails.get(job.id)
    assert thumb is not None and core.thumbnails.get(failed.id) is None
    with Image.open(io.BytesIO(thumb.webp)) as image:
        assert image.format == "WEBP" and max(image.size) <= 320
        assert abs(image.width / image.height - 16 / 9) < 0.05
    assert len(thumb.webp) < 40_000


async def test_thumbnails_are_kept_for_the_retention_only(make_settings, tmp_path):
    async with ImagineCore.open(make_settings(THUMBNAIL_KEEP_DAYS=3)) as core:
        core.register(recorder(tmp_path))
        old = await run_one(core, "an old one")
        with transaction(core.stores.db):
            core.stores.db.execute("UPDATE thumbnails SET created_at = ? WHERE job_id = ?",
                            [iso(utcnow() - timedelta(days=4)), old.id])
        new = await run_one(core, "a new one")  # storing a thumbnail prunes the expired ones
        assert core.thumbnails.get(old.id) is None and core.thumbnails.get(new.id) is not None
    async with ImagineCore.open(make_settings(THUMBNAIL_KEEP_DAYS=0, IMAGINE_DB_PATH=tmp_path / "n.db")) as core:
        core.register(recorder(tmp_path))
        job = await run_one(core, "kept nowhere")
        assert job.state.value == "delivered" and core.thumbnails.get(job.id) is None


async def test_a_thumbnail_that_cannot_be_made_changes_nothing(core, tmp_path, monkeypatch):
    core.register(recorder(tmp_path))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("imagine_bot.core.media.thumbnails.make_thumbnail", broken)
    job = await run_one(core, "a lighthouse")
    assert job.state.value == "delivered" and core.thumbnails.get(job.id) is None
    assert core.ledger.balance(ALICE).balance == 180 - 18


async def test_pages_need_a_session(core):
    runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for path in ("/admin/usage", "/admin/jobs", "/admin/gallery", "/admin/thumbs/j1.webp"):
                answer = await http.get(path)
                assert answer.status_code == 401 and "Please sign in" in answer.text
            assert (await http.get("/admin/login")).status_code == 400
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     cookies={"imagine_dashboard": "e30.AAAA"}) as http:
            assert (await http.get("/admin/usage")).status_code == 401
    finally:
        await runner.cleanup()


async def test_link_preview_does_not_use_up_the_link(core):
    """A chat app fetching the link for a preview (GET) must not sign anyone in or spend the link."""
    runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    link = core.dashboard_auth.mint(base, actor="cli:op", scope=None)
    try:
        async with httpx.AsyncClient() as http:
            preview = await http.get(link)
            assert preview.status_code == 200 and "Sign in" in preview.text and "set-cookie" not in preview.headers
            signed = await http.post(f"{base}/admin/login", data={"t": link.split("t=")[1]})
            assert signed.status_code == 303 and "HttpOnly" in signed.headers["set-cookie"]
            assert "SameSite=Strict" in signed.headers["set-cookie"]
            assert (await http.get(f"{base}/admin/usage")).status_code == 200
    finally:
        await runner.cleanup()


async def test_the_dashboard_alone_needs_no_chat_token_and_no_key(tmp_path):
    """`imagine-bot dashboard`: the web server alone on the checkout's database, a one-time link printed;
    no Slack or Discord token, no ModKie key (and so no call to the gateway for a balance)."""
    settings = load_settings(_env_file=None, IMAGINE_DATA_DIR=tmp_path, HTTP_HOST="127.0.0.1", HTTP_PORT=0)
    assert not settings.gateway_usable and settings.SLACK_BOT_TOKEN is None and settings.DISCORD_TOKEN is None
    said: list[str] = []
    links: asyncio.Queue[str] = asyncio.Queue()
    stop = asyncio.Event()
    server = asyncio.create_task(serve_dashboard(settings, actor="cli:ann", stop=stop, ready=links.put_nowait,
                                                 say=said.append))
    try:
        link = await asyncio.wait_for(links.get(), 30)
        base = link.split("/admin/")[0]
        assert link in said and any(f"{base}/admin" in line for line in said)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/healthz")).json()["ok"] is True
            assert (await http.get(f"{base}/metrics")).status_code == 200
            signed = await http.post(f"{base}/admin/login", data={"t": link.split("t=")[1]})
            assert signed.status_code == 303
            usage = await http.get(f"{base}/admin/usage")
            assert usage.status_code == 200 and "cli:ann" in usage.text
            assert "no MODKIE_API_KEY" in usage.text  # no balance read from a gateway it has no key for
            assert (await http.post(f"{base}/admin/login", data={"t": link.split("t=")[1]})).status_code == 403
    finally:
        stop.set()
        assert await asyncio.wait_for(server, 30) == 0


@pytest.mark.slow
def test_the_dashboard_command_prints_a_link_that_works_and_stops_on_sigterm(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODKIE_", "SLACK_", "DISCORD_", "IMAGINE_"))}
    env.update(HTTP_HOST="127.0.0.1", HTTP_PORT="0", IMAGINE_USER="ann")
    with subprocess.Popen([str(Path(sys.executable).parent / "imagine-bot"), "dashboard"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
        reader.start()
        try:
            link = ""
            while not link:
                found = LINK.search(lines.get(timeout=60))
                link = found.group(1) if found else ""
            base = link.split("/admin/")[0]
            with httpx.Client() as http:
                assert http.get(f"{base}/healthz").status_code == 200
                assert http.post(f"{base}/admin/login", data={"t": link.split("t=")[1]}).status_code == 303
                assert http.get(f"{base}/admin/jobs").status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            reader.join(timeout=10)
        assert code == 0, proc.stderr.read()
    if env.get("DATABASE_URL"):  # on PostgreSQL no database file is made at all
        assert not list(tmp_path.rglob("*.db"))
    else:
        assert (tmp_path / "data" / "imagine-bot.db").exists() and not list(tmp_path.glob("*.db"))


def test_dashboard_link_says_when_no_server_answers(tmp_path, monkeypatch, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HTTP_PORT", str(port))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["dashboard-link"]) == 0
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert f"Nothing answers at http://127.0.0.1:{port}" in err and "imagine-bot dashboard" in err


async def _signed_in_page(core, path: str, scope: str | None = None) -> str:
    runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    token = core.dashboard_auth.mint(base, actor="cli:op", scope=scope).split("t=")[1]
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.post("/admin/login", data={"t": token})).status_code == 303
            page = await http.get(path)
            assert page.status_code == 200
            return page.text
    finally:
        await runner.cleanup()


async def test_the_sandbox_balance_is_marked_pretend(tmp_path, core):
    sandboxed = load_settings(_env_file=None, MODKIE_BASE_URL="sandbox", IMAGINE_DATA_DIR=tmp_path / "sb")
    async with ImagineCore.open(sandboxed) as in_sandbox:
        page = await _signed_in_page(in_sandbox, "/admin/usage")
    balance = re.search(r'id="gateway-balance">(\d+)<', page)
    assert balance and int(balance.group(1)) > 0
    assert 'id="pretend"' in page and "no real account" in page
    # a gateway with a key (the test's sandbox server stands in for ModKie)
    real = await _signed_in_page(core, "/admin/usage")
    assert re.search(r'id="gateway-balance">\d+<', real) and 'id="pretend"' not in real
    assert f"at {core.settings.MODKIE_BASE_URL}" in real


def _row(page: str, day: str) -> list[str]:
    table = page.split('id="reconciliation"', 1)[1].split("</table>", 1)[0]
    row = table.split(f"<tr><td>{day}</td>", 1)[1].split("</tr>", 1)[0]
    return re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)


async def test_the_usage_page_reconciles_the_gateway_balance_with_what_was_delivered(core, tmp_path, sandbox):
    """The balance drop of the day beside what delivered images were charged: the difference is what the
    gateway billed for an image nobody received, plus another user of the same key."""
    await core.start()  # the balance is read at start: the first reading
    start = sandbox.credits
    core.register(recorder(tmp_path))
    delivered = await run_one(core, "a lighthouse, delivered")
    core.register(RefusingFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
    sandbox.costs[core.model.id] = 20  # the gateway's price moved after the job was priced (18)
    lost = await run_one(core, "a lighthouse, billed and lost")
    sandbox.costs[core.model.id] = 18
    assert delivered.state.value == "delivered" and lost.state.value == "failed"
    assert (lost.gateway_cost, lost.cost) == (20, 18)  # what the gateway said it charged (consumeCredits)

    # someone else on the same API key makes an image
    task = await core.gateway.create_task(core.model.id, {"prompt": "elsewhere", "aspect_ratio": "1:1",
                                                          "quality": "basic"}, None)
    async with asyncio.timeout(10):
        while (await core.gateway.record_info(task)).stage is not TaskStage.SUCCESS:  # noqa: ASYNC110 - polled, as the bot does
            await asyncio.sleep(0.02)
    assert await core.read_balance() == start - 18 - 20 - 18  # the second reading

    page = await _signed_in_page(core, "/admin/usage")
    today = utcnow().date().isoformat()
    assert _row(page, today) == ["56", "18", "20", "38"]  # drop, captured, billed not delivered, difference
    assert re.search(r'id="billed-not-delivered">20<', page)

    # a community admin sees their place's spend, never the operator's account
    page = await _signed_in_page(core, "/admin/usage", scope="discord:77")
    assert 'id="reconciliation"' not in page and 'id="billed-not-delivered"' not in page


def test_a_top_up_is_not_a_spend(tmp_path):
    db = open_db(tmp_path / "d.db")
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    with transaction(db):
        for minute, balance in ((1, 500), (2, 464), (3, 1464), (4, 1446)):  # spend, a top-up, spend
            db.execute("INSERT INTO gateway_balance_log (ts, balance) VALUES (?, ?)",
                       [iso(midnight + timedelta(minutes=minute)), balance])
    [day] = Queries(db).reconciliation(7)
    assert (day.day, day.balance_drop, day.captured, day.difference) == (midnight.date(), 36 + 18, 0, 54)
