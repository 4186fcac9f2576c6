"""The few user-facing texts only Discord needs (everything else comes from ``core.chat.messages``).

Kept in one place so that they can move into ``core.chat.messages`` if another front end needs them.
"""

from __future__ import annotations

DMS_REFUSED = "I only make images in server channels. Use /imagine in a server where I am installed."
SERVER_REFUSED = "This image bot is not enabled for this server."
SERVER_LEAVING = "This image bot is not enabled for this server, so it is leaving. Ask the bot's operator to allow it."


def too_large(filename: str, size: int, limit: int, url: str | None) -> str:
    mib = f"{size / 1024 / 1024:.1f} MB"
    where = f" Download it here (the link expires): {url}" if url else ""
    return f"`{filename}` ({mib}) is larger than this channel allows ({limit / 1024 / 1024:.0f} MB).{where}"
