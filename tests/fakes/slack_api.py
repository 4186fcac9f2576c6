"""A fake Slack Web API: a real aiohttp server on 127.0.0.1 that records every call and answers like Slack.

Point ``AsyncWebClient(base_url=fake.api_url)`` (or ``SLACK_API_URL``) at it. It serves:

- ``/api/<method>``: ``auth.test``, ``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``,
  ``chat.delete``, ``views.publish``, ``conversations.open``, ``conversations.info``, ``conversations.history``,
  ``conversations.replies``, ``files.getUploadURLExternal``,
  ``files.completeUploadExternal``, ``files.info``, ``files.delete``, ``apps.connections.open``,
  ``users.info`` (workspace admins and owners are the ids in ``fake.workspace_admins`` /
  ``fake.workspace_owners``). Params
  are read from the query string, a form or a JSON body, like Slack. Every call records the token it
  used (``Call.token``) and the workspace that token belongs to (``Call.team``). An unknown bot token
  answers ``invalid_auth``, a revoked one ``token_revoked``, an expired one ``token_expired``.
- Distribution ("Add to Slack"), like Slack's: ``GET /oauth/v2/authorize`` (``authorize_url``) is the
  page where an admin approves the app: it answers with a redirect to the app's ``redirect_uri`` with a
  one-time ``code`` and the app's ``state``. The workspace approving is the ``team`` parameter (a
  workspace added with ``add_workspace``, or an Enterprise Grid organisation added with ``add_org``: an
  organisation-wide install), else ``fake.team_id``. ``oauth.v2.access`` (the app's client id and secret in
  HTTP basic auth, as slack_sdk sends them) exchanges a code for a new bot token of that workspace
  (``grant_type=authorization_code``), or, with ``fake.token_rotation``, a refresh token for a new pair
  (``grant_type=refresh_token``; a refresh token works once). ``fake.lifetimes`` lists the ``expires_in``
  of the next tokens issued (then 12 hours). ``fake.uninstall(team)`` revokes a workspace's tokens.
- Blocks (``chat.postMessage``, ``chat.update``, ``views.publish``) are checked with slack_sdk's own Block
  Kit models, and every ``slack_file`` must name a file that exists, is not deleted and (in messages) is
  shared in that channel; otherwise the call answers ``invalid_blocks`` with Slack's ``errors`` list.
  ``fake.refuse_image_blocks = True`` refuses every ``slack_file`` image (an older workspace);
  ``fake.processing_looks = n`` keeps each file uploaded afterwards "not yet processed" for its first ``n``
  looks (a ``files.info`` call or a message showing it): unshared in ``files.info`` and refused in blocks.
- ``/upload/<file_id>``: the upload URL handed out by files.getUploadURLExternal (stores the raw bytes).
- ``views.open`` records each modal in ``fake.views``; ``fake.add_file(...)`` shares a file whose
  ``url_private_download`` (``/files-pri/<id>/<name>``) answers only with the bot token, like Slack (anything
  else gets the HTML sign-in page); ``fake.file_downloads`` records each download.
- ``/response/<id>``: a response_url (records the JSON posted to it); ``fake.response_url(id)`` makes one.
- ``/socket``: a Socket Mode websocket (``apps.connections.open`` hands out its URL); ``send_envelope``
  pushes a request to the connected app and returns its ack.

Conversations, as the bot sees them: every id is a channel the bot is in (``C…`` public, ``G…`` private) or,
for ``D…``, its own direct message with a user, unless ``fake.conversation(id, member=False, archived=True,
...)`` says otherwise (``fake.remove_bot(id)`` and ``fake.archive(id)`` change one mid-test).
``conversations.info`` answers like Slack (``is_member``, ``is_archived``, ``is_im`` with its ``user``;
``channel_not_found`` for a private conversation the bot is not in, such as a DM between other people;
``missing_scope`` without the ``channels:read`` / ``groups:read`` / ``im:read`` / ``mpim:read`` scope the
conversation needs); ``conversations.open`` opens the bot's DM with a user (``D`` + the user id's digits).
``chat.postMessage``, ``chat.update`` and ``files.completeUploadExternal`` (with a ``channel_id``) in a
conversation the bot cannot post in answer ``channel_not_found`` (private, not a member), ``is_archived``
or ``not_in_channel``.

``conversations.history`` (the conversation's top-level messages, newest first) and ``conversations.replies``
(a thread: its parent, then the replies) answer like Slack: after ``oldest``, ``limit`` per page with a
``next_cursor``, a message's ``metadata`` (as ``chat.postMessage`` was given it) only with
``include_all_metadata``; ``missing_scope`` without ``channels:history`` / ``groups:history`` /
``im:history`` / ``mpim:history`` for the conversation's kind, ``not_in_channel`` (``channel_not_found`` if
private) where the bot is not a member. Message ts are real times (epoch seconds), as Slack's.

``fake.fail("chat.postMessage", "not_in_channel")`` makes the next call of that method answer
``{"ok": false, "error": "not_in_channel"}``; ``fake.lose_answer("files.completeUploadExternal")`` does
the next call but answers HTTP 500 (the work done, the answer lost); ``fake.drop_answer("chat.postMessage")``
does the next call and cuts the connection before any answer (a reset: the client hears nothing).
Rate limits and slowness, like Slack's:
``fake.rate_limit("chat.update", retry_after=2)`` answers HTTP 429 with ``Retry-After``;
``fake.tier("chat.update", per_minute=50)`` answers 429 past a rate per workspace (a sliding minute, the
Retry-After saying when a call would pass); ``fake.slow("chat.update", 5)`` answers after 5 s (the edit
is applied when the answer is sent). ``Call.done_at`` is when the answer went out.
``await fake.wait_for(method, count=n)`` waits (on a condition, not a sleep) until the method has been
called ``n`` times.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
import urllib.parse
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    token: str | None = None
    done_at: float | None = None
    status: int = 200
    #: the workspace the call's bot token belongs to (the organisation, for an organisation-wide token)
    team: str | None = None


@dataclass
class Workspace:
    team_id: str
    name: str
    enterprise_id: str | None = None


@dataclass
class Grant:
    """A bot token Slack issued: for a workspace, or for a whole organisation (``org_wide``)."""

    token: str
    team_id: str | None
    team_name: str | None
    enterprise_id: str | None
    enterprise_name: str | None
    org_wide: bool
    bot_user_id: str
    scopes: list[str]
    expires_at: float | None = None
    refresh_token: str | None = None
    revoked: bool = False

    @property
    def where(self) -> str:
        return str(self.enterprise_id if self.org_wide else self.team_id)


@dataclass
class Conversation:
    """A conversation as the bot sees it."""

    id: str
    #: ``channel`` (public), ``group`` (private channel), ``im`` (a direct message), ``mpim`` (a group DM)
    kind: str
    #: the bot is in it (an ``im``: it is the bot's own DM with ``user``)
    member: bool = True
    archived: bool = False
    #: an ``im``: the person the bot talks with
    user: str | None = None

    @property
    def private(self) -> bool:
        """Hidden from a bot that is not in it (Slack answers ``channel_not_found``)."""
        return self.kind != "channel"


#: the scope conversations.info needs for each kind of conversation
READ_SCOPES = {"channel": "channels:read", "group": "groups:read", "im": "im:read", "mpim": "mpim:read"}
#: the scope conversations.history and .replies need for each kind of conversation
HISTORY_SCOPES = {"channel": "channels:history", "group": "groups:history", "im": "im:history",
                  "mpim": "mpim:history"}
#: methods that post in a conversation, and the parameter naming it
POSTING = {"chat.postMessage": "channel", "chat.update": "channel", "files.completeUploadExternal": "channel_id"}


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None = None
    deleted: bool = False
    history: list[str] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    user: str = "UBOT"


class FakeSlackAPI:
    def __init__(self, *, bot_token: str = "xoxb-test-token", app_token: str = "xapp-test-token",
                 team_id: str = "T0001", bot_user_id: str = "UBOT", bot_name: str = "imagine",
                 scopes: tuple[str, ...] = ("commands", "chat:write", "files:write", "files:read", "im:write",
                                          "users:read", "channels:read", "groups:read", "im:read",
                                          "mpim:read", "channels:history", "groups:history", "im:history",
                                          "mpim:history")) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_name = bot_name
        #: the bot token's scopes, sent back as ``x-oauth-scopes`` on every answer (as Slack does)
        self.scopes = list(scopes)
        self.calls: list[Call] = []
        self.messages: dict[str, Message] = {}
        #: conversations set up by the test (any other id: see the module docstring)
        self.conversations: dict[str, Conversation] = {}
        self.uploads: dict[str, bytes] = {}
        self.files: dict[str, dict[str, Any]] = {}
        #: files users shared (``add_file``), and every download of one: (file id, Authorization header)
        self.private_files: dict[str, bytes] = {}
        self.file_downloads: list[tuple[str, str]] = []
        #: modals opened with views.open
        self.views: list[dict[str, Any]] = []
        self.workspace_admins: set[str] = set()
        self.workspace_owners: set[str] = set()
        self.responses: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._failures: dict[str, deque[str]] = defaultdict(deque)
        #: Block Kit behaviour (see the module docstring)
        self.refuse_image_blocks = False
        self.processing_looks = 0
        self._limited: dict[str, deque[float]] = defaultdict(deque)
        self._tiers: dict[str, tuple[float, deque[float]]] = {}
        self._limited_until: dict[str, float] = {}
        self._delays: dict[str, float] = {}
        self._lost: dict[str, int] = defaultdict(int)
        self._dropped: dict[str, int] = defaultdict(int)
        self._last_ts = 0.0
        self._unblock = asyncio.Event()
        self._changed = asyncio.Condition()
        self._file_ids = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._grant: Grant | None = None  # the token of the call being answered
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        #: workspaces and Enterprise Grid organisations that may install the app
        self.workspaces: dict[str, Workspace] = {team_id: Workspace(team_id, "Fake Team")}
        self.orgs: dict[str, str] = {}
        #: the bot tokens issued, the default one first
        self.grants: dict[str, Grant] = {bot_token: Grant(bot_token, team_id, "Fake Team", None, None, False,
                                                          bot_user_id, self.scopes)}
        #: the app's OAuth credentials and redirect URLs (None: any redirect_uri)
        self.client_id = "1111.2222"
        self.client_secret = "fake-client-secret"
        self.redirect_urls: list[str] | None = None
        self.token_rotation = False
        self.lifetimes: deque[int] = deque()
        #: every visit to the authorize page (its parameters)
        self.authorizations: list[dict[str, str]] = []
        self._codes: dict[str, tuple[str, str | None]] = {}
        self._refresh: dict[str, str] = {}  # refresh token -> the bot token it refreshes
        self._tokens = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files-pri/{file_id}/{name}", self._private_file)
        app.router.add_post("/response/{rid}", self._response)
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/oauth/v2/authorize", self._authorize)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.api_url

    async def stop(self) -> None:
        self._unblock.set()  # slow answers end now
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeSlackAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    @property
    def authorize_url(self) -> str:
        return f"{self.base_url}/oauth/v2/authorize"

    # ------------------------------------------------------------------ distribution
    def add_workspace(self, team_id: str, name: str | None = None, enterprise_id: str | None = None) -> Workspace:
        self.workspaces[team_id] = Workspace(team_id, name or f"Workspace {team_id}", enterprise_id)
        return self.workspaces[team_id]

    def add_org(self, enterprise_id: str, name: str, teams: list[str]) -> None:
        """An Enterprise Grid organisation and its workspaces."""
        self.orgs[enterprise_id] = name
        for team in teams:
            self.add_workspace(team, enterprise_id=enterprise_id)

    def tokens_of(self, where: str) -> list[str]:
        """Every bot token ``oauth.v2.access`` issued for a workspace (or, for an organisation id,
        organisation-wide), oldest first."""
        return [g.token for g in self.grants.values() if g.where == where and g.token != self.bot_token]

    def uninstall(self, where: str) -> None:
        """The app removed from a workspace or organisation: its tokens and refresh tokens stop working."""
        for grant in self.grants.values():
            if grant.where == where:
                grant.revoked = True
                if grant.refresh_token:
                    self._refresh.pop(grant.refresh_token, None)

    async def _authorize(self, request: web.Request) -> web.Response:
        """The page where an admin approves the app: straight back to the app with a code and the state."""
        params = dict(request.query)
        self.authorizations.append(params)
        if params.get("client_id") != self.client_id:
            return web.Response(status=400, text="invalid_client_id")
        redirect = params.get("redirect_uri")
        if self.redirect_urls is not None and redirect not in self.redirect_urls:
            return web.Response(status=400, text="bad_redirect_uri")
        target = params.get("team") or self.team_id
        if target not in self.workspaces and target not in self.orgs:
            return web.Response(status=400, text="unknown team")
        code = f"code-{uuid.uuid4().hex[:16]}"
        self._codes[code] = (target, redirect)
        query = urllib.parse.urlencode({"code": code, "state": params.get("state", "")})
        raise web.HTTPFound(f"{redirect}?{query}")

    def _issue(self, *, team: Workspace | None, enterprise_id: str | None, org_wide: bool,
               scopes: list[str], bot_user_id: str | None = None) -> Grant:
        n = next(self._tokens)
        where = enterprise_id if org_wide else (team.team_id if team else "")
        lifetime = (self.lifetimes.popleft() if self.lifetimes else 43200) if self.token_rotation else None
        grant = Grant(token=("xoxe.xoxb-" if self.token_rotation else "xoxb-") + f"{where}-{n}-{uuid.uuid4().hex[:8]}",
                      team_id=None if org_wide else (team.team_id if team else None),
                      team_name=None if org_wide else (team.name if team else None),
                      enterprise_id=enterprise_id, enterprise_name=self.orgs.get(enterprise_id or ""),
                      org_wide=org_wide, bot_user_id=bot_user_id or f"UB{where}", scopes=scopes,
                      expires_at=time.time() + lifetime if lifetime else None,
                      refresh_token=f"xoxe-1-{uuid.uuid4().hex}" if self.token_rotation else None)
        self.grants[grant.token] = grant
        if grant.refresh_token:
            self._refresh[grant.refresh_token] = grant.token
        return grant

    def _oauth_v2_access(self, params: dict[str, Any], client: tuple[str, str] | None) -> dict[str, Any]:
        client_id, secret = client or (params.get("client_id"), params.get("client_secret"))
        if client_id != self.client_id:
            return {"ok": False, "error": "invalid_client_id"}
        if secret != self.client_secret:
            return {"ok": False, "error": "bad_client_secret"}
        if params.get("grant_type") == "refresh_token":
            old_token = self._refresh.pop(str(params.get("refresh_token")), None)  # works once
            if old_token is None:
                return {"ok": False, "error": "invalid_refresh_token"}
            old = self.grants[old_token]
            team = self.workspaces.get(old.team_id or "")
            grant = self._issue(team=team, enterprise_id=old.enterprise_id, org_wide=old.org_wide,
                                scopes=old.scopes, bot_user_id=old.bot_user_id)
            return {"ok": True, "token_type": "bot", "access_token": grant.token, "scope": ",".join(grant.scopes),
                    "refresh_token": grant.refresh_token,
                    "expires_in": int((grant.expires_at or time.time()) - time.time()) if grant.expires_at else None,
                    **self._where_fields(grant)}
        redirect = params.get("redirect_uri")
        if self.redirect_urls is not None and redirect and redirect not in self.redirect_urls:
            return {"ok": False, "error": "bad_redirect_uri"}
        issued = self._codes.pop(str(params.get("code")), None)  # a code works once
        if issued is None:
            return {"ok": False, "error": "invalid_code"}
        target, asked_redirect = issued
        if asked_redirect and redirect != asked_redirect:
            return {"ok": False, "error": "bad_redirect_uri"}
        org_wide = target in self.orgs
        team = None if org_wide else self.workspaces[target]
        grant = self._issue(team=team, enterprise_id=target if org_wide else team.enterprise_id if team else None,
                            org_wide=org_wide, scopes=list(self.scopes))
        answer: dict[str, Any] = {
            "ok": True, "app_id": "A0001", "token_type": "bot", "access_token": grant.token,
            "scope": ",".join(grant.scopes), "bot_user_id": grant.bot_user_id,
            "authed_user": {"id": f"UINSTALLER{target}"}, **self._where_fields(grant)}
        if grant.refresh_token and grant.expires_at:
            answer.update(refresh_token=grant.refresh_token, expires_in=int(grant.expires_at - time.time()))
        return answer

    def _where_fields(self, grant: Grant) -> dict[str, Any]:
        return {"team": None if grant.org_wide else {"id": grant.team_id, "name": grant.team_name},
                "enterprise": ({"id": grant.enterprise_id, "name": grant.enterprise_name} if grant.enterprise_id
                               else None),
                "is_enterprise_install": grant.org_wide}

    def response_url(self, rid: str | None = None) -> str:
        return f"{self.base_url}/response/{rid or uuid.uuid4().hex[:12]}"

    # ------------------------------------------------------------------ test helpers
    def fail(self, method: str, error: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer ``{"ok": false, "error": error}``."""
        self._failures[method].extend([error] * times)

    def conversation(self, channel: str, *, kind: str | None = None, member: bool = True, archived: bool = False,
                     user: str | None = None) -> Conversation:
        """Set up a conversation: ``member=False`` for a channel the bot was not invited to, or (``D…``) a
        direct message between other people; ``archived=True`` for an archived channel."""
        conversation = Conversation(channel, kind or _kind(channel), member=member, archived=archived, user=user)
        self.conversations[channel] = conversation
        return conversation

    def remove_bot(self, channel: str) -> None:
        """The bot is removed from ``channel`` (``/kick @imagine``): it can no longer post there."""
        self._conversation(channel).member = False

    def archive(self, channel: str) -> None:
        self._conversation(channel).archived = True

    def _conversation(self, channel: str) -> Conversation:
        if channel not in self.conversations:
            self.conversations[channel] = Conversation(channel, _kind(channel))
        return self.conversations[channel]

    def _cannot_post(self, method: str, params: dict[str, Any]) -> str | None:
        """Slack's error for a post in a conversation the bot cannot post in, or None."""
        channel = params.get(POSTING.get(method, ""))
        if not channel:
            return None
        conversation = self._conversation(str(channel))
        if not conversation.member and conversation.private:
            return "channel_not_found"
        if conversation.archived:
            return "is_archived"
        return None if conversation.member else "not_in_channel"

    def rate_limit(self, method: str, retry_after: float, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer HTTP 429 ``ratelimited`` with this Retry-After, and
        so does every call of it until that Retry-After has passed (as Slack does)."""
        self._limited[method].extend([retry_after] * times)

    def tier(self, method: str, per_minute: float) -> None:
        """Answer 429 to calls of ``method`` past ``per_minute`` in any 60 s (Slack's tiers, per workspace)."""
        self._tiers[method] = (per_minute, deque())

    def slow(self, method: str, seconds: float) -> None:
        """Answer ``method`` after ``seconds`` (0: at once again)."""
        self._delays[method] = seconds

    def drop_answer(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` are DONE, but the connection is cut before the answer."""
        self._dropped[method] += times

    def lose_answer(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` are DONE, but answer HTTP 500 (a lost or broken answer)."""
        self._lost[method] += times

    def _throttled(self, method: str) -> float | None:
        """Retry-After for this call, or None when it may pass."""
        now = time.monotonic()
        if self._limited_until.get(method, 0.0) > now:
            return self._limited_until[method] - now
        if self._limited[method]:
            retry_after = self._limited[method].popleft()
            self._limited_until[method] = now + retry_after
            return retry_after
        if method not in self._tiers:
            return None
        per_minute, window = self._tiers[method]
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= per_minute:
            return max(1.0, float(int(window[0] + 60 - now) + 1))
        window.append(now)
        return None

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def wait_for(self, method: str, *, count: int = 1, timeout: float = 10.0) -> Call:  # noqa: ASYNC109
        """The ``count``-th call of ``method`` (waiting for it)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.calls_to(method)) >= count), timeout)
        return self.calls_to(method)[count - 1]

    async def wait_response(self, url: str, *, count: int = 1,
                            timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        rid = url.rsplit("/", 1)[-1]
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.responses[rid]) >= count), timeout)
        return self.responses[rid][count - 1]

    def responses_to(self, url: str) -> list[dict[str, Any]]:
        return list(self.responses[url.rsplit("/", 1)[-1]])

    async def _record(self, call: Call) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ the Web API
    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(dict(await request.post()))
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else params.get("token")
        client: tuple[str, str] | None = None
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
            client, token = (client_id, secret), None
        grant = self.grants.get(token or "")
        call = Call(method, params, token=token, team=grant.where if grant else None)
        await self._record(call)
        try:
            if method == "oauth.v2.access":  # the app's credentials, no token
                await self._delay(method)
                return web.json_response(self._oauth_v2_access(params, client))
            answer = await self._answer(call, token)
            if self._dropped[method]:
                self._dropped[method] -= 1
                call.status = 0  # done, but nobody heard the answer
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError
            return answer
        finally:
            call.done_at = time.monotonic()
            await self._notify()

    async def _answer(self, call: Call, token: str | None) -> web.Response:
        method, params = call.method, call.params
        if method == "apps.connections.open":
            if token != self.app_token:
                return web.json_response({"ok": False, "error": "invalid_auth"})
            grant = None
        else:
            grant = self.grants.get(token or "")
            if grant is None:
                return web.json_response({"ok": False, "error": "invalid_auth"})
            if grant.revoked:
                return web.json_response({"ok": False, "error": "token_revoked"})
            if grant.expires_at is not None and grant.expires_at < time.time():
                return web.json_response({"ok": False, "error": "token_expired"})
        self._grant = grant
        retry_after = self._throttled(method)
        if retry_after is not None:
            call.status = 429
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(max(1, round(retry_after)))})
        await self._delay(method)
        if self._failures[method]:
            return web.json_response({"ok": False, "error": self._failures[method].popleft()})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        refused = self._cannot_post(method, params)
        if refused:
            return web.json_response({"ok": False, "error": refused})
        if method in ("chat.postMessage", "chat.update", "views.publish"):
            errors = self._block_errors(params, method)
            if errors:
                return web.json_response({"ok": False, "error": "invalid_blocks", "errors": errors,
                                          "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]}})
        granted = self.scopes if token == self.bot_token else grant.scopes if grant is not None else None
        scopes = {"x-oauth-scopes": ",".join(granted)} if granted is not None else {}
        answer = handler(params)
        if self._lost[method]:
            self._lost[method] -= 1
            call.status = 500
            return web.json_response({"ok": False, "error": "internal_error"}, status=500)
        return web.json_response(answer, headers=scopes)

    async def _delay(self, method: str) -> None:
        if self._delays.get(method):
            try:
                await asyncio.wait_for(self._unblock.wait(), self._delays[method])
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ Block Kit checks
    def _block_errors(self, params: dict[str, Any], method: str) -> list[str]:
        if method == "views.publish":
            view = params["view"]
            raw = (json.loads(view) if isinstance(view, str) else view).get("blocks") or []
            channel = None
        else:
            raw, channel = self._blocks(params) or [], params.get("channel")
        errors: list[str] = []
        for i, block in enumerate(raw):
            try:
                parsed = Block.parse(block)
                if parsed is None:
                    raise SlackObjectFormationError(f"unknown block type {block.get('type')!r}")
                parsed.validate_json()
            except (SlackObjectFormationError, TypeError) as exc:
                errors.append(f"{exc} [json-pointer:/blocks/{i}]")
                continue
            for pointer, file_id in _slack_files(block, f"/blocks/{i}"):
                if not self._file_shows(file_id, channel):
                    errors.append(f"invalid slack file [json-pointer:{pointer}/slack_file]")
        return errors

    def _file_shows(self, file_id: str, channel: str | None) -> bool:
        """Whether Slack would show this file in a block in ``channel`` (any channel for a view)."""
        record = self.files.get(file_id)
        if self.refuse_image_blocks or record is None or record.get("deleted"):
            return False
        if not self._processed(record):
            return False
        shared = record.get("channels") or []
        return bool(shared) if channel is None else channel in shared

    @staticmethod
    def _processed(record: dict[str, Any]) -> bool:
        """One look at a file: it stays "not yet processed" until its looks are spent."""
        if record.get("unprocessed", 0) > 0:
            record["unprocessed"] -= 1
            return False
        return True

    def _next_ts(self) -> str:
        """A new message ts: the time now (epoch seconds, microseconds), always later than the last."""
        self._last_ts = max(time.time(), self._last_ts + 1e-6)
        return f"{self._last_ts:.6f}"

    @staticmethod
    def _blocks(params: dict[str, Any]) -> list[dict[str, Any]] | None:
        raw = params.get("blocks")
        return json.loads(raw) if isinstance(raw, str) else raw

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        grant = self._grant
        assert grant is not None
        return {"ok": True, "url": "https://fake.slack.com/", "team": grant.team_name or grant.enterprise_name,
                "user": self.bot_name, "team_id": grant.team_id or grant.enterprise_id, "user_id": grant.bot_user_id,
                "bot_id": f"B{grant.where}", "enterprise_id": grant.enterprise_id,
                "is_enterprise_install": grant.org_wide}

    def _chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params["channel"], self._next_ts()
        metadata = params.get("metadata")
        message = Message(channel, ts, params.get("text", ""), self._blocks(params), params.get("thread_ts"),
                          metadata=json.loads(metadata) if isinstance(metadata, str) else metadata,
                          user=self.bot_user_id)
        message.history.append(message.text)
        self.messages[ts] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": self._shown(message, True)}

    def _shown(self, message: Message, metadata: bool) -> dict[str, Any]:
        """A message as the Web API shows it (its metadata only when asked for)."""
        shown = {"type": "message", "user": message.user, "ts": message.ts, "text": message.text,
                 "blocks": message.blocks or []}
        if message.user == self.bot_user_id:
            shown["bot_id"] = "B0001"
        if message.thread_ts:
            shown["thread_ts"] = message.thread_ts
        if metadata and message.metadata:
            shown["metadata"] = message.metadata
        return shown

    def posted_in(self, channel: str) -> list[Message]:
        """The messages in ``channel`` not deleted, oldest first (thread replies too)."""
        return sorted((m for m in self.messages.values() if m.channel == channel and not m.deleted),
                      key=lambda m: float(m.ts))

    def _read(self, params: dict[str, Any]) -> tuple[str | None, Conversation]:
        """The error conversations.history / .replies answer for this conversation, or None."""
        conversation = self._conversation(str(params.get("channel", "")))
        if HISTORY_SCOPES[conversation.kind] not in self.scopes:
            return "missing_scope", conversation
        if not conversation.member:
            return ("channel_not_found" if conversation.private else "not_in_channel"), conversation
        return None, conversation

    def _page(self, found: list[Message], params: dict[str, Any]) -> dict[str, Any]:
        oldest = float(params.get("oldest") or 0)
        found = [m for m in found if float(m.ts) > oldest]
        start, limit = int(params.get("cursor") or 0), int(params.get("limit") or 100)
        page = found[start:start + limit]
        more = start + limit < len(found)
        metadata = str(params.get("include_all_metadata", "")).lower() in ("1", "true")
        return {"ok": True, "messages": [self._shown(m, metadata) for m in page], "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        error, conversation = self._read(params)
        if error:
            return {"ok": False, "error": error}
        top = [m for m in self.posted_in(conversation.id) if m.thread_ts in (None, m.ts)]
        return self._page(top[::-1], params)

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        error, conversation = self._read(params)
        if error:
            return {"ok": False, "error": error}
        parent = str(params.get("ts", ""))
        thread = [m for m in self.posted_in(conversation.id) if m.ts == parent or m.thread_ts == parent]
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        return self._page(thread, params)

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(params.get("ts", ""))
        if message is None or message.deleted or message.channel != params.get("channel"):
            return {"ok": False, "error": "message_not_found"}
        message.text, message.blocks = params.get("text", ""), self._blocks(params)
        message.history.append(message.text)
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text,
                "message": {"text": message.text, "blocks": message.blocks or []}}

    def _chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(params.get("ts", ""))
        if message is None or message.deleted:
            return {"ok": False, "error": "message_not_found"}
        message.deleted = True
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "message_ts": self._next_ts()}

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        """A modal opened with a trigger id (kept in ``views``, newest last)."""
        view = params["view"]
        view = json.loads(view) if isinstance(view, str) else view
        opened = {**view, "id": f"V{next(self._file_ids):07d}", "team_id": self.team_id, "hash": "h1",
                  "trigger_id": params.get("trigger_id")}
        self.views.append(opened)
        return {"ok": True, "view": opened}

    def add_file(self, name: str, data: bytes, mimetype: str = "image/png") -> dict[str, Any]:
        """A file a user shared: its ``url_private_download`` needs the bot token (like Slack's)."""
        file_id = f"F{next(self._file_ids):07d}"
        url = f"{self.base_url}/files-pri/{file_id}/{name}"
        self.files[file_id] = {"id": file_id, "name": name, "length": len(data), "channels": []}
        self.private_files[file_id] = data
        return {"id": file_id, "name": name, "title": name, "mimetype": mimetype, "filetype": name.rsplit(".", 1)[-1],
                "size": len(data), "url_private": url, "url_private_download": url}

    async def _private_file(self, request: web.Request) -> web.Response:
        """Slack answers a request without the bot token with its HTML sign-in page, not a 401."""
        self.file_downloads.append((request.match_info["file_id"], request.headers.get("Authorization", "")))
        grant = self.grants.get(request.headers.get("Authorization", "").removeprefix("Bearer "))
        if grant is None or grant.revoked:
            return web.Response(text="<!DOCTYPE html><html>sign in</html>", content_type="text/html")
        data = self.private_files.get(request.match_info["file_id"])
        if data is None:
            return web.Response(status=404, text="file not found")
        return web.Response(body=data, content_type="application/octet-stream")

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        view = params["view"]
        view = json.loads(view) if isinstance(view, str) else view
        return {"ok": True, "view": {"id": "V0001", "team_id": self.team_id, "type": view.get("type"),
                                     "blocks": view.get("blocks", [])}}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = str(params.get("user", ""))
        if not user:
            return {"ok": False, "error": "user_not_found"}
        owner = user in self.workspace_owners
        team = self._grant.team_id if self._grant is not None else self.team_id
        return {"ok": True, "user": {"id": user, "team_id": team, "name": user.lower(), "deleted": False,
                                     "is_admin": owner or user in self.workspace_admins, "is_owner": owner,
                                     "is_primary_owner": False, "is_bot": False}}

    def _conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        user = str(params.get("users", ""))
        channel = "D" + user.lstrip("UW")
        self.conversations.setdefault(channel, Conversation(channel, "im", user=user))
        return {"ok": True, "channel": {"id": channel}}

    def _conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel", ""))
        conversation = self._conversation(channel)
        needed = READ_SCOPES[conversation.kind]
        if needed not in self.scopes:
            return {"ok": False, "error": "missing_scope", "needed": needed, "provided": ",".join(self.scopes)}
        if conversation.private and not conversation.member:
            return {"ok": False, "error": "channel_not_found"}
        if conversation.kind == "im":
            return {"ok": True, "channel": {"id": channel, "created": 1_700_000_000, "is_im": True,
                                            "is_org_shared": False, "user": conversation.user or "U0",
                                            "is_user_deleted": False, "priority": 0}}
        kind = conversation.kind
        return {"ok": True, "channel": {
            "id": channel, "name": f"channel-{channel.lower()}", "is_channel": kind == "channel",
            "is_group": kind == "group", "is_im": False, "is_mpim": kind == "mpim", "is_private": kind != "channel",
            "created": 1_700_000_000, "is_archived": conversation.archived, "is_general": False,
            "is_shared": False, "is_ext_shared": False, "is_org_shared": False, "is_member": conversation.member,
            "name_normalized": f"channel-{channel.lower()}", "creator": "U0"}}

    def _files_getUploadURLExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._file_ids):07d}"
        self.files[file_id] = {"id": file_id, "name": params.get("filename"), "length": int(params["length"])}
        return {"ok": True, "upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _files_completeUploadExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        files = json.loads(params["files"])
        for item in files:
            if item["id"] not in self.uploads:
                return {"ok": False, "error": "file_not_found"}
            channel = params.get("channel_id")
            self.files[item["id"]].update(title=item.get("title"), channel=channel,
                                          channels=[channel] if channel else [],
                                          thread_ts=params.get("thread_ts"),
                                          initial_comment=params.get("initial_comment"),
                                          unprocessed=self.processing_looks)
        # like Slack, the answer comes before the file is processed: no shares in it yet
        return {"ok": True, "files": [{"id": f["id"], "title": f.get("title"), "shares": {}} for f in files]}

    def _files_info(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self.files.get(params.get("file", ""))
        if record is None or record.get("deleted"):
            return {"ok": False, "error": "file_not_found"}
        shares: dict[str, Any] = {}
        if self._processed(record) and record.get("channel"):
            kind = "private" if str(record["channel"]).startswith(("G", "D")) else "public"
            shares[kind] = {record["channel"]: [{"ts": self._next_ts(), "thread_ts": record.get("thread_ts"),
                                                 "channel_name": "general"}]}
        return {"ok": True, "file": {"id": record["id"], "name": record.get("name"), "title": record.get("title"),
                                     "mimetype": "image/png", "shares": shares,
                                     "channels": list(shares.get("public", {})),
                                     "groups": list(shares.get("private", {}))}}

    def _files_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self.files.get(params.get("file", ""))
        if record is None or record.get("deleted"):
            return {"ok": False, "error": "file_not_found"}
        record["deleted"] = True
        return {"ok": True}

    def _apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://{self.base_url.removeprefix('http://')}/socket"}

    # ------------------------------------------------------------------ uploads and response URLs
    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if file_id not in self.files:
            return web.Response(status=404, text="unknown upload")
        self.uploads[file_id] = await request.read()
        await self._notify()
        return web.Response(text=f"OK - {len(self.uploads[file_id])}")

    async def _response(self, request: web.Request) -> web.Response:
        self.responses[request.match_info["rid"]].append(await request.json())
        await self._notify()
        return web.Response(text="ok")

    # ------------------------------------------------------------------ Socket Mode
    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await self._notify()
        await ws.send_json({"type": "hello", "num_connections": 1,
                            "connection_info": {"app_id": "A0001"}, "debug_info": {"host": "fake"}})
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    future = self._acks.pop(data.get("envelope_id", ""), None)
                    if future is not None and not future.done():
                        future.set_result(data)
        finally:
            self._sockets.remove(ws)
        return ws

    async def wait_socket(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: bool(self._sockets)), timeout)

    async def send_envelope(self, kind: str, payload: dict[str, Any], *,
                            timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Push a Socket Mode request (``slash_commands``, ``interactive``, ``events_api``); returns the ack."""
        envelope_id = str(uuid.uuid4())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = future
        await self._sockets[-1].send_json({"envelope_id": envelope_id, "type": kind, "payload": payload,
                                           "accepts_response_payload": kind != "events_api"})
        return await asyncio.wait_for(future, timeout)


def _slack_files(node: Any, pointer: str) -> list[tuple[str, str]]:
    """Every ``slack_file`` id in a block, with its JSON pointer."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if isinstance(node.get("slack_file"), dict):
            found.append((pointer, str(node["slack_file"].get("id", ""))))
        for key, value in node.items():
            found += _slack_files(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _slack_files(value, f"{pointer}/{i}")
    return found


def _kind(channel: str) -> str:
    """A conversation's kind from its id: ``C…`` public, ``G…`` private, ``D…`` a direct message."""
    return {"G": "group", "D": "im"}.get(channel[:1], "channel")
