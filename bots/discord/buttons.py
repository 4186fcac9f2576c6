"""The Reroll, Vary, Remix and Delete buttons under every image, and the Approve and Reject buttons of a
review DM.

They are discord.py ``DynamicItem`` buttons: the job id is in the ``custom_id``
(``imagine:reroll:j0123abcd``), and the client registers the classes at start
(``client.add_dynamic_items``), so a button pressed on a message posted by an earlier process still
works. The work is done by the client's handlers.
"""

from __future__ import annotations

import re
from typing import Any

import discord

REROLL_TEMPLATE = r"imagine:reroll:(?P<job_id>j[0-9a-f]+)"
DELETE_TEMPLATE = r"imagine:delete:(?P<job_id>j[0-9a-f]+)"
VARY_TEMPLATE = r"imagine:vary:(?P<job_id>j[0-9a-f]+)"
REMIX_TEMPLATE = r"imagine:remix:(?P<job_id>j[0-9a-f]+)"
APPROVE_TEMPLATE = r"imagine:approve:(?P<job_id>j[0-9a-f]+)"
REJECT_TEMPLATE = r"imagine:reject:(?P<job_id>j[0-9a-f]+)"


class RerollButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=REROLL_TEMPLATE):
    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Reroll", style=discord.ButtonStyle.primary, emoji="\N{GAME DIE}",
                                           custom_id=f"imagine:reroll:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> RerollButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.handlers.reroll(interaction, self.job_id)  # type: ignore[attr-defined]


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=DELETE_TEMPLATE):
    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Delete", style=discord.ButtonStyle.secondary,
                                           emoji="\N{WASTEBASKET}", custom_id=f"imagine:delete:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> DeleteButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.handlers.delete(interaction, self.job_id)  # type: ignore[attr-defined]


class VaryButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=VARY_TEMPLATE):
    """The same prompt again, with this image as the reference (an edit)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Vary", style=discord.ButtonStyle.secondary, emoji="\N{SPARKLES}",
                                           custom_id=f"imagine:vary:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> VaryButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.handlers.vary(interaction, self.job_id)  # type: ignore[attr-defined]


class RemixButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=REMIX_TEMPLATE):
    """A modal to change the prompt, with this image as the reference (an edit)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Remix", style=discord.ButtonStyle.secondary,
                                           emoji="\N{ARTIST PALETTE}", custom_id=f"imagine:remix:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> RemixButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.handlers.remix_result(interaction, self.job_id)  # type: ignore[attr-defined]


class ApproveButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=APPROVE_TEMPLATE):
    """A reviewer's Approve: the image goes to its channel."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Approve", style=discord.ButtonStyle.success,
                                           emoji="\N{WHITE HEAVY CHECK MARK}", custom_id=f"imagine:approve:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> ApproveButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.handlers.approve(interaction, self.job_id)  # type: ignore[attr-defined]


class RejectButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=REJECT_TEMPLATE):
    """A reviewer's Reject: a form for the reason, then the requester is told."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Reject", style=discord.ButtonStyle.danger,
                                           emoji="\N{CROSS MARK}", custom_id=f"imagine:reject:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> RejectButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.handlers.reject(interaction, self.job_id)  # type: ignore[attr-defined]


#: every button class, registered by the client at start so old messages keep working
DYNAMIC_ITEMS = (RerollButton, VaryButton, RemixButton, DeleteButton, ApproveButton, RejectButton)


def review_view(job_id: str) -> discord.ui.View:
    """A reviewer's buttons for one image waiting for approval."""
    view = discord.ui.View(timeout=None)
    view.add_item(ApproveButton(job_id))
    view.add_item(RejectButton(job_id))
    return view


def result_view(job_id: str) -> discord.ui.View:
    """The buttons for one delivered job (needs a running event loop, as every discord.py view)."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    view.add_item(VaryButton(job_id))
    view.add_item(RemixButton(job_id))
    view.add_item(DeleteButton(job_id))
    return view
