"""Small image helpers shared by the core and the front ends (Pillow, CPU-bound: call them in a thread).

- ``sniff``: the type of an image from its first bytes (jpeg, png, webp), never from a name;
- ``fit``: an image re-encoded to fit a byte limit (JPEG then WebP, stepping the quality down);
- ``shrink``: ``fit`` for reference images, halving the size until it fits when quality alone is not enough;
- ``image_size``: width and height from the header alone. Nothing of more than ``MAX_PIXELS`` is ever decoded
  (a 13300x13300 PNG of a few megabytes would take 1.4 GB to decode and shrink).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

JPEG_QUALITIES = (90, 80, 70, 60, 50, 40)
WEBP_QUALITIES = (80, 60, 40, 25)
#: never shrink below this long side
MIN_LONG_SIDE = 256
#: the most pixels an image we decode may have: 40 megapixels (8000x5000) is beyond any camera a chat user
#: sends, and about 160 MB as RGBA while it is shrunk. Pillow's own bound (``MAX_IMAGE_PIXELS``, about 89
#: megapixels, an error only at twice that) is far too high for a bot that decodes what strangers send.
MAX_PIXELS = 40_000_000

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


#: Pillow's reader for each type ``sniff`` knows. Made directly, a reader parses the header and nothing
#: else, without ``Image.open``'s own bomb check (a warning above about 89 megapixels, an error above 179
#: that hides the size): ``MAX_PIXELS`` decides, whatever the size.
_READERS: dict[str, type[ImageFile.ImageFile]] = {
    "image/png": PngImagePlugin.PngImageFile,
    "image/jpeg": JpegImagePlugin.JpegImageFile,
    "image/webp": WebPImagePlugin.WebPImageFile,
}


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height read from the header (nothing decoded), or None when it is no image we read."""
    reader = _READERS.get(sniff(data[:16]) or "")
    if reader is None:
        return None
    try:
        with reader(io.BytesIO(data)) as opened:
            return opened.size
    except (OSError, ValueError, SyntaxError, EOFError):
        return None


def _decode(data: bytes) -> Image.Image | None:
    """The image decoded, or None when it is unreadable or has more than ``MAX_PIXELS`` pixels (refused on
    its header, before a single pixel is decoded)."""
    size = image_size(data)
    if size is None or size[0] * size[1] > MAX_PIXELS:
        return None
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
