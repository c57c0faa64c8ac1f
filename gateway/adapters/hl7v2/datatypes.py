"""HL7 v2 datatypes to FHIR R4 JSON: one small, pure converter per datatype.

Every converter takes one repetition of a field (an `er7.Value`) and a `Context`, and returns FHIR JSON
(dicts, strings, numbers) or None when there is nothing to map. Values that cannot be mapped are never
dropped silently: the converter adds a human-readable note to `Context.problems`, which the caller puts
in the message log. Code tables (coding systems, units, abnormal flags, name and address uses...) are
data in `mappings/tables/*.yaml`, reached through `Context.tables`; nothing here does I/O.

The converters are registered in `CONVERTERS` under the names the mapping files use in `with:`. The
segment-level helpers (`observation_value`, `reference_range`, `annotation`) read a whole OBX or NTE.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

from gateway.adapters.hl7v2.er7 import LimitExceeded, Segment, Value, active_limits
from gateway.fhir import jsonio
from gateway.mapping.zones import UTC, Zone

JSON = dict[str, Any]

UCUM = "http://unitsofmeasure.org"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-{}"
LOCAL_AUTHORITY = "urn:hl7v2:authority:"


class Tables(Protocol):
    """Code tables by name (the file stem under mappings/tables/)."""

    def map(self, table: str, code: str) -> Any | None:
        """A value from mappings/tables/<table>.yaml for `code`, or None."""
        ...


@dataclass
class Context:
    """What every converter needs besides the value: tables, the sender's time zone, a problem log."""

    tables: Tables
    zone: Zone = UTC  # the sender's time zone, for times written without an offset (site, else default)
    problems: list[str] = field(default_factory=list)  # notes on values that could not be mapped

    def report(self, note: str) -> None:
        self.problems.append(note)


# --- table look-ups ----------------------------------------------------------------------------------


def _entry(ctx: Context, table: str, key: str) -> Any | None:
    return ctx.tables.map(table, key) if key else None


def _entry_str(ctx: Context, table: str, key: str) -> str | None:
    found = _entry(ctx, table, key)
    if found is None or (isinstance(found, str) and found):
        return found
    ctx.report(f"table {table}: the entry for {key!r} is not a text value; ignored")
    return None


def _entry_dict(ctx: Context, table: str, key: str) -> dict[str, Any] | None:
    found = _entry(ctx, table, key)
    if found is None or isinstance(found, dict):
        return found
    ctx.report(f"table {table}: the entry for {key!r} is not a mapping; ignored")
    return None


def _use_entry(ctx: Context, table: str, key: str, what: str) -> dict[str, Any]:
    """A {use/type/system} entry of a code table; a code the table does not know is reported."""
    if not key:
        return {}
    found = _entry_dict(ctx, table, key)
    if found is None:
        ctx.report(f"{what} {key!r} is not in table {table}; left out")
        return {}
    return found


# --- primitives --------------------------------------------------------------------------------------


def string(value: Value, ctx: Context) -> str | None:
    """ST, ID, IS: one value; blanks around it are padding, not data.

    These types have no components, so component separators in them are the sender's structure, never
    text: the first component is the value and what follows is reported (no FHIR string ever carries an
    ER7 delimiter).
    """
    if not value.structured:
        found = value.text.strip()
        return found or None
    pieces = value.pieces()
    extra = sum(1 for piece in pieces[1:] if piece.strip())
    if extra:
        ctx.report(f"a text value has {extra} component(s) after the first; only the first is mapped")
    return pieces[0].strip() or None


def free_text(value: Value, ctx: Context) -> str:
    """TX, FT and NTE comments as text: unescaped separators in free text are the sender's slip, not
    structure, so the parts are kept, joined with spaces, and the slip is reported."""
    if not value.structured:
        return value.text
    ctx.report("free text holds unescaped component separators; its parts were joined with spaces")
    return " ".join(piece for piece in value.pieces() if piece)


def text(value: Value, ctx: Context) -> str | None:
    """TX, FT: one repetition as text (er7 already turned FT's \\.br\\ into newlines).

    Leading blanks can be layout (indented report lines), so only trailing ones are trimmed.
    """
    found = free_text(value, ctx).rstrip()
    return found or None


def code(value: Value, ctx: Context) -> str | None:
    """The first component as a code (an ID, IS, or the identifier of a CWE)."""
    found = value.c(1).strip()
    return found or None


def boolean(value: Value, ctx: Context) -> bool | None:
    """HL7 table 0136 (Y/N) as a JSON boolean."""
    flag = value.c(1).strip()
    if not flag:
        return None
    if flag.upper() in ("Y", "N"):
        return flag.upper() == "Y"
    ctx.report(f"{flag!r} is not a Y/N value; left out")
    return None


_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_INT32 = (-(2**31), 2**31 - 1)


def integer(value: Value, ctx: Context) -> int | None:
    """An NM or SI that must be whole: a FHIR integer (32-bit)."""
    raw = value.c(1).strip()
    if not raw:
        return None
    if not _INTEGER.fullmatch(raw):
        ctx.report(f"{raw!r} is not a whole number; left out")
        return None
    number_ = int(raw)
    if not _INT32[0] <= number_ <= _INT32[1]:
        ctx.report(f"{raw!r} is out of range for a FHIR integer; left out")
        return None
    return number_


def number(raw: str, ctx: Context) -> int | float | None:
    """HL7 NM text as a JSON number: leading + and zeros allowed, no exponent.

    Values written without decimals stay ints; values with decimals keep the digits as written
    (a DecimalLiteral: "7.20" is stored and served as 7.20, never 7.2; significant figures matter).
    A value with more digits than the limit in force (leading zeros aside) refuses the message
    (`LimitExceeded`, which the pipeline answers with an AE naming the field): converting thousands of
    digits costs seconds, and no measurement has that many. An integer beyond 64 bits (a limit raised
    past 18 digits) is kept as a decimal literal, which serializes with every digit.
    """
    raw = raw.strip()
    if not raw:
        return None
    if not _NUMBER.fullmatch(raw):
        ctx.report(f"{raw!r} is not an HL7 number (NM); left out")
        return None
    cap = active_limits().number_digits
    digits = sum(c.isdigit() for c in raw.lstrip("+-").lstrip("0")) if len(raw) > cap else 0
    if digits > cap:
        raise LimitExceeded(f"A number of {digits} digits; at most {cap} are accepted", code="104", value=raw)
    found = jsonio.decimal_literal(raw)
    if found is None:
        ctx.report(f"{raw!r} is beyond the range of a number; left out")
    elif type(found) is int and not -(2**63) <= found < 2**63:
        return jsonio.DecimalLiteral(str(found))
    return found


def decimal(value: Value, ctx: Context) -> int | float | None:
    """NM as a FHIR decimal (a JSON number)."""
    return number(value.c(1), ctx)


# --- dates and times ---------------------------------------------------------------------------------

_DTM = re.compile(
    r"(?P<Y>\d{4})(?:(?P<M>\d{2})(?:(?P<D>\d{2})(?:(?P<h>\d{2})(?:(?P<m>\d{2})"
    r"(?:(?P<s>\d{2})(?:\.(?P<f>\d{1,4}))?)?)?)?)?)?(?P<tz>[+-]\d{4})?"
)
_TM = re.compile(r"(?P<h>\d{2})(?:(?P<m>\d{2})(?:(?P<s>\d{2})(?:\.(?P<f>\d{1,4}))?)?)?(?P<tz>[+-]\d{4})?")
# FHIR's time-zone rule: -13:59..+13:59, or +/-14:00.
_FHIR_OFFSET = re.compile(r"Z|[+-](?:(?:0\d|1[0-3]):[0-5]\d|14:00)")


@dataclass(frozen=True, slots=True)
class _Moment:
    date: str  # YYYY, YYYY-MM or YYYY-MM-DD
    time: str | None  # HH:MM:SS[.f] when the value has a time part
    offset: str | None  # the value's own offset as +HH:MM
    wall: datetime | None  # the local date and time (to the second) when there is a time part


def _offset(raw: str) -> str | None:
    """+HHMM (HL7) or +HH:MM/Z (FHIR) as a FHIR offset, or None if it is not a valid one."""
    if len(raw) == 5 and raw[1:].isdigit():
        raw = f"{raw[:3]}:{raw[3:]}"
    return raw if _FHIR_OFFSET.fullmatch(raw) else None


def _clock(hour: str, minute: str | None, second: str | None, fraction: str | None) -> str | None:
    if int(hour) > 23 or int(minute or 0) > 59 or int(second or 0) > 59:
        return None
    clock = f"{hour}:{minute or '00'}:{second or '00'}"
    return f"{clock}.{fraction}" if fraction else clock


def _moment(raw: str, ctx: Context) -> _Moment | None:
    """Parse a DT/DTM/TS value; a value that is no real date is reported and gives None."""
    raw = raw.strip()
    if not raw:
        return None
    found = _DTM.fullmatch(raw)
    if found is None:
        ctx.report(f"{raw!r} is not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]); left out")
        return None
    parts = found.groupdict()
    year, month, day = int(parts["Y"]), parts["M"], parts["D"]
    bad = year == 0 or (month is not None and not 1 <= int(month) <= 12)
    if not bad and day is not None and month is not None:
        bad = not 1 <= int(day) <= calendar.monthrange(year, int(month))[1]
    clock = _clock(parts["h"], parts["m"], parts["s"], parts["f"]) if parts["h"] else None
    offset = _offset(parts["tz"]) if parts["tz"] else None
    if bad or (parts["h"] and clock is None) or (parts["tz"] and offset is None):
        ctx.report(f"{raw!r} is not a valid date/time; left out")
        return None
    date_ = "-".join(p for p in (parts["Y"], month, day) if p)
    wall = None
    if clock is not None and month and day:  # the pattern allows a time only after a full date
        hour, minute, second = (int(parts[k] or 0) for k in ("h", "m", "s"))
        wall = datetime(year, int(month), int(day), hour, minute, second)
    return _Moment(date_, clock, offset, wall)


def _zone_offset(wall: datetime, ctx: Context) -> str | None:
    """The sender's zone's offset on the value's own date and time (not the message's: a January
    message may carry a July result); None, reported, where that is no FHIR offset (local mean time
    beyond +14:00 before 1867 in Alaska)."""
    offset = ctx.zone.offset_at(wall)
    if _FHIR_OFFSET.fullmatch(offset):
        return offset
    ctx.report(f"time zone {ctx.zone.key} gives {offset} at {wall.isoformat()}, beyond FHIR's +/-14:00")
    return None


def _stamp(moment: _Moment, ctx: Context) -> str | None:
    """A parsed value as a FHIR dateTime: a bare date as it is, a time with its own offset, else the
    sender's zone's."""
    if moment.wall is None:
        return moment.date  # FHIR dateTime allows a bare date of the same precision, never an offset
    # A time without an offset fails FHIR validation: the sender's zone (site, else default) fills it in.
    offset = moment.offset or _zone_offset(moment.wall, ctx)
    return f"{moment.date}T{moment.time}{offset}" if offset else None


def _date_time(raw: str, ctx: Context) -> str | None:
    moment = _moment(raw, ctx)
    return _stamp(moment, ctx) if moment else None


def date_time(value: Value, ctx: Context) -> str | None:
    """DTM or TS (first component) as a FHIR dateTime; any time part gets seconds and an offset."""
    return _date_time(value.c(1), ctx)


def date(value: Value, ctx: Context) -> str | None:
    """DT, or the date part of a DTM, as a FHIR date of the same precision."""
    moment = _moment(value.c(1), ctx)
    return moment.date if moment else None


def instant(value: Value, ctx: Context) -> str | None:
    """A DTM as a FHIR instant, which must name a time of day to the second: a value to the hour or the
    minute (as many labs write OBR-22) gets zero minutes and seconds, a date alone is reported."""
    moment = _moment(value.c(1), ctx)
    if moment is None:
        return None
    if moment.wall is None:
        ctx.report(f"{value.c(1).strip()!r} has no time of day, as an instant must; left out")
        return None
    return _stamp(moment, ctx)


def time(value: Value, ctx: Context) -> str | None:
    """TM as a FHIR time (HH:MM:SS[.f]); FHIR times have no offset, so one the sender gave is reported."""
    raw = value.c(1).strip()
    if not raw:
        return None
    found = _TM.fullmatch(raw)
    clock = _clock(found["h"], found["m"], found["s"], found["f"]) if found else None
    if found is None or clock is None:
        ctx.report(f"{raw!r} is not an HL7 time (HH[MM[SS[.S]]][+/-ZZZZ]); left out")
        return None
    if found["tz"]:
        ctx.report(f"time {raw!r}: FHIR time has no offset; {found['tz']} dropped")
    return clock


def _period(start: str, end: str, ctx: Context) -> JSON | None:
    period = {k: v for k, v in (("start", _date_time(start, ctx)), ("end", _date_time(end, ctx))) if v}
    return period or None


# --- coded values ------------------------------------------------------------------------------------

_HL7_TABLE = re.compile(r"HL7?(\d{4})")
_OID = re.compile(r"[0-2](?:\.(?:0|[1-9]\d*))+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_URI = re.compile(r"(?:urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:|https?://)\S+")
# Component numbers of the CWE triplets: (identifier, text, coding system, version, coding-system OID).
# CE stops at component 6; the OIDs (14, 17, 20) arrived with v2.7.
_TRIPLETS = ((1, 2, 3, 7, 14), (4, 5, 6, 8, 17), (10, 11, 12, 13, 20))


def coding_system(name: str, ctx: Context) -> str | None:
    """The FHIR system URI for an HL7 coding-system name (table 0396), or None for local/unknown ones.

    Names in table `coding-systems` map to their URI; HL7nnnn/HLnnnn are HL7 tables. Anything else
    (99zzz, L, a sender's private name) is local: the code is kept without a system, and nothing is
    reported, because a local code is not an error. No URI is ever made up.
    """
    name = name.strip()
    if not name:
        return None
    uri = _entry_str(ctx, "coding-systems", name)
    if uri is None and name.upper() != name:
        uri = _entry_str(ctx, "coding-systems", name.upper())
    if uri is not None:
        return uri
    table = _HL7_TABLE.fullmatch(name.upper())
    return V2_TABLE.format(table.group(1)) if table else None


def _coding(value: Value, numbers: tuple[int, int, int, int, int], ctx: Context) -> JSON | None:
    code_at, display_at, system_at, version_at, oid_at = numbers
    identifier_ = value.c(code_at).strip()
    if not identifier_:
        return None
    coding_: JSON = {}
    oid = value.c(oid_at).strip()
    system = coding_system(value.c(system_at), ctx) or (f"urn:oid:{oid}" if _OID.fullmatch(oid) else None)
    if system:
        coding_["system"] = system
    version = value.c(version_at).strip()
    if version:
        coding_["version"] = version
    coding_["code"] = identifier_
    display = value.c(display_at).strip()
    if display:
        coding_["display"] = display
    return coding_


def codeable_concept(value: Value, ctx: Context) -> JSON | None:
    """CE, CWE, CNE, CF: up to three codings, the original text (component 9) as `text`.

    A triplet with text but no code cannot be a coding; its text becomes `text` when the sender gave
    no original text, so it is not lost.
    """
    if not value:
        return None
    codings: list[JSON] = []
    loose_text = ""
    for numbers in _TRIPLETS:
        coding_ = _coding(value, numbers, ctx)
        if coding_ is None:
            loose_text = loose_text or value.c(numbers[1]).strip()
        elif coding_ not in codings:
            codings.append(coding_)
    concept: JSON = {}
    if codings:
        concept["coding"] = codings
    original = value.c(9).strip() or loose_text
    if original:
        concept["text"] = original
    return concept or None


def coding(value: Value, ctx: Context) -> JSON | None:
    """The first coding of a CE/CWE/CNE (for elements that take a single Coding)."""
    concept = codeable_concept(value, ctx)
    if concept is None:
        return None
    if "coding" not in concept:
        ctx.report(f"{concept['text']!r} has no code, which a Coding needs; left out")
        return None
    first: JSON = concept["coding"][0]
    return first


# --- identifiers -------------------------------------------------------------------------------------


def _authority(namespace: str, universal: str, kind: str, ctx: Context) -> str | None:
    namespace, universal, kind = namespace.strip(), universal.strip(), kind.strip().upper()
    if universal:
        if _URI.fullmatch(universal):
            return universal
        if kind == "ISO" and _OID.fullmatch(universal):
            return f"urn:oid:{universal}"
        if kind == "UUID" and _UUID.fullmatch(universal):
            return f"urn:uuid:{universal.lower()}"
        if kind in ("ISO", "UUID", "URI"):
            ctx.report(f"assigning authority {universal!r} is not a valid {kind}; namespace used instead")
    name = namespace or universal
    if not name:
        return None
    mapped = _entry_str(ctx, "assigning-authorities", name)
    # Unknown namespaces still need a stable system so identifiers from one sender stay distinct.
    return mapped or LOCAL_AUTHORITY + quote(name, safe="")


def authority(value: Value, ctx: Context) -> str | None:
    """The identifier system for an HD (namespace, universal id, universal id type), or None if empty.

    HD-2 with HD-3 ISO is urn:oid:, with UUID urn:uuid:, a URI is taken as is; otherwise the namespace
    (HD-1) is looked up in table `assigning-authorities`, else urn:hl7v2:authority:<namespace>.
    """
    return _authority(value.c(1), value.c(2), value.c(3), ctx)


def _identifier(value_: str, system: str | None, type_code: str, assigner: str) -> JSON:
    ident: JSON = {}
    if type_code:
        ident["type"] = {"coding": [{"system": IDENTIFIER_TYPE, "code": type_code}]}
    if system:
        ident["system"] = system
    ident["value"] = value_
    if assigner:
        ident["assigner"] = {"display": assigner}
    return ident


def identifier(value: Value, ctx: Context) -> JSON | None:
    """CX: 1 value, 4 assigning authority -> system, 5 type (table 0203), 7/8 validity period."""
    number_ = value.c(1).strip()
    if not number_:
        return None
    hd = value.part(4)
    ident = _identifier(number_, authority(hd, ctx), value.c(5).strip(), hd.c(1).strip())
    period = _period(value.c(7), value.c(8), ctx)
    if period:
        ident["period"] = period
    return ident


def identifier_ei(value: Value, ctx: Context) -> JSON | None:
    """EI: 1 entity id, 2 namespace, 3 universal id, 4 universal id type (same system rules as an HD)."""
    number_ = value.c(1).strip()
    if not number_:
        return None
    system = _authority(value.c(2), value.c(3), value.c(4), ctx)
    return _identifier(number_, system, "", value.c(2).strip())


def identifier_value(value: Value, ctx: Context) -> JSON | None:
    """A bare number (ST: PID-19's SSN) as an Identifier value; the rule's `merge` adds system and type."""
    found = string(value, ctx)
    return {"value": found} if found else None


def identifier_dln(value: Value, ctx: Context) -> JSON | None:
    """DLN (PID-20): 1 licence number, 2 issuing state (table `drivers-license-systems` names the
    state's identifier system), 3 expiration date; type DL."""
    number_ = value.c(1).strip()
    if not number_:
        return None
    state = value.c(2).strip()
    system = _entry_str(ctx, "drivers-license-systems", state.upper()) if state else None
    if state and system is None:
        system = LOCAL_AUTHORITY + "drivers-license:" + quote(state, safe="")
    ident = _identifier(number_, system, "DL", "")
    expires = date(value.part(3), ctx) if value.c(3).strip() else None
    if expires:
        ident["period"] = {"end": expires}
    return ident


def identifier_xon(value: Value, ctx: Context) -> JSON | None:
    """XON: 10 organization identifier (or the older 3), 6 assigning authority, 7 identifier type."""
    number_ = value.c(10).strip() or value.c(3).strip()
    if not number_:
        return None
    return _identifier(number_, authority(value.part(6), ctx), value.c(7).strip(), "")


def identifier_cwe(value: Value, ctx: Context) -> JSON | None:
    """A coded id (CWE: OBX-15's producer id, a CLIA number) as an Identifier: code and its system."""
    number_ = value.c(1).strip()
    if not number_:
        return None
    system = coding_system(value.c(3), ctx)
    return _identifier(number_, system, "", "")


def device_reference(value: Value, ctx: Context) -> JSON | None:
    """EI (OBX-18, equipment instance) as a logical reference to the Device that made the result."""
    ident = identifier_ei(value, ctx)
    return {"type": "Device", "identifier": ident} if ident else None


NATURE_OF_ABNORMAL_TEST = "http://hl7.org/fhir/StructureDefinition/observation-nature-of-abnormal-test"
ANALYSIS_DATE_TIME = "http://hl7.org/fhir/StructureDefinition/observation-analysis-date-time"
SPECIMEN_REJECT_REASON = "https://specialty-gateway.org/fhir/StructureDefinition/specimen-reject-reason"


def nature_of_abnormal_test(value: Value, ctx: Context) -> JSON | None:
    """OBX-10 (table 0080: A age, S sex, R race based...) as the core extension the IG names."""
    flag = value.c(1).strip()
    if not flag:
        return None
    coding_ = {"system": V2_TABLE.format("0080"), "code": flag}
    return {"url": NATURE_OF_ABNORMAL_TEST, "valueCodeableConcept": {"coding": [coding_]}}


def analysis_date_time(value: Value, ctx: Context) -> JSON | None:
    """OBX-19 (date/time of the analysis) as the core extension the IG names."""
    found = date_time(value, ctx)
    return {"url": ANALYSIS_DATE_TIME, "valueDateTime": found} if found else None


def specimen_reject_reason(value: Value, ctx: Context) -> JSON | None:
    """SPM-21 (table 0490: RB broken container, RC clotted, RH hemolysis...): the gateway's extension,
    since R4 Specimen has no element for it."""
    concept = codeable_concept(value, ctx)
    if concept is None:
        return None
    for coding_ in concept.get("coding", []):
        coding_.setdefault("system", V2_TABLE.format("0490"))
    return {"url": SPECIMEN_REJECT_REASON, "valueCodeableConcept": concept}


# --- names, addresses, telecoms ----------------------------------------------------------------------


def _texts(values: Iterable[str]) -> list[str]:
    return [v.strip() for v in values if v.strip()]


def _human_name(
    family: str, given: list[str], prefix: list[str], suffix: list[str], use_code: str, ctx: Context
) -> JSON | None:
    name: JSON = {}
    use_code = use_code.strip()
    if use_code:
        use = _entry_str(ctx, "name-use", use_code)
        if use:
            name["use"] = use
        else:
            ctx.report(f"name type {use_code!r} is not in table name-use; use left out")
    for key, found in (("family", family.strip()), ("given", given), ("prefix", prefix), ("suffix", suffix)):
        if found:
            name[key] = found
    return name if any(k in name for k in ("family", "given", "prefix", "suffix")) else None


def _family(value: Value, at: int) -> str:
    """FN: surname (subcomponent 1); when only own prefix + own surname are given, those joined."""
    fn = value.part(at)
    return fn.c(1).strip() or " ".join(_texts((fn.c(2), fn.c(3))))


def human_name(value: Value, ctx: Context) -> JSON | None:
    """XPN: 1 family, 2+3 given, 4 suffix, 5 prefix, 6 degree and 14 professional suffix, 7 name type."""
    name = _human_name(
        _family(value, 1),
        _texts((value.c(2), value.c(3))),
        _texts((value.c(5),)),
        _texts((value.c(4), value.c(6), value.c(14))),
        value.c(7),
        ctx,
    )
    period = _period(value.c(12), value.c(13), ctx) if name else None
    if name and period:
        name["period"] = period
    return name


def human_name_xcn(value: Value, ctx: Context) -> JSON | None:
    """The name part of an XCN: 2 family, 3 given, 4 middle, 5 suffix, 6 prefix, 7 degree, 10 type."""
    return _human_name(
        _family(value, 2),
        _texts((value.c(3), value.c(4))),
        _texts((value.c(6),)),
        _texts((value.c(5), value.c(7), value.c(21))),
        value.c(10),
        ctx,
    )


def address(value: Value, ctx: Context) -> JSON | None:
    """XAD: 1 street (SAD) + 2 other designation -> line, 3 city, 4 state, 5 zip, 6 country, 9 county."""
    street = value.part(1)
    first_line = street.c(1).strip() or " ".join(_texts((street.c(3), street.c(2))))
    found: JSON = {}
    kind = _use_entry(ctx, "address-use", value.c(7).strip(), "address type")
    for key in ("use", "type"):
        if kind.get(key):
            found[key] = kind[key]
    lines = _texts((first_line, value.c(2)))
    if lines:
        found["line"] = lines
    for key, at in (("city", 3), ("district", 9), ("state", 4), ("postalCode", 5), ("country", 6)):
        part = value.c(at).strip()
        if part:
            found[key] = part
    if not any(k in found for k in ("line", "city", "district", "state", "postalCode", "country")):
        return None
    period = _period(value.c(13), value.c(14), ctx)
    if period:
        found["period"] = period
    return found


def _phone_number(value: Value) -> str:
    """XTN 5-8 (country, area, local number, extension) composed; empty without a local number."""
    country, area, local, extension = (value.c(n).strip() for n in (5, 6, 7, 8))
    if not local:
        return ""
    parts = [country if country.startswith("+") else f"+{country}"] if country else []
    if area:
        parts.append(f"({area})")
    parts.append(local)
    composed = " ".join(parts)
    return f"{composed} ext. {extension}" if extension else composed


def contact_point(value: Value, ctx: Context) -> JSON | None:
    """XTN: 2 use (table telecom-use), 3 equipment (table telecom-system), 4 email, 5-8 phone parts.

    XTN-1, the formatted number deprecated since v2.3, is used when the parts are absent. A value
    without a known system gets one from its shape (an @ means email), as FHIR requires (cpt-2).
    """
    use_entry = _use_entry(ctx, "telecom-use", value.c(2).strip(), "telecommunication use")
    equipment = _use_entry(ctx, "telecom-system", value.c(3).strip(), "telecommunication equipment type")
    system: str | None = equipment.get("system") or use_entry.get("system")
    email = value.c(4).strip()
    legacy = value.c(1).strip()
    if system in ("email", "url") or (system is None and email):
        found = email or legacy
    else:
        found = _phone_number(value) or value.c(12).strip() or legacy or email
    if not found:
        return None
    if system is None:
        system = "email" if "@" in found else "phone"
    if system == "email" and found.lower().startswith(("http://", "https://")):
        system = "url"  # "Internet" covers web addresses as well as email
    point: JSON = {"system": system, "value": found}
    use = equipment.get("use") or use_entry.get("use")
    if use:
        point["use"] = use
    period = _period(value.c(13), value.c(14), ctx)
    if period:
        point["period"] = period
    return point


# --- references --------------------------------------------------------------------------------------


def practitioner_reference(value: Value, ctx: Context) -> JSON | None:
    """XCN as a logical reference: identifier (1, system from 9, type from 13) and "Given Middle Family".

    No literal `reference`: which Practitioner resource this is gets resolved by identifier later.
    """
    reference: JSON = {"type": "Practitioner"}
    number_ = value.c(1).strip()
    if number_:
        hd = value.part(9)
        reference["identifier"] = _identifier(number_, authority(hd, ctx), value.c(13).strip(), "")
    display = " ".join(_texts((value.c(3), value.c(4), _family(value, 2))))
    if display:
        reference["display"] = display
    return reference if len(reference) > 1 else None


def organization_reference(value: Value, ctx: Context) -> JSON | None:
    """XON as a logical reference: display from 1, identifier from 10 (or the older 3), system from 6."""
    reference: JSON = {"type": "Organization"}
    number_ = value.c(10).strip() or value.c(3).strip()
    if number_:
        hd = value.part(6)
        reference["identifier"] = _identifier(number_, authority(hd, ctx), value.c(7).strip(), "")
    display = value.c(1).strip()
    if display:
        reference["display"] = display
    return reference if len(reference) > 1 else None


# --- quantities --------------------------------------------------------------------------------------


def _ucum(label: str, ctx: Context) -> tuple[str, str] | None:
    """(UCUM code, unit text) for a unit as the sender spells it, from table `units`.

    Matching is exact: case carries meaning in units (G/L is giga per litre in some labs, g/L grams),
    so the table lists the case variants senders use instead of the code folding case.
    """
    found = _entry_dict(ctx, "units", label)
    if not found or not isinstance(found.get("code"), str):
        return None
    return found["code"], str(found.get("unit") or found["code"])


def units(value: Value, ctx: Context) -> JSON:
    """The unit keys of a Quantity from a CE/CWE units value (OBX-6, CQ-2, RXE-5...), as the V2-to-FHIR IG
    reads a CWE: text (component 2, else the identifier) as `unit`; identifier and coding system as
    `code` and `system` when the system is one FHIR knows (UCUM, MDC for device data).

    Uncoded or locally coded spellings go through table `units` to UCUM; unknown ones keep their text
    as `unit` without system and code (valid FHIR, nothing reported).
    """
    ident, label, system_name = value.c(1).strip(), value.c(2).strip(), value.c(3).strip()
    if not (ident or label):
        return {}
    system = coding_system(system_name, ctx) if system_name else None
    if ident and (system_name.upper() == "UCUM" or system == UCUM):
        return {"unit": label or ident, "system": UCUM, "code": ident}
    if ident and system:
        return {"unit": label or ident, "system": system, "code": ident}
    for spelling in (ident, label):
        known = _ucum(spelling, ctx) if spelling else None
        if known:
            return {"unit": known[1], "system": UCUM, "code": known[0]}
    return {"unit": label or ident}


def quantity(number_text: str, units_value: Value, ctx: Context) -> JSON | None:
    """A Quantity from an NM and a separate units field (OBX-5 + OBX-6, RXE-3 + RXE-5...)."""
    found = number(number_text, ctx)
    if found is None:
        return None
    return {"value": found, **units(units_value, ctx)}


def quantity_cq(value: Value, ctx: Context) -> JSON | None:
    """CQ: 1 quantity, 2 units (a CE whose parts are subcomponents)."""
    return quantity(value.c(1), value.part(2), ctx)


# --- observations ------------------------------------------------------------------------------------

_COMPARATORS = ("<", ">", "<=", ">=")
_PREFIXED = re.compile(r"(<=|>=|<>|<|>|=)\s*(" + _NUMBER.pattern + r")")
_TEXT_TYPES = ("ST", "TX", "FT")
_TEXT_DATA = ("TEXT", "TX", "FT")  # table 0191 types of machine-readable text
_TEXT_SUBTYPES = ("TEXT", "PLAIN", "TXT")

ValueHandler = Callable[[Value, Segment, Context], tuple[str, Any] | None]


def _nm_value(rep: Value, obx: Segment, ctx: Context) -> tuple[str, Any] | None:
    raw = rep.c(1).strip()
    if _NUMBER.fullmatch(raw):
        return "valueQuantity", quantity(raw, obx.get(6), ctx)
    # Senders write "<0.5" into NM fields though it belongs in SN: keep the number and the comparator.
    prefixed = _PREFIXED.fullmatch(raw)
    if prefixed and prefixed[1] != "<>":
        found = quantity(prefixed[2], obx.get(6), ctx)
        if found is not None and prefixed[1] != "=":
            found["comparator"] = prefixed[1]
        ctx.report(f"OBX-5 NM value {raw!r} carries a comparator (an SN value); mapped with it")
        return "valueQuantity", found
    return None


def _sn_value(rep: Value, obx: Segment, ctx: Context) -> tuple[str, Any] | None:
    """SN: comparator ^ num1 ^ separator/suffix ^ num2 (senders also write `<0.10` in one component)."""
    comparator, first, separator, second = (rep.c(n).strip() for n in (1, 2, 3, 4))
    if not first and not separator and not second:
        prefixed = _PREFIXED.fullmatch(comparator)  # "<0.10" or ">=5" written as one component
        if prefixed:
            comparator, first = prefixed[1], prefixed[2]
        elif _NUMBER.fullmatch(comparator):
            comparator, first = "", comparator
    written = "".join((comparator, first, separator, second))
    if not first:
        return None
    if not separator and not second:
        if comparator == "<>":
            ctx.report(f"SN {written!r}: FHIR Quantity has no not-equal comparator; mapped as text")
            return "valueString", written
        if comparator not in ("", "=", *_COMPARATORS):
            return None
        found = quantity(first, obx.get(6), ctx)
        if found is not None and comparator in _COMPARATORS:
            found["comparator"] = comparator
        return ("valueQuantity", found) if found is not None else None
    if separator == "+" and not second:
        return "valueString", f"{first}+"  # categorical result, e.g. 2+ on a urine dipstick
    if comparator not in ("", "="):
        ctx.report(f"SN {written!r}: a comparator on a range or ratio cannot be mapped; mapped as text")
        return "valueString", written
    if separator == "-":
        low, high = quantity(first, obx.get(6), ctx), quantity(second, obx.get(6), ctx)
        return ("valueRange", {"low": low, "high": high}) if low and high else None
    if separator in (":", "/"):
        numerator, denominator = number(first, ctx), number(second, ctx)
        if numerator is None or denominator is None:
            return None
        if obx.get(6):
            ctx.report(f"SN ratio {written!r}: the units in OBX-6 do not apply to a ratio; left out")
        return "valueRatio", {"numerator": {"value": numerator}, "denominator": {"value": denominator}}
    ctx.report(f"SN {written!r}: separator {separator!r} is not one of - + / : ; mapped as text")
    return "valueString", written


def _decoded(data: str, encoding: str, ctx: Context) -> bytes | None:
    try:
        if encoding == "BASE64":
            return base64.b64decode(data, validate=False)
        if encoding == "HEX":
            return bytes.fromhex(data)
    except (binascii.Error, ValueError):
        ctx.report(f"OBX-5 ED data is not valid {encoding.title()}; left out")
        return None
    ctx.report(f"OBX-5 ED encoding {encoding!r} is not A, Hex or Base64; left out")
    return None


# HL7 table 0191 (type of referenced data) to the top-level MIME type it stands for.
_MIME_TOP = {"AP": "application", "AU": "audio", "IM": "image", "TEXT": "text", "TX": "text", "FT": "text"}


def content_type(kind: str, subtype: str) -> str:
    """A MIME type from ED-2 (0191 type or a MIME top-level type) and ED-3 (subtype, or a whole type)."""
    if "/" in subtype:
        return subtype.lower()
    top = _MIME_TOP.get(kind.upper(), kind.lower() or "application")
    if top in ("text",) and not subtype:
        return "text/plain"
    return f"{top}/{(subtype or 'octet-stream').lower()}"


def _ed_value(rep: Value, obx: Segment, ctx: Context) -> tuple[str, Any] | None:
    """ED: 2 type of data (0191), 3 subtype, 4 encoding (0299: A, Hex, Base64), 5 data.

    Text comes back as valueString; anything else (a PDF, an image) as an Attachment under the key
    `valueAttachment`, which R4 Observations do not have: the results adapter puts it in the report's
    presentedForm (or a cross-version extension when the OBX belongs to no report).
    """
    kind, subtype, encoding, data = (rep.c(n).strip() for n in (2, 3, 4, 5))
    if not data:
        return None
    if encoding.upper() in ("A", ""):
        return "valueString", rep.c(5)
    raw = _decoded(data, encoding.upper(), ctx)
    if raw is None:
        return None
    if kind.upper() in _TEXT_DATA or subtype.upper() in _TEXT_SUBTYPES:
        try:
            return "valueString", raw.decode("utf-8")
        except UnicodeDecodeError:
            return "valueString", raw.decode("latin-1")  # declared text: latin-1 never fails
    attachment: JSON = {"contentType": content_type(kind, subtype), "data": base64.b64encode(raw).decode()}
    attachment["size"] = len(raw)
    return "valueAttachment", attachment


def _coded_value(rep: Value, obx: Segment, ctx: Context) -> tuple[str, Any] | None:
    concept = codeable_concept(rep, ctx)
    return ("valueCodeableConcept", concept) if concept else None


def _date_time_value(rep: Value, obx: Segment, ctx: Context) -> tuple[str, Any] | None:
    found = date_time(rep, ctx)
    return ("valueDateTime", found) if found else None


def _time_value(rep: Value, obx: Segment, ctx: Context) -> tuple[str, Any] | None:
    found = time(rep, ctx)
    return ("valueTime", found) if found else None


def _pointer_value(rep: Value, obx: Segment, ctx: Context) -> tuple[str, Any] | None:
    pointer = rep.c(1).strip()
    return ("valueString", pointer) if pointer else None


def _string_value(rep: Value, obx: Segment, ctx: Context) -> tuple[str, Any] | None:
    found = string(rep, ctx)
    return ("valueString", found) if found else None


_VALUE_TYPES: dict[str, ValueHandler] = {
    "NM": _nm_value,
    "SN": _sn_value,
    "CWE": _coded_value,
    "CE": _coded_value,
    "CNE": _coded_value,
    "CF": _coded_value,
    "DT": _date_time_value,
    "DTM": _date_time_value,
    "TS": _date_time_value,
    "TM": _time_value,
    "ED": _ed_value,
    "RP": _pointer_value,
    "ID": _string_value,
    "IS": _string_value,
}


def _one_value(rep: Value, kind: str, obx: Segment, ctx: Context) -> tuple[str, Any]:
    handler = _VALUE_TYPES.get(kind)
    if handler is None:
        ctx.report(f"OBX-5 value type {kind or '(none in OBX-2)'} mapped as text")
        return "valueString", free_text(rep, ctx)
    found = handler(rep, obx, ctx)
    if found is None:
        ctx.report(f"OBX-5 {kind} value could not be converted; mapped as text")
        return "valueString", free_text(rep, ctx)
    return found


def observation_value(obx: Segment, ctx: Context) -> tuple[str, Any] | None:
    """OBX-5 by its value type (OBX-2) as (element name, value), e.g. ("valueQuantity", {...}).

    None when OBX-5 is empty (the caller adds dataAbsentReason). Nothing is dropped: types without a
    FHIR equivalent and values that do not convert become valueString, with a problem noted. Repeated
    text (TX, FT, ST) is lines of one text; any other repeated value becomes one `component` per
    repetition, each with the OBX-3 code (the V2-to-FHIR IG's reading of a repeating OBX-5).
    """
    reps = [rep for rep in obx.repetitions(5) if rep]
    if not reps:
        return None
    kind = obx.get(2).c(1).strip().upper()
    if kind in _TEXT_TYPES:
        # ST has no components (a separator in it is structure, not text); TX and FT are free text.
        texts = [string(rep, ctx) or "" if kind == "ST" else free_text(rep, ctx) for rep in reps]
        return "valueString", "\n".join(texts)
    if len(reps) == 1:
        return _one_value(reps[0], kind, obx, ctx)
    code_ = codeable_concept(obx.get(3), ctx) or {"text": "OBX-5 repetition"}
    components: list[JSON] = []
    for rep in reps:
        name, value = _one_value(rep, kind, obx, ctx)
        if name == "valueAttachment":
            ctx.report("OBX-5 repeats an ED value; a component cannot hold an attachment, left out")
            continue
        components.append({"code": code_, name: value})
    return ("component", components) if components else None


_RANGE = re.compile(rf"\s*({_NUMBER.pattern})\s*-\s*({_NUMBER.pattern})\s*")
_BOUND = re.compile(rf"\s*(<=|>=|<|>|≤|≥)\s*({_NUMBER.pattern})\s*")


def reference_range(obx: Segment, ctx: Context) -> list[JSON]:
    """OBX-7 with the units of OBX-6: `4.5-5.9` low+high; `>5`/`>=5` a low bound only; `<0.5`/`<=0.5`
    a high bound only; anything else text only. The original always stays as `text`.
    """
    written = obx.get(7).text.strip()
    if not written:
        return []
    entry: JSON = {}
    both = _RANGE.fullmatch(written)
    bound = _BOUND.fullmatch(written)
    if both:
        low, high = quantity(both[1], obx.get(6), ctx), quantity(both[2], obx.get(6), ctx)
        if low and high and low["value"] <= high["value"]:
            entry.update(low=low, high=high)
        else:
            ctx.report(f"reference range {written!r} has its low above its high; kept as text")
    elif bound:
        # "> 5" means results above 5 are expected: 5 is the LOW end, however tempting "high" looks.
        side = "low" if bound[1] in (">", ">=", "≥") else "high"
        limit = quantity(bound[2], obx.get(6), ctx)
        if limit:
            entry[side] = limit
    entry["text"] = written
    return [entry]


def interpretation(value: Value, ctx: Context) -> JSON | None:
    """OBX-8 (table 0078) as an ObservationInterpretation concept; unknown flags keep their code."""
    flag = value.c(1).strip()
    if not flag:
        return None
    entry = _entry_dict(ctx, "abnormal-flags", flag)
    if entry is None and flag.upper() != flag:
        entry = _entry_dict(ctx, "abnormal-flags", flag.upper())
    coding_: JSON
    if entry and isinstance(entry.get("code"), str):
        coding_ = {"system": INTERPRETATION, "code": entry["code"]}
        if entry.get("display"):
            coding_["display"] = str(entry["display"])
    else:
        ctx.report(f"abnormal flag {flag!r} is not in table abnormal-flags; kept without a system")
        coding_ = {"code": flag}
    concept: JSON = {"coding": [coding_]}
    label = value.c(2).strip()  # CWE text (v2.7+); an IS has none
    if label:
        concept["text"] = label
    return concept


def annotation(nte: Segment, ctx: Context) -> JSON | None:
    """NTE: 3 comment lines joined, 5 entered by (XCN) -> authorString, 6 entered at -> time."""
    lines = [free_text(rep, ctx).rstrip() for rep in nte.repetitions(3)]
    note_text = "\n".join(lines).strip("\n")
    if not note_text.strip():
        return None
    note: JSON = {}
    author = practitioner_reference(nte.get(5), ctx) if nte.get(5) else None
    if author:
        note["authorString"] = author.get("display") or author["identifier"]["value"]
    entered = date_time(nte.get(6), ctx)
    if entered:
        note["time"] = entered
    note["text"] = note_text
    return note


CONVERTERS: dict[str, Callable[[Value, Context], Any]] = {
    "string": string,
    "text": text,
    "code": code,
    "boolean": boolean,
    "integer": integer,
    "decimal": decimal,
    "date": date,
    "dateTime": date_time,
    "instant": instant,
    "time": time,
    "CodeableConcept": codeable_concept,
    "Coding": coding,
    "Identifier": identifier,
    "Identifier-EI": identifier_ei,
    "HumanName": human_name,
    "HumanName-XCN": human_name_xcn,
    "Address": address,
    "ContactPoint": contact_point,
    "PractitionerReference": practitioner_reference,
    "DeviceReference": device_reference,
    "identifier-value": identifier_value,
    "Identifier-DLN": identifier_dln,
    "Identifier-XON": identifier_xon,
    "Identifier-CWE": identifier_cwe,
    "nature-of-abnormal-test": nature_of_abnormal_test,
    "analysis-date-time": analysis_date_time,
    "specimen-reject-reason": specimen_reject_reason,
    "OrganizationReference": organization_reference,
    "Quantity": quantity_cq,
    "interpretation": interpretation,
}
