"""Inline SVG bar charts: no JavaScript, no front-end build. Labels are escaped by the caller's Markup."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 720, 220, 44, 36, 12
MAX_BAR = 56


def bar_chart(points: Sequence[tuple[str, int]], *, title: str, unit: str = "", label_every: int = 1,
              dates: bool = False) -> Markup:
    """Vertical bars, one per point, with the largest value marked on the axis. ``dates``: the labels are
    days, of which a phone shows every other one (the stylesheet's ``.chart.dates``)."""
    top = max((v for _, v in points), default=0) or 1
    inner_w, inner_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = inner_w / max(1, len(points))
    bar_w = max(1.0, min(step * 0.72, MAX_BAR))  # a few bars stay bars, not blocks
    parts = [f'<svg class="chart{" dates" if dates else ""}" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>",
             f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{HEIGHT - PAD_BOTTOM}" class="axis"/>',
             f'<line x1="{PAD_LEFT}" y1="{HEIGHT - PAD_BOTTOM}" x2="{WIDTH - 8}" y2="{HEIGHT - PAD_BOTTOM}" '
             'class="axis"/>',
             f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 4}" text-anchor="end" class="tick">{top}</text>',
             f'<text x="{PAD_LEFT - 6}" y="{HEIGHT - PAD_BOTTOM}" text-anchor="end" class="tick">0</text>']
    for n, (label, value) in enumerate(points):
        h = inner_h * value / top
        x = PAD_LEFT + n * step + (step - bar_w) / 2
        y = HEIGHT - PAD_BOTTOM - h
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                     f"<title>{escape(label)}: {value}{escape(unit)}</title></rect>")
        if n % label_every == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{HEIGHT - PAD_BOTTOM + 14}" text-anchor="middle" '
                         f'class="tick x">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
