"""Brand presets in SQLite (``core.storage.base.PresetStore``): tables ``presets`` (one row per place and
name; ``global`` for the operators') and ``channel_presets`` (the preset a channel uses by default). The
rules are ``core.chat.presets``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from imagine_bot.core.chat.presets import Preset
from imagine_bot.core.storage.db import Database, iso, transaction, utcnow

_COLUMNS = "scope, name, template, aspect_ratio, quality, images, updated_by, updated_at"


def _preset(row: tuple[Any, ...]) -> Preset:
    scope, name, template, ratio, quality, images, by, at = row
    defaults = {k: v for k, v in (("aspect_ratio", ratio), ("quality", quality)) if v}
    return Preset(scope, name, template, defaults, tuple(json.loads(images or "[]")), by,
                  datetime.fromisoformat(at) if at else None)


class SqlitePresets:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, scope: str, name: str) -> Preset | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM presets WHERE scope = ? AND name = ?", [scope, name]).fetchone()
        return _preset(row) if row else None

    def in_scopes(self, scopes: list[str]) -> list[Preset]:
        """Every preset of these scopes, by name."""
        if not scopes:
            return []
        marks = ",".join("?" * len(scopes))
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM presets WHERE scope IN ({marks}) ORDER BY name, scope",
                               scopes).fetchall()
        return [_preset(r) for r in rows]

    def put(self, preset: Preset, *, actor: str) -> Preset:
        """Create or replace the preset of that scope and name."""
        with transaction(self.db):
            self.db.execute(
                f"INSERT INTO presets ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, name) DO "
                "UPDATE SET template = excluded.template, aspect_ratio = excluded.aspect_ratio, "
                "quality = excluded.quality, images = excluded.images, updated_by = excluded.updated_by, "
                "updated_at = excluded.updated_at",
                [preset.scope, preset.name, preset.template, preset.defaults.get("aspect_ratio"),
                 preset.defaults.get("quality"), json.dumps(list(preset.images)) if preset.images else None,
                 actor, iso(utcnow())])
        found = self.get(preset.scope, preset.name)
        assert found is not None
        return found

    def remove(self, scope: str, name: str) -> tuple[bool, list[str]]:
        """Delete the preset; returns whether it existed and the channels of that place whose default it was
        (they have none now)."""
        with transaction(self.db):
            gone = self.db.execute("DELETE FROM presets WHERE scope = ? AND name = ?", [scope, name]).rowcount == 1
            within = "preset = ? AND substr(channel, 1, ?) = ?"
            args = [name, len(scope) + 1, scope + "#"]
            channels = [str(r[0]).split("#", 1)[1] for r in self.db.execute(
                f"SELECT channel FROM channel_presets WHERE {within}", args).fetchall()]
            self.db.execute(f"DELETE FROM channel_presets WHERE {within}", args)
        return gone, channels

    def channel_default(self, channel: str) -> str | None:
        """The preset name a channel (``place#CHANNEL``) uses by default."""
        row = self.db.execute("SELECT preset FROM channel_presets WHERE channel = ?", [channel]).fetchone()
        return str(row[0]) if row else None

    def set_channel_default(self, channel: str, name: str | None, *, actor: str) -> None:
        with transaction(self.db):
            if name is None:
                self.db.execute("DELETE FROM channel_presets WHERE channel = ?", [channel])
            else:
                self.db.execute("INSERT INTO channel_presets (channel, preset, updated_by, updated_at) VALUES "
                                "(?, ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET preset = excluded.preset, "
                                "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                                [channel, name, actor, iso(utcnow())])

    def channel_defaults(self, place: str) -> dict[str, str]:
        """Channel id -> preset name, for every channel of ``place`` with a default."""
        rows = self.db.execute("SELECT channel, preset FROM channel_presets WHERE substr(channel, 1, ?) = ?",
                               [len(place) + 1, place + "#"]).fetchall()
        return {str(r[0]).split("#", 1)[1]: str(r[1]) for r in rows}
