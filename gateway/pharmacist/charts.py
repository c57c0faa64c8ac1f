"""A lab series as an accessible SVG chart, rendered on the server (pure: a string in, a string out).

Why on the server and by hand: the console's Content-Security-Policy (`default-src 'none'`) allows no
scripts and no inline styles, so the chart is plain SVG drawn with presentation attributes (`fill`,
`stroke`), which CSP does not govern; and a few dozen lines of geometry are cheaper to audit than a
charting library.

What is drawn, in the series' unit (the latest result's unit):
- a time axis with date ticks and a value axis with "nice" ticks spanning the values, the thresholds and
  the reference range;
- the reference range as a shaded band, each monitoring threshold as a dashed, labelled line;
- the results as points joined by a line; a result beyond a threshold is a triangle (not only a colour),
  classed `below-threshold` (or `above-threshold`), and every point has a `<title>` with date, value, unit.

Units: thresholds are often written in another unit than the lab reports (ANC 1500 /uL against results
in 10*3/uL). No UCUM engine here: the caller gives the factor (`threshold_factor=1000`: 1000 threshold
units make one result unit), and likewise `unit_factors` for results reported in another unit; a result
in a unit with no factor is refused rather than drawn at the wrong height.

Every text is XML-escaped; output is deterministic (same input, same bytes). Elements carry classes
(`point`, `threshold`, `reference-range`, `tick`, ...) and `data-*` values so tests and stylesheets can
find them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, time, timedelta
from html import escape
from typing import NamedTuple


class LabValue(NamedTuple):
    """One result: when it was taken, its value and UCUM unit."""

    at: datetime
    value: float
    unit: str


class Threshold(NamedTuple):
    """A drug's monitoring threshold, in the threshold unit: `direction` "below" means a result under
    `value` breaches it (ANC), "above" one over it (ALT)."""

    value: float
    label: str
    severity: str
    direction: str = "below"


class ReferenceRange(NamedTuple):
    """The lab's normal range, in the series' unit; either end may be open."""

    low: float | None = None
    high: float | None = None


# Layout in user units; the right margin holds the threshold labels.
WIDTH, HEIGHT = 640, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 180, 28, 36
_LABEL_GAP = 12  # threshold labels closer than this are pushed apart, so they never overprint
_DAY = timedelta(days=1)
_DAY_STEPS = (1, 2, 7, 14, 28, 91, 182, 364, 728, 1820)
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_CLASS_UNSAFE = re.compile("[^a-z0-9-]+")


def _text(value: str) -> str:
    """XML-escaped text, with the characters XML 1.0 cannot hold at all removed."""
    return escape(_INVALID_XML.sub("", value), quote=True)


def _num(value: float) -> str:
    """A value as people read it: no float noise, no trailing zeros."""
    text = f"{value:.6g}"
    return "0" if text == "-0" else text


def _xy(value: float) -> str:
    return f"{value:.2f}"


def _class_word(value: str) -> str:
    return _CLASS_UNSAFE.sub("-", value.lower()).strip("-") or "none"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) from at or below `low` to at or
    above `high`; an empty span is widened so that there is always something to divide."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("tick bounds must be finite")
    low, high = min(low, high), max(low, high)
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    decimals = max(0, 2 - math.floor(math.log10(step)))  # enough to hold 2.5 x 10^k without noise
    return [round(i * step, decimals) for i in range(first, last + 1)]


def date_ticks(start: datetime, end: datetime, count: int = 5) -> list[datetime]:
    """Midnights (in `start`'s time zone) between `start` and `end`, a whole number of days apart, at most
    about `count` of them."""
    span_days = (end - start) / _DAY
    step = next((s for s in _DAY_STEPS if span_days / s <= count), _DAY_STEPS[-1])
    tick = datetime.combine(start.date(), time(0), tzinfo=start.tzinfo)
    if tick < start:
        tick += _DAY
    ticks = []
    while tick <= end:
        ticks.append(tick)
        tick += step * _DAY
    return ticks


class _Scale:
    """Linear maps from (time, value) to plot coordinates; y grows downwards, as in SVG."""

    def __init__(self, start: datetime, end: datetime, low: float, high: float, width: int, height: int):
        self.start, self.seconds = start, (end - start).total_seconds()
        self.low, self.span = low, high - low
        self.x0, self.x1 = float(_LEFT), float(width - _RIGHT)
        self.y0, self.y1 = float(_TOP), float(height - _BOTTOM)

    def x(self, at: datetime) -> float:
        return self.x0 + (at - self.start).total_seconds() / self.seconds * (self.x1 - self.x0)

    def y(self, value: float) -> float:
        return self.y1 - (value - self.low) / self.span * (self.y1 - self.y0)


def _in_chart_unit(
    series: Iterable[tuple[datetime, float, str]], unit_factors: Mapping[str, float]
) -> tuple[list[LabValue], str]:
    """The results sorted by time (ties keep their order), each converted to the latest result's unit."""
    points = sorted((LabValue(*p) for p in series), key=lambda p: p.at)
    if not points:
        return [], ""
    unit = points[-1].unit
    converted = []
    for point in points:
        if not math.isfinite(point.value):
            raise ValueError("lab values must be finite numbers")
        if point.unit == unit:
            converted.append(point)
        elif point.unit in unit_factors:
            converted.append(point._replace(value=point.value / unit_factors[point.unit], unit=unit))
        else:
            raise ValueError(f"no conversion factor from {point.unit!r} to {unit!r}")
    return converted, unit


def breached(value: float, thresholds: Iterable[tuple[Threshold, float]]) -> Threshold | None:
    """The furthest threshold `value` (in the chart unit) breaches, given (threshold, its value in the
    chart unit) pairs: for "below" thresholds the lowest one it is under, for "above" the highest it is
    over; None when it breaches none."""
    worst: tuple[float, Threshold] | None = None
    for threshold, limit in thresholds:
        if threshold.direction == "above" and value > limit:
            rank = limit
        elif threshold.direction != "above" and value < limit:
            rank = -limit
        else:
            continue
        if worst is None or rank > worst[0]:
            worst = (rank, threshold)
    return worst[1] if worst else None


def _threshold(given: tuple[float, str, str] | tuple[float, str, str, str]) -> Threshold:
    """A Threshold from a tuple; any direction but "above" is "below" (it also names a CSS class)."""
    threshold = Threshold(*given)
    if not math.isfinite(threshold.value):
        raise ValueError("threshold values must be finite numbers")
    return threshold._replace(direction="above" if threshold.direction == "above" else "below")


def _when(at: datetime) -> str:
    return at.date().isoformat() if at.time() == time(0) else at.strftime("%Y-%m-%d %H:%M")


def _summary(
    name: str, points: list[LabValue], unit: str, worst: Threshold | None, threshold_unit: str, checked: bool
) -> str:
    if not points:
        return f"{name}, no results"
    latest = points[-1]
    count = f"{len(points)} result" + ("" if len(points) == 1 else "s")
    text = f"{name}, {count}, latest {_num(latest.value)} {unit} on {_when(latest.at)}"
    if worst is not None:
        where = f"{_num(worst.value)} {threshold_unit}".rstrip()
        text += f", {worst.direction} {where} threshold ({worst.label})"
    elif checked:
        text += ", within monitoring thresholds"
    return text


def _time_span(points: list[LabValue]) -> tuple[datetime, datetime]:
    """The time axis: the results' span, widened to at least two days around them so a single result (or
    several at one instant) sits in the middle with a date tick, and no span is zero."""
    start, end = points[0].at, points[-1].at
    if end - start < 2 * _DAY:
        middle = start + (end - start) / 2
        start, end = middle - _DAY, middle + _DAY
    return start, end


def _spread_labels(ys: list[float]) -> list[float]:
    """Label positions at least _LABEL_GAP apart, each as near its line as that allows (ys sorted)."""
    placed: list[float] = []
    for y in ys:
        placed.append(max(y, placed[-1] + _LABEL_GAP) if placed else y)
    return placed


def render_lab_chart(
    name: str,
    series: Iterable[tuple[datetime, float, str]],
    *,
    reference_range: tuple[float | None, float | None] | None = None,
    thresholds: Iterable[tuple[float, str, str] | tuple[float, str, str, str]] = (),
    threshold_unit: str = "",
    threshold_factor: float = 1.0,
    unit_factors: Mapping[str, float] | None = None,
    chart_id: str = "lab-chart",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """The SVG (`role="img"`, summarised in `aria-label` and `<title>`) of the lab `name`'s results.

    `series`: (taken at, value, unit) tuples in any order; `reference_range`: (low, high) in the series'
    unit; `thresholds`: (value, label, severity[, direction]) in `threshold_unit`, where
    `threshold_factor` threshold units make one series unit; `unit_factors`: for results in another unit,
    how many of that unit make one series unit. `chart_id` prefixes the element ids (unique per page).
    """
    if threshold_factor <= 0 or not math.isfinite(threshold_factor):
        raise ValueError("threshold_factor must be a positive number")
    points, unit = _in_chart_unit(series, unit_factors or {})
    limits = [(t, t.value / threshold_factor) for t in map(_threshold, thresholds)]
    band = ReferenceRange(*reference_range) if reference_range else ReferenceRange()
    marks = [p.value for p in points] + [v for _, v in limits]
    marks += [v for v in band if v is not None]
    ticks = nice_ticks(min(marks), max(marks)) if marks else nice_ticks(0.0, 1.0)
    now = datetime(2000, 1, 1)  # any instant: an empty chart has no time axis
    start, end = _time_span(points) if points else (now - _DAY, now + _DAY)
    scale = _Scale(start, end, ticks[0], ticks[-1], width, height)
    worst = breached(points[-1].value, limits) if points else None
    summary = _text(_summary(name, points, unit, worst, threshold_unit, bool(limits)))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lab-chart" id="{_text(chart_id)}" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-label="{summary}" '
        f'aria-labelledby="{_text(chart_id)}-title">',
        f'<title id="{_text(chart_id)}-title">{summary}</title>',
    ]
    parts += _band(scale, band)
    parts += _value_axis(scale, ticks, unit)
    parts += _time_axis(scale, points, start, end)
    parts += _threshold_lines(scale, limits, threshold_unit)
    parts += _results(scale, points, limits, unit, threshold_unit)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _band(scale: _Scale, band: ReferenceRange) -> list[str]:
    if band.low is None and band.high is None:
        return []
    top = scale.y0 if band.high is None else max(scale.y0, scale.y(band.high))
    bottom = scale.y1 if band.low is None else min(scale.y1, scale.y(band.low))
    data = "".join(
        f' data-{end}="{_num(v)}"' for end, v in (("low", band.low), ("high", band.high)) if v is not None
    )
    return [
        f'<rect class="reference-range"{data} x="{_xy(scale.x0)}" y="{_xy(top)}" '
        f'width="{_xy(scale.x1 - scale.x0)}" height="{_xy(max(0.0, bottom - top))}" fill="#e3f1e3">'
        "<title>reference range</title></rect>"
    ]


def _value_axis(scale: _Scale, ticks: list[float], unit: str) -> list[str]:
    out = ['<g class="axis value-axis">']
    for value in ticks:
        y = _xy(scale.y(value))
        out.append(
            f'<g class="tick" data-value="{_num(value)}">'
            f'<line x1="{_xy(scale.x0)}" y1="{y}" x2="{_xy(scale.x1)}" y2="{y}" stroke="#e6e6e6"/>'
            f'<text x="{_xy(scale.x0 - 6)}" y="{y}" text-anchor="end" dominant-baseline="middle" '
            f'font-size="11" fill="#333">{_num(value)}</text></g>'
        )
    out.append(
        f'<text class="unit" x="{_xy(scale.x0)}" y="{_xy(scale.y0 - 10)}" font-size="11" '
        f'fill="#333">{_text(unit)}</text>'
    )
    out.append("</g>")
    return out


def _time_axis(scale: _Scale, points: list[LabValue], start: datetime, end: datetime) -> list[str]:
    y1 = _xy(scale.y1)
    out = [
        '<g class="axis time-axis">',
        f'<line x1="{_xy(scale.x0)}" y1="{y1}" x2="{_xy(scale.x1)}" y2="{y1}" stroke="#333"/>',
    ]
    for tick in date_ticks(start, end) if points else []:
        x = _xy(scale.x(tick))
        label = tick.date().isoformat()
        out.append(
            f'<g class="tick" data-date="{label}"><line x1="{x}" y1="{y1}" x2="{x}" '
            f'y2="{_xy(scale.y1 + 5)}" stroke="#333"/><text x="{x}" y="{_xy(scale.y1 + 18)}" '
            f'text-anchor="middle" font-size="11" fill="#333">{label}</text></g>'
        )
    if not points:
        out.append(
            f'<text class="empty" x="{_xy((scale.x0 + scale.x1) / 2)}" y="{_xy((scale.y0 + scale.y1) / 2)}" '
            'text-anchor="middle" font-size="13" fill="#333">No results</text>'
        )
    out.append("</g>")
    return out


def _threshold_lines(scale: _Scale, limits: list[tuple[Threshold, float]], unit: str) -> list[str]:
    drawn = sorted(limits, key=lambda pair: scale.y(pair[1]))
    label_ys = _spread_labels([scale.y(v) for _, v in drawn])
    out = []
    for (threshold, value), label_y in zip(drawn, label_ys, strict=True):
        y = _xy(scale.y(value))
        label = _text(
            f"{threshold.label} {_num(threshold.value)} {unit}".rstrip() + f" ({threshold.severity})"
        )
        out.append(
            f'<g class="threshold severity-{_class_word(threshold.severity)}" '
            f'data-value="{_num(threshold.value)}" data-unit="{_text(unit)}" '
            f'data-direction="{_text(threshold.direction)}" data-severity="{_text(threshold.severity)}">'
            f'<line class="threshold-line" x1="{_xy(scale.x0)}" y1="{y}" x2="{_xy(scale.x1)}" y2="{y}" '
            'stroke="#b00020" stroke-width="1.5" stroke-dasharray="6 4"/>'
            f'<text class="threshold-label" x="{_xy(scale.x1 + 6)}" y="{_xy(label_y)}" '
            f'dominant-baseline="middle" font-size="11" fill="#b00020">{label}</text></g>'
        )
    return out


def _results(
    scale: _Scale, points: list[LabValue], limits: list[tuple[Threshold, float]], unit: str, t_unit: str
) -> list[str]:
    if not points:
        return []
    out = []
    if len(points) > 1:
        coords = " ".join(f"{_xy(scale.x(p.at))},{_xy(scale.y(p.value))}" for p in points)
        out.append(f'<polyline class="series-line" points="{coords}" fill="none" stroke="#1f4e8c"/>')
    for point in points:
        worst = breached(point.value, limits)
        title = f"{_when(point.at)}: {_num(point.value)} {unit}"
        if worst is None:
            css, shape = "point", '<circle r="4" fill="#1f4e8c"/>'
        else:
            where = f"{_num(worst.value)} {t_unit}".rstrip()
            title += f" ({worst.direction} {where}: {worst.label})"
            css = f"point {worst.direction}-threshold"
            shape = '<path d="M0,-6 L6,5 L-6,5 Z" fill="#b00020"/>'  # a shape, not only a colour
        out.append(
            f'<g class="{css}" data-value="{_num(point.value)}" data-date="{_when(point.at)}" '
            f'transform="translate({_xy(scale.x(point.at))},{_xy(scale.y(point.value))})">'
            f"{shape}<title>{_text(title)}</title></g>"
        )
    return out
