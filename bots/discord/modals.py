"""The Remix modal: a prompt, an aspect ratio and a quality, for an edit of images already chosen.

Opened by the message context menu **Remix with imagine** (``imagine:remix-msg:<channel>:<message>``) and by
a result's **Remix** button (``imagine:remix-job:<job id>``). What to edit is in the modal's custom id and
the submission is read from the interaction itself (``read_submission``), never from a modal object kept
in memory: discord.py is handed a modal that is already stopped, so it stores nothing, and the client's
``on_interaction`` routes every submission. A modal opened before a restart works when sent after it.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from imagine_bot.core.chat import messages
from imagine_bot.core.gateway.catalog import ModelSpec

#: Discord's limit for a text input
TEXT_INPUT_MAX = 4000
PROMPT_ID = "imagine:remix:prompt"
FOR_JOB = re.compile(r"^imagine:remix-job:(?P<job_id>j[0-9a-f]+)$")
FOR_MESSAGE = re.compile(r"^imagine:remix-msg:(?P<channel_id>\d+):(?P<message_id>\d+)$")
#: the rejection form a reviewer's Reject opens (the job in its custom id) and its one text input
REJECT_FORM = re.compile(r"^imagine:reject-form:(?P<job_id>j[0-9a-f]+)$")
REASON_ID = "imagine:reject:reason"


def for_job(job_id: str) -> str:
    return f"imagine:remix-job:{job_id}"


def for_message(channel_id: int | str, message_id: int | str) -> str:
    return f"imagine:remix-msg:{channel_id}:{message_id}"


def remix_modal(model: ModelSpec, custom_id: str, *, prompt: str | None = None,
                defaults: dict[str, str] | None = None, title: str = "Remix with imagine") -> discord.ui.Modal:
    """The modal to send (already stopped: discord.py keeps no copy; ``on_interaction`` reads the answer).

    The aspect ratio is preselected only when ``defaults`` give one (a result's): left empty, the edit keeps
    the shape of the image it edits."""
    modal = discord.ui.Modal(title=title, custom_id=custom_id, timeout=None)
    chosen = {**{k: v for k, v in model.defaults().items() if k != "aspect_ratio"}, **(defaults or {})}
    modal.add_item(discord.ui.Label(text="Prompt", component=discord.ui.TextInput(
        style=discord.TextStyle.paragraph, required=True, default=prompt,
        max_length=min(model.max_prompt_chars, TEXT_INPUT_MAX), custom_id=PROMPT_ID,
        placeholder="What to change, e.g. make it winter, as a watercolour")))
    for spec in model.inputs:
        select: discord.ui.Select[Any] = discord.ui.Select(
            custom_id=f"imagine:remix:{spec.name}", required=False, min_values=0, max_values=1,
            options=[discord.SelectOption(label=c, value=c, default=c == chosen.get(spec.name))
                     for c in spec.choices])
        shape = spec.name == "aspect_ratio" and spec.name not in chosen
        modal.add_item(discord.ui.Label(text=spec.name.replace("_", " ").capitalize(), component=select,
                                        description=messages.same_shape_hint() if shape else spec.help or None))
    modal.stop()
    return modal


def reject_modal(job_id: str, hint: str) -> discord.ui.Modal:
    """The reason for a rejection (already stopped, like the Remix modal: ``on_interaction`` reads it)."""
    modal = discord.ui.Modal(title="Reject this image", custom_id=f"imagine:reject-form:{job_id}", timeout=None)
    modal.add_item(discord.ui.Label(text="Reason", description=hint[:100], component=discord.ui.TextInput(
        style=discord.TextStyle.paragraph, required=True, max_length=500, custom_id=REASON_ID)))
    modal.stop()
    return modal


def read_reason(data: dict[str, Any]) -> str:
    """The reason typed in a submitted rejection form."""
    for component in _walk(data.get("components") or []):
        if component.get("custom_id") == REASON_ID:
            return str(component.get("value") or "").strip()
    return ""


def _walk(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for component in components:
        if component.get("type") == 1:
            found += _walk(component.get("components") or [])
        elif component.get("type") == 18 and isinstance(component.get("component"), dict):
            found.append(component["component"])
        else:
            found.append(component)
    return found


def read_submission(data: dict[str, Any], model: ModelSpec) -> tuple[str, dict[str, str]]:
    """The prompt and the chosen options of a submitted Remix modal (raw interaction data)."""
    prompt, values = "", {}
    names = {f"imagine:remix:{spec.name}": spec.name for spec in model.inputs}
    for component in _walk(data.get("components") or []):
        custom_id = component.get("custom_id")
        if custom_id == PROMPT_ID:
            prompt = str(component.get("value") or "")
        elif custom_id in names and component.get("values"):
            values[names[custom_id]] = str(component["values"][0])
    return prompt, values
