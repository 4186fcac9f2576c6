"""A small WebP thumbnail per delivered job, for the dashboard's gallery, kept ``THUMBNAIL_KEEP_DAYS``.

Made after the job is delivered and charged, off the event loop; a thumbnail that cannot be made is
logged and skipped, never a reason to touch the job.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import sqlite_utils
from PIL import Image

from imagine_bot.core.storage.db import iso, transaction, utcnow

log = logging.getLogger(__name__)

#: the longest side of a thumbnail, in pixels
THUMB_SIZE = 320


@dataclass(frozen=True, slots=True)
class Thumbnail:
    webp: bytes
    width: int
    height: int


def make_thumbnail(path: Path, size: int = THUMB_SIZE) -> Thumbnail:
    with Image.open(path) as image:
        image.thumbnail((size, size))
        rgb = image.convert("RGB")
        out = io.BytesIO()
        rgb.save(out, "WEBP", quality=70, method=4)
        return Thumbnail(out.getvalue(), rgb.width, rgb.height)


class ThumbnailStore:
    def __init__(self, db: sqlite_utils.Database, keep_days: int) -> None:
        self.db = db
        self.keep_days = keep_days

    async def save(self, job_id: str, path: Path) -> bool:
        """Make (in a worker thread) and store the thumbnail of ``job_id``; prune old ones. False if none kept."""
        if self.keep_days <= 0:
            return False
        thumb = await asyncio.to_thread(make_thumbnail, path)
        self.put(job_id, thumb)
        return True

    def put(self, job_id: str, thumb: Thumbnail) -> None:
        with transaction(self.db):
            self.db.execute("INSERT OR REPLACE INTO thumbnails (job_id, webp, width, height, created_at) "
                            "VALUES (?, ?, ?, ?, ?)", [job_id, thumb.webp, thumb.width, thumb.height, iso(utcnow())])
        self.prune()

    def get(self, job_id: str) -> Thumbnail | None:
        row = self.db.execute("SELECT webp, width, height FROM thumbnails WHERE job_id = ?", [job_id]).fetchone()
        return Thumbnail(bytes(row[0]), int(row[1]), int(row[2])) if row else None

    def prune(self) -> int:
        """Drop thumbnails older than the retention; returns how many."""
        cutoff = iso(utcnow() - timedelta(days=self.keep_days))
        with transaction(self.db):
            return int(self.db.execute("DELETE FROM thumbnails WHERE created_at < ?", [cutoff]).rowcount)
