"""Small image helpers shared by the core and the front ends (Pillow, CPU-bound: call them in a thread).

- ``sniff``: the type of an image from its first bytes (jpeg, png, webp), never from a name;
- ``dimensions``: its width and height, read from the header;
- ``fit``: an image re-encoded to fit a byte limit (JPEG then WebP, stepping the quality down);
- ``shrink``: ``fit`` for reference images, halving the size until it fits when quality alone is not enough.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

JPEG_QUALITIES = (90, 80, 70, 60, 50, 40)
WEBP_QUALITIES = (80, 60, 40, 25)
#: never shrink below this long side
MIN_LONG_SIDE = 256

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


def sniff(head: bytes) -> str | None:
    """``image/jpeg``, ``image/png`` or ``image/webp`` from the first bytes, else None."""
    for signature, media in _SIGNATURES:
        if head.startswith(signature):
            return media
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def dimensions(image: bytes | Path) -> tuple[int, int] | None:
    """(width, height) of an image, from its header alone; None when it cannot be read."""
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
            width, height = opened.size
            return int(width), int(height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


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


def _decode(data: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _fit_image(image: Image.Image, stem: str, limit: int) -> Upload | None:
    for quality in JPEG_QUALITIES:
        encoded = _encode(image, "JPEG", quality)
        if len(encoded) <= limit:
            return Upload(f"{stem}.jpg", encoded, "image/jpeg")
    for quality in WEBP_QUALITIES:
        encoded = _encode(image, "WEBP", quality)
        if len(encoded) <= limit:
            return Upload(f"{stem}.webp", encoded, "image/webp")
    return None


def fit(filename: str, data: bytes, content_type: str, limit: int) -> Upload | None:
    """The image itself, a re-encoded copy of at most ``limit`` bytes, or None if none fits."""
    if len(data) <= limit:
        return Upload(filename, data, content_type)
    image = _decode(data)
    if image is None:
        return None
    with image:
        return _fit_image(image, Path(filename).stem, limit)


def shrink(data: bytes, limit: int) -> bytes | None:
    """A copy of at most ``limit`` bytes (re-encoded, then halved in size as needed), or None."""
    image = _decode(data)
    if image is None:
        return None
    while True:
        upload = _fit_image(image, "ref", limit)
        if upload is not None:
            image.close()
            return upload.data
        if max(image.size) // 2 < MIN_LONG_SIDE:
            image.close()
            return None
        smaller = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
        image.close()
        image = smaller
