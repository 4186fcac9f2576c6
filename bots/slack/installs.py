"""slack_sdk's installation and OAuth-state store interfaces, over the bot's own database.

Bolt's OAuth flow (``/slack/install``, ``/slack/oauth_redirect``) saves each installation through
``SlackInstallationStore``; Bolt's authorize step finds the workspace's bot token through it for every
request; its ``app_uninstalled`` and ``tokens_revoked`` listeners delete through it. Each call is one
short statement of ``core/storage/installations.py`` (no SQL here); the tokens are sealed with
``SLACK_TOKEN_KEY`` there.

Keys, as slack_sdk's own stores have them: an installation belongs to ``(enterprise_id, team_id)``; an
organisation-wide installation of Enterprise Grid (``is_enterprise_install``) to ``(enterprise_id, '')``,
and it serves every workspace of the organisation, so a workspace of an organisation with no installation
of its own is served by the organisation's.

``SerialTokenRotator``: with token rotation a bot token lives 12 hours and its refresh token works once.
Bolt's rotator, made one workspace at a time (a lock per workspace, and a look at the stored installation
first: another request, or another process, may have refreshed it meanwhile), so a refresh token is never
spent twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from slack_sdk.errors import SlackTokenRotationError
from slack_sdk.oauth.installation_store import Bot, Installation
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore
from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator
from slack_sdk.web.async_client import AsyncWebClient

from imagine_bot.core.storage.base import InstallationStore, OAuthStateStore
from imagine_bot.core.storage.installations import InstallationRow

log = logging.getLogger(__name__)

#: a refresh token refused as spent: how long to look for the pair the process that spent it saves
RACE_S = 5.0
RACE_LOOK_S = 0.05

PLATFORM = "slack"
BOT_TOKENS = ("bot_token", "bot_refresh_token")
USER_TOKENS = ("user_token", "user_refresh_token")
TOKENS = BOT_TOKENS + USER_TOKENS


def place(enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None) -> tuple[str, str]:
    """``(org, workspace)``: where an installation lives in the table."""
    return enterprise_id or "", "" if is_enterprise_install else (team_id or "")


def _plain(name: str, value: Any) -> Any:
    """A JSON value: times as epoch seconds (expiries in whole seconds, as slack_sdk wants them)."""
    if not isinstance(value, datetime):
        return value
    return int(value.timestamp()) if name.endswith("_expires_at") else value.timestamp()


def to_row(installation: Installation) -> InstallationRow:
    record = {k: _plain(k, v) for k, v in installation.to_dict_for_copying().items() if k not in TOKENS}
    org, workspace = place(installation.enterprise_id, installation.team_id, installation.is_enterprise_install)
    name = (installation.enterprise_name if installation.is_enterprise_install else installation.team_name) or ""
    tokens = {k: str(getattr(installation, k)) for k in TOKENS if getattr(installation, k)}
    return InstallationRow(PLATFORM, org, workspace, installation.user_id or "", installation.is_enterprise_install,
                           name, record, tokens, datetime.fromtimestamp(installation.installed_at, UTC))


def to_installation(row: InstallationRow) -> Installation:
    record: dict[str, Any] = {k: v for k, v in row.data.items() if k not in TOKENS}
    record.update(row.tokens, installed_at=row.installed_at.timestamp())
    return Installation(**record)


def _expires_at(installation: Installation | Bot) -> int | None:
    return installation.bot_token_expires_at


class SlackInstallationStore(AsyncInstallationStore):
    """``AsyncInstallationStore`` over the core's ``InstallationStore`` (the ``slack`` rows)."""

    def __init__(self, installations: InstallationStore) -> None:
        self.installations = installations

    @property
    def logger(self) -> logging.Logger:
        return log

    # ------------------------------------------------------------------ saving
    async def async_save(self, installation: Installation) -> None:
        self.installations.save(to_row(installation))

    async def async_save_bot(self, bot: Bot) -> None:
        """A bot's refreshed token (Bolt's ``bot_only`` rotation): into the latest installation of its place."""
        org, workspace = place(bot.enterprise_id, bot.team_id, bot.is_enterprise_install)
        row = self.installations.latest(org=org, workspace=workspace)
        installation = to_installation(row) if row is not None else Installation(user_id="",
                                                                                 **bot.to_dict_for_copying())
        for name in ("bot_token", "bot_refresh_token", "bot_token_expires_at", "bot_id", "bot_user_id", "bot_scopes"):
            setattr(installation, name, getattr(bot, name))
        await self.async_save(installation)

    # ------------------------------------------------------------------ finding
    def _find_row(self, enterprise_id: str | None, team_id: str | None, user_id: str | None,
                  is_enterprise_install: bool | None, with_token: str | None = None) -> InstallationRow | None:
        org, workspace = place(enterprise_id, team_id, is_enterprise_install)
        if not workspace and not org:
            return None
        row = self.installations.latest(org=org if (org or is_enterprise_install) else None, workspace=workspace,
                                        installer=user_id, with_token=with_token)
        if row is None and workspace and org:
            # a workspace of an Enterprise Grid organisation: the organisation-wide installation serves it
            row = self.installations.latest(org=org, workspace="", installer=user_id, with_token=with_token)
        return row

    async def async_find_installation(self, *, enterprise_id: str | None, team_id: str | None,
                                      user_id: str | None = None,
                                      is_enterprise_install: bool | None = False) -> Installation | None:
        row = self._find_row(enterprise_id, team_id, user_id, is_enterprise_install)
        if row is None:
            return None
        installation = to_installation(row)
        if user_id is not None and installation.bot_token is None:
            # this user's own installation has no bot token: the workspace's latest bot serves it
            bot = self._find_row(enterprise_id, team_id, None, is_enterprise_install, with_token="bot_token")
            if bot is not None:
                latest = to_installation(bot)
                for name in ("bot_token", "bot_refresh_token", "bot_token_expires_at", "bot_id", "bot_user_id",
                             "bot_scopes"):
                    setattr(installation, name, getattr(latest, name))
        return installation

    async def async_find_bot(self, *, enterprise_id: str | None, team_id: str | None,
                             is_enterprise_install: bool | None = False) -> Bot | None:
        row = self._find_row(enterprise_id, team_id, None, is_enterprise_install, with_token="bot_token")
        return to_installation(row).to_bot() if row is not None else None

    # ------------------------------------------------------------------ deleting (uninstalls, revoked tokens)
    def _targets(self, enterprise_id: str | None, team_id: str | None) -> tuple[str | None, str]:
        """``(org, workspace)`` to delete: a workspace (whatever its organisation: a team id names one
        workspace), or with no team the organisation-wide installation."""
        if team_id:
            return None, team_id
        return enterprise_id or "", ""

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        org, workspace = self._targets(enterprise_id, team_id)
        self.installations.clear_tokens(org=org, workspace=workspace, names=BOT_TOKENS)

    async def async_delete_installation(self, *, enterprise_id: str | None, team_id: str | None,
                                        user_id: str | None = None) -> None:
        org, workspace = self._targets(enterprise_id, team_id)
        if user_id is None:
            self.installations.delete(org=org, workspace=workspace)
        else:  # one user's tokens revoked: the bot's token (in the same row) stays
            self.installations.clear_tokens(org=org, workspace=workspace, names=USER_TOKENS, installer=user_id)

    async def async_delete_all(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        org, workspace = self._targets(enterprise_id, team_id)
        self.installations.delete(org=org, workspace=workspace)


class SlackStateStore(AsyncOAuthStateStore):
    """``AsyncOAuthStateStore`` over the core's ``OAuthStateStore``: a random state per install flow, good once
    for ``expiration_seconds``."""

    def __init__(self, states: OAuthStateStore, expiration_seconds: int) -> None:
        self.states = states
        self.expiration_seconds = expiration_seconds

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        state = secrets.token_urlsafe(32)
        self.states.issue(state, self.expiration_seconds)
        return state

    async def async_consume(self, state: str) -> bool:
        consumed = self.states.consume(state)
        if not consumed:
            log.warning("slack install: an unknown, used or expired OAuth state was refused")
        return consumed


class SerialTokenRotator(AsyncTokenRotator):
    """Bolt's token rotation, one refresh per workspace at a time (see the module docstring)."""

    def __init__(self, *, client_id: str, client_secret: str, client: AsyncWebClient,
                 store: SlackInstallationStore) -> None:
        super().__init__(client_id=client_id, client_secret=client_secret, client=client)
        self.store = store
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def perform_token_rotation(self, *, installation: Installation,
                                     minutes_before_expiration: int = 120) -> Installation | None:
        key = place(installation.enterprise_id, installation.team_id, installation.is_enterprise_install)
        async with self._locks[key]:
            stored = await self._stored(installation)
            if stored is not None and stored.bot_token != installation.bot_token and _fresh(
                    stored, minutes_before_expiration):
                return stored  # refreshed meanwhile (another request or process): nothing to spend
            current = stored or installation
            try:
                refreshed = await super().perform_token_rotation(installation=current,
                                                                 minutes_before_expiration=minutes_before_expiration)
            except SlackTokenRotationError:
                # Slack refuses a spent refresh token: another process may have spent it a moment ago; it
                # saves the new pair as soon as Slack answers it
                again = await self._saved_by_another(current)
                if again is None:
                    raise
                return again
            if refreshed is not None:
                log.info("slack: refreshed the bot token of %s (expires %s)", "/".join(k for k in key if k),
                         datetime.fromtimestamp(_expires_at(refreshed) or 0, UTC).strftime("%H:%M UTC"))
            return refreshed

    async def _saved_by_another(self, spent: Installation) -> Installation | None:
        """The pair another process saved after spending ``spent``'s refresh token (None if none comes)."""
        for _ in range(int(RACE_S / RACE_LOOK_S)):
            again = await self._stored(spent)
            if again is not None and again.bot_refresh_token != spent.bot_refresh_token:
                return again
            await asyncio.sleep(RACE_LOOK_S)
        return None

    async def _stored(self, installation: Installation) -> Installation | None:
        return await self.store.async_find_installation(
            enterprise_id=installation.enterprise_id, team_id=installation.team_id,
            is_enterprise_install=installation.is_enterprise_install)


def _fresh(installation: Installation, minutes_before_expiration: int) -> bool:
    expires = _expires_at(installation)
    return expires is None or expires > time.time() + minutes_before_expiration * 60
