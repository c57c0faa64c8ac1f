"""Pharmacy converters: dosage, priority, dispense request, dispensed quantity and compound ingredients.

These read several segments of one order at once (scope converters). The encoded order (RXE, what the
pharmacist verified) wins over the requested one (RXO), and the route, timing and components that follow
RXE win over those that follow RXO. Older messages (before TQ1 existed) carry timing in RXE-1 or ORC-7
(the TQ type): a TQ1 fills each part of the timing it has, the TQ the parts it leaves empty (a 2.5 sender
must send TQ1 and often sends it empty, keeping the TQ where it always was).

Units are read here rather than with datatypes.units: pharmacy systems send their own unit number as the
CWE identifier (`43^mg/hr`), so the text is the unit as the sender meant it, and time units must be UCUM
for the FHIR Duration and Timing elements that carry them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from gateway.adapters.hl7v2 import datatypes
from gateway.adapters.hl7v2.er7 import EMPTY, Segment, Value
from gateway.adapters.hl7v2.rules import Scope
from gateway.types import JSON

GTS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
REPEAT_PATTERN_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0335"
V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-{}"
UCUM = datatypes.UCUM
# FHIR UnitsOfTime: the codes Timing.repeat.periodUnit/durationUnit and a Duration may use.
UNITS_OF_TIME = ("s", "min", "h", "d", "wk", "mo", "a")
_MINUTES = {"s": 1 / 60, "min": 1, "h": 60, "d": 1440}  # Timing.repeat.offset is in minutes
# HL7 0335's generic patterns: Q<n>S/M/H/D/W/L (every n seconds ... months), <n>ID (n times a day),
# Q<n>J<days> (every n weeks on ISO weekdays 1-7), PRN<pattern> (as needed, at most as often as pattern).
_EVERY = re.compile(r"Q(\d+)([SMHDWL])")
_TIMES_A_DAY = re.compile(r"(\d+)ID")
_WEEKDAYS = re.compile(r"Q(\d+)J([1-7]+)")
_PATTERN_UNITS = {"S": "s", "M": "min", "H": "h", "D": "d", "W": "wk", "L": "mo"}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# TQ-3 (duration of the older TQ type): S/M/H/D/W/L<n> a time span, X<n> n times, INDEF no end.
_TQ_DURATION = re.compile(r"([SMHDWL])(\d+)|X(\d+)|INDEF", re.IGNORECASE)
_PRIORITY_WITHIN = re.compile(r"T[SMHDWL]\d+")  # 0485 TS<n>, TM<n>...: timing critical within n units
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")  # 08:00 or 8:00:00 where TM (0800) belongs


def _report(ctx: Any, note: str) -> None:
    """A problem note, once: the order's dosage is read for the MedicationRequest and for each dispense."""
    if note not in ctx.problems:
        ctx.problems.append(note)


# --- units and quantities ----------------------------------------------------------------------------


def _ucum_entry(spelling: str, ctx: Any) -> JSON | None:
    found = ctx.tables.map("units", spelling) if spelling else None
    if isinstance(found, dict) and isinstance(found.get("code"), str):
        return {"unit": str(found.get("unit") or found["code"]), "system": UCUM, "code": found["code"]}
    return None


def units(value: Value, ctx: Any) -> JSON:
    """The unit keys of a Quantity from a units CWE (RXE-5, RXO-4, RXC-4, the units of a CQ...).

    A triplet coded in UCUM is taken as it is; otherwise the first spelling table `units` knows (the
    identifier, the text, the alternate ones, the original text) gives UCUM; otherwise the sender's text
    is the unit, without system or code. The text wins over the identifier because pharmacy systems
    send their own unit numbers as identifiers (`43^mg/hr` is in mg/hr, not in "43").
    """
    ident, label = value.c(1).strip(), value.c(2).strip()
    alt_ident, alt_label, original = value.c(4).strip(), value.c(5).strip(), value.c(9).strip()
    for code, text, system in ((ident, label, value.c(3)), (alt_ident, alt_label, value.c(6))):
        if code and datatypes.coding_system(system, ctx) == UCUM:
            return {"unit": text or code, "system": UCUM, "code": code}
    for spelling in (ident, label, alt_ident, alt_label, original):
        known = _ucum_entry(spelling, ctx)
        if known:
            return known
    text = label or original or alt_label or ident or alt_ident
    return {"unit": text} if text else {}


def quantity(number_text: str, units_value: Value, ctx: Any) -> JSON | None:
    """A Quantity from an NM and a separate units field (RXE-3 + RXE-5, RXC-3 + RXC-4...)."""
    found = datatypes.number(number_text, ctx)
    if found is None:
        return None
    return {"value": found, **units(units_value, ctx)}


def _cq(value: Value, ctx: Any) -> JSON | None:
    """CQ (quantity ^ units), at any level: TQ1-2 is a field, TQ-1 a component of the TQ."""
    return quantity(value.c(1), value.part(2), ctx)


def _time_unit(text: str, ctx: Any) -> str | None:
    """A unit of time as the sender spells it ("min", "hr", "day") as a FHIR UnitsOfTime code."""
    code = units(Value(text), ctx).get("code")
    return code if code in UNITS_OF_TIME else None


def _duration(value: Value, origin: str, ctx: Any) -> JSON | None:
    """A CQ as a FHIR Duration, which must be in a UCUM unit of time."""
    found = _cq(value, ctx)
    if found is None:
        return None
    if found.get("system") == UCUM and found.get("code") in UNITS_OF_TIME:
        return found
    _report(ctx, f"{origin}: {value.text!r} is not an amount of time in a known unit; left out")
    return None


# --- coded fields bound to HL7 tables ----------------------------------------------------------------


def _table_coded(value: Value, table: str, ctx: Any) -> JSON | None:
    """A CWE of a field bound to an HL7 table: a code sent without a coding system is that table's code."""
    concept = datatypes.codeable_concept(value, ctx)
    if concept is None or not value.c(1).strip() or value.c(3).strip() or value.c(14).strip():
        return concept
    first = concept["coding"][0]
    if first.get("code") == value.c(1).strip() and "system" not in first:
        concept["coding"][0] = {"system": V2_TABLE.format(table), **first}
    return concept


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def _site_table(version: str) -> str:
    """RXR-2 names body sites from table 0163 up to 2.5.1 and from table 0550 since 2.6."""
    return "0550" if _version(version) >= (2, 6) else "0163"


# --- which segments describe the order ---------------------------------------------------------------


def _after(segments: list[Segment], anchor: Segment | None) -> list[Segment]:
    """The segments after `anchor` (those of the encoded order); without an anchor or any after it, all."""
    if anchor is None:
        return segments
    later = [s for s in segments if s.index > anchor.index]
    return later or segments


@dataclass(frozen=True)
class _Order:
    """The segments one order's dosage is read from."""

    give: Segment  # RXE, else RXO
    rxr: Segment | None
    tq1s: list[Segment]  # the encoded order's TQ1s (after RXE), else the order's
    legacy: list[Value]  # repetitions of the TQ in RXE-1, else ORC-7
    legacy_field: str
    version: str

    @classmethod
    def of(cls, scope: Scope) -> _Order | None:
        rxe, rxo = scope.first("RXE"), scope.first("RXO")
        give = rxe or rxo
        if give is None:
            return None
        rxrs = _after(scope.segments("RXR"), rxe)
        orc, msh = scope.first("ORC"), scope.first("MSH")
        legacy, legacy_field = (rxe.repetitions(1), "RXE-1") if rxe is not None else ([], "")
        if not legacy and orc is not None:
            legacy, legacy_field = orc.repetitions(7), "ORC-7"
        return cls(
            give,
            rxrs[0] if rxrs else None,
            _after(scope.segments("TQ1"), rxe),
            [v for v in legacy if v],
            legacy_field,
            msh.get(12).c(1) if msh is not None else "",
        )

    def schedule(self, ctx: Any) -> _Schedule | None:
        """The order's timing: the first TQ1, its empty parts filled from the first TQ repetition."""
        for extra in self.tq1s[1:]:
            _report(ctx, f"TQ1#{extra.index + 1}: only the order's first timing (TQ1) is mapped")
        if len(self.legacy) > 1:
            _report(ctx, f"{self.legacy_field}: only the first of {len(self.legacy)} timings is mapped")
        first = _Schedule.from_tq1(self.tq1s[0]) if self.tq1s else None
        older = _Schedule.from_tq(self.legacy[0], self.legacy_field) if self.legacy else None
        if first is None or older is None:
            return first or older
        return first.filled_from(older)


# --- timing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    """One repeat pattern: RPT (TQ1-3) or the RI of a TQ's interval (pattern code only)."""

    code: str
    concept: Value | None = None  # RPT-1 as sent (a CWE), for codes the table does not know
    period: str = ""  # RPT-5/6: an explicit period ("every 180 min")
    period_unit: str = ""
    event: str = ""  # RPT-8 (table 0528): before/after meals, at bedtime
    offset: str = ""  # RPT-9/10: how long before or after the event
    offset_unit: str = ""

    @classmethod
    def of_rpt(cls, rpt: Value) -> _Pattern:
        return cls(
            rpt.part(1).c(1).strip(),
            rpt.part(1),
            rpt.c(5).strip(),
            rpt.c(6).strip(),
            rpt.c(8).strip(),
            rpt.c(9).strip(),
            rpt.c(10).strip(),
        )


@dataclass(frozen=True)
class _Schedule:
    """The timing of one order as sent, by meaning, whichever type (TQ1 or TQ) carried it."""

    origin: dict[str, str]  # where each part came from, for problem notes ("TQ1-3", "RXE-1.2")
    quantity: Value = EMPTY
    patterns: tuple[_Pattern, ...] = ()
    times: tuple[str, ...] = ()
    duration: Value | None = None  # TQ1-6, a CQ
    duration_code: str = ""  # TQ-3: D10, X5, INDEF
    occurrence: Value | None = None  # TQ1-13, a CQ: how long each administration lasts
    start: Value | None = None
    end: Value | None = None
    priority: str = ""
    condition: str = ""
    text: str = ""
    count: str = ""

    @classmethod
    def from_tq1(cls, tq1: Segment) -> _Schedule:
        return cls(
            origin={"quantity": "TQ1-2", "patterns": "TQ1-3", "times": "TQ1-4", "duration": "TQ1-6"}
            | {"occurrence": "TQ1-13", "priority": "TQ1-9", "count": "TQ1-14"},
            quantity=tq1.get(2),
            patterns=tuple(_Pattern.of_rpt(r) for r in tq1.repetitions(3) if r.part(1).c(1).strip()),
            times=tuple(r.c(1).strip() for r in tq1.repetitions(4) if r.c(1).strip()),
            duration=tq1.get(6) or None,
            occurrence=tq1.get(13) or None,
            start=tq1.get(7) or None,
            end=tq1.get(8) or None,
            priority=tq1.get(9).c(1).strip(),
            condition=tq1.get(10).text.strip(),
            text=tq1.get(11).text.strip(),
            count=tq1.get(14).c(1).strip(),
        )

    @classmethod
    def from_tq(cls, tq: Value, where: str) -> _Schedule:
        """TQ: 1 quantity (CQ), 2 interval (RI: pattern & explicit times), 3 duration, 4 start, 5 end,
        6 priority, 7 condition, 8 text, 12 total occurrences."""
        interval = tq.part(2)
        pattern = interval.c(1).strip()
        return cls(
            origin={"quantity": f"{where}.1", "patterns": f"{where}.2", "times": f"{where}.2.2"}
            | {"duration_code": f"{where}.3", "priority": f"{where}.6", "count": f"{where}.12"},
            quantity=tq.part(1),
            patterns=(_Pattern(pattern),) if pattern else (),
            times=tuple(t.strip() for t in interval.c(2).split(",") if t.strip()),
            duration_code=tq.c(3).strip(),
            start=tq.part(4) or None,
            end=tq.part(5) or None,
            priority=tq.c(6).strip(),
            condition=tq.c(7).strip(),
            text=tq.c(8).strip(),
            count=tq.c(12).strip(),
        )

    def filled_from(self, other: _Schedule) -> _Schedule:
        """This schedule with each empty part taken from `other`."""
        taken: dict[str, Any] = {}
        origin = dict(self.origin)
        for part in fields(self):
            if part.name != "origin" and not getattr(self, part.name) and getattr(other, part.name):
                taken[part.name] = getattr(other, part.name)
                if part.name in other.origin:
                    origin[part.name] = other.origin[part.name]
        return replace(self, origin=origin, **taken)

    def where(self, part: str) -> str:
        return self.origin.get(part, part)


def _known_pattern(code: str, ctx: Any) -> JSON | None:
    """Table repeat-pattern's entry for a code, else the meaning of HL7 0335's generic forms."""
    entry = ctx.tables.map("repeat-pattern", code)
    if isinstance(entry, dict):
        return entry
    upper = code.upper()
    every, per_day, weekly = (
        _EVERY.fullmatch(upper),
        _TIMES_A_DAY.fullmatch(upper),
        _WEEKDAYS.fullmatch(upper),
    )
    if every:
        return {"frequency": 1, "period": int(every[1]), "periodUnit": _PATTERN_UNITS[every[2]]}
    if per_day:
        return {"frequency": int(per_day[1]), "period": 1, "periodUnit": "d"}
    if weekly:
        days = [_DAYS[int(d) - 1] for d in dict.fromkeys(weekly[2])]
        return {"frequency": len(days), "period": int(weekly[1]), "periodUnit": "wk", "dayOfWeek": days}
    if upper.startswith("PRN") and len(upper) > 3:
        inner = _known_pattern(code[3:], ctx)
        if inner is None:
            return None
        return {**{k: v for k, v in inner.items() if k not in ("display", "gts")}, "asNeeded": True}
    return None


def _pattern_code(pattern: _Pattern, entry: JSON | None, ctx: Any) -> JSON:
    """Timing.code: FHIR's abbreviation (GTS) where the table marks one, else the HL7 0335 code."""
    if entry is not None:
        system = GTS_SYSTEM if entry.get("gts") else REPEAT_PATTERN_SYSTEM
        coding = {"system": system, "code": pattern.code.upper()}
        if entry.get("display"):
            coding["display"] = str(entry["display"])
        return {"coding": [coding]}
    sent = _table_coded(pattern.concept, "0335", ctx) if pattern.concept is not None else None
    if sent is not None and sent.get("coding", [{}])[0].get("system") != REPEAT_PATTERN_SYSTEM:
        return sent  # coded in the sender's own system
    if any(ch.isspace() for ch in pattern.code):
        return {"text": pattern.code}  # words ("3 times daily") are no table 0335 code
    return sent or {"coding": [{"system": REPEAT_PATTERN_SYSTEM, "code": pattern.code}]}


def _explicit_period(pattern: _Pattern, where: str, ctx: Any) -> JSON:
    """RPT-5/6, the explicit period, for patterns whose code says no period."""
    if not pattern.period:
        return {}
    number = datatypes.number(pattern.period, ctx)
    unit = _time_unit(pattern.period_unit, ctx)
    if number is None or number < 0 or unit is None:
        _report(
            ctx, f"{where}: period {pattern.period} {pattern.period_unit!r} is not a period of time; left out"
        )
        return {}
    return {"frequency": 1, "period": number, "periodUnit": unit}


def _event(pattern: _Pattern, where: str, ctx: Any) -> JSON:
    """RPT-8 (table 0528, meal and sleep events) to `when`, with RPT-9/10 as `offset` in minutes."""
    if not pattern.event:
        return {}
    when = ctx.tables.map("event-timing", pattern.event)
    if not isinstance(when, str):
        _report(ctx, f"{where}: event {pattern.event!r} is not in table event-timing; left out")
        return {}
    found: JSON = {"when": [when]}
    if pattern.offset:
        number = datatypes.number(pattern.offset, ctx)
        unit = _time_unit(pattern.offset_unit, ctx)
        minutes = number * _MINUTES[unit] if number is not None and unit in _MINUTES else None
        if minutes is not None and minutes >= 0 and float(minutes).is_integer():
            found["offset"] = int(minutes)
        else:
            _report(
                ctx,
                f"{where}: offset {pattern.offset} {pattern.offset_unit!r} is not whole minutes; left out",
            )
    return found


def _repeat_of(pattern: _Pattern, where: str, ctx: Any) -> tuple[JSON, JSON, bool]:
    """(Timing.code, Timing.repeat, as needed) for one pattern. A pattern neither the table nor HL7 0335's
    generic forms explain keeps its code, without a repeat, and is reported."""
    entry = _known_pattern(pattern.code, ctx)
    code = _pattern_code(pattern, entry, ctx)
    if entry is None:
        _report(ctx, f"{where}: repeat pattern {pattern.code!r} is not in table repeat-pattern; kept as sent")
        repeat: JSON = {}
    else:
        repeat = {k: v for k, v in entry.items() if k not in ("display", "asNeeded", "gts")}
    if "period" not in repeat:
        repeat.update(_explicit_period(pattern, where, ctx))
    if "when" not in repeat:
        repeat.update(_event(pattern, where, ctx))
    return code, repeat, bool(entry and entry.get("asNeeded"))


def _time_of_day(raw: str, where: str, ctx: Any) -> str | None:
    """An HL7 TM (0800) as a FHIR time; 08:00 is read too (senders write it), anything else reported."""
    clock = _CLOCK.fullmatch(raw)
    hl7 = f"{int(clock[1]):02d}{clock[2]}{clock[3] or ''}" if clock else raw
    found = datatypes.time(Value(hl7), ctx)
    if found is None:
        _report(ctx, f"{where}: administration time {raw!r} is not a time of day; left out")
    return found


def _bounds(schedule: _Schedule, ctx: Any) -> JSON:
    """boundsPeriod from the start/end, else boundsDuration (TQ1-6, or the TQ-3 span), and count."""
    found: JSON = {}
    period: JSON = {}
    for name, value in (("start", schedule.start), ("end", schedule.end)):
        converted = datatypes.date_time(value, ctx) if value else None
        if converted:
            period[name] = converted
    duration = _duration(schedule.duration, schedule.where("duration"), ctx) if schedule.duration else None
    span, times = _tq_duration(schedule.duration_code, schedule.where("duration_code"), ctx)
    if period:
        found["boundsPeriod"] = period
    elif duration or span:
        found["boundsDuration"] = duration or span
    count = _count(schedule.count, schedule.where("count"), ctx) or times
    if count:
        found["count"] = count
    return found


def _tq_duration(code: str, where: str, ctx: Any) -> tuple[JSON | None, int | None]:
    """TQ-3: (a Duration for S/M/H/D/W/L<n>, a count for X<n>)."""
    if not code:
        return None, None
    found = _TQ_DURATION.fullmatch(code)
    if found is None:
        _report(ctx, f"{where}: duration {code!r} is not one of S/M/H/D/W/L<n>, X<n>, INDEF; left out")
        return None, None
    if found[1]:
        unit = _PATTERN_UNITS[found[1].upper()]
        return {"value": int(found[2]), "unit": unit, "system": UCUM, "code": unit}, None
    return None, int(found[3]) if found[3] else None


def _count(raw: str, where: str, ctx: Any) -> int | None:
    if not raw:
        return None
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    _report(ctx, f"{where}: total occurrences {raw!r} is not a positive whole number; left out")
    return None


def _occurrence(schedule: _Schedule, ctx: Any) -> JSON:
    """TQ1-13, how long each administration lasts, as repeat.duration/durationUnit."""
    if schedule.occurrence is None:
        return {}
    found = _duration(schedule.occurrence, schedule.where("occurrence"), ctx)
    return {"duration": found["value"], "durationUnit": found["code"]} if found else {}


def _timing(schedule: _Schedule, ctx: Any) -> tuple[JSON | None, bool]:
    """Timing from the order's schedule, and whether the dose is as needed."""
    result: JSON = {}
    repeat: JSON = {}
    as_needed = False
    if schedule.patterns:
        where = schedule.where("patterns")
        result["code"], repeat, as_needed = _repeat_of(schedule.patterns[0], where, ctx)
        for extra in schedule.patterns[1:]:
            _report(ctx, f"{where}: only the first repeat pattern is mapped, not {extra.code!r}")
    times = [t for t in (_time_of_day(t, schedule.where("times"), ctx) for t in schedule.times) if t]
    if times:
        # FHIR allows timeOfDay or when, not both (tim-10); the times say more, and Timing.code keeps QAM.
        repeat.pop("when", None)
        repeat.pop("offset", None)
        repeat["timeOfDay"] = times
    repeat.update(_occurrence(schedule, ctx))
    repeat.update(_bounds(schedule, ctx))
    if repeat:
        result["repeat"] = repeat
    return (result or None), as_needed or schedule.priority.upper() == "PRN"


# --- dosage ------------------------------------------------------------------------------------------


def _dose(give: Segment, schedule: _Schedule | None, ctx: Any) -> JSON | None:
    """doseQuantity or doseRange from RXE-3/4/5 (or RXO-2/3/4); else the timing's quantity (TQ1-2/TQ-1)."""
    low_at, high_at, unit_at = (3, 4, 5) if give.name == "RXE" else (2, 3, 4)
    low = quantity(give.get(low_at).c(1), give.get(unit_at), ctx) if give.get(low_at) else None
    high = quantity(give.get(high_at).c(1), give.get(unit_at), ctx) if give.get(high_at) else None
    if low and high:
        return {"doseRange": {"low": low, "high": high}}
    if low or high:
        return {"doseQuantity": low or high}
    per_time = _cq(schedule.quantity, ctx) if schedule is not None and schedule.quantity else None
    return {"doseQuantity": per_time} if per_time else None


def _rate(give: Segment, ctx: Any) -> JSON | None:
    """RXE-23/24: the give rate (an infusion's mL/hr)."""
    if give.name != "RXE" or not give.get(23):
        return None
    return quantity(give.get(23).c(1), give.get(24), ctx)


def _cwe_texts(segment: Segment, at: int) -> list[str]:
    """The text of each repetition of a CWE field: component 2 (text), 9 (original text) or 1."""
    texts = [rep.c(2) or rep.c(9) or rep.c(1) for rep in segment.repetitions(at)]
    return [t for t in texts if t]


def _instructions(give: Segment, schedule: _Schedule | None) -> str:
    """Dosage.text: the prescriber's administration instructions (RXE-7 or RXO-7) and the timing's text."""
    parts = _cwe_texts(give, 7)
    if schedule is not None and schedule.text:
        parts.append(schedule.text)
    return "; ".join(parts)


def _concept_text(concept: JSON | None) -> str:
    if not concept:
        return ""
    return str(
        concept.get("text")
        or next((c.get("display") or c.get("code") for c in concept.get("coding", [])), "")
        or ""
    )


def _sig(dose: JSON | None, route: JSON | None, timing_: JSON | None, as_needed: bool) -> str:
    """A readable SIG when the prescriber wrote none: '100 mg Oral TID at 08:00:00, 20:00:00 as needed'."""
    parts: list[str] = []
    if dose and "doseQuantity" in dose:
        amount = dose["doseQuantity"]
        parts.append(f"{amount.get('value', '')} {amount.get('unit', amount.get('code', ''))}".strip())
    elif dose and "doseRange" in dose:
        low, high = dose["doseRange"]["low"], dose["doseRange"]["high"]
        parts.append(
            f"{low.get('value')}-{high.get('value')} {high.get('unit', high.get('code', ''))}".strip()
        )
    parts.append(_concept_text(route))
    if timing_ and timing_.get("code"):
        codings = timing_["code"].get("coding") or [{}]
        parts.append(str(codings[0].get("code") or timing_["code"].get("text", "")))
    if timing_ and timing_.get("repeat", {}).get("timeOfDay"):
        parts.append("at " + ", ".join(timing_["repeat"]["timeOfDay"]))
    if as_needed:
        parts.append("as needed")
    return " ".join(p for p in parts if p)


def _administration(rxr: Segment | None, version: str, ctx: Any) -> JSON:
    """Route (RXR-1, table 0162), site (RXR-2, table 0163/0550) and method (RXR-4, table 0165)."""
    if rxr is None:
        return {}
    found: JSON = {}
    for element, at, table in (
        ("site", 2, _site_table(version)),
        ("route", 1, "0162"),
        ("method", 4, "0165"),
    ):
        concept = _table_coded(rxr.get(at), table, ctx) if rxr.get(at) else None
        if concept:
            found[element] = concept
    return found


def dosage(scope: Scope, ctx: Any) -> list[JSON]:
    """One Dosage for the order, from the encoded order (RXE) or else the requested one (RXO)."""
    order = _Order.of(scope)
    if order is None:
        return []
    schedule = order.schedule(ctx)
    dose, rate = _dose(order.give, schedule, ctx), _rate(order.give, ctx)
    administration = _administration(order.rxr, order.version, ctx)
    timing_, as_needed = _timing(schedule, ctx) if schedule is not None else (None, False)
    result: JSON = {}
    text = _instructions(order.give, schedule) or _sig(dose, administration.get("route"), timing_, as_needed)
    if text:
        result["text"] = text
    if timing_:
        result["timing"] = timing_
    if schedule is not None and schedule.condition:  # TQ1-10 / TQ-7 condition: "as needed for <condition>"
        result["asNeededCodeableConcept"] = {"text": schedule.condition}
    elif as_needed:
        result["asNeededBoolean"] = True
    result.update(administration)
    if dose or rate:
        result["doseAndRate"] = [{**(dose or {}), **({"rateQuantity": rate} if rate else {})}]
    return [result] if result else []


def request_priority(scope: Scope, ctx: Any) -> str | None:
    """MedicationRequest.priority from TQ1-9 (table 0485) or the TQ's priority (TQ-6), via table
    request-priority. PRN is not a priority (the dosage says as needed); TS<n>, TM<n>... are T."""
    order = _Order.of(scope)
    schedule = order.schedule(ctx) if order is not None else None
    if schedule is None or schedule.priority.upper() in ("", "PRN"):
        return None
    code = schedule.priority.upper()
    mapped = ctx.tables.map("request-priority", "T" if _PRIORITY_WITHIN.fullmatch(code) else code)
    if isinstance(mapped, str):
        return mapped
    _report(
        ctx, f"{schedule.where('priority')}: priority {code!r} is not in table request-priority; left out"
    )
    return None


# --- dispensing --------------------------------------------------------------------------------------


def dispense_request(scope: Scope, ctx: Any) -> JSON | None:
    """Quantity to dispense and refills: RXE-10/11/12, else RXO-11/12/13."""
    rxe, rxo = scope.first("RXE"), scope.first("RXO")
    give = rxe or rxo
    if give is None:
        return None
    amount_at, unit_at, refills_at = (10, 11, 12) if give.name == "RXE" else (11, 12, 13)
    result: JSON = {}
    if give.get(amount_at):
        amount = quantity(give.get(amount_at).c(1), give.get(unit_at), ctx)
        if amount:
            result["quantity"] = amount
    refills = give.get(refills_at).c(1)
    if refills:
        count = datatypes.number(refills, ctx)
        if isinstance(count, int) and count >= 0:
            result["numberOfRepeatsAllowed"] = count
        else:
            _report(ctx, f"{give.name}-{refills_at}: number of refills {refills!r} is not a whole number")
    return result or None


def dispense_quantity(rxd: Segment, ctx: Any) -> JSON | None:
    """RXD-4 (actual dispense amount) with RXD-5 (its units)."""
    if not rxd.get(4):
        return None
    return quantity(rxd.get(4).c(1), rxd.get(5), ctx)


def pharmacy_instructions(value: Value, ctx: Any) -> JSON | None:
    """RXO-6 / RXE-21, the prescriber's instructions to the pharmacy: a note for the pharmacist."""
    text = value.c(2) or value.c(9) or value.c(1)
    return {"text": f"Pharmacy instructions: {text}"} if text else None


# --- compound and IV mixture components (RXC) --------------------------------------------------------


def order_components(segments: Iterable[Segment]) -> list[Segment]:
    """The RXC segments that describe the ordered product: the encoded order's (after RXE, before any RXD),
    else the requested order's (before RXE). RXC after an RXD describe what was dispensed, not the order."""
    body = list(segments)
    rxe = next((s for s in body if s.name == "RXE"), None)
    rxd = next((s for s in body if s.name == "RXD" and (rxe is None or s.index > rxe.index)), None)
    components = [s for s in body if s.name == "RXC" and (rxd is None or s.index < rxd.index)]
    if rxe is None:
        return components
    encoded = [s for s in components if s.index > rxe.index]
    return encoded or [s for s in components if s.index < rxe.index]


def _per_unit(amount: JSON, ctx: Any) -> JSON:
    """A strength written as one quantity: 5 mg/mL becomes 5 mg per 1 mL when both halves are UCUM units;
    otherwise the quantity per one unit of the medication."""
    label = str(amount.get("code") or amount.get("unit") or "")
    top, slash, bottom = label.partition("/")
    if slash and top and bottom and "/" not in bottom:
        upper, lower = units(Value(top), ctx), units(Value(bottom), ctx)
        if upper.get("system") == UCUM and lower.get("system") == UCUM:
            return {"numerator": {"value": amount["value"], **upper}, "denominator": {"value": 1, **lower}}
    return {"numerator": amount, "denominator": {"value": 1}}


def _strength(rxc: Segment, base: Segment | None, ctx: Any) -> JSON | None:
    """Ingredient.strength: RXC-5/6 per RXC-8/9 (strength per volume); RXC-5/6 alone per one unit; else the
    amount (RXC-3/4), an additive's per the base's amount (1 g in 250 mL), the base's per one preparation."""
    if rxc.get(5):
        strength = quantity(rxc.get(5).c(1), rxc.get(6), ctx)
        volume = quantity(rxc.get(8).c(1), rxc.get(9), ctx) if rxc.get(8) else None
        if strength and volume:
            return {"numerator": strength, "denominator": volume}
        if strength:
            return _per_unit(strength, ctx)
    amount = quantity(rxc.get(3).c(1), rxc.get(4), ctx) if rxc.get(3) else None
    if amount is None:
        return None
    volume = quantity(base.get(3).c(1), base.get(4), ctx) if base is not None and base is not rxc else None
    return {"numerator": amount, "denominator": volume or {"value": 1}}


def _ingredient(rxc: Segment, base: Segment | None, ctx: Any) -> JSON | None:
    """One RXC as a Medication.ingredient: the component code, whether it is active, its strength."""
    item = datatypes.codeable_concept(rxc.get(2), ctx)
    if item is None:
        _report(ctx, f"RXC#{rxc.index + 1} has no component code (RXC-2); left out")
        return None
    found: JSON = {"itemCodeableConcept": item}
    kind = rxc.get(1).c(1).strip().upper()
    if kind in ("A", "B"):
        # The sender's role of the component (table 0166): the additive is the drug, the base its vehicle.
        found["isActive"] = kind == "A"
    elif kind:
        _report(ctx, f"RXC#{rxc.index + 1}: component type {kind!r} is not A or B (table 0166)")
    strength = _strength(rxc, base, ctx)
    if strength:
        found["strength"] = strength
    return found


def ingredients(scope: Scope, ctx: Any) -> list[JSON]:
    """Medication.ingredient, one per RXC of the order (the scope holds the order's components only)."""
    components = scope.segments("RXC")
    base = next((c for c in components if c.get(1).c(1).strip().upper() == "B" and c.get(3)), None)
    return [i for i in (_ingredient(c, base, ctx) for c in components) if i]


def refer_to(request: JSON, medication: JSON) -> JSON:
    """The MedicationRequest with medicationReference to `medication` where medicationCodeableConcept was."""
    reference: JSON = {"reference": f"Medication/{medication['id']}"}
    display = _concept_text(medication.get("code"))
    if display:
        reference["display"] = display
    referring: JSON = {}
    for key, value in request.items():  # in place of the code, so the resource reads in the same order
        if key == "medicationCodeableConcept":
            referring["medicationReference"] = reference
        else:
            referring[key] = value
    return referring


SCOPE_CONVERTERS = {
    "dosage": dosage,
    "dispense-request": dispense_request,
    "request-priority": request_priority,
    "ingredients": ingredients,
}
VALUE_CONVERTERS = {"pharmacy-instructions": pharmacy_instructions}
