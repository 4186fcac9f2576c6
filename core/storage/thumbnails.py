"""The thumbnails' table: one small WebP per delivered job (``core.media.thumbnails`` makes them)."""

from __future__ import annotations

from datetime import datetime

from imagine_bot.core.storage.db import Database, iso, transaction, utcnow


class SqliteThumbnailIndex:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, job_id: str, webp: bytes, width: int, height: int) -> None:
        with transaction(self.db):
            self.db.execute("INSERT INTO thumbnails (job_id, webp, width, height, created_at) VALUES (?, ?, ?, ?, ?)"
                            " ON CONFLICT (job_id) DO UPDATE SET webp = excluded.webp, width = excluded.width,"
                            " height = excluded.height, created_at = excluded.created_at",
                            [job_id, webp, width, height, iso(utcnow())])

    def get(self, job_id: str) -> tuple[bytes, int, int] | None:
        row = self.db.execute("SELECT webp, width, height FROM thumbnails WHERE job_id = ?", [job_id]).fetchone()
        return (bytes(row[0]), int(row[1]), int(row[2])) if row else None

    def delete_before(self, cutoff: datetime) -> int:
        with transaction(self.db):
            return int(self.db.execute("DELETE FROM thumbnails WHERE created_at < ?", [iso(cutoff)]).rowcount)
