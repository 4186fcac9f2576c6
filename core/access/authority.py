"""Who acts, where, and with what standing: the ``Actor`` a front end hands the core.

Two kinds of admin (the core decides; a front end only vouches for platform facts):

- **operators**: the users listed in ``ADMINS`` (and whoever runs the command line). They mint and revoke
  credits, set allowances and budgets, and read every report;
- **community admins**: Discord members with Manage Server *in that server*, Slack workspace admins and
  owners (``users.info``). They act only inside their own server or workspace (``Actor.place``) and
  never mint: ban and unban members there, choose its channels and default options, read its report,
  cap one member's share of its budget. Nothing they do raises what the place may spend.

Places and budget scopes are named by keys: ``discord:GUILD``, ``slack:TEAM``, one channel of them
``discord:GUILD#CHANNEL`` / ``slack:TEAM#CHANNEL``, and ``global`` for the operator's spend cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagine_bot.core.access.identity import UserRef

GLOBAL = "global"


def place_key(platform: str, place_id: str) -> str:
    """The key of a Discord server or Slack workspace: ``discord:GUILD``, ``slack:TEAM``."""
    return f"{platform}:{place_id}"


def channel_key(place: str, channel: str) -> str:
    return f"{place}#{channel}"


def parse_scope(raw: str) -> str:
    """A scope key as typed by an operator (``discord:123``, ``slack:T1#C1``, ``global``), checked."""
    text = raw.strip()
    if text == GLOBAL:
        return text
    platform, _, rest = text.partition(":")
    place, _, channel = rest.partition("#")
    if platform not in ("discord", "slack") or not place or not place.replace("-", "").isalnum() or (
            channel and not channel.isalnum()):
        raise ValueError(f"not a scope: {raw!r} (discord:SERVER_ID, slack:TEAM_ID, either with #CHANNEL, or global)")
    return text


def scope_noun(scope: str) -> str:
    """``server``, ``workspace``, ``channel`` or ``bot``: what users call the scope."""
    if scope == GLOBAL:
        return "bot"
    if "#" in scope:
        return "channel"
    return "server" if scope.startswith("discord:") else "workspace"


@dataclass(frozen=True, slots=True)
class Actor:
    """A user acting somewhere. ``place`` is the server or workspace key (None in DMs and the terminal);
    ``community_admin`` is the platform's word that the user administers *that* place (Discord Manage
    Server in this guild, Slack admin/owner of this team); ``nsfw_channel``: Discord marked the channel
    age-restricted."""

    user: UserRef
    place: str | None = None
    channel: str | None = None
    community_admin: bool = False
    nsfw_channel: bool = False

    @classmethod
    def of(cls, who: UserRef | Actor, channel: str | None = None) -> Actor:
        """An ``Actor`` from a bare ``UserRef``: a Slack user acts in their workspace; anyone else nowhere
        in particular (a DM, the terminal). Front ends that know more pass an ``Actor`` themselves."""
        if isinstance(who, Actor):
            return who
        place = place_key("slack", who.workspace) if who.platform == "slack" else None
        return cls(who, place=place, channel=channel)

    @property
    def key(self) -> str:
        return self.user.key

    @property
    def channel_scope(self) -> str | None:
        return channel_key(self.place, self.channel) if self.place and self.channel else None
