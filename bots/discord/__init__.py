"""The Discord front end: slash commands, job progress in the interaction response, images with
Reroll and Delete buttons. See docs/discord.md.

``DiscordService`` and ``DiscordFrontEnd`` are imported on first use, so that ``imagine-bot`` commands
which do not touch Discord (``bots.discord.cli`` adds its parsers) do not pay for importing discord.py.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

with warnings.catch_warnings():
    # discord.py imports audioop for voice (unused here), which Python 3.11+ flags as deprecated;
    # importing it first, quietly, keeps that warning out of every later `import discord`
    warnings.filterwarnings("ignore", message="'audioop' is deprecated", category=DeprecationWarning)
    try:
        import audioop  # noqa: F401
    except ImportError:  # Python 3.13+: discord.py brings audioop-lts
        pass

if TYPE_CHECKING:
    from imagine_bot.bots.discord.frontend import DiscordFrontEnd
    from imagine_bot.bots.discord.service import DiscordService

__all__ = ["DiscordFrontEnd", "DiscordService"]


def __getattr__(name: str) -> Any:
    if name == "DiscordService":
        from imagine_bot.bots.discord.service import DiscordService

        return DiscordService
    if name == "DiscordFrontEnd":
        from imagine_bot.bots.discord.frontend import DiscordFrontEnd

        return DiscordFrontEnd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
