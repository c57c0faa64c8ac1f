"""FHIR date, dateTime and instant values as ranges of UTC epoch microseconds.

A FHIR date is a range, not a point: "2024-05" means the whole of May. Search compares ranges
(https://hl7.org/fhir/R4/search.html#prefix), so every indexed date is stored as [low, high], both
inclusive. Values without a time zone are taken as UTC.
"""

from __future__ import annotations

import re
from calendar import monthrange
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from functools import lru_cache

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_US = -(2**62)  # open start of a Period
MAX_US = 2**62  # open end of a Period
ONE_US = timedelta(microseconds=1)

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class DateFormatError(ValueError):
    """A string that is not a FHIR date, dateTime or instant."""


def to_us(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


@lru_cache(maxsize=1024)
def format_instant(us: int) -> str:
    """An xs:dateTime instant in UTC with microseconds, as meta.lastUpdated wants it."""
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def http_date(us: int) -> str:
    """An HTTP-date (RFC 9110: "Sun, 06 Nov 1994 08:49:37 GMT") for Last-Modified: whole seconds."""
    return _http_date(us // 1_000_000)


@lru_cache(maxsize=1024)
def _http_date(seconds: int) -> str:  # a read's answer formats one; a hot resource's is remembered
    return format_datetime(EPOCH + timedelta(seconds=seconds), usegmt=True)


def now_us() -> int:
    return to_us(datetime.now(UTC))


def _tz(text: str | None) -> timezone:
    if not text or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


@lru_cache(maxsize=8192)  # times are new in every message: a big cache held memory, not hits
def date_range(text: str) -> tuple[int, int]:
    """The [low, high] range in epoch microseconds that a FHIR date/dateTime/instant string covers."""
    match = _DATE_RE.match(text.strip())
    if not match:
        raise DateFormatError(f"not a FHIR date or dateTime: {text!r}")
    g = match.groupdict()
    try:
        year = int(g["y"])
        tz = _tz(g["tz"])
        if g["m"] is None:
            start = datetime(year, 1, 1, tzinfo=tz)
            end = datetime(year + 1, 1, 1, tzinfo=tz) if year < 9999 else datetime.max.replace(tzinfo=tz)
        elif g["d"] is None:
            month = int(g["m"])
            start = datetime(year, month, 1, tzinfo=tz)
            end = start + timedelta(days=monthrange(year, month)[1])
        elif g["H"] is None:
            start = datetime(year, int(g["m"]), int(g["d"]), tzinfo=tz)
            end = start + timedelta(days=1)
        else:
            start = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), tzinfo=tz)
            if g["S"] is None:
                end = start + timedelta(minutes=1)
            elif g["f"] is None:
                start = start.replace(second=int(g["S"]))
                end = start + timedelta(seconds=1)
            else:
                digits = g["f"][:6]
                start = start.replace(second=int(g["S"]), microsecond=int(digits.ljust(6, "0")))
                end = start + timedelta(microseconds=10 ** (6 - len(digits)))
    except (ValueError, OverflowError) as exc:
        raise DateFormatError(f"not a valid date: {text!r} ({exc})") from exc
    return to_us(start), to_us(end) - 1
