"""What a community admin may choose for their own server or workspace (a *place*): members banned from
the bot there, the channels the bot answers in, and the default aspect ratio and quality.

None of it touches money: budgets are ``core.credits.budgets``, set by operators. The rows are kept by
``core.storage.places``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PlacePrefs:
    place: str
    #: channel ids the bot answers in; empty: every channel
    channels: tuple[str, ...] = ()
    defaults: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlaceRules:
    """What one command in a place is decided by, read fresh in one statement (``PlaceStore.rules``)."""

    prefs: PlacePrefs
    #: the requester is banned from the bot in this place
    banned: bool = False
    #: the name of the preset the command's channel uses by default (None: none)
    channel_preset: str | None = None
    #: the channel's reviewers (empty: its images are posted at once)
    reviewers: tuple[str, ...] = ()
