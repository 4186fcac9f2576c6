"""Pure pieces: escaping, reading Slack text, resolving mentions, Block Kit layouts, the edit throttle."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block

from imagine_bot.bots.slack import blocks
from imagine_bot.bots.slack.frontend import SlackFrontEnd
from imagine_bot.bots.slack.mentions import (
    command_text,
    escape,
    escape_keep_user_mentions,
    to_plain,
    unescape,
    user_resolver,
)
from imagine_bot.core.db import utcnow
from imagine_bot.core.errors import GenerationFailed
from imagine_bot.core.events import Accepted, Failed, Progress
from imagine_bot.core.identity import UserRef
from imagine_bot.core.jobs import Job, JobState, ReplyTo


@given(st.text())
def test_escaped_text_has_no_slack_tokens_and_round_trips(text: str):
    escaped = escape(text)
    assert "<" not in escaped and ">" not in escaped
    assert unescape(escaped) == text


def test_escape_keeps_only_plain_user_mentions():
    assert escape_keep_user_mentions("to <@U3|carol> and <!channel>") == "to <@U3> and &lt;!channel&gt;"


def test_slack_tokens_become_plain_words():
    assert to_plain("<@U1|ann> and <@U2> in <#C1|general> <!here> <https://x.io|x.io> &lt;b&gt; &amp;") == (
        "@ann and @U2 in #general @here x.io <b> &")
    assert to_plain("<!subteam^S1|@design> <!date^1392734382^{date}|Feb 18>") == "@design Feb 18"


def test_admin_commands_keep_their_mentions_and_prompts_do_not():
    assert command_text("admin grant <@U3|carol> 90") == "admin grant <@U3|carol> 90"
    assert command_text("a portrait of <@U3|carol> &amp; co") == "a portrait of @carol & co"


def test_user_resolver_reads_escaped_mentions_and_ids():
    resolve = user_resolver("T1")
    assert resolve("<@U123|name>") == UserRef("slack", "T1", "U123")
    assert resolve("<@W42>") == UserRef("slack", "T1", "W42")
    assert resolve("U0ABCDE") == UserRef("slack", "T1", "U0ABCDE")
    assert resolve("@carol") is None and resolve("<#C1|general>") is None and resolve("<!channel>") is None


def test_delivered_layout_has_the_buttons_and_escapes_the_caption():
    payload = blocks.delivered("U1", "`<!channel>` · 18 credits", "j1")
    assert payload["text"] == "<@U1> `&lt;!channel&gt;` · 18 credits"
    assert [b["type"] for b in payload["blocks"]] == ["section", "actions"]
    actions = payload["blocks"][1]["elements"]
    assert [(a["action_id"], a["value"]) for a in actions] == [("imagine_reroll", "j1"), ("imagine_delete", "j1")]
    assert actions[1]["style"] == "danger" and "confirm" in actions[1]


def test_inline_layout_shows_each_file_between_the_caption_and_the_buttons():
    payload = blocks.delivered("U1", "`a fox` · 18 credits", "j1", file_ids=["F0000001", "F0000002"],
                               prompt="<!here> & a fox " * 500)
    assert [b["type"] for b in payload["blocks"]] == ["section", "image", "image", "actions"]
    assert [b["slack_file"] for b in payload["blocks"][1:3]] == [{"id": "F0000001"}, {"id": "F0000002"}]
    alt = payload["blocks"][1]["alt_text"]
    assert alt.startswith("&lt;!here&gt; &amp; a fox") and len(alt) <= blocks.ALT_TEXT_MAX
    assert payload["blocks"][3] == blocks.result_actions("j1")
    for block in payload["blocks"]:
        Block.parse(block).validate_json()  # type: ignore[union-attr]


# ---------------------------------------------------------------------- the throttle, with a stub client
class StubClient:
    def __init__(self) -> None:
        self.posts: list[str] = []
        self.updates: list[str] = []
        self.changed = asyncio.Condition()

    async def wait_updates(self, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.updates) >= count), 5)

    async def chat_postMessage(self, **kw: Any) -> dict[str, str]:
        self.posts.append(kw["text"])
        return {"channel": kw["channel"], "ts": "1700000000.000001"}

    async def chat_update(self, **kw: Any) -> dict[str, bool]:
        async with self.changed:
            self.updates.append(kw["text"])
            self.changed.notify_all()
        return {"ok": True}


def stub_frontend(interval: float) -> tuple[SlackFrontEnd, StubClient]:
    client = StubClient()
    jobs = SimpleNamespace(find=lambda job_id: None, set_reply_data=lambda job_id, **data: None)
    frontend = SlackFrontEnd(SimpleNamespace(jobs=jobs), client, session=None,  # type: ignore[arg-type]
                             min_edit_interval=interval, tick_s=0)
    return frontend, client


def a_job() -> Job:
    now = utcnow()
    return Job(id="j1", requester=UserRef("slack", "T1", "U1"), reply=ReplyTo("slack", "C1"), prompt="a cat",
               params={}, model="m", cost=18, state=JobState.RUNNING, created_at=now, updated_at=now)


async def test_edits_wait_their_turn_and_only_the_newest_is_sent():
    frontend, client = stub_frontend(0.2)
    job = a_job()
    await frontend.publish(Accepted(job))
    for percent in (10, 20, 30):
        await frontend.publish(Progress(job, "generating", 1.0, percent))
    assert client.updates == []  # too soon after the post: held back
    await client.wait_updates(1)
    assert len(client.updates) == 1 and "30%" in client.updates[0]
    await frontend.close()


async def test_the_final_edit_is_never_dropped_and_replaces_a_waiting_one():
    frontend, client = stub_frontend(5.0)
    job = a_job()
    await frontend.publish(Accepted(job))
    await frontend.publish(Progress(job, "generating", 1.0, 50))
    await frontend.publish(Failed(job, GenerationFailed(), refunded=True))
    assert len(client.updates) == 1 and "Could not make" in client.updates[0]
    assert client.posts and client.posts[0].startswith("<@U1> Got it:")
    await frontend.close()


async def test_the_elapsed_time_keeps_moving_between_gateway_updates():
    frontend, client = stub_frontend(0.0)
    frontend.tick_s = 0.05
    job = a_job()
    await frontend.publish(Accepted(job))
    await frontend.publish(Progress(job, "generating", 61.0))
    await client.wait_updates(3)  # three ticks with no gateway news
    assert client.updates[0].endswith("(1m 01s).")
    assert all("Working on it: generating" in text for text in client.updates)
    await frontend.close()
    assert frontend._live == {}
