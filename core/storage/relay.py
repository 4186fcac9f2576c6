"""The callback relay's table (``callback_relay``): callbacks one process received for a task another
process tracks (``core.jobs.relay``). On PostgreSQL each new row also wakes the other processes at once
(``NOTIFY imagine_relay``); they poll as well, so a lost notification (a reconnection, PgBouncer) only
delays a callback to the next poll."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from imagine_bot.core.storage.db import Database, iso, listen, notify, transaction, utcnow

CHANNEL = "imagine_relay"


class SqliteRelayStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def last_id(self) -> int:
        row = self.db.execute("SELECT MAX(id) FROM callback_relay").fetchone()
        return int(row[0] or 0)

    def put(self, task_id: str, final: str | None, origin: str) -> None:
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO callback_relay (task_id, final, origin, received_at) VALUES (?, ?, ?, ?)",
                [task_id, final, origin, iso(utcnow())])
            notify(self.db, CHANNEL)

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake()`` (from another thread) whenever a process puts a row; None: no push here, poll."""
        return listen(self.db, CHANNEL, wake)

    def after(self, seen: int, origin: str) -> list[tuple[int, str, str | None]]:
        """Rows newer than ``seen`` that another process put: (id, task id, final answer as JSON or None)."""
        rows = self.db.execute("SELECT id, task_id, final FROM callback_relay WHERE id > ? AND origin != ? "
                               "ORDER BY id", [seen, origin]).fetchall()
        return [(int(r[0]), str(r[1]), r[2]) for r in rows]

    def prune(self, before: datetime) -> int:
        with transaction(self.db):
            return int(self.db.execute("DELETE FROM callback_relay WHERE received_at < ?", [iso(before)]).rowcount)
