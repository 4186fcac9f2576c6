"""The /admin dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven
by Selenium, against the real web server, core and sandbox gateway, on a laptop's screen and, emulated,
on phones of 360 to 420 px. It takes the screenshots the docs show: into docs/ with ``make screenshots``
(``IMAGINE_SCREENSHOTS=docs``), else into the test's temporary folder, so that a test run leaves the work
tree as it was.

Skipped only where no Chromium can be found (``.ci/tools`` installs it; under ``CI=true`` the skip fails).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.events import Delivered, JobEvent
from imagine_bot.core.jobs.model import ReplyTo
from imagine_bot.core.storage.db import iso, transaction, utcnow
from imagine_bot.core.web.server import build_web_app, start_web

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver")
                     if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no Chromium and chromedriver on this machine: `apt-get install -y chromium chromium-driver` "
           "(.ci/run installs them)")

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: read when the module is collected: the suite's autouse fixture clears every IMAGINE_* variable before a test
TO_DOCS = os.environ.get("IMAGINE_SCREENSHOTS") == "docs"


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where the screenshots go: docs/ for ``make screenshots``, else a temporary folder."""
    return DOCS if TO_DOCS else tmp_path
@pytest.fixture
async def sandbox(make_sandbox):
    """The sandbox at half size (not the suite's eighth): thumbnails as sharp as real ones, for the screenshots."""
    return await make_sandbox(image_scale=0.5)


ART_CLUB, PHOTO_LAB, TEAM = "900000000000000001", "900000000000000002", "T0DESIGN"


class ChatFrontEnd:
    """A front end standing in for Slack or Discord that "posts" each image and records the message id as
    its delivery receipt, as the real ones do (the gallery links to that message)."""

    def __init__(self, platform: str) -> None:
        self.platform = platform
        self.posted = 0

    async def publish(self, event: JobEvent) -> None:
        if isinstance(event, Delivered):
            self.posted += 1
            self.core.record_receipt(event.job.id, message_id=str(1_300_000_000_000_000_000 + self.posted),
                                     ts=f"1764000000.{self.posted:06d}")

    core: ImagineCore


def discord_job(guild: str, channel: str, user: str) -> tuple[Actor, ReplyTo]:
    who = UserRef("discord", "-", user)
    reply = ReplyTo("discord", channel, {"guild_id": guild, "channel_id": channel})
    return Actor(who, place=f"discord:{guild}", channel=channel), reply


def slack_job(channel: str, user: str) -> tuple[Actor, ReplyTo]:
    who = UserRef("slack", TEAM, user)
    return Actor(who, place=f"slack:{TEAM}", channel=channel), ReplyTo("slack", channel, {})


PROMPTS = [
    (discord_job(ART_CLUB, "111", "501"), "a lighthouse at dusk --ar 16:9"),
    (discord_job(ART_CLUB, "111", "502"), "a fox in the snow --ar 9:16"),
    (discord_job(ART_CLUB, "112", "501"), "a watercolour harbour at dawn"),
    (discord_job(ART_CLUB, "112", "503"), "an owl reading a map"),
    (discord_job(PHOTO_LAB, "221", "601"), "a neon street in the rain --ar 16:9"),
    (discord_job(PHOTO_LAB, "221", "602"), "a red bicycle against a blue wall"),
    (slack_job("C0DESIGN", "U7"), "a paper-cut mountain range"),
    (slack_job("C0DESIGN", "U8"), "a cosy reading nook, morning light"),
    (discord_job(ART_CLUB, "111", "502"), "a broken dream sandbox:fail"),
]


@pytest.fixture
async def site(make_settings) -> AsyncIterator[dict[str, Any]]:
    """A running bot with delivered images in two Discord servers and a Slack workspace, spread over days."""
    async with ImagineCore.open(make_settings(CREDITS_ALLOWANCE=1000)) as core:
        for platform in ("discord", "slack"):
            frontend = ChatFrontEnd(platform)
            frontend.core = core
            core.register(frontend)
        jobs = []
        for (actor, reply), prompt in PROMPTS:
            jobs.append(await core.imagine(actor, reply, prompt))
        await core.orchestrator.wait_idle()
        with transaction(core.stores.db):  # spread them over the last days, so the chart has a shape
            for n, job in enumerate(jobs):
                when = iso(utcnow() - timedelta(days=(n * 3) % 11, hours=n))
                core.stores.db.execute("UPDATE jobs SET created_at = ?, finished_at = ? WHERE id = ?",
                                       [when, when, job.id])
        runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
        core.settings = core.settings.model_copy(update={"HTTP_PORT": port, "HTTP_HOST": "127.0.0.1"})
        try:
            yield {"core": core, "base": f"http://127.0.0.1:{port}", "jobs": [core.jobs.get(j.id) for j in jobs]}
        finally:
            await runner.cleanup()


class Browser:
    """Selenium's blocking calls run in a worker thread, so the server on this event loop keeps serving."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def get(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def click(self, css: str) -> None:
        """Click a link or button and wait for the next page (a click does not wait for navigation)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        before = self.driver.current_url
        element = await self.run(self.driver.find_element, By.CSS_SELECTOR, css)
        await self.run(element.click)

        def loaded(driver: Any) -> bool:
            ready = driver.execute_script("return document.readyState") == "complete"
            return bool(driver.current_url != before and ready)

        await self.run(WebDriverWait(self.driver, 15).until, loaded)

    async def texts(self, css: str) -> list[str]:
        from selenium.webdriver.common.by import By

        elements = await self.run(self.driver.find_elements, By.CSS_SELECTOR, css)
        return [await self.run(lambda e=e: e.text) for e in elements]

    async def script(self, js: str) -> Any:
        return await self.run(self.driver.execute_script, js)

    @property
    def url(self) -> str:
        return str(self.driver.current_url)


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the test process (starting one and loading its first page take about 2.5 s
    and a second of CPU): ``browser`` hands it to each test as a fresh one."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


#: the laptop's window every test starts with
WINDOW = (1280, 1500)


@pytest.fixture
async def browser(chromium: Any) -> AsyncIterator[Browser]:
    """The process's Chromium as a new one would be: a blank page, no cookies (they are per host, not per
    port: an earlier test's session would reach this test's server), an empty cache, the laptop's window and
    no phone emulation."""

    def reset() -> None:
        chromium.get("about:blank")
        chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
        chromium.execute_cdp_cmd("Network.clearBrowserCache", {})
        chromium.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        chromium.set_window_size(*WINDOW)

    await asyncio.to_thread(reset)
    yield Browser(chromium)


async def sign_in(browser: Browser, link: str) -> None:
    await browser.get(link)
    await browser.click("#sign-in")


async def test_sign_in_with_a_link_see_the_chart_and_thumbnails(site, browser, shots):
    core, base = site["core"], site["base"]
    link = core.dashboard_auth.mint(base, actor="cli:operator", scope=None)
    await sign_in(browser, link)
    assert browser.url == f"{base}/admin/usage"
    # the chart: one bar a day for 30 days, several of them non-empty; the totals add up
    heights = await browser.script("return [...document.querySelectorAll('#spend-chart svg rect.bar')]"
                                   ".map(r => r.getBBox().height)")
    assert len(heights) == 30 and sum(h > 0 for h in heights) >= 4
    assert (await browser.texts("#total-spent")) == [str(18 * 8)]
    scopes = await browser.texts("#by-scope td:first-child")
    assert scopes == [f"discord:{ART_CLUB}", f"discord:{PHOTO_LAB}", f"slack:{TEAM}"]
    assert (await browser.texts("#gateway-balance"))[0].isdigit()
    assert f"discord:{ART_CLUB}#111" in await browser.texts("#by-channel td:first-child")
    # the cookie is HttpOnly: page scripts cannot read it
    assert await browser.script("return document.cookie") == ""
    assert await browser.run(browser.driver.save_screenshot, str(shots / "dashboard.png"))

    await browser.click("#nav-gallery")
    loaded = await browser.run(browser.driver.execute_async_script, (  # each image decoded, or not
        "const done = arguments[arguments.length - 1];"
        "Promise.all([...document.querySelectorAll('#gallery img')]"
        ".map(i => i.decode().then(() => i.naturalWidth > 0, () => false))).then(done);"))
    assert loaded == [True] * 8  # every delivered image, none of the failed one
    assert await browser.run(browser.driver.save_screenshot, str(shots / "dashboard-gallery.png"))
    links = await browser.script("return [...document.querySelectorAll('#gallery a')].map(a => a.href)")
    assert any(h.startswith(f"https://discord.com/channels/{ART_CLUB}/111/") for h in links)
    assert any(h.startswith("https://slack.com/archives/C0DESIGN/p") for h in links)

    await browser.click("#nav-jobs")
    assert "generation_failed" in " ".join(await browser.texts("#jobs td"))
    assert len(await browser.script("return document.querySelectorAll('#failures-chart rect.bar')")) == 1
    assert len(await browser.texts("#jobs tr.job")) == 9
    # filter: failed jobs only, then a text search
    await browser.script("document.querySelector('#state').value = 'failed'")
    await browser.click("#filter")
    assert "state=failed" in browser.url
    assert [row.split()[0] for row in await browser.texts("#jobs tr.job")] == [site["jobs"][-1].id]
    await browser.get(f"{base}/admin/jobs?q=fox")
    assert [t for t in await browser.texts("#jobs tr.job td.prompt")] == ["a fox in the snow"]


async def test_an_expired_or_reused_link_is_refused(site, browser):
    core, base = site["core"], site["base"]
    auth = core.dashboard_auth
    link = auth.mint(base, actor="cli:operator", scope=None)
    await sign_in(browser, link)
    assert browser.url.endswith("/admin/usage")
    await browser.run(browser.driver.delete_all_cookies)

    await sign_in(browser, link)  # the same link again
    assert "cannot be used" in (await browser.texts("#message h1"))[0]
    await browser.get(f"{base}/admin/usage")
    assert (await browser.texts("#message h1")) == ["Please sign in"]

    expired = auth.mint(base, actor="cli:operator", scope=None, now=utcnow() - timedelta(minutes=11))
    await sign_in(browser, expired)
    assert "expired" in (await browser.texts("#message p"))[0]
    await browser.get(f"{base}/admin/gallery")
    assert (await browser.texts("#message h1")) == ["Please sign in"]


async def test_a_community_admin_sees_only_their_own_server(site, browser):
    core, base = site["core"], site["base"]
    admin = Actor(UserRef("discord", "-", "777"), place=f"discord:{ART_CLUB}", channel="111", community_admin=True)
    link, scope = core.dashboard_link(admin)
    assert scope == f"discord:{ART_CLUB}" and link.startswith(base)
    await sign_in(browser, link)
    assert await browser.texts("#by-scope td:first-child") == [f"discord:{ART_CLUB}"]
    assert not await browser.texts("#gateway-balance")  # the operator's account is not theirs to see
    await browser.click("#nav-gallery")
    captions = " ".join(await browser.texts("#gallery figcaption"))
    assert "a lighthouse at dusk" in captions and "neon street" not in captions and "paper-cut" not in captions

    await browser.get(f"{base}/admin/usage?scope=discord:{PHOTO_LAB}")
    assert (await browser.texts("#message h1")) == ["Not your server or workspace"]
    await browser.get(f"{base}/admin/jobs?scope=slack:{TEAM}")
    assert (await browser.texts("#message h1")) == ["Not your server or workspace"]

    # another server's thumbnail is not served to this session, its own is
    cookie = (await browser.run(browser.driver.get_cookie, "imagine_dashboard"))["value"]
    other = next(j for j in site["jobs"] if j.reply.data.get("guild_id") == PHOTO_LAB)
    own = next(j for j in site["jobs"] if j.reply.data.get("guild_id") == ART_CLUB)
    async with httpx.AsyncClient(cookies={"imagine_dashboard": cookie}) as http:
        assert (await http.get(f"{base}/admin/thumbs/{other.id}.webp")).status_code == 404
        mine = await http.get(f"{base}/admin/thumbs/{own.id}.webp")
        assert mine.status_code == 200 and mine.content[8:12] == b"WEBP"


# a JS helper: the number of lines the text of an element takes
LINES = ("const r = document.createRange(); r.selectNodeContents(arguments[0]);"
         "return new Set([...r.getClientRects()].filter(c => c.width > 0).map(c => Math.round(c.top))).size;")
# elements that stick out of the screen on the right, outside a frame that scrolls on its own (.table-wrap)
STICKING_OUT = ("return [...document.body.querySelectorAll('*')].filter(e => !e.closest('.table-wrap') &&"
                " e.getBoundingClientRect().right > window.innerWidth + 1).map(e => e.tagName + '#' + e.id + '.' +"
                " e.className)")


async def layout(browser: Browser) -> dict[str, Any]:
    return await browser.script(
        "const h = document.querySelector('header.top');"
        "return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,"
        " header: h ? h.getBoundingClientRect().height : 0, main: document.querySelector('main, .message')"
        ".getBoundingClientRect().width}")


@pytest.mark.parametrize("width", [360, 375, 420, 1280])
async def test_every_page_fits_phones_and_laptops(site, browser, shots, width):
    """Sign-in links arrive in chat, often on a phone: no page scrolls sideways from 360 px up, the header
    stays two short rows on a phone and one on a laptop, tables scroll or stack inside the page, the
    gallery's cards are one size, and the filters look like controls."""
    core, base = site["core"], site["base"]
    phone = width < 640
    if phone:  # a phone's viewport: the page's <meta viewport> honoured, scrollbars overlaid (they take no width)
        await browser.run(browser.driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride",
                          {"width": width, "height": 800, "deviceScaleFactor": 2, "mobile": True})
    else:
        await browser.run(browser.driver.set_window_size, width, 1000)
    link = core.dashboard_auth.mint(base, actor="cli:operator-with-a-long-name", scope=None)
    await browser.get(link)
    measured = await layout(browser)  # the sign-in page
    assert measured["inner"] == width and measured["scroll"] <= width, measured
    await browser.click("#sign-in")
    for page in ("usage", "jobs", "gallery"):
        await browser.get(f"{base}/admin/{page}")
        measured = await layout(browser)
        assert await browser.script(STICKING_OUT) == [], page
        # a phone zooms out a page that is too wide (innerWidth grows): the viewport must stay the screen's
        assert measured["inner"] == width and measured["scroll"] <= width, (page, measured)
        # the header: two rows on a phone (brand and pages; who and sign out), one on a laptop
        assert measured["header"] <= (100 if phone else 60), (page, measured)
        if not phone:  # the column uses the laptop's width instead of leaving wide empty margins
            assert measured["main"] >= 0.9 * width, (page, measured)
        if width == 375 and page == "usage":  # docs/dashboard-phone.png (`make screenshots`)
            await browser.run(browser.driver.save_screenshot, str(shots / "dashboard-phone.png"))

    await browser.get(f"{base}/admin/jobs")
    from selenium.webdriver.common.by import By

    cells = await browser.run(browser.driver.find_elements, By.CSS_SELECTOR, "#jobs tr.job td:nth-child(2) span")
    for cell in cells:  # a timestamp is never broken over lines
        assert await browser.run(browser.driver.execute_script, LINES, cell) == 1
    prompts = await browser.run(browser.driver.find_elements, By.CSS_SELECTOR, "#jobs tr.job td.prompt .text")
    for cell in prompts:  # our prompts are short: one line on a laptop, at most two on a phone
        assert await browser.run(browser.driver.execute_script, LINES, cell) <= (2 if phone else 1)

    await browser.get(f"{base}/admin/gallery")
    boxes = await browser.script("return [...document.querySelectorAll('#gallery figure')].map(f => {"
                                 "const r = f.getBoundingClientRect(), i = f.querySelector('img')"
                                 ".getBoundingClientRect(); return [Math.round(r.top), Math.round(r.height),"
                                 " Math.round(i.width), Math.round(i.height)]})")
    assert len(boxes) == 8
    assert len({(w, h) for _, _, w, h in boxes}) == 1 and boxes[0][2] == boxes[0][3]  # one square size
    rows: dict[int, set[int]] = {}
    for top, height, _, _ in boxes:
        rows.setdefault(top, set()).add(height)
    assert all(len(heights) == 1 for heights in rows.values()), rows  # no ragged rows
    assert len(next(iter(rows.values()))) == 1 and len(rows) <= (4 if phone else 2)

    # the filter controls are styled alike: same height, rounded, the button in the accent colour
    style = await browser.script(
        "const s = e => getComputedStyle(document.querySelector(e));"
        "return ['#scope', 'select[name=days]', '#filter'].map(e => [s(e).borderRadius,"
        " Math.round(document.querySelector(e).getBoundingClientRect().height), s(e).backgroundColor])")
    assert all(radius != "0px" for radius, _, _ in style), style
    assert len({height for _, height, _ in style}) == 1 and style[0][1] >= 34, style
    assert style[2][2] not in (style[0][2], "rgba(0, 0, 0, 0)"), style


async def test_an_unknown_scope_says_so(site, browser):
    core, base = site["core"], site["base"]
    await sign_in(browser, core.dashboard_auth.mint(base, actor="cli:operator", scope=None))
    for page in ("usage", "jobs", "gallery"):
        await browser.get(f"{base}/admin/{page}?scope=slack:NOPE")
        notice = await browser.texts("#scope-notice")
        assert notice and "slack:NOPE" in notice[0] and "not a server or workspace this bot knows" in notice[0]
        assert f"discord:{ART_CLUB}" in notice[0]  # and which ones it does know
    await browser.get(f"{base}/admin/usage?scope=discord:{ART_CLUB}")
    assert not await browser.texts("#scope-notice")
    assert await browser.texts("#by-scope td:first-child") == [f"discord:{ART_CLUB}"]
    options = await browser.script("return [...document.querySelectorAll('#known-scopes option')].map(o => o.value)")
    assert {f"discord:{ART_CLUB}", f"discord:{PHOTO_LAB}", f"slack:{TEAM}"} <= set(options)
