"""A small horizontal bar chart as SVG markup, drawn on the server (the console's CSP allows no script and
no chart library is needed for a handful of bars).

Every piece of text is escaped here, so the markup may be placed in a page as it is; the chart is an
image to assistive technology (`role="img"`) whose `aria-label` states every value, and each bar carries
its value in a `<title>` as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH = 360
LABEL_W = 120  # room for a pharmacist's name at the left of the bars
VALUE_W = 64  # room for the value at the right
BAR_H = 18
GAP = 6


def value_text(value: float | None, unit: str) -> str:
    """A value as the chart writes it: `n/a` when nothing was scored."""
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value:.0f} %"
    return f"{value:.1f} {unit}".rstrip()


def bar_chart(
    title: str, bars: Sequence[tuple[str, float | None]], unit: str, scale: float | None = None
) -> str:
    """SVG markup: one bar per (label, value), lengths relative to `scale` (default: the largest value)."""
    top = scale if scale else max((v for _, v in bars if v is not None), default=0.0)
    height = max(1, len(bars)) * (BAR_H + GAP) + GAP
    span = WIDTH - LABEL_W - VALUE_W
    described = "; ".join(f"{label}: {value_text(value, unit)}" for label, value in bars) or "no data"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}"'
        f' height="{height}" role="img" aria-label="{escape(f"{title}: {described}")}">'
    ]
    for n, (label, value) in enumerate(bars):
        y = GAP + n * (BAR_H + GAP)
        length = 0.0 if value is None or top <= 0 else max(0.0, min(1.0, value / top)) * span
        text_y = y + BAR_H - 5
        shown = escape(value_text(value, unit))
        parts.append(
            f'<text x="{LABEL_W - 6}" y="{text_y}" text-anchor="end" font-size="12">'
            f"{escape(label[:24])}</text>"
            f'<rect x="{LABEL_W}" y="{y}" width="{length:.1f}" height="{BAR_H}" fill="#2563eb">'
            f"<title>{escape(label)}: {shown}</title></rect>"
            f'<text x="{LABEL_W + length + 4:.1f}" y="{text_y}" font-size="12">{shown}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
