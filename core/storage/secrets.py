"""Keys the bot makes once and keeps (``app_secrets``): the ``/refs/`` URL signing key, the dashboard's."""

from __future__ import annotations

import secrets

from imagine_bot.core.storage.db import Database, transaction


def load_secret(db: Database, name: str = "refs") -> bytes:
    """The key called ``name``, made on first use; every process on the database shares it."""
    with transaction(db):
        db.execute("INSERT INTO app_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                   [name, secrets.token_hex(32)])
        row = db.execute("SELECT value FROM app_secrets WHERE name = ?", [name]).fetchone()
    return bytes.fromhex(row[0])
