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

from PIL import Image

from imagine_bot.core.storage.base import ThumbnailIndex
from imagine_bot.core.storage.db import utcnow

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
    def __init__(self, index: ThumbnailIndex, keep_days: int) -> None:
        self.index = index
        self.keep_days = keep_days

    async def save(self, job_id: str, path: Path) -> bool:
        """Make (in a worker thread) and store the thumbnail of ``job_id``; prune old ones. False if none kept."""
        if self.keep_days <= 0:
            return False
        thumb = await asyncio.to_thread(make_thumbnail, path)
        self.put(job_id, thumb)
        return True

    def put(self, job_id: str, thumb: Thumbnail) -> None:
        self.index.put(job_id, thumb.webp, thumb.width, thumb.height)
        self.prune()

    def get(self, job_id: str) -> Thumbnail | None:
        row = self.index.get(job_id)
        return Thumbnail(*row) if row else None

    def prune(self) -> int:
        """Drop thumbnails older than the retention; returns how many."""
        return self.index.delete_before(utcnow() - timedelta(days=self.keep_days))
