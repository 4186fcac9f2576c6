"""Who is asking: a platform-neutral user reference, the key of credit accounts and admin lists."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UserRef:
    """A chat user, unique across platforms.

    ``workspace`` is the Slack team id, ``"-"`` for Discord (one balance per Discord user across every
    server the bot is in) and ``"local"`` for the terminal.
    """

    platform: str
    workspace: str
    user: str

    @property
    def key(self) -> str:
        """The form used in ``ADMINS``: ``slack:TEAM:USER``, ``discord:USER``, ``terminal:USER``."""
        if self.platform == "slack":
            return f"slack:{self.workspace}:{self.user}"
        return f"{self.platform}:{self.user}"

    @classmethod
    def parse(cls, key: str) -> UserRef:
        parts = key.split(":")
        if parts[0] == "slack" and len(parts) == 3:
            return cls("slack", parts[1], parts[2])
        if parts[0] == "discord" and len(parts) == 2:
            return cls("discord", "-", parts[1])
        if parts[0] == "terminal" and len(parts) == 2:
            return cls("terminal", "local", parts[1])
        raise ValueError(f"not a user key: {key!r} (slack:TEAM:USER, discord:USER or terminal:USER)")

    def __str__(self) -> str:
        return self.key
