"""Block Kit layouts around the core's texts. Pure functions: job and text in, Slack payload out.

The wording is the core's (``core.chat.messages``); this module adds only layout, the requester's mention
and the buttons. Every core text is escaped here, since it may echo a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imagine_bot.bots.slack.mentions import escape, escape_keep_user_mentions, mention
from imagine_bot.core.chat import messages
from imagine_bot.core.chat.messages import quote_prompt

#: Buttons are handled by action id; the job id travels in the button's value (see ``handlers``).
ACTION_REROLL = "imagine_reroll"
ACTION_DELETE = "imagine_delete"
ACTION_VARY = "imagine_vary"
ACTION_REMIX = "imagine_remix"
#: a reviewer's buttons in the review DM (the job id in their value) and the form Reject opens
ACTION_APPROVE = "imagine_approve"
ACTION_REJECT = "imagine_reject"
VIEW_REJECT = "imagine_reject_modal"
#: the message shortcut (manifest) and the modal it and the Remix button open
SHORTCUT_REMIX = "remix_with_imagine"
VIEW_REMIX = "imagine_remix_modal"

Payload = dict[str, Any]

#: Slack's limits: an image's alt text, the blocks in one view
ALT_TEXT_MAX = 2000
MAX_VIEW_BLOCKS = 100
#: the prompt in an alt text is cut to this many characters, so that escaped it fits ALT_TEXT_MAX
ALT_PROMPT_CHARS = ALT_TEXT_MAX // len("&amp;")


def _section(mrkdwn: str) -> Payload:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn[:3000]}}


def _button(label: str, action_id: str, value: str, **extra: Any) -> Payload:
    return {"type": "button", "action_id": action_id, "value": value,
            "text": {"type": "plain_text", "text": label}, **extra}


def status(user_id: str, text: str) -> Payload:
    """The progress message: ``@requester <core text>`` (accepted, queued, progress, failed)."""
    body = f"{mention(user_id)} {escape(text)}"
    return {"text": body, "blocks": [_section(body)]}


def image(file_id: str, prompt: str) -> Payload:
    """A file uploaded to Slack shown as a picture (``slack_file``), described by its prompt. The same JSON
    is an image block (full width, in a message) and an image element (a thumbnail: a section's
    ``accessory``)."""
    alt_text = escape(quote_prompt(prompt, ALT_PROMPT_CHARS)) or "image"
    return {"type": "image", "slack_file": {"id": file_id}, "alt_text": alt_text}


def result_actions(job_id: str) -> Payload:
    """The buttons under a result. The one place that lists them: add a button here and every result has it."""
    confirm = {
        "title": {"type": "plain_text", "text": "Delete this image?"},
        "text": {"type": "mrkdwn", "text": "The image and this message are removed for everyone."},
        "confirm": {"type": "plain_text", "text": "Delete"},
        "deny": {"type": "plain_text", "text": "Keep"},
    }
    return {"type": "actions", "block_id": f"imagine_job_{job_id}", "elements": [
        _button("Reroll", ACTION_REROLL, job_id),
        _button("Vary", ACTION_VARY, job_id),
        _button("Remix", ACTION_REMIX, job_id),
        _button("Delete", ACTION_DELETE, job_id, style="danger", confirm=confirm),
    ]}


def delivered(user_id: str, caption: str, job_id: str, *, file_ids: Sequence[str] = (),
              prompt: str = "", approved_by: str | None = None) -> Payload:
    """The result message: the caption, the images inline (when ``file_ids`` are given; without them the
    images are in the thread) and the buttons. ``approved_by``: the core's line naming the reviewer."""
    body = f"{mention(user_id)} {escape(caption)}"
    if approved_by:
        body += "\n" + escape_keep_user_mentions(approved_by)
    images = [image(file_id, prompt) for file_id in file_ids]
    return {"text": body, "blocks": [_section(body), *images, result_actions(job_id)]}


def review(text: str, job_id: str) -> Payload:
    """The reviewer's message in the review DM: the core's text and the Approve and Reject buttons."""
    body = escape_keep_user_mentions(text)
    return {"text": body, "blocks": [_section(body), {
        "type": "actions", "block_id": f"imagine_review_{job_id}", "elements": [
            _button("Approve", ACTION_APPROVE, job_id, style="primary"),
            _button("Reject", ACTION_REJECT, job_id, style="danger"),
        ]}]}


def reject_modal(metadata: str, hint: str) -> Payload:
    """The form Reject opens: the reason (required). ``metadata`` says which image; callback ``VIEW_REJECT``."""
    return {"type": "modal", "callback_id": VIEW_REJECT, "private_metadata": metadata,
            "title": {"type": "plain_text", "text": "Reject this image"},
            "submit": {"type": "plain_text", "text": "Reject"}, "close": {"type": "plain_text", "text": "Cancel"},
            "blocks": [{"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Reason"},
                        "hint": {"type": "plain_text", "text": hint[:150]},
                        "element": {"type": "plain_text_input", "action_id": "reason", "multiline": True,
                                    "max_length": 500}}]}


def _select(name: str, label: str, choices: Sequence[str], chosen: str | None) -> Payload:
    options = [{"text": {"type": "plain_text", "text": c}, "value": c} for c in choices]
    element: Payload = {"type": "static_select", "action_id": name, "options": options}
    block: Payload = {"type": "input", "block_id": name, "optional": True,
                      "label": {"type": "plain_text", "text": label}, "element": element}
    if chosen is not None and chosen in choices:
        element["initial_option"] = options[list(choices).index(chosen)]
    elif name == "aspect_ratio":  # left empty, an edit keeps its image's shape
        block["hint"] = {"type": "plain_text", "text": messages.same_shape_hint()}
    return block


def remix_modal(metadata: str, choices: dict[str, Sequence[str]], chosen: dict[str, str], *, prompt: str = "",
                title: str = "Remix with imagine", max_prompt: int = 3000) -> Payload:
    """The Remix modal: a prompt, then one select per model choice (aspect ratio, quality). ``metadata``
    (``private_metadata``) says what to edit; the submission is handled by callback id ``VIEW_REMIX``."""
    prompt_input: Payload = {"type": "plain_text_input", "action_id": "prompt", "multiline": True,
                             "max_length": min(max_prompt, 3000),
                             "placeholder": {"type": "plain_text", "text": "What to change, e.g. make it winter"}}
    if prompt:
        prompt_input["initial_value"] = prompt[:3000]
    selects = [_select(name, name.replace("_", " ").capitalize(), options, chosen.get(name))
               for name, options in choices.items()]
    return {"type": "modal", "callback_id": VIEW_REMIX, "private_metadata": metadata,
            "title": {"type": "plain_text", "text": title[:24]}, "submit": {"type": "plain_text", "text": "Make it"},
            "close": {"type": "plain_text", "text": "Cancel"},
            "blocks": [{"type": "input", "block_id": "prompt", "label": {"type": "plain_text", "text": "Prompt"},
                        "element": prompt_input}, *selects]}


@dataclass(frozen=True, slots=True)
class HomeImage:
    """One of the user's recent images, for the App Home tab."""

    prompt: str
    created_at: datetime
    cost: int
    file_id: str | None


def home(credits_text: str, help_text: str, recent: Sequence[HomeImage], *, thumbnails: bool = True) -> Payload:
    """The App Home tab: balance, how to use the bot, the user's last images (thumbnail, prompt, cost, date).

    ``thumbnails=False`` leaves the pictures out (Slack refused them: a deleted file, an older workspace).
    The view stays under Slack's 100-block limit whatever ``recent`` holds."""
    head: list[Payload] = [
        {"type": "header", "text": {"type": "plain_text", "text": "imagine"}},
        _section(escape(credits_text)),
        {"type": "divider"},
        _section(escape(help_text)),
        {"type": "divider"},
        {"type": "header", "text": {"type": "plain_text", "text": "Your recent images"}},
    ]
    rows: list[Payload] = []
    for item in recent[: MAX_VIEW_BLOCKS - len(head)]:
        credits = "credit" if item.cost == 1 else "credits"
        row = _section(f"`{escape(quote_prompt(item.prompt, 120))}`\n{item.cost} {credits} · "
                       f"{slack_date(item.created_at)}")
        if thumbnails and item.file_id:
            row["accessory"] = image(item.file_id, item.prompt)
        rows.append(row)
    return {"type": "home", "blocks": head + (rows or [_section("No images yet.")])}


def slack_date(when: datetime) -> str:
    """A date each reader sees in their own time zone, with a UTC fallback."""
    fallback = when.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(when.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"
