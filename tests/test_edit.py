"""Edits with seedream/4.5-edit through the core: references checked before any charge, served at /refs/
with signed expiring tokens, fetched by the sandbox gateway, priced from the gateway's model list."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.credits.prices import parse_costs
from imagine_bot.core.errors import UserInputError
from imagine_bot.core.events import Delivered
from imagine_bot.core.gateway.catalog import SEEDREAM_45_EDIT
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.media.references import Reference, ReferenceChecker
from imagine_bot.core.media.refstore import RefStore
from imagine_bot.core.web.server import build_web_app, start_web

ME = UserRef("terminal", "local", "ann")
REPLY = ReplyTo("terminal", "cli")


def png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


async def open_served(settings):
    """A core with its web server on loopback serving /refs/ (as the embedded sandbox does)."""
    ctx = ImagineCore.open(settings)
    core = await ctx.__aenter__()
    runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
    core.serve_refs_at(f"http://127.0.0.1:{port}")
    frontend = TerminalFrontEnd(Path("out"), bar=False)
    core.register(frontend)
    await core.start()

    async def close() -> None:
        await runner.cleanup()
        await ctx.__aexit__(None, None, None)

    return core, frontend, port, close


async def test_an_edit_of_a_local_image_is_served_fetched_and_derived(make_settings, sandbox):
    core, frontend, port, close = await open_served(make_settings())
    try:
        job = await core.imagine(ME, REPLY, "make it winter --ar 16:9", references=[Reference("a.png", data=png())])
        await core.orchestrator.wait_idle()
        job = core.jobs.get(job.id)
        assert job.state is JobState.DELIVERED and job.model == SEEDREAM_45_EDIT.id
        task = sandbox.tasks[job.task_id]
        assert task.model == "seedream/4.5-edit"
        (url,) = task.input["image_urls"]
        assert url.startswith(f"http://127.0.0.1:{port}/refs/")
        assert sandbox.fetched == [(url, 200)]
        delivered = next(e for e in frontend.events if isinstance(e, Delivered))
        with Image.open(delivered.images[0].path) as result:
            assert result.width > result.height  # 16:9
            r, g, b = result.convert("RGB").getpixel((result.width // 2, result.height // 3))
        assert (r, g, b) != (200, 30, 30)  # recoloured, not a copy
        assert core.ledger.balance(ME).balance == 180 - 18
        # the result stays in the spool for Vary and Remix
        assert delivered.images[0].path.exists()
    finally:
        await close()


async def test_refs_are_signed_expiring_and_nothing_else_is_served(make_settings):
    core, _frontend, port, close = await open_served(make_settings())
    try:
        key = core.refs.put(png())
        url = core.refs.url(key)
        async with httpx.AsyncClient() as http:
            ok = await http.get(url)
            assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
            token = url.rsplit("/", 1)[1]
            b64key, expires, sig = token.split(".")
            forged = f"{b64key}.{int(expires) + 3600}.{sig}"
            assert (await http.get(f"http://127.0.0.1:{port}/refs/{forged}")).status_code == 403
            assert (await http.get(f"http://127.0.0.1:{port}/refs/{b64key}.{expires}.{'A' * 32}")).status_code == 403
            assert (await http.get(f"http://127.0.0.1:{port}/refs/../imagine.db")).status_code in (403, 404)
            core.refs.clock = lambda: time.time() + 3601  # an hour later
            assert (await http.get(url)).status_code == 410
    finally:
        await close()


async def test_an_expired_reference_fails_the_task_at_the_sandbox_and_refunds(make_settings, sandbox):
    core, _frontend, _port, close = await open_served(make_settings())
    try:
        core.refs.ttl_s = -1  # every URL it signs is already expired when the gateway fetches it
        job = await core.imagine(ME, REPLY, "make it winter", references=[Reference("a.png", data=png())])
        await core.orchestrator.wait_idle()
        job = core.jobs.get(job.id)
        assert job.state is JobState.FAILED
        assert [status for _url, status in sandbox.fetched] == [410]
        assert core.ledger.balance(ME).available == 180
    finally:
        await close()


@pytest.mark.parametrize("case", ["fifteen", "twelve_mb", "text"])
async def test_bad_references_are_refused_before_any_charge(make_settings, sandbox, case, tmp_path):
    core, _frontend, _port, close = await open_served(make_settings())
    try:
        if case == "fifteen":
            refs = [Reference(f"{n}.png", data=png()) for n in range(15)]
            expected = "You gave 15 reference images; an edit takes 1 to 14"
        elif case == "twelve_mb":
            # a PNG signature on 12 MB that is no image Pillow can read: too large and cannot be shrunk
            refs = [Reference("huge.png", data=b"\x89PNG\r\n\x1a\n" + os.urandom(12 * 1024 * 1024))]
            expected = "`huge.png` is 12.0 MB; the limit is 10.0 MB"
        else:
            refs = [Reference("notes.png", data=b"just some text, named like an image\n" * 10)]
            expected = "`notes.png` is text, not a JPEG, PNG or WebP image"
        with pytest.raises(UserInputError) as refused:
            await core.imagine(ME, REPLY, "make it winter", references=refs)
        assert expected in refused.value.user_message and "Nothing was charged" in refused.value.user_message
        assert core.ledger.balance(ME).available == 180
        assert not [e for e in core.ledger.history(ME) if e.kind == "reserve"]
        assert sandbox.requests["createTask"] == 0 and not list(core.refs.folder.glob("*"))
    finally:
        await close()


async def test_a_large_decodable_reference_is_shrunk_and_served(make_settings, sandbox):
    core, _frontend, _port, close = await open_served(make_settings())
    try:
        noisy = Image.frombytes("RGB", (2100, 2100), os.urandom(2100 * 2100 * 3))
        out = io.BytesIO()
        noisy.save(out, format="PNG", compress_level=0)
        assert out.tell() > 12 * 1024 * 1024
        job = await core.imagine(ME, REPLY, "calmer", references=[Reference("noise.png", data=out.getvalue())])
        await core.orchestrator.wait_idle()
        assert core.jobs.get(job.id).state is JobState.DELIVERED
        (kept,) = core.refs.folder.iterdir()
        assert kept.stat().st_size <= 10 * 1024 * 1024
    finally:
        await close()


def png_bomb(width: int, height: int, pad_to: int = 11 * 1024 * 1024) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (8-bit RGB), with a few rows of pixels and padding past
    10 MB after IEND: built in milliseconds, yet a decoder would allocate the whole image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * (width * 3 + 1) * 4)) + chunk(b"IEND", b""))
    return head + b"\0" * (pad_to - len(head))


@pytest.mark.parametrize("size", [(13300, 13300), (8000, 8000), (40000, 1001)])
async def test_a_decompression_bomb_is_refused_on_its_header(make_settings, sandbox, size):
    """13300x13300 (177 megapixels) took 1.4 GB to shrink; 8000x8000 is under Pillow's own warning and
    still 64 megapixels. Both are refused from the header, before any pixel is decoded."""
    core, _frontend, _port, close = await open_served(make_settings())
    try:
        bomb = png_bomb(*size)
        assert len(bomb) > 10 * 1024 * 1024  # too large to pass as it is: it would have to be shrunk
        with pytest.raises(UserInputError) as refused:
            await core.imagine(ME, REPLY, "make it winter", references=[Reference("bomb.png", data=bomb)])
        assert messages.reference_too_many_pixels("bomb.png", size, 40_000_000) in refused.value.user_message
        assert f"{size[0]:,}×{size[1]:,} pixels" in refused.value.user_message
        assert core.ledger.balance(ME).available == 180 and not list(core.refs.folder.glob("*"))
        assert sandbox.requests["createTask"] == 0
    finally:
        await close()


def test_imaging_reads_sizes_from_the_header_and_never_decodes_past_the_bound():
    from imagine_bot.core.media.imaging import MAX_PIXELS, image_size, shrink

    assert image_size(png_bomb(13300, 13300)) == (13300, 13300)
    assert image_size(png_bomb(20000, 20000)) == (20000, 20000)  # past Pillow's own hard bound, still read
    assert image_size(b"\x89PNG\r\n\x1a\n" + b"x" * 64) is None and image_size(b"text") is None
    assert shrink(png_bomb(8000, 8000), 1024 * 1024) is None  # shrink itself refuses, whoever calls it
    assert MAX_PIXELS == 40_000_000
    for fmt in ("JPEG", "WEBP"):
        out = io.BytesIO()
        Image.new("RGB", (123, 45)).save(out, format=fmt)
        assert image_size(out.getvalue()) == (123, 45)


async def test_large_references_are_shrunk_one_at_a_time(tmp_path, monkeypatch):
    from imagine_bot.core.media import references

    real_shrink = references.shrink
    lock = threading.Lock()
    running = [0]
    most = [0]

    def counting_shrink(data: bytes, limit: int) -> bytes | None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return real_shrink(data, limit)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(references, "shrink", counting_shrink)
    images = []
    for _ in range(4):
        noisy = Image.frombytes("RGB", (800, 800), os.urandom(800 * 800 * 3))
        out = io.BytesIO()
        noisy.save(out, format="PNG", compress_level=0)
        images.append(out.getvalue())
    store = RefStore(tmp_path / "refs", tmp_path / "spool", b"k" * 32, base_url="http://127.0.0.1:9")
    async with httpx.AsyncClient() as http:
        checker = ReferenceChecker(store, http, max_bytes=500_000)
        urls = (await checker.prepare(SEEDREAM_45_EDIT, [Reference(f"{n}.png", data=d)
                                                         for n, d in enumerate(images)])).image_urls
        # and two jobs at once share the same one-at-a-time
        more = await asyncio.gather(*(checker.prepare(SEEDREAM_45_EDIT, [Reference("x.png", data=d)])
                                      for d in images[:2]))
    assert len(urls) == 4 and all(u.startswith("ref:up:") for u in urls) and len(more) == 2
    assert all(p.stat().st_size <= 500_000 for p in store.folder.iterdir())
    assert most[0] == 1


async def test_without_public_url_a_private_image_gets_a_plain_answer(core):
    with pytest.raises(UserInputError) as refused:
        await core.imagine(ME, REPLY, "make it winter", references=[Reference("a.png", data=png())])
    assert "PUBLIC_URL is not set" in refused.value.user_message and "admin" in refused.value.user_message
    assert core.ledger.balance(ME).available == 180


async def test_edit_prices_come_from_the_gateway_and_the_reply_says_so(make_sandbox, make_settings):
    gateway = await make_sandbox(costs={"seedream/4.5-edit": 24})
    core, _frontend, _port, close = await open_served(make_settings(MODKIE_BASE_URL=gateway.base_url))
    try:
        job = await core.imagine(ME, REPLY, "make it winter", references=[Reference("a.png", data=png())])
        assert job.cost == 24 and job.text_cost == 18
        from imagine_bot.core.chat import messages

        assert "24 credits reserved (an edit costs 24 credits; text-to-image costs 18)" in messages.accepted(job)
        await core.orchestrator.wait_idle()
        assert core.ledger.balance(ME).balance == 180 - 24
        plain = await core.imagine(ME, REPLY, "a fox")
        assert plain.cost == 18 and plain.text_cost is None and "text-to-image costs" not in messages.accepted(plain)
    finally:
        await close()


@pytest.mark.parametrize(("data", "expected"), [
    ([{"model": "seedream/4.5-edit", "creditCost": 24}], {"seedream/4.5-edit": 24}),
    ({"models": [{"id": "seedream/4.5-edit", "creditCost": "6.5"}]}, {"seedream/4.5-edit": 7}),
    ({"seedream/4.5-edit": {"creditCost": {"basic": 18, "high": 30}}}, {"seedream/4.5-edit": 30}),
    ({"seedream/4.5-edit": 12}, {"seedream/4.5-edit": 12}),
    ({"list": [{"name": "no cost here"}, "junk", None, {"model": "x/y", "creditCost": True}]}, {}),
    ("nonsense", {}),
])
def test_model_list_prices_are_read_defensively(data, expected):
    assert parse_costs(data) == expected


async def test_a_silent_model_list_falls_back_to_the_catalog(make_settings, sandbox):
    sandbox.inject("models", status=500, times=10)
    async with ImagineCore.open(make_settings()) as core:
        core.gateway.retries = 1
        assert not await core.prices.refresh()
        assert core.cost_of(core.edit_model) == SEEDREAM_45_EDIT.cost


async def test_cleanup_removes_references_and_results_past_the_keep_days(core):
    key = core.refs.put(png())
    folder = core.settings.spool_dir / "jabc123"
    folder.mkdir(parents=True)
    (folder / "jabc123-0.png").write_bytes(png())
    assert core.refs.cleanup() == 0
    core.refs.clock = lambda: time.time() + 8 * 86400
    assert core.refs.cleanup() == 2
    assert core.refs.path(key) is None and not folder.exists()


async def test_chat_imagine_takes_image_urls_and_refuses_anything_else(make_settings, sandbox):
    from imagine_bot.core.chat.commands import dispatch

    core, _frontend, _port, close = await open_served(make_settings())
    try:
        public = core.refs.url(core.refs.put(png((10, 200, 90))))  # any public image URL will do
        reply = await dispatch(core, ME, f"make it winter --image {public} --ar 9:16", REPLY,
                               resolve_user=lambda raw: None)
        assert reply.job is not None and reply.job.image_urls == (public,)  # passed on as it is
        # the job's Accepted event ("Got it") says it is an edit (the reply itself carries no text for a job)
        assert reply.job.params["aspect_ratio"] == "9:16"
        assert "an edit of 1 reference image" in messages.accepted(reply.job)
        await core.orchestrator.wait_idle()
        assert core.jobs.get(reply.job.id).state is JobState.DELIVERED
        refused = await dispatch(core, ME, "make it winter --image photo.png", REPLY, resolve_user=lambda raw: None)
        assert refused.job is None and "`--image` takes the URL of an image" in refused.text
    finally:
        await close()


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data.png", "http://10.1.2.3/a.png",
                                 "http://localhost:1/a.png"])
async def test_a_typed_url_to_a_private_address_is_not_fetched(core, url):
    with pytest.raises(UserInputError) as refused:
        await core.imagine(ME, REPLY, "make it winter", references=[Reference(url, url=url)])
    assert "not a public address" in refused.value.user_message
    assert core.ledger.balance(ME).available == 180


async def test_an_edit_without_ar_keeps_the_shape_of_its_first_reference(make_settings, sandbox):
    """No --ar: the supported ratio nearest to the first reference (a place's default does not square it);
    a typed --ar, or the ratio Vary carries over, still wins."""
    core, _frontend, _port, close = await open_served(make_settings(
        MODKIE_ASPECT_RATIOS="1:1,16:9,9:16,4:3", MAX_ACTIVE_JOBS_PER_USER=10, CREDITS_ALLOWANCE=1000))
    try:
        shapes = {(1920, 1080): "16:9", (1000, 1800): "9:16", (1000, 760): "4:3", (500, 480): "1:1",
                  (3000, 1000): "16:9"}
        for size, expected in shapes.items():
            refs = [Reference("a.png", data=png(size=size)), Reference("b.png", data=png(size=(100, 400)))]
            job = await core.imagine(ME, REPLY, "make it winter", references=refs)
            assert job.params["aspect_ratio"] == expected, size
        place = "discord:77"
        core.admin_defaults(Actor(UserRef("discord", "-", "1"), place=place, community_admin=True),
                            {"aspect_ratio": "1:1"})
        member = Actor(UserRef("discord", "-", "2"), place=place, channel="c1")
        there = await core.imagine(member, REPLY, "make it winter", references=[Reference("a.png", data=png(
            size=(1920, 1080)))])
        assert there.params["aspect_ratio"] == "16:9"  # the place's default is for new images, not edits
        assert (await core.imagine(member, REPLY, "a new one")).params["aspect_ratio"] == "1:1"
        typed = await core.imagine(ME, REPLY, "make it winter --ar 1:1", references=[Reference("a.png", data=png(
            size=(1920, 1080)))])
        assert typed.params["aspect_ratio"] == "1:1"
        await core.orchestrator.wait_idle()
        assert sandbox.tasks[core.jobs.get(typed.id).task_id].input["aspect_ratio"] == "1:1"
        wide = core.jobs.get(job.id)
        assert sandbox.tasks[wide.task_id].input["aspect_ratio"] == "16:9"  # what the gateway was asked for
    finally:
        await close()


def test_the_nearest_ratio_is_nearest_in_shape():
    from imagine_bot.core.gateway.catalog import SEEDREAM_45

    assert SEEDREAM_45.nearest_aspect_ratio(1024, 576) == "16:9"
    assert SEEDREAM_45.nearest_aspect_ratio(576, 1024) == "9:16"
    assert SEEDREAM_45.nearest_aspect_ratio(1000, 1000) == "1:1"
    assert SEEDREAM_45.nearest_aspect_ratio(1000, 740) == "16:9"  # 4:3 is not offered; 1.35 is nearer 1.78
    assert SEEDREAM_45.nearest_aspect_ratio(0, 10) == "1:1"
