"""HL7 v2 datatypes to FHIR JSON: every converter, driven by literal HL7 values."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from gateway.adapters.hl7v2 import datatypes
from gateway.adapters.hl7v2.datatypes import CONVERTERS, INTERPRETATION, UCUM, Context
from gateway.adapters.hl7v2.er7 import Message, Segment, Value
from gateway.fhir.jsonio import DecimalLiteral
from gateway.mapping.zones import UTC, parse_zone
from tests.unit.hl7_tables import TABLES_DIR, YamlTables, load_table

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SNOMED = "http://snomed.info/sct"
STMARY = "urn:oid:2.16.840.1.113883.3.72.5.9.1"
NPI = "http://hl7.org/fhir/sid/us-npi"

# The shipped tables, plus a site's assigning authorities (that table is site data, not shipped).
TABLES = YamlTables(extra={"assigning-authorities": {"STMARY": STMARY, "NPI": NPI}})


def convert(name: str, raw: str, zone: str | None = None) -> tuple[Any, list[str]]:
    """Run the converter registered as `name` on one HL7 value, the sender in `zone` (default: UTC);
    return its result and the problems."""
    ctx = Context(TABLES, zone=parse_zone(zone) if zone else UTC)
    return CONVERTERS[name](Value(raw), ctx), ctx.problems


def segment(line: str) -> Segment:
    """A segment as the tokenizer gives it, from one line after a minimal MSH."""
    message = Message(f"MSH|^~\\&|LAB|HOSP|GW|GW|20240301||ORU^R01|1|P|2.5.1\r{line}")
    return message.segments[1]


def obx(value_type: str, value: str, units: str = "", ref: str = "", flags: str = "") -> Segment:
    return segment(f"OBX|1|{value_type}|718-7^Hemoglobin^LN||{value}|{units}|{ref}|{flags}|||F")


# The OBX-3 of `obx()`, as each component of a repeating value carries it.
HEMOGLOBIN = {"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}


def ucum(number: float, code: str, unit: str | None = None) -> dict[str, Any]:
    return {"value": number, "unit": unit or code, "system": UCUM, "code": code}


# --- primitives --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "expected", "problem"),
    [
        ("string", "  ABC  ", "ABC", False),  # fixed-width padding is trimmed
        ("string", r"A \T\ B \F\ C \S\ D \E\ E", "A & B | C ^ D \\ E", False),  # escapes resolved
        ("string", '""', None, False),  # the explicit null maps to nothing
        (
            "text",
            r"line one\.br\  indented two  ",
            "line one\n  indented two",
            False,
        ),  # FT break, indent kept
        ("text", r"\H\bold\N\ text", "bold text", False),  # highlighting is presentation only
        ("code", "F^Final^HL70085", "F", False),  # first component only
        ("code", "  ", None, False),  # blanks are no code
        ("boolean", "Y", True, False),
        ("boolean", "n", False, False),  # lower case seen in the wild
        ("boolean", "X", None, True),  # not a Y/N value
        ("integer", "+007", 7, False),  # leading sign and zeros
        ("integer", "3.5", None, True),  # not whole
        ("integer", "99999999999", None, True),  # beyond FHIR's 32-bit integer
        (
            "decimal",
            "+007.50",
            DecimalLiteral("7.50"),
            False,
        ),  # leading + and zeros go, the trailing zero stays
        ("decimal", "0010", 10, False),  # integral: stays an int
        ("decimal", "7.0", DecimalLiteral("7.0"), False),  # written with a decimal: precision kept
        ("decimal", "-.5", DecimalLiteral("-0.5"), False),  # no digit before the point
        ("decimal", "5.", 5, False),  # trailing point
        ("decimal", "1e3", None, True),  # NM has no exponent
        ("decimal", "12,5", None, True),  # a decimal comma is not NM
        ("decimal", "", None, False),  # empty: nothing, no problem
    ],
)
def test_primitives(name: str, raw: str, expected: Any, problem: bool) -> None:
    result, problems = convert(name, raw)
    assert result == expected
    assert type(result) is type(expected)
    assert str(result) == str(expected)  # a decimal keeps the digits it was written with
    assert bool(problems) is problem


# --- dates and times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "default", "expected", "problem"),
    [
        ("20240301083015+0200", None, "2024-03-01T08:30:15+02:00", False),  # the value's own offset
        ("20240301083015+0200", "-05:00", "2024-03-01T08:30:15+02:00", False),  # own offset beats default
        ("202403010830", "-05:00", "2024-03-01T08:30:00-05:00", False),  # default offset, seconds added
        ("2024030108", None, "2024-03-01T08:00:00Z", False),  # hour precision, no offset anywhere: Z
        ("202403010830", "+0530", "2024-03-01T08:30:00+05:30", False),  # default written the HL7 way
        ("202403010830", "Z", "2024-03-01T08:30:00Z", False),
        ("20240301083015.1234-0215", None, "2024-03-01T08:30:15.1234-02:15", False),  # odd offset, fraction
        ("20240301083015^S", None, "2024-03-01T08:30:15Z", False),  # TS degree of precision ignored
        ("20240301", "+02:00", "2024-03-01", False),  # date-only stays a date, no offset added
        ("202403", None, "2024-03", False),  # month precision kept
        ("2024", None, "2024", False),  # year precision kept
        ("20240301+0200", None, "2024-03-01", False),  # a date carries no offset in FHIR
        ("20240229", None, "2024-02-29", False),  # leap day
        ("20230229", None, None, True),  # no leap day in 2023
        ("2024030125", None, None, True),  # hour 25
        ("20240301083015+1500", None, None, True),  # offset beyond +14:00
        ("2024-03-01", None, None, True),  # ISO text is not an HL7 DTM
    ],
)
def test_date_time(raw: str, default: str | None, expected: str | None, problem: bool) -> None:
    result, problems = convert("dateTime", raw, default)
    assert result == expected
    assert bool(problems) is problem


@pytest.mark.parametrize(
    ("name", "raw", "expected", "problem"),
    [
        ("instant", "20240301083015", "2024-03-01T08:30:15Z", False),  # precise to the second
        ("instant", "20240301083015.25-0500", "2024-03-01T08:30:15.25-05:00", False),
        ("instant", "202403010830", "2024-03-01T08:30:00Z", False),  # minute precision: seconds padded
        ("instant", "2024030108", "2024-03-01T08:00:00Z", False),  # hour precision: minutes too
        ("instant", "20240301", None, True),  # a date alone is no instant
        ("date", "20240301083015+0200", "2024-03-01", False),  # the date part of a DTM
        ("date", "202403", "2024-03", False),
        ("date", "202413", None, True),  # month 13
        ("time", "0830", "08:30:00", False),  # seconds added
        ("time", "08", "08:00:00", False),  # hour only
        ("time", "083015.5", "08:30:15.5", False),  # fraction kept
        ("time", "0830+0100", "08:30:00", True),  # FHIR time has no offset: dropped, reported
        ("time", "2561", None, True),  # no such time
    ],
)
def test_instant_date_time_of_day(name: str, raw: str, expected: str | None, problem: bool) -> None:
    result, problems = convert(name, raw)
    assert result == expected
    assert bool(problems) is problem


# --- coded values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Two triplets, a version and original text: LOINC gets its URI, the local code none.
        (
            "718-7^Hemoglobin^LN^HGB^Hgb^99LAB^2.77^^Hemoglobin [Mass/volume] in Blood",
            {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "version": "2.77",
                        "code": "718-7",
                        "display": "Hemoglobin",
                    },
                    {"code": "HGB", "display": "Hgb"},
                ],
                "text": "Hemoglobin [Mass/volume] in Blood",
            },
        ),
        # "L" is local: code kept, no system.
        ("GLU^Glucose^L", {"coding": [{"code": "GLU", "display": "Glucose"}]}),
        # An HL7 table name becomes the THO v2 code system.
        (
            "F^Female^HL70001",
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0001",
                        "code": "F",
                        "display": "Female",
                    }
                ]
            },
        ),
        # The short HLnnnn spelling too.
        (
            "N^No^HL0136",
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0136", "code": "N", "display": "No"}
                ]
            },
        ),
        # A name nobody knows: no invented URI.
        ("77^Seventy-seven^XYZ", {"coding": [{"code": "77", "display": "Seventy-seven"}]}),
        # Names are matched regardless of case.
        (
            "44054006^Diabetes^sct",
            {"coding": [{"system": SNOMED, "code": "44054006", "display": "Diabetes"}]},
        ),
        # CWE-14, the coding-system OID of v2.7, gives a system when the name does not.
        (
            "123^Thing^LOCALX" + "^" * 11 + "2.16.840.1.113883.19.5",
            {"coding": [{"system": "urn:oid:2.16.840.1.113883.19.5", "code": "123", "display": "Thing"}]},
        ),
        # Escapes inside a component.
        (r"1^A \T\ B^L", {"coding": [{"code": "1", "display": "A & B"}]}),
        # The second alternate triplet (CWE-10..12).
        (
            "1^One^LN^2^Two^SCT^^^^3^Three^L",
            {
                "coding": [
                    {"system": "http://loinc.org", "code": "1", "display": "One"},
                    {"system": SNOMED, "code": "2", "display": "Two"},
                    {"code": "3", "display": "Three"},
                ]
            },
        ),
        # The same triplet twice is one coding.
        ("1^One^LN^1^One^LN", {"coding": [{"system": "http://loinc.org", "code": "1", "display": "One"}]}),
        # Text without a code cannot be a coding: it becomes the concept's text.
        ("^Hemo^^HGB^Hgb^99LAB", {"coding": [{"code": "HGB", "display": "Hgb"}], "text": "Hemo"}),
        ("^Free text only", {"text": "Free text only"}),
        ("", None),
    ],
)
def test_codeable_concept(raw: str, expected: dict[str, Any] | None) -> None:
    result, problems = convert("CodeableConcept", raw)
    assert result == expected
    assert problems == []  # local and unknown systems are not errors


def test_coding_is_the_first_coding() -> None:
    result, problems = convert("Coding", "718-7^Hemoglobin^LN^HGB^Hgb^99LAB")
    assert result == {"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}
    assert problems == []


def test_coding_without_a_code_is_reported() -> None:
    result, problems = convert("Coding", "^Free text only")
    assert result is None
    assert "has no code" in problems[0]


# --- identifiers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "problem"),
    [
        # ISO OID assigning authority, identifier type, assigner from the namespace.
        (
            "12345^^^HOSP&2.16.840.1.113883.19.5&ISO^MR",
            {
                "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                "system": "urn:oid:2.16.840.1.113883.19.5",
                "value": "12345",
                "assigner": {"display": "HOSP"},
            },
            False,
        ),
        # UUID universal id, written in upper case by the sender.
        (
            "A1^^^&550E8400-E29B-41D4-A716-446655440000&UUID",
            {"system": "urn:uuid:550e8400-e29b-41d4-a716-446655440000", "value": "A1"},
            False,
        ),
        # A universal id that is already a URI.
        (
            "123-45-6789^^^&http://hl7.org/fhir/sid/us-ssn&URI^SS",
            {
                "type": {"coding": [{"system": V2_0203, "code": "SS"}]},
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": "123-45-6789",
            },
            False,
        ),
        # A namespace the site's assigning-authorities table knows.
        (
            "555^^^STMARY^MR",
            {
                "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                "system": STMARY,
                "value": "555",
                "assigner": {"display": "STMARY"},
            },
            False,
        ),
        # An unknown namespace: a stable, percent-encoded local URN.
        (
            "555^^^St Mary's",
            {
                "system": "urn:hl7v2:authority:St%20Mary%27s",
                "value": "555",
                "assigner": {"display": "St Mary's"},
            },
            False,
        ),
        # HD-3 says ISO but HD-2 is no OID: fall back to the namespace, and say so.
        (
            "9^^^LAB&not-an-oid&ISO",
            {"system": "urn:hl7v2:authority:LAB", "value": "9", "assigner": {"display": "LAB"}},
            True,
        ),
        # CX-7/CX-8 validity dates.
        (
            "12345^^^HOSP^MR^^20200101^20251231",
            {
                "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                "system": "urn:hl7v2:authority:HOSP",
                "value": "12345",
                "assigner": {"display": "HOSP"},
                "period": {"start": "2020-01-01", "end": "2025-12-31"},
            },
            False,
        ),
        ("^^^HOSP^MR", None, False),  # no id number: no identifier
    ],
)
def test_identifier_cx(raw: str, expected: dict[str, Any] | None, problem: bool) -> None:
    result, problems = convert("Identifier", raw)
    assert result == expected
    assert bool(problems) is problem


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HOSP^2.16.840.1.113883.19.5^ISO", "urn:oid:2.16.840.1.113883.19.5"),  # HD as a whole field
        ("STMARY", STMARY),  # namespace only, known to the table
        ("^urn:oid:1.2.3^ISO", "urn:oid:1.2.3"),  # already a URI: not wrapped twice
        ("", None),  # nothing: no system
    ],
)
def test_authority(raw: str, expected: str | None) -> None:
    assert datatypes.authority(Value(raw), Context(TABLES)) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "ORD123^LAB^2.16.840.1.113883.19.6^ISO",
            {"system": "urn:oid:2.16.840.1.113883.19.6", "value": "ORD123", "assigner": {"display": "LAB"}},
        ),
        (
            "ORD9^PHARM",
            {"system": "urn:hl7v2:authority:PHARM", "value": "ORD9", "assigner": {"display": "PHARM"}},
        ),
        ("ORD10", {"value": "ORD10"}),  # no authority at all: value only
    ],
)
def test_identifier_ei(raw: str, expected: dict[str, Any]) -> None:
    result, _ = convert("Identifier-EI", raw)
    assert result == expected


# --- names, addresses, telecoms ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "problem"),
    [
        # FN subcomponents, further given names, suffix + degree, prefix, legal name.
        (
            "Smith&van&Smith^John^Quincy^Jr^Dr^MD^L",
            {
                "use": "official",
                "family": "Smith",
                "given": ["John", "Quincy"],
                "prefix": ["Dr"],
                "suffix": ["Jr", "MD"],
            },
            False,
        ),
        ("Doe^Jane^^^^^M", {"use": "maiden", "family": "Doe", "given": ["Jane"]}, False),
        ("Doe^Jay^^^^^N", {"use": "nickname", "family": "Doe", "given": ["Jay"]}, False),
        ("Doe^Jane^^^^^D", {"use": "usual", "family": "Doe", "given": ["Jane"]}, False),
        (
            "Roe^Rich^^^^^S",
            {"use": "anonymous", "family": "Roe", "given": ["Rich"]},
            False,
        ),  # coded pseudo-name
        ("Doe^Jane^^^^^A", {"family": "Doe", "given": ["Jane"]}, True),  # A is alias, not anonymous: no use
        ("Doe^Jane^^^^^B", {"family": "Doe", "given": ["Jane"]}, True),  # birth name has no NameUse
        (
            "Doe^Jane^^^^^L^^^^^20200101",
            {"use": "official", "family": "Doe", "given": ["Jane"], "period": {"start": "2020-01-01"}},
            False,
        ),
        ("&van&Berg^Anna", {"family": "van Berg", "given": ["Anna"]}, False),  # only own prefix + surname
        ("^^^^^^L", None, False),  # a type without a name is no name
    ],
)
def test_human_name(raw: str, expected: dict[str, Any] | None, problem: bool) -> None:
    result, problems = convert("HumanName", raw)
    assert result == expected
    assert bool(problems) is problem


def test_human_name_from_xcn() -> None:
    result, _ = convert("HumanName-XCN", "1234^Welby^Marcus^A^III^Dr^MD")
    assert result == {"family": "Welby", "given": ["Marcus", "A"], "prefix": ["Dr"], "suffix": ["III", "MD"]}


@pytest.mark.parametrize(
    ("raw", "expected", "problem"),
    [
        # SAD street, other designation, county as district, home.
        (
            "123 Main St&Main St&123^Apt 4^Springfield^IL^62701^USA^H^^Sangamon",
            {
                "use": "home",
                "line": ["123 Main St", "Apt 4"],
                "city": "Springfield",
                "district": "Sangamon",
                "state": "IL",
                "postalCode": "62701",
                "country": "USA",
            },
            False,
        ),
        # Street name and dwelling number without SAD.1; mailing is a type, not a use.
        (
            "&Elm Rd&42^^Oslo^^0150^NOR^M",
            {"type": "postal", "line": ["42 Elm Rd"], "city": "Oslo", "postalCode": "0150", "country": "NOR"},
            False,
        ),
        ("1 Way^^Town^^^^ZZ", {"line": ["1 Way"], "city": "Town"}, True),  # unknown address type reported
        ("^^^^^^H", None, False),  # a type alone is no address
    ],
)
def test_address(raw: str, expected: dict[str, Any] | None, problem: bool) -> None:
    result, problems = convert("Address", raw)
    assert result == expected
    assert bool(problems) is problem


@pytest.mark.parametrize(
    ("raw", "expected", "problem"),
    [
        # Home phone composed from country, area, local number and extension.
        (
            "^PRN^PH^^1^555^5551234^22",
            {"system": "phone", "value": "+1 (555) 5551234 ext. 22", "use": "home"},
            False,
        ),
        ("^NET^Internet^jane.doe@mail.test", {"system": "email", "value": "jane.doe@mail.test"}, False),
        ("^^X.400^someone@mail.test", {"system": "email", "value": "someone@mail.test"}, False),
        (
            "^PRN^CP^^^555^5550000",
            {"system": "phone", "value": "(555) 5550000", "use": "mobile"},
            False,
        ),  # cell
        ("^WPN^FX^^^555^5551111", {"system": "fax", "value": "(555) 5551111", "use": "work"}, False),
        ("^BPN^BP^^^555^5559999", {"system": "pager", "value": "(555) 5559999"}, False),
        # An "Internet" address that is a web address.
        (
            "^WPN^Internet^https://portal.hospital.test",
            {"system": "url", "value": "https://portal.hospital.test", "use": "work"},
            False,
        ),
        ("(555)555-1234", {"system": "phone", "value": "(555)555-1234"}, False),  # v2.2 style XTN-1 only
        (
            "^^^nurse@ward.test",
            {"system": "email", "value": "nurse@ward.test"},
            False,
        ),  # no codes: email by shape
        (
            "^PRN^ZZ^^^555^5551234",
            {"system": "phone", "value": "(555) 5551234", "use": "home"},
            True,
        ),  # bad equipment
        (
            "^ASN^PH^^^555^5550001",
            {"system": "phone", "value": "(555) 5550001"},
            True,
        ),  # answering service: no use
        ("^PRN^PH", None, False),  # codes without a number
    ],
)
def test_contact_point(raw: str, expected: dict[str, Any] | None, problem: bool) -> None:
    result, problems = convert("ContactPoint", raw)
    assert result == expected
    assert bool(problems) is problem


# --- references --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "1234^Welby^Marcus^A^^^^^NPI&2.16.840.1.113883.4.6&ISO",
            {
                "type": "Practitioner",
                "identifier": {"system": "urn:oid:2.16.840.1.113883.4.6", "value": "1234"},
                "display": "Marcus A Welby",
            },
        ),
        # Namespace-only authority resolved by the site table; XCN-13 identifier type.
        (
            "1234567890^Kildare^James^^^^^^NPI^^^^NPI",
            {
                "type": "Practitioner",
                "identifier": {
                    "type": {"coding": [{"system": V2_0203, "code": "NPI"}]},
                    "system": NPI,
                    "value": "1234567890",
                },
                "display": "James Kildare",
            },
        ),
        ("^Welby^Marcus", {"type": "Practitioner", "display": "Marcus Welby"}),  # name only
        ("", None),
    ],
)
def test_practitioner_reference(raw: str, expected: dict[str, Any] | None) -> None:
    result, _ = convert("PractitionerReference", raw)
    assert result == expected
    assert result is None or "reference" not in result  # logical: resolved by identifier later


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "Good Health Lab^L^^^^CLIA&2.16.840.1.113883.4.7&ISO^XX^^^05D1234567",
            {
                "type": "Organization",
                "identifier": {
                    "type": {"coding": [{"system": V2_0203, "code": "XX"}]},
                    "system": "urn:oid:2.16.840.1.113883.4.7",
                    "value": "05D1234567",
                },
                "display": "Good Health Lab",
            },
        ),
        (
            "County Lab^^123",
            {"type": "Organization", "identifier": {"value": "123"}, "display": "County Lab"},
        ),  # XON-3
    ],
)
def test_organization_reference(raw: str, expected: dict[str, Any]) -> None:
    result, _ = convert("OrganizationReference", raw)
    assert result == expected


# --- quantities --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "problem"),
    [
        ("10^mg&milligram&UCUM", ucum(10, "mg", "milligram"), False),  # already UCUM: taken as it is
        ("2^tab", ucum(2, "{tbl}", "tablet"), False),  # pharmacy unit through table units
        ("1.5^K/uL", ucum(1.5, "10*3/uL"), False),
        ("5^widgets", {"value": 5, "unit": "widgets"}, False),  # unknown unit: text kept, nothing reported
        ("abc^mg", None, True),  # not a number
    ],
)
def test_quantity_cq(raw: str, expected: dict[str, Any] | None, problem: bool) -> None:
    result, problems = convert("Quantity", raw)
    assert result == expected
    assert bool(problems) is problem


@pytest.mark.parametrize(
    ("number", "units", "expected"),
    [
        ("7.5", "mg/dL", ucum(7.5, "mg/dL")),
        ("140", "mEq/L", ucum(140, "meq/L", "mEq/L")),
        ("4.1", "x10E3/uL", ucum(4.1, "10*3/uL")),
        ("98", "^beats/min", ucum(98, "/min", "beats/min")),  # the text component is tried as well
        ("5.2", "G/L", {"value": 5.2, "unit": "G/L"}),  # giga or gram per litre? not guessed
        ("3", "", {"value": 3}),  # no units at all
    ],
)
def test_quantity_with_separate_units(number: str, units: str, expected: dict[str, Any]) -> None:
    assert datatypes.quantity(number, Value(units), Context(TABLES)) == expected


# --- OBX-5 -------------------------------------------------------------------------------------------

TEXT_REPORT = base64.b64encode(b"Culture: no growth").decode()
PDF = base64.b64encode(b"%PDF-1.4 fake").decode()


@pytest.mark.parametrize(
    ("value_type", "value", "units", "expected", "problem"),
    [
        ("NM", "13.2", "g/dL", ("valueQuantity", ucum(13.2, "g/dL")), None),  # known unit
        (
            "NM",
            "13.2",
            "furlongs",
            ("valueQuantity", {"value": 13.2, "unit": "furlongs"}),
            None,
        ),  # unknown unit
        (
            "NM",
            "13.2",
            "g/dL^grams per deciliter^UCUM",
            ("valueQuantity", ucum(13.2, "g/dL", "grams per deciliter")),
            None,
        ),
        ("NM", "<0.5", "ng/mL", ("valueQuantity", {**ucum(0.5, "ng/mL"), "comparator": "<"}), "comparator"),
        ("NM", "positive", "", ("valueString", "positive"), "could not be converted"),  # never dropped
        (  # a repeating value: one component per repetition, each with the OBX-3 code (the IG's reading)
            "NM",
            "1.2~1.3",
            "mg/L",
            (
                "component",
                [
                    {"code": {"coding": [HEMOGLOBIN]}, "valueQuantity": ucum(1.2, "mg/L")},
                    {"code": {"coding": [HEMOGLOBIN]}, "valueQuantity": ucum(1.3, "mg/L")},
                ],
            ),
            None,
        ),
        (
            "SN",
            "<0.10",
            "mg/L",
            ("valueQuantity", {**ucum(0.10, "mg/L"), "comparator": "<"}),
            None,
        ),  # 1 comp.
        ("SN", "5", "", ("valueQuantity", {"value": 5}), None),  # a bare number in component 1
        ("SN", "<^0.5", "ng/mL", ("valueQuantity", {**ucum(0.5, "ng/mL"), "comparator": "<"}), None),
        ("SN", ">=^5", "", ("valueQuantity", {"value": 5, "comparator": ">="}), None),
        ("SN", "=^7", "", ("valueQuantity", {"value": 7}), None),  # = is no FHIR comparator
        ("SN", "^10^-^20", "mg/L", ("valueRange", {"low": ucum(10, "mg/L"), "high": ucum(20, "mg/L")}), None),
        ("SN", "^-1.5^-^-0.5", "", ("valueRange", {"low": {"value": -1.5}, "high": {"value": -0.5}}), None),
        (
            "SN",
            "^1^:^128",
            "",
            ("valueRatio", {"numerator": {"value": 1}, "denominator": {"value": 128}}),
            None,
        ),
        ("SN", "^1^/^3", "", ("valueRatio", {"numerator": {"value": 1}, "denominator": {"value": 3}}), None),
        ("SN", "^2^+", "", ("valueString", "2+"), None),  # categorical
        ("SN", "<>^5", "", ("valueString", "<>5"), "not-equal"),
        ("SN", "<^1^-^5", "", ("valueString", "<1-5"), "comparator"),
        (
            "SN",
            "^1^:^128~^1^:^256",
            "",
            (
                "component",
                [
                    {
                        "code": {"coding": [HEMOGLOBIN]},
                        "valueRatio": {"numerator": {"value": 1}, "denominator": {"value": d}},
                    }
                    for d in (128, 256)
                ],
            ),
            None,
        ),
        ("ST", "Positive~see note", "", ("valueString", "Positive\nsee note"), None),  # repetitions joined
        ("TX", r"a \T\ b", "", ("valueString", "a & b"), None),
        ("FT", r"line one\.br\line two", "", ("valueString", "line one\nline two"), None),
        (
            "CWE",
            "260373001^Detected^SCT",
            "",
            (
                "valueCodeableConcept",
                {"coding": [{"system": SNOMED, "code": "260373001", "display": "Detected"}]},
            ),
            None,
        ),
        (
            "CE",
            "POS^Positive^L~NEG^Negative^L",
            "",
            (
                "component",
                [
                    {
                        "code": {"coding": [HEMOGLOBIN]},
                        "valueCodeableConcept": {"coding": [{"code": c, "display": d}]},
                    }
                    for c, d in (("POS", "Positive"), ("NEG", "Negative"))
                ],
            ),
            None,
        ),
        ("DT", "20240301", "", ("valueDateTime", "2024-03-01"), None),
        ("DTM", "202403010830-0500", "", ("valueDateTime", "2024-03-01T08:30:00-05:00"), None),
        ("TS", "20240301083015", "", ("valueDateTime", "2024-03-01T08:30:15Z"), None),
        ("DTM", "notadate", "", ("valueString", "notadate"), "could not be converted"),
        ("TM", "1430", "", ("valueTime", "14:30:00"), None),
        ("ED", f"LAB^TEXT^PLAIN^Base64^{TEXT_REPORT}", "", ("valueString", "Culture: no growth"), None),
        ("ED", "LAB^TEXT^^A^Plain report text", "", ("valueString", "Plain report text"), None),
        (  # a document: an Attachment, which the results adapter puts in the report's presentedForm
            "ED",
            f"LAB^AP^PDF^Base64^{PDF}",
            "",
            ("valueAttachment", {"contentType": "application/pdf", "data": PDF, "size": 13}),
            None,
        ),
        (  # a MIME type written out in ED-2/ED-3
            "ED",
            f"^application^pdf^Base64^{PDF}",
            "",
            ("valueAttachment", {"contentType": "application/pdf", "data": PDF, "size": 13}),
            None,
        ),
        ("ED", "LAB^AP^PDF^Base64^abc", "", ("valueString", "LAB AP PDF Base64 abc"), "not valid Base64"),
        (
            "RP",
            "https://pacs.hospital.test/study/1.2.3^PACS^IM^JPEG",
            "",
            ("valueString", "https://pacs.hospital.test/study/1.2.3"),
            None,
        ),
        # an unsupported type: its parts as text, never with ER7 delimiters in it
        ("NA", "1^2^3", "", ("valueString", "1 2 3"), "value type NA mapped as text"),
        # ST has no components: a separator in it is structure, so the first component is the value
        ("ST", "raw^^99ROC", "", ("valueString", "raw"), "only the first is mapped"),
        # TX is free text: a separator in it is the sender's slip, so no text is lost
        ("TX", "see^attached", "", ("valueString", "see attached"), "unescaped component separators"),
        ("", "free", "", ("valueString", "free"), "none in OBX-2"),
    ],
)
def test_observation_value(
    value_type: str, value: str, units: str, expected: tuple[str, Any], problem: str | None
) -> None:
    ctx = Context(TABLES)
    assert datatypes.observation_value(obx(value_type, value, units), ctx) == expected
    if problem is None:
        assert ctx.problems == []
    else:
        assert any(problem in p for p in ctx.problems), ctx.problems


@pytest.mark.parametrize("value", ["", '""'])
def test_empty_observation_value_is_none(value: str) -> None:
    ctx = Context(TABLES)
    assert (
        datatypes.observation_value(obx("NM", value, "mg/L"), ctx) is None
    )  # the caller adds dataAbsentReason
    assert ctx.problems == []


@pytest.mark.parametrize(
    ("ref", "units", "expected", "problem"),
    [
        (
            "4.5-5.9",
            "10*6/uL",
            [{"low": ucum(4.5, "10*6/uL"), "high": ucum(5.9, "10*6/uL"), "text": "4.5-5.9"}],
            False,
        ),
        (
            "4.5 - 5.9",
            "",
            [{"low": {"value": 4.5}, "high": {"value": 5.9}, "text": "4.5 - 5.9"}],
            False,
        ),  # spaces
        (">5", "", [{"low": {"value": 5}, "text": ">5"}], False),  # a LOW bound, not a high one
        (">=5", "mg/L", [{"low": ucum(5, "mg/L"), "text": ">=5"}], False),
        ("<0.5", "ng/mL", [{"high": ucum(0.5, "ng/mL"), "text": "<0.5"}], False),
        ("<=0.5", "", [{"high": {"value": 0.5}, "text": "<=0.5"}], False),
        (
            "-1.5-2",
            "",
            [{"low": {"value": -1.5}, "high": {"value": 2}, "text": "-1.5-2"}],
            False,
        ),  # negative low
        ("negative", "", [{"text": "negative"}], False),  # text only
        ("5.9-4.5", "", [{"text": "5.9-4.5"}], True),  # inverted: kept as text, reported
        ("", "", [], False),
    ],
)
def test_reference_range(ref: str, units: str, expected: list[dict[str, Any]], problem: bool) -> None:
    ctx = Context(TABLES)
    assert datatypes.reference_range(obx("NM", "1", units, ref), ctx) == expected
    assert bool(ctx.problems) is problem


@pytest.mark.parametrize(
    ("raw", "expected", "problem"),
    [
        ("HH", {"coding": [{"system": INTERPRETATION, "code": "HH", "display": "Critical high"}]}, False),
        ("LL", {"coding": [{"system": INTERPRETATION, "code": "LL", "display": "Critical low"}]}, False),
        ("AA", {"coding": [{"system": INTERPRETATION, "code": "AA", "display": "Critical abnormal"}]}, False),
        ("H", {"coding": [{"system": INTERPRETATION, "code": "H", "display": "High"}]}, False),
        ("N", {"coding": [{"system": INTERPRETATION, "code": "N", "display": "Normal"}]}, False),
        ("<", {"coding": [{"system": INTERPRETATION, "code": "<", "display": "Off scale low"}]}, False),
        (
            "h",
            {"coding": [{"system": INTERPRETATION, "code": "H", "display": "High"}]},
            False,
        ),  # lower case sender
        (
            "H^High^HL70078",
            {"coding": [{"system": INTERPRETATION, "code": "H", "display": "High"}], "text": "High"},
            False,
        ),  # v2.7 CWE form
        ("ZZ", {"coding": [{"code": "ZZ"}]}, True),  # unknown: kept without a system, reported
        ("", None, False),
    ],
)
def test_interpretation(raw: str, expected: dict[str, Any] | None, problem: bool) -> None:
    result, problems = convert("interpretation", raw)
    assert result == expected
    assert bool(problems) is problem


# --- NTE ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            r"NTE|1|L|Specimen \T\ label ok~second line||1234^Welby^Marcus|20240301083015+0000",
            {
                "authorString": "Marcus Welby",
                "time": "2024-03-01T08:30:15+00:00",
                "text": "Specimen & label ok\nsecond line",
            },
        ),
        ("NTE|1|L|Comment||1234", {"authorString": "1234", "text": "Comment"}),  # author by id only
        ("NTE|1|L|", None),  # no comment: no annotation
    ],
)
def test_annotation(line: str, expected: dict[str, Any] | None) -> None:
    assert datatypes.annotation(segment(line), Context(TABLES)) == expected


# --- registry and tables -----------------------------------------------------------------------------


def test_registry_has_every_mapping_name() -> None:
    expected = {
        "string", "text", "code", "boolean", "integer", "decimal", "date", "dateTime", "instant", "time",
        "CodeableConcept", "Coding", "Identifier", "Identifier-EI", "HumanName", "HumanName-XCN", "Address",
        "ContactPoint", "PractitionerReference", "OrganizationReference", "Quantity", "interpretation",
        "DeviceReference", "identifier-value", "Identifier-DLN", "Identifier-XON", "Identifier-CWE",
        "nature-of-abnormal-test", "analysis-date-time", "specimen-reject-reason",
    }  # fmt: skip
    assert set(CONVERTERS) == expected
    assert all(callable(c) for c in CONVERTERS.values())


TABLE_FILES = [
    "coding-systems", "units", "abnormal-flags", "result-status", "report-status", "order-control",
    "order-status", "administrative-sex", "name-use", "address-use", "telecom-use", "telecom-system",
]  # fmt: skip


@pytest.mark.parametrize("table", TABLE_FILES)
def test_table_files_are_described(table: str) -> None:
    document = load_table(TABLES_DIR / f"{table}.yaml")
    assert len(str(document.get("description", ""))) > 80  # says what the table is and where codes come from
    assert document["codes"]
    assert all(isinstance(k, str) for k in document["codes"])  # no YAML surprises (Y/N, numbers)


# FHIR R4 value sets the status tables must land in.
STATUS_TARGETS: dict[str, tuple[Callable[[Any], Any], set[str]]] = {
    "result-status": (
        lambda v: v,
        {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error"},
    ),
    "report-status": (
        lambda v: v,
        {"registered", "partial", "preliminary", "final", "amended", "corrected", "cancelled"},
    ),
    "order-status": (
        lambda v: v,
        {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped"},
    ),
    "order-control": (
        lambda v: v.get("status", "active"),
        {"active", "on-hold", "cancelled", "completed", "stopped"},
    ),
    "administrative-sex": (lambda v: v, {"male", "female", "other", "unknown"}),
    "name-use": (lambda v: v, {"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"}),
}


@pytest.mark.parametrize("table", sorted(STATUS_TARGETS))
def test_status_tables_use_fhir_codes(table: str) -> None:
    pick, allowed = STATUS_TARGETS[table]
    assert {pick(v) for v in TABLES.codes(table).values()} <= allowed


def test_order_control_actions() -> None:
    codes = TABLES.codes("order-control")
    assert codes["NW"] == {"status": "active", "action": "new", "request_status": "active"}
    assert codes["CA"]["request_status"] == "revoked"  # a ServiceRequest has no cancelled status
    assert codes["CA"]["status"] == "cancelled" and codes["DC"]["status"] == "stopped"
    assert codes["XO"]["action"] == "replace"
    assert "status" not in codes["SC"]  # status changed: ORC-5 decides
    assert {v["action"] for v in codes.values()} <= {"new", "update", "replace", "status-only"}


def test_units_table_is_ucum() -> None:
    codes = TABLES.codes("units")
    assert len(codes) >= 60
    assert all(set(v) == {"code", "unit"} for v in codes.values())
    assert "G/L" not in codes  # ambiguous (giga or gram per litre): never guessed


def test_abnormal_flags_map_to_themselves() -> None:
    codes = TABLES.codes("abnormal-flags")
    assert all(v["code"] == k and v["display"] for k, v in codes.items())
    assert {"L", "H", "LL", "HH", "N", "A", "AA", "<", ">", "POS", "NEG"} <= set(codes)
