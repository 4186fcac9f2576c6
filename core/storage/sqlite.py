"""The SQLite stores of one database file, built together: what ``ImagineCore`` and the command line use.

Each store is the SQLite implementation of a protocol in ``core.storage.base``; domain code is typed by
those protocols, never by these classes.
"""

from __future__ import annotations

from functools import cached_property

import sqlite_utils

from imagine_bot.core.storage.approvals import SqliteApprovals
from imagine_bot.core.storage.dashboard import Queries, SqliteLinkStore
from imagine_bot.core.storage.places import SqlitePlaces
from imagine_bot.core.storage.presets import SqlitePresets
from imagine_bot.core.storage.relay import SqliteRelayStore
from imagine_bot.core.storage.secrets import load_secret
from imagine_bot.core.storage.thumbnails import SqliteThumbnailIndex


class SqliteStores:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def secret(self, name: str) -> bytes:
        """A key the bot made once and keeps (``refs``: /refs/ URLs; ``dashboard``: session cookies)."""
        return load_secret(self.db, name)

    def ping(self) -> None:
        """Raise if the database cannot be reached (``/healthz``)."""
        self.db.execute("SELECT 1").fetchone()

    @cached_property
    def places(self) -> SqlitePlaces:
        return SqlitePlaces(self.db)

    @cached_property
    def presets(self) -> SqlitePresets:
        return SqlitePresets(self.db)

    @cached_property
    def approvals(self) -> SqliteApprovals:
        return SqliteApprovals(self.db)

    @cached_property
    def relay(self) -> SqliteRelayStore:
        return SqliteRelayStore(self.db)

    @cached_property
    def thumbnails(self) -> SqliteThumbnailIndex:
        return SqliteThumbnailIndex(self.db)

    @cached_property
    def dashboard_links(self) -> SqliteLinkStore:
        return SqliteLinkStore(self.db)

    @cached_property
    def dashboard(self) -> Queries:
        return Queries(self.db)
