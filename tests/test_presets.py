"""Brand presets through the shared text commands (the terminal's and Slack's ``/imagine admin preset ...``),
the real core and the sandbox gateway: what createTask receives is what the preset says."""

from __future__ import annotations

import io

import pytest
from aiohttp import web
from PIL import Image
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.chat.commands import dispatch
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.web.server import build_web_app, start_web

# every test here runs on SQLite and on PostgreSQL (conftest's ``backend``)
pytestmark = pytest.mark.usefixtures("backend")

OPERATOR = UserRef("terminal", "local", "root")
TEAM, OTHER_TEAM = "T1", "T2"
ANN = Actor(UserRef("slack", TEAM, "UANN"), place=f"slack:{TEAM}", channel="CMKT")
ANN_ELSEWHERE = Actor(ANN.user, place=ANN.place, channel="CGEN")
WS_ADMIN = Actor(UserRef("slack", TEAM, "UBOSS"), place=f"slack:{TEAM}", channel="CMKT", community_admin=True)
OTHER_ADMIN = Actor(UserRef("slack", OTHER_TEAM, "UOTHER"), place=f"slack:{OTHER_TEAM}", channel="CX",
                    community_admin=True)
TEMPLATE = "{prompt}, product shot on seamless paper, soft studio light, teal and coral palette"


def resolve(raw: str) -> UserRef | None:
    return None


async def say(core: ImagineCore, who: UserRef | Actor, text: str):
    channel = who.channel if isinstance(who, Actor) and who.channel else "chat"
    return await dispatch(core, who, text, ReplyTo("terminal", channel), resolve_user=resolve)


@pytest.fixture
async def marketing(make_settings, tmp_path):
    async with ImagineCore.open(make_settings(ADMINS="terminal:root", MAX_ACTIVE_JOBS_PER_USER=5)) as core:
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core))
        await core.start()
        yield core
        await core.orchestrator.wait_idle()


def sent_input(sandbox, core: ImagineCore, job_id: str) -> dict:
    job = core.jobs.get(job_id)
    assert job.state is JobState.DELIVERED, (job.state, job.error_message)
    return dict(sandbox.tasks[job.task_id].input)


async def test_a_preset_fills_the_prompt_and_its_defaults_and_typed_flags_win(marketing, sandbox):
    core = marketing
    reply = await say(core, WS_ADMIN, f'admin preset set Brand "{TEMPLATE}" --ar 16:9 --quality high')
    assert reply.text == messages.preset_saved("brand", f"slack:{TEAM}")

    used = await say(core, ANN, "--preset brand a red running shoe")
    assert used.job is not None and used.job.preset == "brand"
    await core.orchestrator.wait_idle()
    sent = sent_input(sandbox, core, used.job.id)
    assert sent["prompt"] == TEMPLATE.replace("{prompt}", "a red running shoe")
    assert (sent["aspect_ratio"], sent["quality"]) == ("16:9", "high")
    # the caption names the preset
    job = core.jobs.get(used.job.id)
    assert messages.delivered(job, 162).splitlines()[1].startswith("preset brand, aspect ratio 16:9, quality high")
    assert "preset brand" in messages.accepted(job)

    # a flag the user types wins over the preset's default (and may stand anywhere)
    typed = await say(core, ANN, "a blue shoe --preset=brand --ar 1:1")
    await core.orchestrator.wait_idle()
    sent = sent_input(sandbox, core, typed.job.id)
    assert (sent["aspect_ratio"], sent["quality"]) == ("1:1", "high")
    assert sent["prompt"].startswith("a blue shoe, product shot")

    # a reroll keeps the preset's prompt and names it
    rerolled = await core.reroll(ANN, typed.job.id, ReplyTo("terminal", "CMKT"))
    await core.orchestrator.wait_idle()
    assert core.jobs.get(rerolled.id).preset == "brand"
    assert sent_input(sandbox, core, rerolled.id)["prompt"] == sent["prompt"]


async def test_an_unknown_preset_is_refused_listing_the_ones_there_are_and_nothing_is_charged(marketing, sandbox):
    core = marketing
    await say(core, WS_ADMIN, f'admin preset set brand "{TEMPLATE}"')
    await say(core, OPERATOR, 'admin preset set sketch "{prompt}, in pencil" --global')
    reply = await say(core, ANN, "a red shoe --preset brnad")
    assert reply.job is None
    assert reply.text == messages.unknown_preset("brnad", ["brand", "sketch"])
    assert "Nothing was charged" in reply.text
    assert sandbox.requests["createTask"] == 0
    assert [e.kind for e in core.ledger.history(ANN.user)] in ([], ["refill"])
    # another workspace sees the global preset only
    elsewhere = Actor(UserRef("slack", OTHER_TEAM, "UZED"), place=f"slack:{OTHER_TEAM}", channel="CX")
    assert (await say(core, elsewhere, "a shoe --preset brand")).text == messages.unknown_preset("brand", ["sketch"])


async def test_a_channel_default_applies_to_every_imagine_there_unless_turned_off(marketing, sandbox):
    core = marketing
    await say(core, WS_ADMIN, f'admin preset set brand "{TEMPLATE}" --ar 9:16')
    assert (await say(core, WS_ADMIN, "admin preset default brand")).text == messages.preset_default_set("brand")

    defaulted = await say(core, ANN, "a green shoe")
    off = await say(core, ANN, "a green shoe --preset none")
    other_channel = await say(core, ANN_ELSEWHERE, "a green shoe")
    await core.orchestrator.wait_idle()
    sent = sent_input(sandbox, core, defaulted.job.id)
    assert sent["prompt"] == TEMPLATE.replace("{prompt}", "a green shoe") and sent["aspect_ratio"] == "9:16"
    assert core.jobs.get(defaulted.job.id).preset == "brand"
    for plain in (off, other_channel):
        sent = sent_input(sandbox, core, plain.job.id)
        assert (sent["prompt"], sent["aspect_ratio"]) == ("a green shoe", "1:1")
        assert core.jobs.get(plain.job.id).preset is None

    listed = await say(core, WS_ADMIN, "admin preset list")
    assert "`brand`" in listed.text and "default in <#CMKT>" in listed.text and "aspect ratio 9:16" in listed.text

    # removing the preset clears the channel's default with it
    removed = await say(core, WS_ADMIN, "admin preset remove brand")
    assert removed.text == messages.preset_removed("brand", ["CMKT"])
    after = await say(core, ANN, "a green shoe")
    await core.orchestrator.wait_idle()
    assert sent_input(sandbox, core, after.job.id)["prompt"] == "a green shoe"
    # `none` clears a default
    await say(core, WS_ADMIN, f'admin preset set brand "{TEMPLATE}"')
    await say(core, WS_ADMIN, "admin preset default brand")
    assert (await say(core, WS_ADMIN, "admin preset default none")).text == messages.preset_default_set(None)
    assert core.channel_preset(ANN) is None


@pytest.mark.parametrize(("command", "expected"), [
    ('admin preset set brand "studio light, teal palette"', messages.preset_no_slot()),
    ('admin preset set "two words" "{prompt}, studio"', None),
    ('admin preset set br@nd "{prompt}, studio"', messages.preset_bad_name("br@nd")),
    ('admin preset set none "{prompt}, studio"', messages.preset_bad_name("none")),
    ('admin preset set ' + "x" * 25 + ' "{prompt}, studio"', messages.preset_bad_name("x" * 25)),
    ('admin preset set brand "{prompt}, ' + "y" * 3000 + '"', messages.preset_template_too_long(3002, 3000)),
    ('admin preset set brand "{prompt}, studio" --ar 5:4', "is not a valid aspect ratio"),
    ('admin preset set brand "{prompt}, studio" --image ftp://x/y.png', "`--image` takes the URL of an image"),
])
async def test_bad_presets_are_refused_with_a_clear_line(marketing, command, expected):
    core = marketing
    reply = await say(core, WS_ADMIN, command)
    if expected is None:  # the name is `"two`: not a short word
        assert reply.text.startswith("`\"two` is not a preset name")
    else:
        assert expected in reply.text
    assert core.presets_here(WS_ADMIN) == []


async def test_a_prompt_too_long_once_filled_is_refused_before_any_charge(marketing, sandbox):
    core = marketing
    long_template = "{prompt}, " + "z" * 2900
    await say(core, WS_ADMIN, f'admin preset set long "{long_template}"')
    reply = await say(core, ANN, "a shoe " * 20 + "--preset long")
    assert reply.job is None
    assert reply.text == messages.preset_prompt_too_long("long", 2902 + len(("a shoe " * 20).strip()), 3000, 98)
    assert sandbox.requests["createTask"] == 0


async def test_who_may_change_presets(marketing):
    core = marketing
    # a member is no admin; a workspace admin cannot make a global preset nor touch another workspace's
    assert "only image-bot admins" in (await say(core, ANN, 'admin preset set a "{prompt}"')).text.lower()
    refused = await say(core, WS_ADMIN, 'admin preset set everywhere "{prompt}, studio" --global')
    assert refused.text.startswith("Only the bot's operators can do that")
    await say(core, WS_ADMIN, f'admin preset set brand "{TEMPLATE}"')
    gone = await say(core, OTHER_ADMIN, "admin preset remove brand")
    assert gone.text.startswith("There is no preset `brand` here") and "Nothing was changed" in gone.text
    assert [p.name for p in core.presets_here(ANN)] == ["brand"]
    # the operator, from the terminal (no place), defines global presets; a place's preset shadows one
    assert (await say(core, OPERATOR, 'admin preset set brand "{prompt}, global"')).text == messages.preset_saved(
        "brand", "global")
    assert core.preset_named(ANN, "brand").template == TEMPLATE
    assert core.preset_named(OTHER_ADMIN, "brand").template == "{prompt}, global"


async def test_a_preset_with_brand_images_makes_an_edit_with_them(marketing, sandbox):
    core = marketing
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 128, 128)).save(out, format="PNG")

    async def brand(_request: web.Request) -> web.Response:
        return web.Response(body=out.getvalue(), content_type="image/png")

    # the brand image is served beside /refs/ (an origin the bot trusts, as PUBLIC_URL would be)
    app = build_web_app(core)
    app.router.add_get("/brand.png", brand)
    web_runner, web_port = await start_web(app, "127.0.0.1", 0)
    core.serve_refs_at(f"http://127.0.0.1:{web_port}")
    try:
        url = f"http://127.0.0.1:{web_port}/brand.png"
        await say(core, WS_ADMIN, f'admin preset set style "{{prompt}} in our style" --image {url}')
        reply = await say(core, ANN, "a lamp --preset style")
        assert reply.job is not None, reply.text
        await core.orchestrator.wait_idle()
        job = core.jobs.get(reply.job.id)
        assert job.model == "seedream/4.5-edit"
        sent = sent_input(sandbox, core, job.id)
        assert sent["image_urls"] == [url] and sent["prompt"] == "a lamp in our style"
        assert core.ledger.balance(ANN.user).balance == 180 - job.cost
    finally:
        await web_runner.cleanup()
