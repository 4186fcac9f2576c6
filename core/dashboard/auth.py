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
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlite_utils

from imagine_bot.core.db import iso, transaction, utcnow
from imagine_bot.core.refs import _b64, _unb64, load_secret, same_secret

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
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._key: bytes | None = None

    # ------------------------------------------------------------------ links
    def mint(self, base_url: str, *, actor: str, scope: str | None, now: datetime | None = None) -> str:
        """A one-time sign-in link for ``actor`` seeing ``scope`` (None: everything)."""
        token = secrets.token_urlsafe(32)
        now = now or utcnow()
        with transaction(self.db):
            self.db.execute("INSERT INTO dashboard_links (token_hash, scope, actor, created_at, expires_at) "
                            "VALUES (?, ?, ?, ?, ?)", [_hash(token), scope, actor, iso(now), iso(now + LINK_TTL)])
        return f"{base_url.rstrip('/')}/admin/login?t={token}"

    def redeem(self, token: str) -> Session | None:
        """The session a link opens, once: None when it is unknown, expired or used already."""
        now = utcnow()
        with transaction(self.db):
            row = self.db.execute("SELECT actor, scope FROM dashboard_links WHERE token_hash = ? AND used_at IS NULL "
                                  "AND expires_at > ?", [_hash(token), iso(now)]).fetchone()
            if row is None:
                return None
            used = self.db.execute("UPDATE dashboard_links SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
                                   [iso(now), _hash(token)])
            if used.rowcount != 1:
                return None
            self.db.execute("DELETE FROM dashboard_links WHERE expires_at < ?", [iso(now - timedelta(days=1))])
        return Session(str(row[0]), row[1], int(time.time()) + SESSION_TTL_S)

    # ------------------------------------------------------------------ cookies
    def _secret(self) -> bytes:
        if self._key is None:
            self._key = load_secret(self.db, "dashboard")
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
