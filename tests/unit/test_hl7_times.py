"""Times without an offset: the field's own offset, else the sender's zone on that value's own local date
and time, else the gateway's default zone; never MSH-7's offset. Zones are parsed once, at load."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.hl7v2.datatypes import CONVERTERS, Context
from gateway.adapters.hl7v2.er7 import Message, Value
from gateway.adapters.hl7v2.translate import Translator
from gateway.mapping import zones
from gateway.mapping.files import MappingError, default_zone, load
from gateway.mapping.zones import UTC, ZoneError, parse_zone
from gateway.settings import PROJECT_ROOT
from tests.hl7_messages import msh, pid
from tests.unit.hl7_tables import YamlTables

TABLES = YamlTables()
CENTRAL = "CENTRAL LAB"  # the sending facility of the temporary site file below


# --- the zone settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("America/Chicago", "America/Chicago"),  # an IANA zone keeps its name
        (" America/Chicago ", "America/Chicago"),  # padding in a setting is not part of the name
        ("UTC", "UTC"),  # an IANA name too (offset +00:00), not the same zone as Z
        ("-06:00", "-06:00"),  # FHIR's way of writing an offset
        ("-0600", "-06:00"),  # HL7's way: the same zone, the same key
        ("+0530", "+05:30"),  # a half-hour offset
        ("+14:00", "+14:00"),  # the widest offset there is
        ("-14:00", "-14:00"),
        ("Z", "Z"),  # UTC, written Z (the default)
    ],
)
def test_zone_settings_accept_iana_names_and_fixed_offsets(text: str, key: str) -> None:
    assert parse_zone(text).key == key


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Foo/Bar", "IANA time zone"),  # no such zone
        ("America/Chicag", "IANA time zone"),  # a typo
        ("+25:00", "-14:00 to +14:00"),  # no such offset
        ("+14:01", "-14:00 to +14:00"),  # one minute too wide
        ("-06:60", "-14:00 to +14:00"),  # 60 minutes
        ("06:00", "IANA time zone"),  # no sign: not an offset (nor a zone)
        ("", "IANA time zone"),  # empty
        ("../etc/passwd", "IANA time zone"),  # a path is not a zone name
        ("/etc/localtime", "IANA time zone"),
        (-360, "quoted text"),  # what YAML makes of an unquoted -6:00 (base 60)
        (-384, "quoted text"),  # ... and of an unquoted -0600 (octal)
    ],
)
def test_zone_settings_refuse_anything_else_naming_the_value(text: Any, why: str) -> None:
    with pytest.raises(ZoneError) as raised:
        parse_zone(text)
    assert repr(text) in str(raised.value) and why in str(raised.value)


def test_a_missing_time_zone_database_is_named_as_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a machine without /usr/share/zoneinfo and without the tzdata package: no zone is known.
    monkeypatch.setattr(zones.zoneinfo, "available_timezones", set)
    with pytest.raises(ZoneError, match=r"no time-zone database.*pip install tzdata"):
        parse_zone("America/Nowhere")


def test_the_default_zone_setting_is_checked_like_a_mapping_file() -> None:
    assert default_zone("America/Chicago").key == "America/Chicago"
    with pytest.raises(MappingError, match=r"GATEWAY_HL7_DEFAULT_OFFSET 'Mars/Olympus_Mons' is not"):
        default_zone("Mars/Olympus_Mons")


# --- the offset a time gets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "raw", "expected", "problem"),
    [
        # US Central: -06:00 in standard time, -05:00 in daylight time (second Sunday of March at 02:00
        # to first Sunday of November at 02:00, in 2024 on 10 March and 3 November).
        ("America/Chicago", "20240115120000", "2024-01-15T12:00:00-06:00", False),  # January
        ("America/Chicago", "20240715120000", "2024-07-15T12:00:00-05:00", False),  # July
        ("America/Chicago", "202407151200", "2024-07-15T12:00:00-05:00", False),  # minutes: seconds added
        ("America/Chicago", "20240310015959", "2024-03-10T01:59:59-06:00", False),  # last second of CST
        # 02:00-02:59 on 10 March does not exist (clocks jump to 03:00): the offset in force before the
        # change, so the wall time reads as if the clock had not been moved yet (= 03:30 -05:00).
        ("America/Chicago", "20240310023000", "2024-03-10T02:30:00-06:00", False),
        ("America/Chicago", "20240310030000", "2024-03-10T03:00:00-05:00", False),  # first minute of CDT
        ("America/Chicago", "20241103005959", "2024-11-03T00:59:59-05:00", False),  # before the repeat
        # 01:00-01:59 on 3 November happens twice (-05:00, then -06:00): the first occurrence, daylight time.
        ("America/Chicago", "20241103013000", "2024-11-03T01:30:00-05:00", False),
        ("America/Chicago", "20241103020000", "2024-11-03T02:00:00-06:00", False),  # after it: CST
        ("America/Chicago", "20240715120000+0200", "2024-07-15T12:00:00+02:00", False),  # own offset wins
        ("America/Chicago", "20240115120000-0500", "2024-01-15T12:00:00-05:00", False),  # even if "wrong"
        ("America/Chicago", "20240715", "2024-07-15", False),  # a date stays a date: no offset
        ("America/Chicago", "202407", "2024-07", False),  # month precision: no offset either
        (
            "America/Chicago",
            "18500101120000",
            "1850-01-01T12:00:00-05:50",
            False,
        ),  # LMT -5:50:36: seconds dropped
        # Sitka kept Russian-American local mean time (+14:58:47) until 1867: no FHIR offset can say that.
        ("America/Sitka", "18600101120000", None, True),
        ("Australia/Lord_Howe", "20240115120000", "2024-01-15T12:00:00+11:00", False),  # half-hour DST
        ("Australia/Lord_Howe", "20240715120000", "2024-07-15T12:00:00+10:30", False),  # its winter
        ("Asia/Kathmandu", "20240715120000", "2024-07-15T12:00:00+05:45", False),  # a 45-minute offset
        ("Pacific/Kiritimati", "20240715120000", "2024-07-15T12:00:00+14:00", False),  # the widest offset
        ("Europe/London", "20240115120000", "2024-01-15T12:00:00+00:00", False),  # a zone at UTC: +00:00
        ("Europe/London", "20240715120000", "2024-07-15T12:00:00+01:00", False),  # British Summer Time
        ("-06:00", "20240715120000", "2024-07-15T12:00:00-06:00", False),  # a fixed offset ignores DST
        ("-0600", "20240115120000", "2024-01-15T12:00:00-06:00", False),  # written the HL7 way
        ("Z", "20240715120000", "2024-07-15T12:00:00Z", False),  # the default: UTC, written Z
    ],
)
def test_the_offset_of_a_time_is_the_zones_on_that_local_date_and_time(
    zone: str, raw: str, expected: str | None, problem: bool
) -> None:
    ctx = Context(TABLES, zone=parse_zone(zone))
    assert CONVERTERS["dateTime"](Value(raw), ctx) == expected
    assert bool(ctx.problems) is problem


@pytest.mark.parametrize(
    ("raw", "expected", "problem"),
    [
        ("20240701125015", "2024-07-01T12:50:15-05:00", False),  # precise to the second already
        ("202407011250", "2024-07-01T12:50:00-05:00", False),  # to the minute: zero seconds
        ("2024010112", "2024-01-01T12:00:00-06:00", False),  # to the hour, in January
        ("202407011250-0400", "2024-07-01T12:50:00-04:00", False),  # its own offset
        ("20240701", None, True),  # a date has no time of day: no instant, reported
        ("202407", None, True),
    ],
)
def test_an_instant_pads_minute_and_hour_precision_in_the_senders_zone(
    raw: str, expected: str | None, problem: bool
) -> None:
    ctx = Context(TABLES, zone=parse_zone("America/Chicago"))
    assert CONVERTERS["instant"](Value(raw), ctx) == expected
    assert bool(ctx.problems) is problem


def test_a_context_without_a_zone_is_utc() -> None:
    ctx = Context(TABLES)
    assert ctx.zone == UTC
    assert CONVERTERS["dateTime"](Value("20240715120000"), ctx) == "2024-07-15T12:00:00Z"


def test_a_zone_answers_for_a_naive_local_time_ignoring_any_fold_or_tzinfo_given() -> None:
    chicago = parse_zone("America/Chicago")
    # fold=1 would pick the second 01:30 (-06:00); the documented choice is the first, always.
    assert chicago.offset_at(datetime(2024, 11, 3, 1, 30, fold=1)) == "-05:00"
    assert chicago.offset_at(datetime(2024, 11, 3, 1, 30, tzinfo=UTC.tz)) == "-05:00"


# --- whole messages ----------------------------------------------------------------------------------


def site_mappings(root: Path, timezone: str) -> Path:
    """A copy of the shipped mappings plus a site file for CENTRAL LAB whose `timezone` line is
    `timezone: <timezone>` (YAML as written: quote it yourself where YAML needs quotes)."""
    copy = root / "mappings"
    shutil.copytree(PROJECT_ROOT / "mappings", copy)
    site = copy / "hl7v2" / "sites" / "central-lab.yaml"
    site.write_text(f"site: central-lab\nmatch:\n  sending_facility: {CENTRAL}\ntimezone: {timezone}\n")
    return copy


@pytest.fixture(scope="module")
def chicago(tmp_path_factory: pytest.TempPathFactory) -> Translator:
    """A translator whose CENTRAL LAB site is in America/Chicago (other senders: the default, UTC)."""
    return Translator(load(site_mappings(tmp_path_factory.mktemp("chicago"), "America/Chicago")))


def result(facility: str, sent: str, observed: str, analysed: str = "", reported: str = "") -> str:
    """An ORU^R01 from `facility` whose MSH-7 is `sent`: one order (OBR-7, OBR-22) and one OBX (OBX-14,
    OBX-19), written from the v2.5.1 segment definitions."""
    segments = [
        msh("ORU^R01", "T-1", facility=facility, when=sent),
        pid("MRN-T1"),
        "ORC|RE|ORD-T1^EHR|FORD-T1^LAB",
        f"OBR|1|ORD-T1^EHR|FORD-T1^LAB|2345-7^Glucose^LN|||{observed}|||||||||||||||{reported}|||F",
        f"OBX|1|NM|2345-7^Glucose^LN||95|mg/dL^^UCUM|70-99||||F|||{observed}|||||{analysed}",
    ]
    return "\r".join(segments) + "\r"


def resources(translator: Translator, message: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The resources by type (one of each here) and the problems the translation reported."""
    done = translator.translate(Message(message))
    return {p.resource["resourceType"]: p.resource for p in done.resources}, done.problems


def test_msh7s_offset_is_not_applied_to_other_fields() -> None:
    # A January MSH-7 with the sender's winter offset; the result is from July and carries no offset.
    # No site matches, so the gateway's default (Z) applies: MSH-7's -06:00 would be wrong in July.
    produced, _ = resources(
        Translator(load(PROJECT_ROOT / "mappings")),
        result("UNKNOWN LAB", "20240115083000-0600", "20240715120000"),
    )
    assert produced["Observation"]["effectiveDateTime"] == "2024-07-15T12:00:00Z"


def test_the_default_zone_may_be_an_iana_zone_too() -> None:
    translator = Translator(load(PROJECT_ROOT / "mappings"), default_zone=parse_zone("America/Chicago"))
    produced, _ = resources(translator, result("UNKNOWN LAB", "20240115083000-0600", "20240715120000"))
    assert produced["Observation"]["effectiveDateTime"] == "2024-07-15T12:00:00-05:00"


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        ("20240115120000", "2024-01-15T12:00:00-06:00"),  # January: Central Standard Time
        ("20240715120000", "2024-07-15T12:00:00-05:00"),  # July: Central Daylight Time
        ("20240715120000+0200", "2024-07-15T12:00:00+02:00"),  # the value's own offset wins
    ],
)
def test_a_site_in_an_iana_zone_follows_daylight_saving_time(
    chicago: Translator, observed: str, expected: str
) -> None:
    # MSH-7 carries -0600 (January) in every row: it must not decide any of them.
    produced, problems = resources(chicago, result(CENTRAL, "20240115083000-0600", observed))
    assert produced["Observation"]["effectiveDateTime"] == expected
    assert produced["DiagnosticReport"]["effectiveDateTime"] == expected
    assert problems == []


def test_a_minute_precision_issued_time_is_kept_as_an_instant(chicago: Translator) -> None:
    # OBR-22 and OBX-19 are written to the minute, as many labs do; FHIR instant wants seconds: padded.
    message = result(CENTRAL, "20240701125500-0500", "20240701110000", "202407011250", "202407011250")
    produced, problems = resources(chicago, message)
    assert produced["Observation"]["issued"] == "2024-07-01T12:50:00-05:00"
    assert produced["DiagnosticReport"]["issued"] == "2024-07-01T12:50:00-05:00"
    assert problems == []


def test_the_converter_memo_keeps_senders_zones_apart(chicago: Translator) -> None:
    # The same raw OBX-14 from the Chicago site and from a sender on the default zone, alternately:
    # a memo keyed on anything but the zone would hand one sender the other's offset.
    sent = "20240715130000-0500"
    for facility, expected in ((CENTRAL, "-05:00"), ("OTHER LAB", "Z"), (CENTRAL, "-05:00")):
        produced, _ = resources(chicago, result(facility, sent, "20240715120000"))
        assert produced["Observation"]["effectiveDateTime"] == f"2024-07-15T12:00:00{expected}"


def test_zones_are_read_at_load_not_per_message(chicago: Translator, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_database_reads(key: str) -> None:
        raise AssertionError(f"the tz database was read for {key} while translating")

    monkeypatch.setattr(zones.zoneinfo, "ZoneInfo", no_database_reads)
    produced, _ = resources(chicago, result(CENTRAL, "20240115083000-0600", "20240116120000"))
    assert produced["Observation"]["effectiveDateTime"] == "2024-01-16T12:00:00-06:00"


@pytest.mark.parametrize(
    ("timezone", "key"),
    [
        ("America/Chicago", "America/Chicago"),  # unquoted names are fine YAML
        ('"-06:00"', "-06:00"),  # quoted: YAML reads some unquoted offsets as numbers
        ("'-0600'", "-06:00"),
        ("Z", "Z"),
        ("null", None),  # no zone: the gateway's default
    ],
)
def test_a_site_timezone_is_parsed_at_load(tmp_path: Path, timezone: str, key: str | None) -> None:
    (site,) = [s for s in load(site_mappings(tmp_path, timezone)).sites if s.name == "central-lab"]
    assert (site.timezone.key if site.timezone else None) == key


@pytest.mark.parametrize(
    ("timezone", "named"),
    [
        ("Foo/Bar", "'Foo/Bar' is not an IANA time zone"),  # no such zone
        ("America/Chicag", "'America/Chicag' is not an IANA time zone"),  # a typo
        ('"+25:00"', "'+25:00' is not a valid UTC offset"),  # no such offset
        ('"-06:60"', "'-06:60' is not a valid UTC offset"),  # 60 minutes
        ("../etc/passwd", "'../etc/passwd' is not an IANA time zone"),  # a path
        ('""', "'' is not an IANA time zone"),  # empty
        ("-0600", "-384 is not an IANA time zone"),  # YAML reads an unquoted -0600 as octal -384 ...
    ],
)
def test_an_invalid_site_timezone_stops_the_load_naming_file_and_value(
    tmp_path: Path, timezone: str, named: str
) -> None:
    with pytest.raises(MappingError) as raised:
        load(site_mappings(tmp_path, timezone))
    assert f"central-lab.yaml: timezone {named}" in str(raised.value)
    if timezone == "-0600":
        assert 'write it as quoted text ("-06:00")' in str(raised.value)  # ... and the message says so


def test_the_shipped_example_site_is_in_chicago() -> None:
    # mappings/README.md shows it as the worked example of a site `timezone`.
    (site,) = [s for s in load(PROJECT_ROOT / "mappings").sites if s.name == "example-lab"]
    assert site.timezone is not None and site.timezone.key == "America/Chicago"
