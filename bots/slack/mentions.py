"""Slack text in and out: escaping what we echo, reading what users typed, and resolving user mentions.

Slack message text is a small markup: ``&``, ``<`` and ``>`` are escaped as entities and everything in
angle brackets is a token (``<@U123|name>``, ``<#C1|general>``, ``<!channel>``, ``<https://x|label>``).
Every text we send that contains user words goes through ``escape`` so that a prompt like
``<!channel>`` is shown, never obeyed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from imagine_bot.core.access.identity import UserRef

_TOKEN = re.compile(r"<([^<>]*)>")
_USER_MENTION = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|[^<>]*)?>$")
_BARE_USER_ID = re.compile(r"^[UW][A-Z0-9]{4,}$")
_ESCAPED_USER_MENTION = re.compile(r"&lt;@([UW][A-Z0-9]+)(?:\|[^&<>]*)?&gt;")
_ESCAPED_CHANNEL_MENTION = re.compile(r"&lt;#([CGD][A-Z0-9]+)(?:\|[^&<>]*)?&gt;")


def escape(text: str) -> str:
    """Text fit for Slack: ``&``, ``<``, ``>`` as entities, so no token in it is ever interpreted."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_keep_user_mentions(text: str) -> str:
    """``escape``, except that plain user mentions (``<@U123>``) still show as names and channel mentions
    (``<#C123>``) as links.

    Only for private messages (ephemeral replies, the bot's DMs: they notify nobody else); special
    mentions such as ``<!channel>`` stay escaped.
    """
    kept = _ESCAPED_USER_MENTION.sub(lambda m: f"<@{m.group(1)}>", escape(text))
    return _ESCAPED_CHANNEL_MENTION.sub(lambda m: f"<#{m.group(1)}>", kept)


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _plain_token(token: str) -> str:
    body, _, label = token.partition("|")
    if body.startswith("@"):  # user
        return "@" + (label or body[1:])
    if body.startswith("#"):  # channel
        return "#" + (label or "channel")
    if body.startswith("!"):  # special mention, user group or date
        if label:
            return label
        word = body[1:].split("^")[0]
        return "@" + word
    return label or body  # a link: what the user typed


def to_plain(text: str) -> str:
    """What the user typed, as plain text: tokens turned back into words, entities decoded."""
    return unescape(_TOKEN.sub(lambda m: _plain_token(m.group(1)), text))


def mention(user_id: str) -> str:
    return f"<@{user_id}>"


def user_resolver(team_id: str) -> Callable[[str], UserRef | None]:
    """A ``resolve_user`` for ``core.chat.commands.dispatch``: ``<@U123|name>``, ``<@U123>`` or ``U123``."""

    def resolve(raw: str) -> UserRef | None:
        raw = raw.strip()
        match = _USER_MENTION.match(raw)
        if match:
            return UserRef("slack", team_id, match.group(1))
        if _BARE_USER_ID.match(raw):
            return UserRef("slack", team_id, raw)
        return None

    return resolve


def command_text(text: str) -> str:
    """The slash command text as ``dispatch`` wants it.

    Admin commands keep Slack's tokens (they name users by mention), except ``admin preset``, whose template
    is a prompt; anything else, a prompt above all, is turned into plain text so that the image service sees
    ``salt & pepper``, not ``salt &amp; pepper``.
    """
    words = text.split()
    if words and words[0].lower() == "admin" and not (len(words) > 1 and words[1].lower() in ("preset", "presets")):
        return " ".join(words)
    return to_plain(text)
