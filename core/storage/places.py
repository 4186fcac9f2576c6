"""The places' rows (``place_bans``, ``place_prefs``): what a community admin chose for their own server or
workspace (``core.access.places``)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from imagine_bot.core.access.places import PlacePrefs, PlaceRules
from imagine_bot.core.storage.db import Database, iso, transaction, utcnow


class SqlitePlaces:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ bans
    def is_banned(self, place: str, account: str) -> bool:
        row = self.db.execute("SELECT 1 FROM place_bans WHERE place = ? AND account = ?", [place, account]).fetchone()
        return row is not None

    def ban(self, place: str, account: str, *, actor: str) -> bool:
        """True if newly banned."""
        with transaction(self.db):
            cursor = self.db.execute("INSERT INTO place_bans (place, account, actor, ts) VALUES (?, ?, ?, ?)"
                                     " ON CONFLICT (place, account) DO NOTHING", [place, account, actor, iso(utcnow())])
            return cursor.rowcount == 1

    def unban(self, place: str, account: str) -> bool:
        """True if there was a ban to lift."""
        with transaction(self.db):
            cursor = self.db.execute("DELETE FROM place_bans WHERE place = ? AND account = ?", [place, account])
            return cursor.rowcount == 1

    def banned(self, place: str) -> list[str]:
        rows = self.db.execute("SELECT account FROM place_bans WHERE place = ? ORDER BY ts", [place]).fetchall()
        return [r[0] for r in rows]

    def rules(self, place: str, account: str, channel: str | None = None) -> PlaceRules:
        """Whether ``account`` is banned in ``place``, the place's preferences and, for ``channel``
        (``place#CHANNEL``), its default preset and its reviewers: one statement, read fresh every time (a ban
        or a reviewer set a moment ago in another process counts at once)."""
        row = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM place_bans WHERE place = ? AND account = ?),"
            " p.channels, p.aspect_ratio, p.quality,"
            " (SELECT preset FROM channel_presets WHERE channel = ?),"
            " (SELECT reviewers FROM approval_channels WHERE channel = ?)"
            " FROM (SELECT 1 AS one) AS here LEFT JOIN place_prefs p ON p.place = ?",
            [place, account, channel, channel, place],
        ).fetchone()
        return PlaceRules(_prefs(place, row[1:4]), banned=bool(row[0]),
                          channel_preset=None if row[4] is None else str(row[4]),
                          reviewers=tuple(json.loads(row[5])) if row[5] else ())

    # ------------------------------------------------------------------ preferences
    def prefs(self, place: str) -> PlacePrefs:
        row = self.db.execute("SELECT channels, aspect_ratio, quality FROM place_prefs WHERE place = ?",
                              [place]).fetchone()
        return _prefs(place, row)

    def _set(self, place: str, actor: str, **values: str | None) -> PlacePrefs:
        with transaction(self.db):
            self.db.execute("INSERT INTO place_prefs (place, updated_at) VALUES (?, ?) ON CONFLICT (place) DO NOTHING",
                            [place, iso(utcnow())])
            cols = ", ".join(f"{k} = ?" for k in values)
            self.db.execute(f"UPDATE place_prefs SET {cols}, updated_by = ?, updated_at = ? WHERE place = ?",
                            [*values.values(), actor, iso(utcnow()), place])
        return self.prefs(place)

    def set_channels(self, place: str, channels: tuple[str, ...], *, actor: str) -> PlacePrefs:
        """The channels the bot answers in (empty: all)."""
        return self._set(place, actor, channels=",".join(channels) or None)

    def set_defaults(self, place: str, defaults: dict[str, str | None], *, actor: str) -> PlacePrefs:
        """Default ``aspect_ratio`` and ``quality`` (None: back to the model's default)."""
        return self._set(place, actor, **{k: v for k, v in defaults.items() if k in ("aspect_ratio", "quality")})


def _prefs(place: str, row: Sequence[str | None] | None) -> PlacePrefs:
    """The preferences from a ``place_prefs`` row's (channels, aspect_ratio, quality); None: no row."""
    if row is None:
        return PlacePrefs(place)
    channels = tuple(c for c in (row[0] or "").split(",") if c)
    defaults = {k: v for k, v in (("aspect_ratio", row[1]), ("quality", row[2])) if v}
    return PlacePrefs(place, channels, defaults)
