"""Make a result fit Discord's attachment size limit.

An image at or under the limit is sent as it is. A larger one is re-encoded with Pillow, JPEG first
(every client shows it) then WebP, stepping the quality down; if even the smallest does not fit, the
caller links the gateway's result URL instead (which expires).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

JPEG_QUALITIES = (90, 80, 70, 60, 50, 40)
WEBP_QUALITIES = (80, 60, 40, 25)


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    data: bytes
    content_type: str

    @property
    def size(self) -> int:
        return len(self.data)


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, quality=quality, **({"optimize": True} if fmt == "JPEG" else {"method": 4}))
    return out.getvalue()


def fit(filename: str, data: bytes, content_type: str, limit: int) -> Upload | None:
    """The image itself, a re-encoded copy of at most ``limit`` bytes, or None if none fits."""
    if len(data) <= limit:
        return Upload(filename, data, content_type)
    stem = Path(filename).stem
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError):
        return None
    with image:
        for quality in JPEG_QUALITIES:
            encoded = _encode(image, "JPEG", quality)
            if len(encoded) <= limit:
                return Upload(f"{stem}.jpg", encoded, "image/jpeg")
        for quality in WEBP_QUALITIES:
            encoded = _encode(image, "WEBP", quality)
            if len(encoded) <= limit:
                return Upload(f"{stem}.webp", encoded, "image/webp")
    return None
