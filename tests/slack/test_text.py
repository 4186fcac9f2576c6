"""Pure pieces: escaping, reading Slack text, resolving mentions, Block Kit layouts (the edit throttle is
the core's outbox: tests/test_outbox.py, and through the fake Slack in test_rate_limits.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block

from imagine_bot.bots.slack import blocks
from imagine_bot.bots.slack.mentions import (
    command_text,
    escape,
    escape_keep_user_mentions,
    to_plain,
    unescape,
    user_resolver,
)
from imagine_bot.core.access.identity import UserRef


@given(st.text())
def test_escaped_text_has_no_slack_tokens_and_round_trips(text: str):
    escaped = escape(text)
    assert "<" not in escaped and ">" not in escaped
    assert unescape(escaped) == text


def test_escape_keeps_only_plain_user_and_channel_mentions():
    assert escape_keep_user_mentions("to <@U3|carol> and <!channel>") == "to <@U3> and &lt;!channel&gt;"
    assert escape_keep_user_mentions("posted in <#C1> <#C2|art>, not <!here>") == (
        "posted in <#C1> <#C2>, not &lt;!here&gt;")


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
    assert [(a["action_id"], a["value"]) for a in actions] == [
        ("imagine_reroll", "j1"), ("imagine_vary", "j1"), ("imagine_remix", "j1"), ("imagine_delete", "j1")]
    assert actions[3]["style"] == "danger" and "confirm" in actions[3]


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
