"""Installations of the bot in many workspaces, and the one-time states of the flows that install it.

A chat app distributed through its platform's OAuth flow ("Add to Slack") is installed by the admins of
each workspace, or once for a whole organisation. Each installation is a row keyed by platform,
organisation (``org``, '' when none), workspace (``workspace``, '' for an organisation-wide installation)
and installer; the platform's own record rides along as JSON (``data``) and the tokens sit in their own
columns, sealed by a ``SecretBox`` when the operator gave a key. ``SqliteStores.installations(platform,
box)`` builds the store (``core.storage.base.InstallationStore``). Nothing here knows a platform: the front
end turns its SDK's records into ``InstallationRow`` and back.

``SqliteOAuthStates`` holds the ``state`` of each install flow begun: issued with an expiry, consumed at most
once (a compare-and-set ``DELETE``), so a replayed or forged redirect is refused by every process sharing
the database.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from imagine_bot.core.storage.db import Database, has_table, iso, transaction, utcnow
from imagine_bot.core.storage.secretbox import SecretBox

log = logging.getLogger(__name__)

#: the token columns (each sealed on its own)
TOKEN_FIELDS = ("bot_token", "bot_refresh_token", "user_token", "user_refresh_token")


@dataclass(frozen=True, slots=True)
class InstallationRow:
    """One installation: who installed the app where, the platform's record, and the tokens (opened)."""

    platform: str
    org: str
    workspace: str
    installer: str
    org_wide: bool
    name: str
    data: dict[str, Any]
    tokens: dict[str, str] = field(default_factory=dict)
    installed_at: datetime = field(default_factory=utcnow)
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class InstalledPlace:
    """A workspace or organisation the bot is installed in, for people (doctor, dashboard): no token."""

    platform: str
    org: str
    workspace: str
    org_wide: bool
    name: str
    installers: int
    installed_at: datetime
    updated_at: datetime
    #: whether every token of it is sealed with the key
    sealed: bool

    @property
    def key(self) -> str:
        """``platform:workspace``, or ``platform:org`` (organisation-wide)."""
        return f"{self.platform}:{self.org if self.org_wide else self.workspace}"


def _time(raw: str) -> datetime:
    return datetime.fromisoformat(raw).astimezone(UTC)


class SqliteInstallations:
    """The installations of one platform, their tokens sealed and opened by ``box``."""

    def __init__(self, db: Database, box: SecretBox, platform: str) -> None:
        self.db = db
        self.box = box
        self.platform = platform

    # ------------------------------------------------------------------ writes
    def save(self, row: InstallationRow) -> None:
        """Insert or replace the installation of ``row``'s workspace by its installer (the latest wins)."""
        now = iso(utcnow())
        tokens = [self.box.seal(row.tokens[name]) if row.tokens.get(name) else None for name in TOKEN_FIELDS]
        with transaction(self.db):
            self.db.execute(
                f"""INSERT INTO installations (platform, org, workspace, installer, org_wide, name, data,
                        {", ".join(TOKEN_FIELDS)}, installed_at, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (platform, org, workspace, installer) DO UPDATE SET
                        org_wide = excluded.org_wide, name = excluded.name, data = excluded.data,
                        {", ".join(f"{n} = excluded.{n}" for n in TOKEN_FIELDS)},
                        installed_at = excluded.installed_at, updated_at = excluded.updated_at""",
                [self.platform, row.org, row.workspace, row.installer, int(row.org_wide), row.name,
                 json.dumps(row.data, default=str), *tokens, iso(row.installed_at), now])

    def clear_tokens(self, *, org: str | None, workspace: str, names: Iterable[str],
                     installer: str | None = None) -> int:
        """Forget some tokens of a workspace's installations (all installers, or one); a row left with no
        token at all is deleted. Returns how many rows changed. ``org=None``: whatever the organisation."""
        names = [n for n in names if n in TOKEN_FIELDS]
        where, args = self._where(org, workspace, installer)
        with transaction(self.db):
            changed = self.db.execute(f"UPDATE installations SET {', '.join(f'{n} = NULL' for n in names)}, "
                                      f"updated_at = ? WHERE {where}", [iso(utcnow()), *args]).rowcount
            self.db.execute(f"DELETE FROM installations WHERE {where} AND "
                            + " AND ".join(f"{n} IS NULL" for n in TOKEN_FIELDS), args)
        return int(changed)

    def delete(self, *, org: str | None, workspace: str, installer: str | None = None) -> int:
        """Delete a workspace's installations (all installers, or one); returns how many."""
        where, args = self._where(org, workspace, installer)
        with transaction(self.db):
            return int(self.db.execute(f"DELETE FROM installations WHERE {where}", args).rowcount)

    def reseal(self) -> int:
        """Seal the tokens stored plain (written before the key was set); returns how many rows changed."""
        if not self.box.sealing:
            return 0
        changed = 0
        with transaction(self.db):
            rows = self.db.execute(f"SELECT org, workspace, installer, {', '.join(TOKEN_FIELDS)} FROM installations "
                                   "WHERE platform = ?", [self.platform]).fetchall()
            for org, workspace, installer, *values in rows:
                plain = {n: v for n, v in zip(TOKEN_FIELDS, values, strict=True) if v and not self.box.is_sealed(v)}
                if plain:
                    self.db.execute(f"UPDATE installations SET {', '.join(f'{n} = ?' for n in plain)} "
                                    "WHERE platform = ? AND org = ? AND workspace = ? AND installer = ?",
                                    [*(self.box.seal(v) for v in plain.values()), self.platform, org, workspace,
                                     installer])
                    changed += 1
        return changed

    # ------------------------------------------------------------------ reads
    def latest(self, *, org: str | None, workspace: str, installer: str | None = None,
               with_token: str | None = None) -> InstallationRow | None:
        """The workspace's latest installation (by ``installer`` if given; having the token ``with_token``
        if given). ``org=None``: whatever the organisation (a workspace id names one workspace)."""
        where, args = self._where(org, workspace, installer)
        if with_token in TOKEN_FIELDS:
            where += f" AND {with_token} IS NOT NULL"
        row = self.db.execute(
            f"SELECT org, workspace, installer, org_wide, name, data, {', '.join(TOKEN_FIELDS)}, installed_at, "
            f"updated_at FROM installations WHERE {where} ORDER BY installed_at DESC, updated_at DESC LIMIT 1",
            args).fetchone()
        if row is None:
            return None
        org_, workspace_, installer_, org_wide, name, data, *rest = row
        tokens = {n: self.box.open(v) for n, v in zip(TOKEN_FIELDS, rest[:len(TOKEN_FIELDS)], strict=True) if v}
        installed_at, updated_at = rest[len(TOKEN_FIELDS):]
        return InstallationRow(self.platform, org_, workspace_, installer_, bool(org_wide), name, json.loads(data),
                               tokens, _time(installed_at), _time(updated_at))

    def _where(self, org: str | None, workspace: str, installer: str | None) -> tuple[str, list[Any]]:
        sql, args = ["platform = ?", "workspace = ?"], [self.platform, workspace]
        if org is not None:
            sql.append("org = ?")
            args.append(org)
        if installer is not None:
            sql.append("installer = ?")
            args.append(installer)
        return " AND ".join(sql), args


def installed_places(db: Database, platform: str | None = None) -> list[InstalledPlace]:
    """Every workspace or organisation the bot is installed in (reads no token), newest first."""
    if not has_table(db, "installations"):
        return []  # a database older than the table (read without migrating it)
    where, args = ("WHERE platform = ?", [platform]) if platform else ("", [])
    rows = db.execute(
        f"""SELECT platform, org, workspace, max(org_wide), max(name), count(*), min(installed_at), max(updated_at),
                   sum(CASE WHEN {" OR ".join(f"({n} IS NOT NULL AND {n} NOT LIKE 'enc1:%')" for n in TOKEN_FIELDS)}
                       THEN 1 ELSE 0 END)
            FROM installations {where} GROUP BY platform, org, workspace ORDER BY min(installed_at) DESC""",
        args).fetchall()
    return [InstalledPlace(p, o, w, bool(ow), n or "", int(count), _time(first), _time(last), not plain)
            for p, o, w, ow, n, count, first, last, plain in rows]


class SqliteOAuthStates:
    """One-time states of the install flows of one platform: issued with an expiry, consumed at most once."""

    def __init__(self, db: Database, platform: str) -> None:
        self.db = db
        self.platform = platform

    def issue(self, state: str, ttl_s: float) -> None:
        now = utcnow()
        with transaction(self.db):
            self.db.execute("DELETE FROM oauth_states WHERE expires_at < ?", [iso(now)])  # the ones never used
            self.db.execute("INSERT INTO oauth_states (state, platform, expires_at) VALUES (?, ?, ?)",
                            [state, self.platform, iso(now + timedelta(seconds=ttl_s))])

    def consume(self, state: str) -> bool:
        """True once for a state issued and not expired (then it is gone); False otherwise."""
        with transaction(self.db):
            return self.db.execute("DELETE FROM oauth_states WHERE state = ? AND platform = ? AND expires_at >= ?",
                                   [state, self.platform, iso(utcnow())]).rowcount == 1
