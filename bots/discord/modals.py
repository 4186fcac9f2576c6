"""The Remix modal: a prompt, an aspect ratio and a quality, for an edit of images already chosen.

Opened by the message context menu **Remix with imagine** (the message's images) and by a result's
**Remix** button (that result). What the user submits goes to ``submit``; the modal keeps no other state.
A modal lives in this process only: one opened before a restart and submitted after it is not answered
(Discord shows "Something went wrong" and nothing is charged).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import discord

from imagine_bot.core.catalog import ModelSpec

#: (interaction, prompt, {"aspect_ratio": ..., "quality": ...})
Submit = Callable[[discord.Interaction, str, dict[str, str]], Awaitable[None]]

#: Discord's limit for a text input
TEXT_INPUT_MAX = 4000


class RemixModal(discord.ui.Modal):
    def __init__(self, model: ModelSpec, submit: Submit, *, prompt: str | None = None,
                 defaults: dict[str, str] | None = None, title: str = "Remix with imagine") -> None:
        super().__init__(title=title, timeout=15 * 60)
        self._submit = submit
        chosen = {**model.defaults(), **(defaults or {})}
        self.prompt = discord.ui.TextInput(
            style=discord.TextStyle.paragraph, required=True, default=prompt,
            max_length=min(model.max_prompt_chars, TEXT_INPUT_MAX), custom_id="imagine:remix:prompt",
            placeholder="What to change, e.g. make it winter, as a watercolour")
        self.add_item(discord.ui.Label(text="Prompt", component=self.prompt))
        self.choices: dict[str, discord.ui.Select[RemixModal]] = {}
        for spec in model.inputs:
            select: discord.ui.Select[RemixModal] = discord.ui.Select(
                custom_id=f"imagine:remix:{spec.name}", required=False, min_values=0, max_values=1,
                options=[discord.SelectOption(label=c, value=c, default=c == chosen.get(spec.name))
                         for c in spec.choices])
            self.choices[spec.name] = select
            self.add_item(discord.ui.Label(text=spec.name.replace("_", " ").capitalize(), component=select,
                                           description=spec.help or None))

    async def on_submit(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        values = {name: select.values[0] for name, select in self.choices.items() if select.values}
        await self._submit(interaction, self.prompt.value, values)
