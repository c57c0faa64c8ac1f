"""The lab chart's geometry, text and edge cases, read back from the SVG it renders."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from gateway.pharmacist.charts import date_ticks, nice_ticks, render_lab_chart

SVG = "{http://www.w3.org/2000/svg}"
DAY0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
ANC_THRESHOLDS = [(1500, "hold", "moderate"), (1000, "stop", "severe")]


def anc(*values: float, unit: str = "10*3/uL") -> list[tuple[datetime, float, str]]:
    return [(DAY0 + timedelta(days=7 * i), v, unit) for i, v in enumerate(values)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # also proves the output is well-formed XML


def with_class(root: ET.Element, word: str) -> list[ET.Element]:
    return [e for e in root.iter() if word in (e.get("class") or "").split()]


def position(point: ET.Element) -> tuple[float, float]:
    found = re.fullmatch(r"translate\(([-\d.]+),([-\d.]+)\)", point.get("transform", ""))
    assert found, point.attrib
    return float(found[1]), float(found[2])


def threshold_y(root: ET.Element, value: str) -> float:
    (group,) = [g for g in with_class(root, "threshold") if g.get("data-value") == value]
    line = group.find(f"{SVG}line")
    assert line is not None and line.get("y1") == line.get("y2")
    return float(line.get("y1", "nan"))


def anc_chart(*values: float) -> ET.Element:
    return parse(
        render_lab_chart(
            "ANC", anc(*values), reference_range=(1.5, 8.0), thresholds=ANC_THRESHOLDS,
            threshold_unit="/uL", threshold_factor=1000,
        )
    )  # fmt: skip


def test_value_below_converted_threshold_is_drawn_below_its_line() -> None:
    root = anc_chart(2.1, 1.7, 1.2)
    points = with_class(root, "point")
    hold, stop = threshold_y(root, "1500"), threshold_y(root, "1000")
    assert stop > hold  # 1000 /uL lies lower on the chart than 1500 /uL
    low = points[-1]
    assert low.get("class") == "point below-threshold"
    assert hold < position(low)[1] < stop  # 1.2 x 10^3/uL: between the lines, under the hold line
    assert [p.get("class") for p in points[:2]] == ["point", "point"]
    assert all(position(p)[1] < hold for p in points[:2])


def test_values_map_monotonically_and_time_runs_left_to_right() -> None:
    values = [5.0, 0.4, 3.3, 1.0, 7.9]
    points = with_class(anc_chart(*values), "point")
    xs = [position(p)[0] for p in points]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    by_value = sorted(zip(values, (position(p)[1] for p in points), strict=True))
    ys = [y for _, y in by_value]
    assert ys == sorted(ys, reverse=True)  # a greater value is higher up (smaller y)


def test_every_point_has_a_title_with_date_value_and_unit() -> None:
    points = with_class(anc_chart(2.1, 0.9), "point")
    titles = [p.findtext(f"{SVG}title") for p in points]
    assert titles == ["2026-03-01 09:30: 2.1 10*3/uL", "2026-03-08 09:30: 0.9 10*3/uL (below 1000 /uL: stop)"]


def test_summary_names_count_latest_and_breached_threshold() -> None:
    root = anc_chart(2.1, 1.7, 1.2)
    expected = "ANC, 3 results, latest 1.2 10*3/uL on 2026-03-15 09:30, below 1500 /uL threshold (hold)"
    assert root.get("role") == "img"
    assert root.get("aria-label") == expected
    assert root.findtext(f"{SVG}title") == expected
    assert anc_chart(2.1).get("aria-label", "").endswith(", within monitoring thresholds")


def test_ticks_cover_values_thresholds_and_reference_range() -> None:
    root = anc_chart(0.3, 9.4)
    ticks = [float(t.get("data-value", "nan")) for t in root.iter() if t.get("class") == "tick"
             and t.get("data-value") is not None]  # fmt: skip
    assert ticks[0] <= 0.3 and ticks[-1] >= 9.4
    band = with_class(root, "reference-range")[0]
    top, height = float(band.get("y", "nan")), float(band.get("height", "nan"))
    assert top < threshold_y(root, "1500") < top + height + 0.01  # the 1.5 lower limit is the band's edge


def test_upper_thresholds_mark_points_above() -> None:
    svg = render_lab_chart(
        "ALT",
        anc(30, 150, unit="U/L"),
        thresholds=[(120, "3x ULN", "moderate", "above")],
        threshold_unit="U/L",
    )
    points = with_class(parse(svg), "point")
    assert [p.get("class") for p in points] == ["point", "point above-threshold"]


def test_hostile_text_is_escaped() -> None:
    hostile = '<script>alert("x")</script>&\x00'
    svg = render_lab_chart(
        hostile, [(DAY0, 1.0, hostile)], thresholds=[(2.0, hostile, hostile)], chart_id='"><x'
    )
    root = parse(svg)
    assert "<script" not in svg and "\x00" not in svg
    shown = '<script>alert("x")</script>&'  # the text survives as text; XML 1.0 cannot hold NUL at all
    assert with_class(root, "threshold-label")[0].text == f"{shown} 2 ({shown})"
    assert root.get("aria-label", "").startswith(f"{shown}, 1 result, latest 1 {shown} on ")
    assert root.get("id") == '"><x'
    assert with_class(root, "threshold")[0].get("class") == "threshold severity-script-alert-x-script"


def test_single_point_sits_mid_chart_with_a_date_tick() -> None:
    root = parse(render_lab_chart("ANC", [(DAY0, 1.2, "10*3/uL")]))
    (point,) = with_class(root, "point")
    x, _ = position(point)
    assert 56 < x < 640 - 180
    assert [t.get("data-date") for t in root.iter() if t.get("data-date") and t.get("class") == "tick"] == [
        "2026-03-01",
        "2026-03-02",
    ]
    assert not with_class(root, "series-line")  # one point: nothing to join


def test_empty_series_still_renders_thresholds_and_says_so() -> None:
    root = parse(render_lab_chart("ANC", [], thresholds=ANC_THRESHOLDS, threshold_unit="/uL"))
    assert root.get("aria-label") == "ANC, no results"
    assert not with_class(root, "point")
    assert len(with_class(root, "threshold")) == 2
    assert with_class(root, "empty")[0].text == "No results"


def test_identical_timestamps_and_equal_values_do_not_divide_by_zero() -> None:
    same = [(DAY0, 2.0, "10*3/uL")] * 3
    root = parse(render_lab_chart("ANC", same))
    positions = {position(p) for p in with_class(root, "point")}
    assert len(positions) == 1
    ((x, y),) = positions
    assert 56 < x < 460 and 28 < y < 244  # inside the plot, not at an infinite or NaN place


def test_results_in_another_unit_are_converted_or_refused() -> None:
    mixed = [(DAY0, 1800.0, "/uL"), (DAY0 + timedelta(days=7), 1.8, "10*3/uL")]
    root = parse(render_lab_chart("ANC", mixed, unit_factors={"/uL": 1000}))
    ys = {position(p)[1] for p in with_class(root, "point")}
    assert len(ys) == 1  # 1800 /uL and 1.8 x 10^3/uL are the same height
    with pytest.raises(ValueError, match="no conversion factor"):
        render_lab_chart("ANC", mixed)


def test_output_is_deterministic() -> None:
    args = {"reference_range": (1.5, 8.0), "thresholds": ANC_THRESHOLDS, "threshold_factor": 1000}
    assert render_lab_chart("ANC", anc(2, 1), **args) == render_lab_chart("ANC", anc(2, 1), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, 10.0, [0.0, 2.5, 5.0, 7.5, 10.0]),  # a range that divides evenly
        (1.2, 1.2, [1.0, 1.1, 1.2, 1.3, 1.4]),  # one value: widened by 10 % either side
        (0.0, 0.0, [-1.0, -0.5, 0.0, 0.5, 1.0]),  # zero: widened by 1
        (0.1, 0.3, [0.1, 0.15, 0.2, 0.25, 0.3]),  # no float noise such as 0.30000000000000004
    ],
)
def test_nice_ticks(low: float, high: float, expected: list[float]) -> None:
    assert nice_ticks(low, high) == expected


def test_date_ticks_are_midnights_within_the_span() -> None:
    ticks = date_ticks(DAY0, DAY0 + timedelta(days=60))
    assert all(t.time().hour == 0 and DAY0 <= t <= DAY0 + timedelta(days=60) for t in ticks)
    assert 2 <= len(ticks) <= 5
