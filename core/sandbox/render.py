"""Placeholder images for the sandbox gateway: real PNGs, deterministic per prompt.

``render_png`` draws a two-colour gradient, a few translucent shapes and the prompt on a translucent
band, at the aspect ratio's size: the long side is 1024 px (``basic``) or 2048 px (``high``), times
``scale``, and no side is smaller than 64 px. Colours and shapes come from a SHA-256 of the prompt, so the
same prompt always gives the same image.
"""

from __future__ import annotations

import hashlib
import io
import random
import textwrap

from PIL import Image, ImageDraw, ImageFont, ImageOps
from PIL.PngImagePlugin import PngInfo

LONG_SIDE = {"basic": 1024, "high": 2048}
MIN_SIDE = 64
MAX_TEXT_LINES = 6
#: the PNG text chunk that says where a sandbox image's caption band starts (its first row)
CAPTION_TOP = "imagine-sandbox-caption-top"


def image_size(aspect_ratio: str, quality: str, scale: float = 1.0) -> tuple[int, int]:
    """(width, height) for an aspect ratio like ``"16:9"`` and a quality (``basic`` or ``high``)."""
    try:
        w_part, h_part = (int(p) for p in aspect_ratio.split(":"))
    except ValueError:
        raise ValueError(f"not an aspect ratio: {aspect_ratio!r}") from None
    if w_part <= 0 or h_part <= 0:
        raise ValueError(f"not an aspect ratio: {aspect_ratio!r}")
    long_side = LONG_SIDE.get(quality, LONG_SIDE["basic"]) * scale
    if w_part >= h_part:
        width, height = long_side, long_side * h_part / w_part
    else:
        width, height = long_side * w_part / h_part, long_side
    return max(MIN_SIDE, round(width)), max(MIN_SIDE, round(height))


def render_png(prompt: str, aspect_ratio: str, quality: str, scale: float = 1.0) -> bytes:
    """A PNG for ``prompt`` at the given shape and quality (CPU-bound: call it in a thread)."""
    width, height = image_size(aspect_ratio, quality, scale)
    rng = random.Random(hashlib.sha256(prompt.encode("utf-8")).digest())
    image = _gradient(width, height, _colour(rng), _colour(rng))
    _shapes(image, rng)
    return _png(image, _caption(image, prompt))


def _png(image: Image.Image, caption_top: int) -> bytes:
    """The PNG, with where its caption band starts in a text chunk (an edit of it leaves the band out)."""
    info = PngInfo()
    info.add_text(CAPTION_TOP, str(caption_top))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG", compress_level=1, pnginfo=info)
    return out.getvalue()


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _gradient(width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    mask = Image.linear_gradient("L").resize((width, height))
    return Image.composite(Image.new("RGBA", (width, height), (*bottom, 255)),
                           Image.new("RGBA", (width, height), (*top, 255)), mask)


def _shapes(image: Image.Image, rng: random.Random) -> None:
    width, height = image.size
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(rng.randint(4, 9)):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        size = rng.uniform(0.1, 0.5) * min(width, height)
        box = (x0, y0, x0 + size * rng.uniform(0.6, 1.6), y0 + size)
        fill = (*_colour(rng), rng.randint(60, 150))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    image.alpha_composite(overlay)


def _caption(image: Image.Image, prompt: str) -> int:
    """Draw the prompt on a band along the bottom; returns the band's first row."""
    width, height = image.size
    font_size = max(8, width // 40)
    font = ImageFont.load_default(size=font_size)
    chars_per_line = max(8, int(width / (font_size * 0.6)) - 2)
    lines = textwrap.wrap(" ".join(prompt.split()), chars_per_line) or [""]
    if len(lines) > MAX_TEXT_LINES:
        lines = [*lines[: MAX_TEXT_LINES - 1], lines[MAX_TEXT_LINES - 1][: chars_per_line - 3] + "..."]
    line_height = int(font_size * 1.3)
    pad = max(4, font_size // 2)
    band_height = min(height, len(lines) * line_height + 2 * pad)
    top = height - band_height
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle((0, top, width, height), fill=(0, 0, 0, 140))
    for n, line in enumerate(lines):
        draw.text((pad, top + pad + n * line_height), line, font=font, fill=(255, 255, 255, 235))
    image.alpha_composite(overlay)
    return top


def render_edit_png(references: list[bytes], prompt: str, aspect_ratio: str, quality: str,
                    scale: float = 1.0) -> bytes:
    """The sandbox's "edit": the first reference (without its caption, when it is a sandbox image) cropped
    to the shape, recoloured with two colours taken from the prompt (its shapes stay recognisable), the
    other references as thumbnails along the top, and the new prompt as the only caption. Visibly derived
    from the references, deterministic per input."""
    width, height = image_size(aspect_ratio, quality, scale)
    rng = random.Random(hashlib.sha256(prompt.encode("utf-8")).digest())
    dark, light = _colour(rng), _colour(rng)
    dark = tuple(c // 3 for c in dark)  # type: ignore[assignment]
    light = tuple(128 + c // 2 for c in light)  # type: ignore[assignment]
    first = _open(references[0], without_caption=True) if references else None
    if first is None:
        image = _gradient(width, height, dark, light)
    else:
        with first:
            fitted = ImageOps.fit(first, (width, height), Image.Resampling.LANCZOS)
        image = ImageOps.colorize(ImageOps.grayscale(fitted), black=dark, white=light).convert("RGBA")
    thumb = max(MIN_SIDE // 2, min(width, height) // 5)
    for n, data in enumerate(references[1:]):
        small = _open(data)
        if small is None:
            continue
        with small:
            tile = ImageOps.fit(small, (thumb, thumb), Image.Resampling.LANCZOS).convert("RGBA")
        x = 4 + n * (thumb + 4)
        if x + thumb > width:
            break
        image.alpha_composite(tile, (x, 4))
    return _png(image, _caption(image, prompt))


def _open(data: bytes, *, without_caption: bool = False) -> Image.Image | None:
    """The image in ``data`` as RGB; ``without_caption``: cut off the caption band of a sandbox image (its
    text chunk says where it starts), so that an edit shows no fragment of the old prompt."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
            top = str(getattr(opened, "text", {}).get(CAPTION_TOP, "")) if without_caption else ""
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if top.isdigit() and 0 < int(top) < image.height:
        cropped = image.crop((0, 0, image.width, int(top)))
        image.close()
        return cropped
    return image
