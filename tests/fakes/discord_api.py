"""A fake Discord: the REST API and the gateway websocket, on a real aiohttp server on 127.0.0.1.

It answers the calls discord.py makes the way Discord does (``Content-Type`` exactly
``application/json``, which is all discord.py parses), records every call, and lets a test inject
failures. Point discord.py at it::

    discord.http.Route.BASE = fake.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)

Routes (under ``/api/v10``)::

    GET    /users/@me                                     the bot user (checks "Authorization: Bot <token>")
    GET    /oauth2/applications/@me                       the application
    GET    /users/@me/guilds                              the servers the bot is in (``guilds``, ``guild_details``)
    GET    /gateway, /gateway/bot                         the fake websocket URL
    GET|PUT /applications/{app}/commands                  global commands (PUT: bulk overwrite, ids given)
    GET|PUT /applications/{app}/guilds/{guild}/commands   guild commands
    POST   /interactions/{id}/{token}/callback            the 3-second response (with or without ?with_response)
    PATCH  /webhooks/{app}/{token}/messages/{id|@original}  edit (JSON, or multipart payload_json + files[n])
    DELETE /webhooks/{app}/{token}/messages/{id|@original}
    POST   /webhooks/{app}/{token}                        followups
    POST   /channels/{id}/messages                        channel messages (JSON or multipart); a ``nonce``
                                                          with ``enforce_nonce``: see below
    GET|DELETE /channels/{id}/messages/{id}

Outside the API, ``GET /attachments/...`` is the CDN: every uploaded file and every ``add_attachment`` is
served there (public, like Discord's signed CDN links), so the gateway can fetch attachments as references.
    POST   /users/@me/channels                            open a DM (``dm_channels`` maps user -> channel)
    DELETE /users/@me/guilds/{guild}                      leave a server (``left_guilds``)

The gateway (``/gateway-ws``), sharded like Discord's: ``GET /gateway/bot`` recommends ``shards`` (a
constructor argument, default 1). Each connection gets HELLO (op 10); its IDENTIFY (op 2) is recorded
with the ``shard: [id, count]`` it names (none: shard 0 of 1), and READY names that shard and lists, as
unavailable, the guilds the shard owns (``guilds``: ``(guild_id >> 22) % count == id``), each followed by
a GUILD_CREATE (``join_guild`` sends one later, as an invite does). Heartbeats are acknowledged.
``await fake.dispatch(event, data)`` sends a dispatch on the shard that owns ``data["guild_id"]`` (DMs:
shard 0), as Discord routes them; ``shard=`` picks one. Tests send every interaction this way.

Nonces, like Discord's: a message created with ``nonce`` and ``enforce_nonce: true`` by the same author in
the same channel as an earlier one with that nonce, within ``nonce_window_s`` (Discord: "the past few
minutes"), is not created: the earlier message is the answer (``nonce_replays`` counts them). Without
``enforce_nonce`` a nonce is only echoed in the message. ``fake.forget_nonces()`` plays the window passing.

Synchronisation is by events: ``await fake.wait_for(...)`` returns once matching calls have been
recorded (past ones count), never by sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1420070400000
EPHEMERAL = 1 << 6
LOADING = 1 << 7


def snowflake(at: float | None = None) -> int:
    """A Discord id made at ``at`` (epoch seconds, default now)."""
    ms = int((time.time() if at is None else at) * 1000)
    return ((ms - DISCORD_EPOCH_MS) << 22) | secrets.randbits(22)


@dataclass(frozen=True, slots=True)
class UploadedFile:
    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class Call:
    """One request the fake received. ``json`` is the JSON body or the multipart ``payload_json``."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    at: float
    status: int = 0
    response: Any = None

    @property
    def content(self) -> str | None:
        return self.json.get("content") if isinstance(self.json, dict) else None


@dataclass(slots=True)
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: dict[str, Any]
    times: int | None


@dataclass(slots=True)
class _Interaction:
    id: str
    token: str
    channel_id: str
    #: the message a component interaction belongs to (its "@original" before a new response)
    message_id: str | None = None
    responded: bool = False
    original_id: str | None = None
    #: deferred with type 5 and not edited yet: Discord turns the first followup into an edit of it
    fresh_defer: bool = False


def _json_response(data: Any, status: int = 200) -> web.Response:
    # discord.py only parses a body whose Content-Type is exactly application/json
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})


def invalid_webhook_token() -> dict[str, Any]:
    return {"message": "Invalid Webhook Token", "code": 50027}


class FakeDiscord:
    def __init__(self, *, token: str = "fake-bot-token", app_id: int | None = None,
                 bot_id: int | None = None, shards: int = 1, guilds: tuple[str, ...] = ()) -> None:
        self.token = token
        self.app_id = str(app_id or snowflake())
        self.bot_id = str(bot_id or self.app_id)
        self.calls: list[Call] = []
        self.commands: dict[str | None, list[dict[str, Any]]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.files: dict[str, list[UploadedFile]] = {}
        #: what the fake CDN serves: path -> (bytes, content type)
        self.cdn: dict[str, tuple[bytes, str]] = {}
        self.deleted: list[str] = []
        #: (channel, author, nonce) -> (message id, when made): enforce_nonce within ``nonce_window_s``
        self.nonces: dict[tuple[str, str, str], tuple[str, float]] = {}
        self.nonce_window_s = 300.0
        self.nonce_replays = 0
        self.interactions: dict[str, _Interaction] = {}
        self.expired_tokens: set[str] = set()
        self.identify: dict[str, Any] | None = None
        #: the recommended shard count (``GET /gateway/bot``) and the guilds the bot is in
        self.shards = shards
        self.guilds = tuple(str(g) for g in guilds)
        #: shard id -> its IDENTIFY payload; shard id -> its open connection; (event, shard) sent
        self.identifies: dict[int, dict[str, Any]] = {}
        self.dispatched: list[tuple[str, int]] = []
        self._shard_count = 1
        #: name and permissions (the bot's, in that server) of each guild, for ``GET /users/@me/guilds``;
        #: a guild not described here is "server <id>" with every permission the bot asks for
        self.guild_details: dict[str, dict[str, Any]] = {}
        self._failures: list[_Failure] = []
        self._slow: list[tuple[str, re.Pattern[str], float, Callable[[Call], bool] | None]] = []
        self._drops: list[list[Any]] = []  # [method, pattern, where, times left]
        self._unblock = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._sockets: dict[int, web.WebSocketResponse] = {}
        self._ws_closed = asyncio.Event()
        self._ws_closed.set()
        self._seq = itertools.count(1)
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"/users/@me"), self._me),
            ("GET", re.compile(r"/users/@me/guilds"), self._my_guilds),
            ("GET", re.compile(r"/oauth2/applications/@me"), self._application),
            ("GET", re.compile(r"/gateway(?:/bot)?"), self._gateway_info),
            ("GET", re.compile(r"/applications/(?P<app>\d+)(?:/guilds/(?P<guild>\d+))?/commands"), self._get_commands),
            ("PUT", re.compile(r"/applications/(?P<app>\d+)(?:/guilds/(?P<guild>\d+))?/commands"), self._put_commands),
            ("POST", re.compile(r"/interactions/(?P<id>\d+)/(?P<token>[^/]+)/callback"), self._callback),
            ("PATCH", re.compile(r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<msg>@original|\d+)"),
             self._edit_webhook_message),
            ("DELETE", re.compile(r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<msg>@original|\d+)"),
             self._delete_webhook_message),
            ("POST", re.compile(r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)"), self._followup),
            ("POST", re.compile(r"/channels/(?P<channel>\d+)/messages"), self._channel_message),
            ("DELETE", re.compile(r"/channels/(?P<channel>\d+)/messages/(?P<msg>\d+)"), self._delete_channel_message),
            ("GET", re.compile(r"/channels/(?P<channel>\d+)/messages/(?P<msg>\d+)"), self._get_channel_message),
            ("POST", re.compile(r"/users/@me/channels"), self._open_dm),
            ("DELETE", re.compile(r"/users/@me/guilds/(?P<guild>\d+)"), self._leave_guild),
        ]
        #: user id -> the DM channel id opened with them
        self.dm_channels: dict[str, str] = {}
        self.left_guilds: list[str] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway-ws", self._gateway_ws)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._handle)
        app.router.add_get("/attachments/{tail:.*}", self._cdn_file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        self._unblock.set()  # slow answers end now
        for ws in list(self._sockets.values()):
            if not ws.closed:
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway-ws"

    # ------------------------------------------------------------------ test controls
    def expire_token(self, token: str) -> None:
        """Interaction webhooks with this token answer 401 Invalid Webhook Token (the 15 minutes are over)."""
        self.expired_tokens.add(token)

    def fail(self, method: str, pattern: str, status: int, body: dict[str, Any] | None = None,
             *, times: int | None = 1) -> None:
        """Answer the next ``times`` calls (``None``: every call) matching ``method`` and the path regex."""
        self._failures.append(_Failure(method, re.compile(pattern), status,
                                       body or {"message": "injected failure", "code": 0}, times))

    def slow(self, method: str, pattern: str, seconds: float, where: Callable[[Call], bool] | None = None) -> None:
        """Answer calls matching ``method``, the path regex (and ``where``) after ``seconds`` (then apply them).
        ``Call.answered_at`` is when the answer went out."""
        self._slow.append((method, re.compile(pattern), seconds, where))

    def drop(self, method: str, pattern: str, *, times: int = 1, where: Callable[[Call], bool] | None = None) -> None:
        """The next ``times`` calls matching ``method``, the path regex (and ``where``) are DONE, but the
        connection is cut before the answer goes out (a dropped connection: the client never hears back)."""
        self._drops.append([method, re.compile(pattern), where, times])

    def register_interaction(self, payload: dict[str, Any]) -> None:
        """Remember an interaction sent to the bot, as Discord does, so its webhook knows its messages."""
        message = payload.get("message") or {}
        channel = payload.get("channel") or {}
        channel_id = str(channel.get("id") or payload.get("channel_id"))
        self.interactions[payload["token"]] = _Interaction(
            id=str(payload["id"]), token=payload["token"], channel_id=channel_id,
            message_id=str(message["id"]) if message.get("id") else None,
        )

    def add_attachment(self, filename: str, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
        """An attachment a user uploaded (for an option or a message), served on the fake CDN."""
        att_id = str(snowflake())
        path = f"/attachments/{att_id}/{att_id}/{filename}"
        self.cdn[path] = (data, content_type)
        return {"id": att_id, "filename": filename, "size": len(data), "url": self.url + path,
                "proxy_url": self.url + path, "content_type": content_type}

    def user_message(self, channel_id: str, user_id: str, attachments: list[dict[str, Any]],
                     content: str = "") -> dict[str, Any]:
        """A message a user posted (with attachments), as a context menu's ``resolved.messages`` has it."""
        return self.add_message(channel_id, {
            "id": str(snowflake()), "type": 0, "content": content, "attachments": attachments,
            "author": {"id": user_id, "username": f"user{user_id[-4:]}", "discriminator": "0",
                       "global_name": None, "avatar": None},
            "embeds": [], "components": [], "mentions": [], "mention_roles": [], "mention_everyone": False,
            "pinned": False, "tts": False, "timestamp": datetime.now(UTC).isoformat(), "edited_timestamp": None,
            "flags": 0,
        })

    async def _cdn_file(self, request: web.Request) -> web.Response:
        found = self.cdn.get(request.path)
        if found is None:
            return web.Response(status=404, text="not found")
        data, content_type = found
        return web.Response(body=data, headers={"Content-Type": content_type or "application/octet-stream"})

    def add_message(self, channel_id: str, message: dict[str, Any]) -> dict[str, Any]:
        """Seed a message (one posted by an earlier process, say)."""
        message = {**message, "channel_id": str(channel_id)}
        self.messages[str(message["id"])] = message
        return message

    def find(self, method: str | None = None, path: str | None = None,
             where: Callable[[Call], bool] | None = None) -> list[Call]:
        return [c for c in self.calls if _matches(c, method, path, where)]

    async def wait_for(self, method: str | None = None, path: str | None = None, *, count: int = 1,
                       where: Callable[[Call], bool] | None = None, within: float = 10.0) -> list[Call]:
        """Wait until ``count`` calls match (those already recorded count too); returns them."""

        async def wait() -> list[Call]:
            while True:
                changed = self._changed
                found = self.find(method, path, where)
                if len(found) >= count:
                    return found
                await changed.wait()

        try:
            return await asyncio.wait_for(wait(), within)
        except TimeoutError:
            seen = "\n  ".join(f"{c.method} {c.path} -> {c.status}" for c in self.calls)
            raise AssertionError(f"timed out waiting for {count} x {method} {path}; calls:\n  {seen}") from None

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ dispatch
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        payload, files = await _read_body(request)
        call = Call(request.method, path, dict(request.query), payload, files, time.monotonic())
        try:
            response = await self._route(request, call, path)
        except _Answer as answer:
            response = _json_response(answer.body, answer.status)
        call.status = response.status
        if isinstance(response, web.Response) and response.body:
            try:
                call.response = json.loads(response.body)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                call.response = None
        for drop in self._drops:
            method, pattern, where, times = drop
            if times > 0 and method == call.method and pattern.search(path) and (where is None or where(call)):
                drop[3] -= 1
                call.status = 0  # done, but nobody heard the answer
                self._record(call)
                assert request.transport is not None
                request.transport.abort()  # the connection drops before the answer
                raise asyncio.CancelledError
        self._record(call)
        return response

    async def _route(self, request: web.Request, call: Call, path: str) -> web.Response:
        for method, pattern, seconds, where in self._slow:
            if method == call.method and pattern.search(path) and (where is None or where(call)):
                try:
                    await asyncio.wait_for(self._unblock.wait(), seconds)
                except TimeoutError:
                    pass
                break
        for failure in self._failures:
            if failure.method == call.method and failure.pattern.search(path) and failure.times != 0:
                if failure.times is not None:
                    failure.times -= 1
                return _json_response(failure.body, failure.status)
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match and method == request.method:
                return await handler(request, call, **match.groupdict())
        return _json_response({"message": "404: Not Found", "code": 0}, 404)

    def _check_bot_auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise _Answer(401, {"message": "401: Unauthorized", "code": 0})

    def _check_token(self, token: str) -> None:
        if token in self.expired_tokens:
            raise _Answer(401, invalid_webhook_token())

    # ------------------------------------------------------------------ REST handlers
    def bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "username": "imagine", "discriminator": "0", "global_name": None,
                "avatar": None, "bot": True, "flags": 0}

    async def _me(self, request: web.Request, call: Call) -> web.Response:
        self._check_bot_auth(request)
        return _json_response(self.bot_user())

    async def _my_guilds(self, request: web.Request, call: Call) -> web.Response:
        self._check_bot_auth(request)
        everything = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16)
        answer = []
        for guild in self.guilds:
            details = self.guild_details.get(guild, {})
            answer.append({"id": guild, "name": details.get("name", f"server {guild}"), "icon": None,
                           "owner": False, "features": [],
                           "permissions": str(details.get("permissions", everything))})
        return _json_response(answer)

    async def _application(self, request: web.Request, call: Call) -> web.Response:
        self._check_bot_auth(request)
        return _json_response({
            "id": self.app_id, "name": "imagine", "icon": None, "description": "", "bot_public": True,
            "bot_require_code_grant": False, "verify_key": "0" * 64, "flags": 0,
            "owner": {"id": "1", "username": "owner", "discriminator": "0", "avatar": None},
            "team": None, "summary": "", "interactions_endpoint_url": None,
        })

    async def _gateway_info(self, request: web.Request, call: Call) -> web.Response:
        return _json_response({"url": self.gateway_url, "shards": self.shards, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})

    async def _get_commands(self, request: web.Request, call: Call, app: str, guild: str | None) -> web.Response:
        self._check_bot_auth(request)
        return _json_response(self.commands.get(guild, []))

    async def _put_commands(self, request: web.Request, call: Call, app: str, guild: str | None) -> web.Response:
        self._check_bot_auth(request)
        stored = []
        for cmd in call.json or []:
            # Discord answers every command with a description ("" for context menus, which send none)
            stored.append({"type": 1, "description": "", "default_member_permissions": None, "nsfw": False, **cmd,
                           "id": str(snowflake()), "application_id": app, "version": str(snowflake()),
                           **({"guild_id": guild} if guild else {})})
        self.commands[guild] = stored
        return _json_response(stored)

    async def _callback(self, request: web.Request, call: Call, id: str, token: str) -> web.Response:
        self._check_token(token)
        interaction = self.interactions.get(token)
        if interaction is None:
            raise _Answer(404, {"message": "Unknown interaction", "code": 10062})
        if interaction.responded:
            raise _Answer(400, {"message": "Interaction has already been acknowledged.", "code": 40060})
        interaction.responded = True
        body = call.json or {}
        kind = body.get("type")
        data = body.get("data") or {}
        message = None
        if kind in (4, 5):  # a new message: the response (type 5 shows "thinking")
            flags = (data.get("flags") or 0) | (LOADING if kind == 5 else 0)
            message = self._new_message(interaction.channel_id, data if kind == 4 else {}, call.files,
                                        webhook=True, flags=flags)
            interaction.original_id = message["id"]
            interaction.fresh_defer = kind == 5
        elif kind in (6, 7):  # deferred update / update: the original is the component's message
            interaction.original_id = interaction.message_id
            if kind == 7 and interaction.message_id in self.messages:
                message = self._update_message(interaction.message_id, data, call.files)
        if "with_response" not in request.query or request.query["with_response"] in ("0", "false"):
            return web.Response(status=204)
        return _json_response({
            "interaction": {"id": id, "type": 2, "response_message_id": interaction.original_id,
                            "response_message_loading": kind == 5,
                            "response_message_ephemeral": bool((data.get("flags") or 0) & EPHEMERAL)},
            "resource": {"type": kind, **({"message": message} if message and kind in (4, 7) else {})},
        })

    def _original(self, token: str, msg: str) -> str:
        self._check_token(token)
        if msg != "@original":
            return msg
        interaction = self.interactions.get(token)
        if interaction is None or interaction.original_id is None:
            raise _Answer(404, {"message": "Unknown Webhook", "code": 10015})
        return interaction.original_id

    async def _edit_webhook_message(self, request: web.Request, call: Call, app: str, token: str,
                                    msg: str) -> web.Response:
        message_id = self._original(token, msg)
        if token in self.interactions:
            self.interactions[token].fresh_defer = False
        if message_id not in self.messages:
            raise _Answer(404, {"message": "Unknown Message", "code": 10008})
        return _json_response(self._update_message(message_id, call.json or {}, call.files))

    async def _delete_webhook_message(self, request: web.Request, call: Call, app: str, token: str,
                                      msg: str) -> web.Response:
        message_id = self._original(token, msg)
        if self.messages.pop(message_id, None) is None:
            raise _Answer(404, {"message": "Unknown Message", "code": 10008})
        self.deleted.append(message_id)
        return web.Response(status=204)

    async def _followup(self, request: web.Request, call: Call, app: str, token: str) -> web.Response:
        self._check_token(token)
        interaction = self.interactions.get(token)
        if interaction is None or not interaction.responded:
            raise _Answer(404, {"message": "Unknown Webhook", "code": 10015})
        body = call.json or {}
        if interaction.fresh_defer and interaction.original_id in self.messages:
            # documented (deprecated) behaviour: the first followup after a deferred response edits the
            # loading message, and its ephemeral flag is ignored
            interaction.fresh_defer = False
            return _json_response(self._update_message(interaction.original_id, body, call.files))
        interaction.fresh_defer = False
        message = self._new_message(interaction.channel_id, body, call.files, webhook=True,
                                    flags=body.get("flags") or 0)
        return _json_response(message)

    async def _channel_message(self, request: web.Request, call: Call, channel: str) -> web.Response:
        self._check_bot_auth(request)
        body = call.json or {}
        nonce = body.get("nonce")
        key = (channel, self.bot_id, str(nonce))
        if nonce is not None and body.get("enforce_nonce"):
            earlier = self.nonces.get(key)
            if earlier is not None and time.monotonic() - earlier[1] < self.nonce_window_s \
                    and earlier[0] in self.messages:
                self.nonce_replays += 1
                return _json_response(self.messages[earlier[0]])  # made already: no second message
        message = self._new_message(channel, body, call.files)
        if nonce is not None:
            message["nonce"] = str(nonce)
            self.nonces[key] = (message["id"], time.monotonic())
        return _json_response(message)

    def forget_nonces(self) -> None:
        """The nonce window passed: a nonce seen before makes a new message again."""
        self.nonces.clear()

    async def _open_dm(self, request: web.Request, call: Call) -> web.Response:
        self._check_bot_auth(request)
        user = str((call.json or {}).get("recipient_id"))
        channel = self.dm_channels.setdefault(user, str(snowflake()))
        recipient = {"id": user, "username": f"user{user[-4:]}", "discriminator": "0", "avatar": None,
                     "global_name": None}
        return _json_response({"id": channel, "type": 1, "recipients": [recipient], "last_message_id": None,
                               "flags": 0})

    async def _leave_guild(self, request: web.Request, call: Call, guild: str) -> web.Response:
        self._check_bot_auth(request)
        self.left_guilds.append(guild)
        return web.Response(status=204)

    async def _get_channel_message(self, request: web.Request, call: Call, channel: str, msg: str) -> web.Response:
        self._check_bot_auth(request)
        message = self.messages.get(msg)
        if message is None or message.get("channel_id") != channel:
            raise _Answer(404, {"message": "Unknown Message", "code": 10008})
        return _json_response(message)

    async def _delete_channel_message(self, request: web.Request, call: Call, channel: str,
                                      msg: str) -> web.Response:
        self._check_bot_auth(request)
        if self.messages.pop(msg, None) is None:
            raise _Answer(404, {"message": "Unknown Message", "code": 10008})
        self.deleted.append(msg)
        return web.Response(status=204)

    # ------------------------------------------------------------------ messages
    def _attachments(self, message_id: str, payload: dict[str, Any], files: list[UploadedFile],
                     keep: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept_ids = {str(a.get("id")) for a in payload.get("attachments", [])}
        result = [a for a in keep if a["id"] in kept_ids]
        stored = [f for f, a in zip(self.files.get(message_id, []), keep, strict=False) if a["id"] in kept_ids]
        for upload in files:
            att_id = str(snowflake())
            self.cdn[f"/attachments/{message_id}/{att_id}/{upload.filename}"] = (upload.data, upload.content_type)
            result.append({"id": att_id, "filename": upload.filename, "size": len(upload.data),
                           "url": f"{self.url}/attachments/{message_id}/{att_id}/{upload.filename}",
                           "proxy_url": f"{self.url}/attachments/{message_id}/{att_id}/{upload.filename}",
                           "content_type": upload.content_type})
            stored.append(upload)
        self.files[message_id] = stored
        return result

    def _new_message(self, channel_id: str, payload: dict[str, Any], files: list[UploadedFile], *,
                     webhook: bool = False, flags: int = 0) -> dict[str, Any]:
        message_id = str(snowflake())
        message = {
            "id": message_id, "channel_id": str(channel_id), "type": 20 if webhook else 0,
            "content": payload.get("content") or "", "author": self.bot_user(),
            "attachments": self._attachments(message_id, {"attachments": []}, files, []),
            "embeds": payload.get("embeds") or [], "components": payload.get("components") or [],
            "mentions": [], "mention_roles": [], "mention_everyone": False, "pinned": False, "tts": False,
            "timestamp": datetime.now(UTC).isoformat(), "edited_timestamp": None, "flags": flags,
            **({"webhook_id": self.app_id, "application_id": self.app_id} if webhook else {}),
        }
        self.messages[message_id] = message
        return message

    def _update_message(self, message_id: str, payload: dict[str, Any], files: list[UploadedFile]) -> dict[str, Any]:
        message = self.messages[message_id]
        for key in ("content", "embeds", "components"):
            if key in payload:
                message[key] = payload[key] if payload[key] is not None else ([] if key != "content" else "")
        if "attachments" in payload or files:
            message["attachments"] = self._attachments(message_id, payload if "attachments" in payload
                                                       else {"attachments": message["attachments"]}, files,
                                                       message["attachments"])
        message["flags"] = message.get("flags", 0) & ~LOADING
        message["edited_timestamp"] = datetime.now(UTC).isoformat()
        return message

    # ------------------------------------------------------------------ the gateway
    def shard_of(self, guild_id: str | int | None) -> int:
        """The shard Discord routes a guild's events to: ``(guild_id >> 22) % shard_count``; DMs: 0."""
        return 0 if guild_id is None else (int(guild_id) >> 22) % self._shard_count

    async def _gateway_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        shard_id: int | None = None
        self._ws_closed.clear()
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 45000}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if data.get("op") == 1:
                    await ws.send_json({"op": 11, "d": None, "s": None, "t": None})
                elif data.get("op") == 2:
                    shard_id, count = data["d"].get("shard") or [0, 1]
                    self._shard_count = count
                    self._sockets[shard_id] = ws
                    self.identify = data["d"]
                    self.identifies[shard_id] = data["d"]
                    self._record(Call("GATEWAY", "IDENTIFY", {"shard": str(shard_id)}, data["d"], [],
                                      time.monotonic()))
                    owned = [g for g in self.guilds if self.shard_of(g) == shard_id]
                    await self._send_dispatch("READY", {
                        "v": 10, "user": self.bot_user(), "session_id": secrets.token_hex(8),
                        "guilds": [{"id": g, "unavailable": True} for g in owned],
                        "resume_gateway_url": self.gateway_url, "shard": [shard_id, count],
                        "application": {"id": self.app_id, "flags": 0},
                    }, shard=shard_id)
                    for guild in owned:
                        await self._send_dispatch("GUILD_CREATE", _guild(guild), shard=shard_id)
        finally:
            if shard_id is not None and self._sockets.get(shard_id) is ws:
                del self._sockets[shard_id]
            if not self._sockets:
                self._ws_closed.set()
        return ws

    async def _send_dispatch(self, event: str, data: dict[str, Any], *, shard: int) -> None:
        ws = self._sockets.get(shard)
        assert ws is not None, f"no gateway connection for shard {shard}"
        self.dispatched.append((event, shard))
        await ws.send_json({"op": 0, "t": event, "s": next(self._seq), "d": data})

    async def dispatch(self, event: str, data: dict[str, Any], *, shard: int | None = None) -> int:
        """Send a gateway dispatch to the connected bot on the shard that owns its guild (or ``shard``);
        returns the shard. ``INTERACTION_CREATE`` registers the interaction."""
        if event == "INTERACTION_CREATE":
            self.register_interaction(data)
        shard = self.shard_of(data.get("guild_id")) if shard is None else shard
        await self._send_dispatch(event, data, shard=shard)
        return shard

    async def join_guild(self, guild_id: str) -> int:
        """The bot is added to a server (someone used the invite): its GUILD_CREATE on the shard that owns it,
        as Discord sends it (without ``unavailable``, which marks a server of READY coming online); returns
        the shard."""
        self.guilds = (*self.guilds, str(guild_id))
        payload = _guild(str(guild_id))
        del payload["unavailable"]
        return await self.dispatch("GUILD_CREATE", payload)

    async def wait_identified(self, count: int, within: float = 10.0) -> None:
        """Wait until ``count`` shards have sent IDENTIFY."""
        await self.wait_for("GATEWAY", "IDENTIFY", count=count, within=within)

    async def wait_gateway_closed(self, within: float = 10.0) -> None:
        """Wait until every shard's connection has closed."""
        await asyncio.wait_for(self._ws_closed.wait(), within)


def _guild(guild_id: str) -> dict[str, Any]:
    """A GUILD_CREATE payload for a small server with one text channel."""
    return {
        "id": guild_id, "name": f"server {guild_id[-4:]}", "icon": None, "owner_id": "1", "features": [],
        "roles": [{"id": guild_id, "name": "@everyone", "permissions": "0", "position": 0, "color": 0,
                   "hoist": False, "managed": False, "mentionable": False, "flags": 0}],
        "emojis": [], "stickers": [], "member_count": 2, "members": [], "voice_states": [], "presences": [],
        "channels": [{"id": str(int(guild_id) + 1), "type": 0, "name": "art", "position": 0, "nsfw": False,
                      "permission_overwrites": [], "parent_id": None, "flags": 0}],
        "threads": [], "large": False, "unavailable": False, "joined_at": "2024-01-01T00:00:00+00:00",
        "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
        "mfa_level": 0, "premium_tier": 0, "preferred_locale": "en-US", "nsfw_level": 0,
        "system_channel_flags": 0, "stage_instances": [], "guild_scheduled_events": [],
    }


class _Answer(Exception):
    """Control flow: answer the request with this status and body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _matches(call: Call, method: str | None, path: str | None, where: Callable[[Call], bool] | None) -> bool:
    return ((method is None or call.method == method) and (path is None or re.search(path, call.path) is not None)
            and (where is None or where(call)))


async def _read_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
    if not request.can_read_body:
        return None, []
    content_type = request.headers.get("Content-Type", "")
    if content_type.startswith("multipart/"):
        payload: Any = None
        files: list[UploadedFile] = []
        reader = await request.multipart()
        async for part in reader:
            name = part.name or ""  # type: ignore[union-attr]
            data = await part.read()  # type: ignore[union-attr]
            if name == "payload_json":
                payload = json.loads(data)
            else:
                files.append(UploadedFile(name, part.filename or name,  # type: ignore[union-attr]
                                          part.headers.get("Content-Type", ""), bytes(data)))
        return payload, files
    raw = await request.read()
    if not raw:
        return None, []
    try:
        return json.loads(raw), []
    except ValueError:
        return raw.decode(errors="replace"), []


@dataclass
class InteractionFactory:
    """Raw interaction payloads as Discord sends them (type 2 application command, type 3 component)."""

    app_id: str
    guild_id: str | None = field(default_factory=lambda: str(snowflake()))
    channel_id: str = field(default_factory=lambda: str(snowflake()))
    nsfw: bool = False
    attachment_size_limit: int = 10 * 1024 * 1024

    def _base(self, kind: int, data: dict[str, Any], user_id: str, *, permissions: int = 0,
              created: float | None = None, message: dict[str, Any] | None = None,
              size_limit: int | None = None) -> dict[str, Any]:
        user = {"id": user_id, "username": f"user{user_id[-4:]}", "discriminator": "0", "global_name": None,
                "avatar": None}
        payload: dict[str, Any] = {
            "id": str(snowflake(created)), "application_id": self.app_id, "type": kind, "data": data,
            "token": "itok-" + secrets.token_urlsafe(24), "version": 1,
            "app_permissions": str(0x1_0000_0000 | 117760), "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id} if self.guild_id else {"1": user_id},
            "attachment_size_limit": size_limit or self.attachment_size_limit,
            "locale": "en-US", "channel_id": self.channel_id,
        }
        if self.guild_id:
            payload.update({
                "guild_id": self.guild_id, "guild_locale": "en-US", "context": 0,
                "guild": {"id": self.guild_id, "locale": "en-US", "features": []},
                "channel": {"id": self.channel_id, "type": 0, "guild_id": self.guild_id, "name": "art",
                            "nsfw": self.nsfw, "position": 0, "permission_overwrites": [], "flags": 0,
                            "parent_id": None, "rate_limit_per_user": 0, "topic": None, "last_message_id": None},
                "member": {"user": user, "roles": [], "joined_at": "2024-01-01T00:00:00+00:00", "deaf": False,
                           "mute": False, "flags": 0, "permissions": str(permissions), "nick": None,
                           "avatar": None, "pending": False},
            })
        else:
            payload.update({"context": 1, "user": user,
                            "channel": {"id": self.channel_id, "type": 1, "recipients": [user], "flags": 0,
                                        "last_message_id": None}})
        if message is not None:
            payload["message"] = message
        return payload

    def command(self, name: str, user_id: str, options: list[dict[str, Any]] | None = None, *,
                resolved: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(snowflake()), "name": name, "type": 1, "options": options or []}
        if resolved:
            data["resolved"] = resolved
        return self._base(2, data, user_id, **kw)

    def message_command(self, name: str, user_id: str, message: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """A message context menu (application command type 3) used on ``message``."""
        data = {"id": str(snowflake()), "name": name, "type": 3, "target_id": message["id"],
                "resolved": {"messages": {message["id"]: message}}}
        return self._base(2, data, user_id, **kw)

    def modal_submit(self, custom_id: str, user_id: str, values: dict[str, str | list[str]],
                     **kw: Any) -> dict[str, Any]:
        """A submitted modal: ``values`` by component custom id (a text input's text, or a select's values),
        each in a label (type 18), as Discord sends them."""
        components = [
            {"type": 18, "id": n + 1, "component": (
                {"type": 3, "id": n + 100, "custom_id": cid, "values": value} if isinstance(value, list) else
                {"type": 4, "id": n + 100, "custom_id": cid, "value": value})}
            for n, (cid, value) in enumerate(values.items())
        ]
        return self._base(5, {"custom_id": custom_id, "components": components}, user_id, **kw)

    def component(self, custom_id: str, user_id: str, message: dict[str, Any], **kw: Any) -> dict[str, Any]:
        data = {"custom_id": custom_id, "component_type": 2}
        return self._base(3, data, user_id, message=message, **kw)
