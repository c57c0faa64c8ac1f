"""FHIR dates as ranges."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.fhir.dates import DateFormatError, date_range, format_instant, to_us


def us(*args: int) -> int:
    return to_us(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2024", us(2024, 1, 1), us(2025, 1, 1) - 1),  # a year is the whole year
        ("2024-02", us(2024, 2, 1), us(2024, 3, 1) - 1),  # leap February
        ("2024-02-29", us(2024, 2, 29), us(2024, 3, 1) - 1),
        (
            "2024-02-29T10:15",
            us(2024, 2, 29, 10, 15),
            us(2024, 2, 29, 10, 16) - 1,
        ),  # search values may omit seconds
        ("2024-02-29T10:15:30Z", us(2024, 2, 29, 10, 15, 30), us(2024, 2, 29, 10, 15, 31) - 1),
        (
            "2024-02-29T10:15:30.5Z",
            us(2024, 2, 29, 10, 15, 30, 500000),
            us(2024, 2, 29, 10, 15, 30, 600000) - 1,
        ),
        (
            "2024-02-29T12:15:30+02:00",
            us(2024, 2, 29, 10, 15, 30),
            us(2024, 2, 29, 10, 15, 31) - 1,
        ),  # offsets
        ("2024-02-29T10:15:30", us(2024, 2, 29, 10, 15, 30), us(2024, 2, 29, 10, 15, 31) - 1),  # no zone: UTC
    ],
)
def test_date_ranges(text: str, low: int, high: int) -> None:
    assert date_range(text) == (low, high)


@pytest.mark.parametrize(
    "text", ["", "24", "2024-13", "2024-02-30", "2024/02/01", "2024-02-01T25:00:00Z", "yesterday"]
)
def test_malformed_dates_are_refused(text: str) -> None:
    with pytest.raises(DateFormatError):
        date_range(text)


def test_instants_are_formatted_in_utc_with_microseconds() -> None:
    assert format_instant(us(2024, 1, 2, 3, 4, 5, 600)) == "2024-01-02T03:04:05.000600Z"
