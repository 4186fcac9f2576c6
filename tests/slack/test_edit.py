"""Edits on Slack through Bolt and the fake Web API, with signed requests: the Remix with imagine message
shortcut (modal, files downloaded with the bot token, served at /refs/ and fetched by the sandbox, the
edit in the message's thread), and the Vary and Remix buttons."""

from __future__ import annotations

import io
import itertools
import json
import logging
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import yaml
from PIL import Image

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.jobs.model import JobState

from .conftest import TEAM, SlackHarness

EDIT = "seedream/4.5-edit"
_ids = itertools.count(1)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (80, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def serve_refs(slack: SlackHarness) -> str:
    """/refs/ is on the harness's own web server (as PUBLIC_URL would point at it)."""
    base = slack.events_url.removesuffix("/slack/events")
    slack.core.serve_refs_at(base)
    return base


async def interactive(slack: SlackHarness, payload: dict[str, Any]) -> httpx.Response:
    body = urllib.parse.urlencode({"payload": json.dumps(payload)})
    return await slack.post(body, "application/x-www-form-urlencoded")


async def shortcut(slack: SlackHarness, message: dict[str, Any], *, user: str = "U1",
                   channel: str = "C1", team: str = TEAM) -> tuple[httpx.Response, str]:
    response_url = slack.fake.response_url()
    payload = {
        "type": "message_action", "callback_id": "remix_with_imagine", "trigger_id": f"trig.{next(_ids)}",
        "action_ts": f"{time.time():.6f}", "team": {"id": team, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "team_id": team}, "channel": {"id": channel, "name": "art"},
        "message_ts": message["ts"], "message": message, "response_url": response_url, "api_app_id": "A0001",
    }
    return await interactive(slack, payload), response_url


async def submit(slack: SlackHarness, view: dict[str, Any], prompt: str, *, user: str = "U1", team: str = TEAM,
                 **choices: str) -> httpx.Response:
    values: dict[str, Any] = {"prompt": {"prompt": {"type": "plain_text_input", "value": prompt}}}
    for name, value in choices.items():
        values[name] = {name: {"type": "static_select", "selected_option": {
            "text": {"type": "plain_text", "text": value}, "value": value}}}
    payload = {
        "type": "view_submission", "team": {"id": team, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "team_id": team}, "api_app_id": "A0001",
        "trigger_id": f"trig.{next(_ids)}",
        "view": {**view, "state": {"values": values}},
    }
    return await interactive(slack, payload)


async def test_remix_shortcut_edits_the_message_images_in_its_thread(slack, sandbox):
    base = serve_refs(slack)
    photo = slack.fake.add_file("product.png", png((220, 120, 20)))
    message = {"type": "message", "ts": "1700000000.000100", "user": "U2", "text": "our product", "files": [photo]}
    response, _ = await shortcut(slack, message)
    assert response.status_code == 200
    opened = await slack.fake.wait_for("views.open")
    view = slack.fake.views[-1]
    assert opened.params["trigger_id"].startswith("trig.") and view["callback_id"] == "imagine_remix_modal"
    assert [b["block_id"] for b in view["blocks"]] == ["prompt", "aspect_ratio", "quality"]
    assert slack.fake.file_downloads == []  # nothing fetched before the user submits

    answer = await submit(slack, view, "on a beach at sunset", aspect_ratio="9:16")
    assert answer.status_code == 200 and not answer.content  # the modal closes
    await slack.settle()
    (job,) = slack.core.jobs.recent(UserRef("slack", TEAM, "U1").key)
    assert job.state is JobState.DELIVERED and job.model == EDIT and job.params["aspect_ratio"] == "9:16"
    # downloaded once, with the bot token
    assert slack.fake.file_downloads == [(photo["id"], f"Bearer {slack.fake.bot_token}")]
    # served to the gateway at /refs/<signed token>, fetched by the sandbox
    (url,) = sandbox.tasks[job.task_id].input["image_urls"]
    assert url.startswith(base + "/refs/") and (url, 200) in sandbox.fetched
    # the progress message and the images are in the shortcut message's thread
    progress = next(c for c in slack.fake.calls_to("chat.postMessage"))
    assert progress.params["thread_ts"] == message["ts"]
    assert job.reply.data["in_thread_of"] == message["ts"]
    assert slack.core.ledger.balance(UserRef("slack", TEAM, "U1")).balance == 180 - 18

    # the same URL: refused once it has expired, and with a forged signature
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).status_code == 200
        key, expires, signature = url.rsplit("/", 1)[1].split(".")
        forged = url.rsplit("/", 1)[0] + f"/{key}.{expires}.{signature[:-2]}AA"
        assert (await http.get(forged)).status_code == 403
        slack.core.refs.clock = lambda: time.time() + 3601
        assert (await http.get(url)).status_code == 410


async def test_a_remix_form_left_without_a_ratio_keeps_the_image_shape(slack, sandbox):
    """The form preselects no aspect ratio for a message's images (it would square a wide photo): left
    empty, the edit takes the supported ratio nearest to the image's."""
    serve_refs(slack)
    photo = slack.fake.add_file("wide.png", png((20, 120, 220), size=(192, 100)))
    await shortcut(slack, {"type": "message", "ts": "1700000000.000200", "user": "U2", "text": "", "files": [photo]})
    await slack.fake.wait_for("views.open")
    view = slack.fake.views[-1]
    ratio, quality = view["blocks"][1], view["blocks"][2]
    assert "initial_option" not in ratio["element"] and "keep the image's shape" in ratio["hint"]["text"]
    assert quality["element"]["initial_option"]["value"] == "basic"
    answer = await submit(slack, view, "as a postcard", quality="basic")
    assert answer.status_code == 200
    await slack.settle()
    (job,) = slack.core.jobs.recent(UserRef("slack", TEAM, "U1").key)
    assert job.params["aspect_ratio"] == "16:9" and sandbox.tasks[job.task_id].input["aspect_ratio"] == "16:9"


async def test_remix_shortcut_without_public_url_says_an_admin_must_set_it(slack, sandbox):
    photo = slack.fake.add_file("product.png", png((20, 120, 220)))
    message = {"type": "message", "ts": "1700000000.000200", "user": "U2", "text": "", "files": [photo]}
    await shortcut(slack, message)
    await slack.fake.wait_for("views.open")
    meta = json.loads(slack.fake.views[-1]["private_metadata"])
    await submit(slack, slack.fake.views[-1], "as a watercolour")
    await slack.settle()
    said = await slack.fake.wait_response(meta["response_url"])
    assert "PUBLIC_URL is not set" in said["text"] and "admin" in said["text"]
    assert sandbox.requests["createTask"] == 0
    assert slack.core.ledger.balance(UserRef("slack", TEAM, "U1")).available == 180


async def test_remix_shortcut_on_a_message_without_images_is_answered_privately(slack):
    message = {"type": "message", "ts": "1700000000.000300", "user": "U2", "text": "words only"}
    _, response_url = await shortcut(slack, message)
    said = await slack.fake.wait_response(response_url)
    assert "no image I can remix" in said["text"] and said["response_type"] == "ephemeral"
    assert slack.fake.calls_to("views.open") == []


async def test_vary_and_remix_buttons_for_the_requester_only(slack, sandbox):
    serve_refs(slack)
    await slack.slash("a paper boat --ar 16:9")
    await slack.settle()
    alice = UserRef("slack", TEAM, "U1")
    (original,) = slack.core.jobs.recent(alice.key)
    buttons = slack.fake.messages[original.reply.data["progress_ts"]].blocks[-1]["elements"]
    assert [b["action_id"] for b in buttons] == ["imagine_reroll", "imagine_vary", "imagine_remix", "imagine_delete"]

    _, refused_url = await slack.press("imagine_vary", original.id, user="U9")
    refusal = await slack.fake.wait_response(refused_url)
    assert "Only the person who asked for this image" in refusal["text"]

    await slack.press("imagine_vary", original.id, user="U1")
    await slack.settle()
    varied = slack.core.jobs.recent(alice.key, limit=1)[0]
    assert varied.parent_id == original.id and varied.model == EDIT and varied.state is JobState.DELIVERED
    assert varied.prompt == original.prompt and varied.params["aspect_ratio"] == "16:9"
    (url,) = sandbox.tasks[varied.task_id].input["image_urls"]
    assert "/refs/" in url and (url, 200) in sandbox.fetched

    await slack.press("imagine_remix", original.id, user="U1")
    await slack.fake.wait_for("views.open")
    view = slack.fake.views[-1]
    assert view["blocks"][0]["element"]["initial_value"] == original.prompt
    bad = await submit(slack, view, "a paper boat --ar 5:4")
    assert bad.json()["response_action"] == "errors" and "aspect ratio" in bad.json()["errors"]["prompt"]
    await submit(slack, view, "a paper boat in a storm")
    await slack.settle()
    remixed = slack.core.jobs.recent(alice.key, limit=1)[0]
    assert remixed.prompt == "a paper boat in a storm" and remixed.parent_id == original.id
    assert remixed.state is JobState.DELIVERED and remixed.model == EDIT
    assert slack.core.ledger.balance(alice).balance == 180 - 3 * 18


async def test_vary_and_remix_log_no_error(slack, sandbox, caplog):
    """Every Vary press and Remix submission used to log an AttributeError (``_after_submit``, removed
    earlier) after the job was made: the press must be quiet in the logs, and the job made once."""
    serve_refs(slack)
    await slack.slash("a paper boat")
    await slack.settle()
    alice = UserRef("slack", TEAM, "U1")
    (original,) = slack.core.jobs.recent(alice.key)
    caplog.set_level(logging.INFO)
    caplog.clear()

    await slack.press("imagine_vary", original.id, user="U1")
    await slack.settle()
    await slack.press("imagine_remix", original.id, user="U1")
    await slack.fake.wait_for("views.open")
    await submit(slack, slack.fake.views[-1], "a paper boat at night")
    await slack.settle()

    made = slack.core.jobs.recent(alice.key, limit=3)
    assert [j.prompt for j in made] == ["a paper boat at night", "a paper boat", "a paper boat"]
    assert all(j.state is JobState.DELIVERED for j in made) and made[0].parent_id == made[1].parent_id == original.id
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == [], [r.getMessage() for r in problems]
    assert any(r.getMessage() == f"job {made[1].id}: vary of {original.id} by U1" for r in caplog.records)
    assert any(r.getMessage() == f"job {made[0].id}: remix of {original.id} by U1" for r in caplog.records)


def test_the_manifest_has_the_shortcut_and_files_read():
    from imagine_bot.bots import slack as package

    manifest = yaml.safe_load((Path(package.__path__[0]) / "manifest.yml").read_text())
    shortcuts = manifest["features"]["shortcuts"]
    assert {"name": "Remix with imagine", "type": "message", "callback_id": "remix_with_imagine"}.items() <= (
        shortcuts[0].items())
    assert "files:read" in manifest["oauth_config"]["scopes"]["bot"]
