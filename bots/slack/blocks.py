"""Block Kit layouts around the core's texts. Pure functions: job and text in, Slack payload out.

The wording is the core's (``core.messages``); this module adds only layout, the requester's mention
and the buttons. Every core text is escaped here, since it may echo a prompt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from imagine_bot.core.messages import quote_prompt

from .mentions import escape, mention

#: Buttons are handled by action id; the job id travels in the button's value (see ``handlers``).
ACTION_REROLL = "imagine_reroll"
ACTION_DELETE = "imagine_delete"

Payload = dict[str, Any]


def _section(mrkdwn: str) -> Payload:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn[:3000]}}


def _button(label: str, action_id: str, value: str, **extra: Any) -> Payload:
    return {"type": "button", "action_id": action_id, "value": value,
            "text": {"type": "plain_text", "text": label}, **extra}


def status(user_id: str, text: str) -> Payload:
    """The progress message: ``@requester <core text>`` (accepted, queued, progress, failed)."""
    body = f"{mention(user_id)} {escape(text)}"
    return {"text": body, "blocks": [_section(body)]}


def delivered(user_id: str, caption: str, job_id: str) -> Payload:
    """The progress message once the images are in its thread: the caption and the two buttons."""
    body = f"{mention(user_id)} {escape(caption)}"
    confirm = {
        "title": {"type": "plain_text", "text": "Delete this image?"},
        "text": {"type": "mrkdwn", "text": "The image and this message are removed for everyone."},
        "confirm": {"type": "plain_text", "text": "Delete"},
        "deny": {"type": "plain_text", "text": "Keep"},
    }
    return {
        "text": body,
        "blocks": [
            _section(body),
            {"type": "actions", "block_id": f"imagine_job_{job_id}", "elements": [
                _button("Reroll", ACTION_REROLL, job_id),
                _button("Delete", ACTION_DELETE, job_id, style="danger", confirm=confirm),
            ]},
        ],
    }


def home(credits_text: str, help_text: str, recent: list[tuple[str, datetime]]) -> Payload:
    """The App Home tab: balance, how to use the bot, the user's last images (prompt and date)."""
    if recent:
        lines = [f"• `{escape(quote_prompt(prompt, 120))}` · {slack_date(when)}" for prompt, when in recent]
        recent_text = "\n".join(lines)
    else:
        recent_text = "No images yet."
    return {
        "type": "home",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "imagine"}},
            _section(escape(credits_text)),
            {"type": "divider"},
            _section(escape(help_text)),
            {"type": "divider"},
            {"type": "header", "text": {"type": "plain_text", "text": "Your recent images"}},
            _section(recent_text),
        ],
    }


def slack_date(when: datetime) -> str:
    """A date each reader sees in their own time zone, with a UTC fallback."""
    fallback = when.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(when.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"
