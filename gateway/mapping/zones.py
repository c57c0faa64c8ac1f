"""The time zone a sender writes its offset-less HL7 v2 times in: an IANA zone or a fixed UTC offset.

A site file's `timezone` and GATEWAY_HL7_DEFAULT_OFFSET are parsed here once, when the gateway starts
(zoneinfo reads the tz database then); a converter asks the resulting `Zone` for the offset of one local
date and time, which is arithmetic on data already in memory.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC as _UTC
from datetime import datetime, timedelta, timezone, tzinfo

FORMS = "an IANA time zone (such as America/Chicago) or a UTC offset (such as -06:00, -0600 or Z)"
_FIXED = re.compile(r"(?P<sign>[+-])(?P<hours>\d{2}):?(?P<minutes>\d{2})")
_LARGEST = timedelta(hours=14)  # the widest offset FHIR (and any real zone today) allows
_NO_DATABASE = (
    "; this system has no time-zone database: install the operating system's tzdata package "
    "or the Python package tzdata (pip install tzdata)"
)


class ZoneError(ValueError):
    """A time-zone setting that is neither an IANA zone nor a valid UTC offset; says which and why."""


@dataclass(frozen=True)
class Zone:
    """A sender's time zone. `key` is stable and unique per zone ("America/Chicago", "-06:00", "Z"): it
    names the zone in memo keys and messages; two zones with the same key give the same offsets."""

    key: str
    tz: tzinfo = field(compare=False, repr=False)

    def offset_at(self, local: datetime) -> str:
        """The FHIR offset (`+HH:MM`, or `Z` for the zone written `Z`) of the wall-clock time `local`
        (naive; any tzinfo and fold it has are ignored) in this zone.

        Around a clock change the offset in force *before* the change wins (PEP 495's fold=0), so every
        wall-clock time has exactly one answer: in a repeated autumn hour, its first occurrence (daylight
        time); in a skipped spring hour, standard time (02:30 -06:00 is 03:30 -05:00 in Chicago).
        """
        if self.key == "Z":
            return "Z"
        delta = local.replace(tzinfo=self.tz, fold=0).utcoffset()
        return _format(delta or timedelta(0))


UTC = Zone("Z", _UTC)


def _format(delta: timedelta) -> str:
    """+HH:MM; the seconds of a local-mean-time offset (before standard time, e.g. -05:50:36 in Chicago
    before 1883) are dropped, since FHIR offsets have none."""
    seconds = int(delta.total_seconds())
    minutes = abs(seconds) // 60
    return f"{'-' if seconds < 0 else '+'}{minutes // 60:02d}:{minutes % 60:02d}"


def _fixed(found: re.Match[str], text: str) -> Zone:
    hours, minutes = int(found["hours"]), int(found["minutes"])
    delta = timedelta(hours=hours, minutes=minutes)
    if minutes > 59 or delta > _LARGEST:
        raise ZoneError(f"{text!r} is not a valid UTC offset: offsets run from -14:00 to +14:00")
    offset = -delta if found["sign"] == "-" else delta
    return Zone(_format(offset), timezone(offset))


def _iana(name: str, text: str) -> Zone:
    try:
        return Zone(name, zoneinfo.ZoneInfo(name))
    except zoneinfo.ZoneInfoNotFoundError:
        # Telling "no such zone" from "no database at all" saves the operator a wrong fix.
        missing = "" if zoneinfo.available_timezones() else _NO_DATABASE
        raise ZoneError(f"{text!r} is not {FORMS}{missing}") from None
    except (ValueError, OSError):  # a path-like key, or a file in the database that is no zone
        raise ZoneError(f"{text!r} is not {FORMS}") from None


def parse_zone(text: object) -> Zone:
    """`Z`, a fixed offset (`-06:00`, `-0600`) or an IANA zone name, as a Zone; anything else raises
    ZoneError naming the value."""
    if not isinstance(text, str):
        # YAML 1.1 reads an unquoted -0600 as octal -384 and -6:00 as base-60 -360: say how to write it.
        raise ZoneError(f'{text!r} is not {FORMS}; write it as quoted text ("-06:00")')
    value = text.strip()
    if value == "Z":
        return UTC
    found = _FIXED.fullmatch(value)
    return _fixed(found, text) if found else _iana(value, text)
