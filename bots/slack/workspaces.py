"""Which bot token serves a workspace, and the Web API clients that use it.

Every Slack call the bot makes belongs to one workspace: a job's messages and uploads (the job's
requester's team, and its Enterprise Grid organisation in ``ReplyTo.data["enterprise_id"]``), a button's
answer, the App Home tab, an operator's direct message. The front end and the listeners ask
``Workspaces.clients(team, enterprise)`` for that workspace's pair of clients and make the call with them:

- ``OneWorkspace`` (``SLACK_BOT_TOKEN``): one token, today's single-workspace mode.
- ``InstalledWorkspaces`` (``SLACK_CLIENT_ID``, distributed): the token of the workspace's installation,
  read from the database each time (so every process, and a process started later, sees an install or an
  uninstall at once), refreshed first when token rotation is on and it expires within
  ``expiration_minutes``. None when the workspace has no installation (never installed, uninstalled, its
  token revoked): then nothing is sent.

A token is never logged: only the workspace ids are.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from slack_sdk.errors import SlackTokenRotationError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from imagine_bot.bots.slack.installs import SerialTokenRotator, SlackInstallationStore

log = logging.getLogger(__name__)

#: clients kept per token (a token rotated every 12 hours leaves its old pair behind)
KEPT_CLIENTS = 256


@dataclass(frozen=True, slots=True)
class Clients:
    """One workspace's Web API clients, sharing one session.

    ``api`` (deliveries, the listeners) lets slack_sdk retry a 429 after Retry-After; ``edits`` (status
    messages) has no rate-limit retry, so a 429 never sleeps inside a call (the outbox waits instead);
    ``posts`` (a delivery's new messages, ``posts.post_once``) is ``api`` without the retry on a dropped
    connection: a post whose answer was lost is looked for before it is made again, never repeated blindly."""

    api: AsyncWebClient
    edits: AsyncWebClient
    posts: AsyncWebClient

    @property
    def token(self) -> str:
        return str(self.api.token)


class ClientFactory:
    """Builds the clients for a token: ``SLACK_API_URL``, the service's one aiohttp session."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.session = session
        self._kept: OrderedDict[str, Clients] = OrderedDict()

    def api(self, token: str | None, *, reconnect: bool = True) -> AsyncWebClient:
        """A client that retries a 429 once after Retry-After and (``reconnect``) a dropped connection once."""
        retries = [AsyncConnectionErrorRetryHandler()] if reconnect else []
        return AsyncWebClient(token=token, base_url=self.base_url, session=self.session, timeout=30,
                              retry_handlers=[*retries, AsyncRateLimitErrorRetryHandler(max_retry_count=1)])

    def clients(self, token: str) -> Clients:
        kept = self._kept.get(token)
        if kept is None:
            kept = self._kept[token] = Clients(self.api(token), AsyncWebClient(
                token=token, base_url=self.base_url, session=self.session, timeout=10, retry_handlers=[]),
                self.api(token, reconnect=False))
            while len(self._kept) > KEPT_CLIENTS:
                self._kept.popitem(last=False)
        self._kept.move_to_end(token)
        return kept


class Workspaces(Protocol):
    #: whether workspaces install the app themselves (distributed mode)
    distributed: bool

    async def clients(self, team: str, enterprise: str | None = None) -> Clients | None:
        """The clients for ``team`` (of Enterprise Grid organisation ``enterprise``), None if not installed."""
        ...


class OneWorkspace:
    """``SLACK_BOT_TOKEN``: one token for every call."""

    distributed = False

    def __init__(self, clients: Clients) -> None:
        self.one = clients

    async def clients(self, team: str, enterprise: str | None = None) -> Clients | None:
        return self.one


class InstalledWorkspaces:
    """Distributed mode: each workspace's own installation (see the module docstring)."""

    distributed = True

    def __init__(self, factory: ClientFactory, store: SlackInstallationStore, rotator: SerialTokenRotator, *,
                 expiration_minutes: int) -> None:
        self.factory = factory
        self.store = store
        self.rotator = rotator
        self.expiration_minutes = expiration_minutes

    async def clients(self, team: str, enterprise: str | None = None) -> Clients | None:
        installation = await self.store.async_find_installation(enterprise_id=enterprise or None, team_id=team)
        if installation is None or not installation.bot_token:
            return None
        if installation.bot_refresh_token:
            try:
                refreshed = await self.rotator.perform_token_rotation(
                    installation=installation, minutes_before_expiration=self.expiration_minutes)
            except SlackTokenRotationError as exc:  # Slack refused the refresh token: the installation is dead
                log.warning("slack: the bot token of %s could not be refreshed (%s): treating the workspace as "
                            "not installed", team, exc.api_error.response.get("error"))
                return None
            if refreshed is not None:
                await self.store.async_save(refreshed)
                installation = refreshed
        return self.factory.clients(str(installation.bot_token))
