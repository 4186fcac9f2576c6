"""Where a Discord job's messages go, kept in ``ReplyTo.data`` so that it survives a restart.

An interaction gives a token that may edit the deferred response ("@original") for 15 minutes. The job
stores the token with the application id, the channel, the interaction's creation time and its
attachment size limit; ``InteractionHook`` edits and deletes the original from those alone, the way
discord.py's own ``Interaction.edit_original_response`` does, so a job resumed by a new process edits
the same message.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import discord
from discord.http import handle_message_parameters
from discord.utils import MISSING
from discord.webhook.async_ import async_context

if TYPE_CHECKING:  # discord.types imports discord at run time: a cycle
    from discord.types.message import Message as MessagePayload

#: the interaction token lives 15 minutes; past this age a job's messages go to the channel instead
TOKEN_SAFE_AGE_S = 14 * 60
#: what Discord allows without boosts, when an interaction did not say
DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReplyData:
    """The Discord part of ``ReplyTo.data`` (JSON-friendly: ids as strings)."""

    application_id: str
    token: str
    interaction_id: str
    channel_id: str
    user_id: str
    created_at: float
    guild_id: str | None = None
    attachment_size_limit: int = DEFAULT_ATTACHMENT_LIMIT
    message_id: str | None = None

    @classmethod
    def from_interaction(cls, interaction: discord.Interaction) -> ReplyData:
        channel_id = interaction.channel_id or (interaction.channel.id if interaction.channel else 0)
        return cls(
            application_id=str(interaction.application_id),
            token=interaction.token,
            interaction_id=str(interaction.id),
            channel_id=str(channel_id),
            user_id=str(interaction.user.id),
            created_at=interaction.created_at.timestamp(),
            guild_id=str(interaction.guild_id) if interaction.guild_id else None,
            attachment_size_limit=int(getattr(interaction, "filesize_limit", 0) or DEFAULT_ATTACHMENT_LIMIT),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplyData:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def token_age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.created_at

    def token_usable(self, now: float | None = None) -> bool:
        return self.token_age(now) < TOKEN_SAFE_AGE_S


class InteractionHook:
    """The original response of one interaction, by application id and token."""

    def __init__(self, client: discord.Client, application_id: str | int, token: str) -> None:
        self.client = client
        self.application_id = int(application_id)
        self.token = token

    def _session_kwargs(self) -> dict[str, Any]:
        http = self.client.http
        # the same session discord.py's Interaction uses for its webhook calls
        return {"session": http._HTTPClient__session, "proxy": http.proxy,  # type: ignore[attr-defined]
                "proxy_auth": http.proxy_auth}

    async def edit_original(self, *, content: str | None = MISSING, embed: discord.Embed | None = MISSING,
                            attachments: list[discord.File] = MISSING, view: discord.ui.View | None = MISSING,
                            allowed_mentions: discord.AllowedMentions | None = None) -> MessagePayload:
        """Edit the original response; returns the message payload. Raises ``discord.HTTPException``."""
        with handle_message_parameters(
            content=content, embed=embed, attachments=attachments, view=view,
            allowed_mentions=allowed_mentions or discord.AllowedMentions.none(),
        ) as params:
            return await async_context.get().edit_original_interaction_response(
                self.application_id, self.token, payload=params.payload, multipart=params.multipart,
                files=params.files, **self._session_kwargs(),
            )


def token_gone(error: discord.HTTPException) -> bool:
    """Discord no longer accepts this interaction token or its message (expired, unknown, deleted)."""
    return error.status in (401, 404) or error.code in (50027, 10015, 10008)
