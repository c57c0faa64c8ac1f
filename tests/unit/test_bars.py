"""The server-drawn bar chart (gateway/pharmacist/bars.py) and the figures read from a MeasureReport."""

from __future__ import annotations

from gateway.pharmacist import bars, figures


def test_every_text_is_escaped_and_the_values_are_in_the_label() -> None:
    svg = bars.bar_chart("A < B", [("<script>x</script>", 50.0), ("Okafor", None)], "%", 100.0)
    assert "<script" not in svg and "&lt;script&gt;" in svg
    assert 'role="img"' in svg
    assert 'aria-label="A &lt; B: &lt;script&gt;x&lt;/script&gt;: 50 %; Okafor: n/a"' in svg


def test_bar_lengths_are_relative_to_the_scale() -> None:
    svg = bars.bar_chart("t", [("a", 2.0), ("b", 4.0)], "h")
    span = bars.WIDTH - bars.LABEL_W - bars.VALUE_W
    assert f'width="{span / 2:.1f}"' in svg and f'width="{span:.1f}"' in svg
    assert 'width="0.0"' in bars.bar_chart("t", [("none", None)], "h")


def test_scores_by_group_code_and_none_when_nothing_was_scored() -> None:
    report = {
        "group": [
            {"code": {"coding": [{"code": "acknowledge"}]}, "measureScore": {"value": 3.02, "unit": "h"}},
            {
                "code": {"coding": [{"code": "resolve"}]},
                "population": [{"code": {"coding": [{"code": "initial-population"}]}, "count": 2}],
            },
        ]
    }
    assert figures.scores(report) == {"acknowledge": 3.02, "resolve": None}
    assert figures.populations(report, "resolve") == {"initial-population": 2}
    assert figures.populations(report, "other") == {}
