"""Brand presets through the real Bolt stack: a workspace admin defines them with ``/imagine admin preset``,
users pick one (or get the channel's default), and createTask gets what the preset says."""

from __future__ import annotations

from imagine_bot.bots.slack.mentions import escape_keep_user_mentions
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.chat import messages
from imagine_bot.core.jobs.model import JobState

from .conftest import TEAM, SlackHarness

BOSS = "UBOSS"
U1 = UserRef("slack", TEAM, "U1")
TEMPLATE = "{prompt}, flat vector illustration, salt & pepper texture, our teal and coral"


async def _answer(slack: SlackHarness, text: str, *, user: str = BOSS, channel: str = "C1") -> str:
    _, url = await slack.slash(text, user=user, channel=channel)
    answer = await slack.fake.wait_response(url)
    await slack.settle()
    return str(answer["text"])


def shown(text: str) -> str:
    """A core text as Slack shows it in a private answer (escaped, mentions kept)."""
    return escape_keep_user_mentions(text)


async def _made(slack: SlackHarness, sandbox, text: str, *, channel: str = "C1") -> tuple[dict, str]:
    """``/imagine text`` by U1: the input createTask got and the result's caption."""
    before = {j.id for j in slack.core.jobs.recent()}
    await slack.slash(text, channel=channel)
    await slack.settle()
    (job,) = [j for j in slack.core.jobs.recent() if j.id not in before]
    assert job.state is JobState.DELIVERED, job.error_message
    final = slack.fake.messages[job.reply.data["progress_ts"]]
    return dict(sandbox.tasks[job.task_id].input), final.blocks[0]["text"]["text"]


async def test_presets_applied_defaulted_and_turned_off_through_slack(slack: SlackHarness, sandbox):
    slack.fake.workspace_admins.add(BOSS)
    # Slack sends `&` as `&amp;`: the template is stored as the user typed it, curly quotes and all
    text = await _answer(slack, "admin preset set brand \u201c{prompt}, flat vector illustration, salt &amp; pepper "
                                "texture, our teal and coral\u201d --ar 16:9")
    assert text == shown(messages.preset_saved("brand", f"slack:{TEAM}"))

    sent, caption = await _made(slack, sandbox, "--preset brand a paper plane")
    assert sent["prompt"] == TEMPLATE.replace("{prompt}", "a paper plane")
    assert (sent["aspect_ratio"], sent["quality"]) == ("16:9", "basic")
    assert "preset brand, aspect ratio 16:9" in caption

    # the channel's default: every /imagine there uses it, a typed flag still wins, `none` turns it off
    assert await _answer(slack, "admin preset default brand") == shown(messages.preset_default_set("brand"))
    sent, caption = await _made(slack, sandbox, "a kite --ar 9:16")
    assert sent["prompt"] == TEMPLATE.replace("{prompt}", "a kite") and sent["aspect_ratio"] == "9:16"
    assert "preset brand" in caption
    sent, caption = await _made(slack, sandbox, "a kite --preset none")
    assert (sent["prompt"], sent["aspect_ratio"]) == ("a kite", "1:1") and "preset" not in caption
    sent, _ = await _made(slack, sandbox, "a kite", channel="C2")  # another channel has no default
    assert sent["prompt"] == "a kite"

    listed = await _answer(slack, "admin preset list")
    assert "`brand`" in listed and "aspect ratio 16:9" in listed and "default in <#C1>" in listed


async def test_preset_refusals_through_slack(slack: SlackHarness, sandbox):
    slack.fake.workspace_admins.add(BOSS)
    assert await _answer(slack, 'admin preset set brand "studio light"') == shown(messages.preset_no_slot())
    assert "is not a preset name" in await _answer(slack, 'admin preset set my_brand! "{prompt}, studio"')
    too_long = "{prompt} " + "w" * 3000
    assert "so no prompt would fit" in await _answer(slack, f'admin preset set long "{too_long}"')
    # a member may not define presets
    assert "only image-bot admins" in (await _answer(slack, 'admin preset set b "{prompt}"', user="U2")).lower()
    assert slack.core.presets_here(U1) == []

    await _answer(slack, 'admin preset set brand "{prompt}, studio"')
    _, url = await slack.slash("a shoe --preset nope")
    answer = await slack.fake.wait_response(url)
    assert answer["text"] == shown(messages.unknown_preset("nope", ["brand"]))
    await slack.settle()
    assert sandbox.requests["createTask"] == 0 and not slack.fake.calls_to("chat.postMessage")
    assert slack.core.ledger.balance(U1).held == 0
    assert [e.kind for e in slack.core.ledger.history(U1)] in ([], ["refill"])
