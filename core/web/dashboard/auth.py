"""Passwordless sign-in for the dashboard.

A one-time link (``/admin/login?t=TOKEN``) is minted for an operator (every place) or a community admin
(their own server or workspace only). Only the token's SHA-256 is stored; the link is valid
``LINK_TTL`` and works once (compare-and-set on ``used_at``). Opening it shows a button (so that a chat
app fetching the link for a preview cannot use it up); pressing it sets a session cookie, signed with
HMAC-SHA256 by a key kept in the database (so every process and restart agrees), HttpOnly, SameSite=Strict.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from imagine_bot.core.media.refstore import _b64, _unb64, same_secret
from imagine_bot.core.storage.base import LinkStore, Stores
from imagine_bot.core.storage.db import utcnow

LINK_TTL = timedelta(minutes=10)
SESSION_TTL_S = 8 * 3600
COOKIE = "imagine_dashboard"


@dataclass(frozen=True, slots=True)
class Session:
    """Who is signed in and what they may see: ``scope`` None is everything (an operator)."""

    actor: str
    scope: str | None
    expires: int

    def sees(self, scope: str) -> bool:
        return self.scope is None or scope == self.scope


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class DashboardAuth:
    def __init__(self, links: LinkStore, secret: Callable[[], bytes]) -> None:
        self.links = links
        #: the cookie signing key, read from the database the first time a cookie is made or read
        self._load_secret = secret
        self._key: bytes | None = None

    # ------------------------------------------------------------------ links
    def mint(self, base_url: str, *, actor: str, scope: str | None, now: datetime | None = None) -> str:
        """A one-time sign-in link for ``actor`` seeing ``scope`` (None: everything)."""
        token = secrets.token_urlsafe(32)
        now = now or utcnow()
        self.links.add(_hash(token), scope=scope, actor=actor, now=now, expires=now + LINK_TTL)
        return f"{base_url.rstrip('/')}/admin/login?t={token}"

    def redeem(self, token: str) -> Session | None:
        """The session a link opens, once: None when it is unknown, expired or used already."""
        now = utcnow()
        found = self.links.use(_hash(token), now, forget_before=now - timedelta(days=1))
        if found is None:
            return None
        return Session(found[0], found[1], int(time.time()) + SESSION_TTL_S)

    # ------------------------------------------------------------------ cookies
    def _secret(self) -> bytes:
        if self._key is None:
            self._key = self._load_secret()
        return self._key

    def cookie(self, session: Session) -> str:
        payload = _b64(json.dumps({"a": session.actor, "s": session.scope, "e": session.expires}).encode())
        signature = _b64(hmac.new(self._secret(), payload.encode(), hashlib.sha256).digest())
        return f"{payload}.{signature}"

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, if its signature holds and it has not expired."""
        if not cookie or "." not in cookie:
            return None
        payload, _, signature = cookie.partition(".")
        # whatever a client sent: aiohttp hands undecodable bytes over as lone surrogates
        expected = _b64(hmac.new(self._secret(), payload.encode("utf-8", "surrogatepass"), hashlib.sha256).digest())
        if not same_secret(signature, expected):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(str(data["a"]), data["s"], int(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None


def dashboard_auth(stores: Stores) -> DashboardAuth:
    """Sign-in links and cookies over ``stores`` (the links' table and the ``dashboard`` key)."""
    return DashboardAuth(stores.dashboard_links, lambda: stores.secret("dashboard"))
