"""Pharmacy converters: dosage, dispense request and dispensed quantity from RXE/RXO/RXR/TQ1/RXD.

These read several segments of one order at once (scope converters). The encoded order (RXE, what the
pharmacist verified) wins over the requested one (RXO), and the route and timing that follow RXE win over
those that follow RXO. Older messages (before TQ1 existed) carry timing in RXE-1 or ORC-7 (the TQ type).
"""

from __future__ import annotations

from typing import Any

from gateway.adapters.hl7v2 import datatypes
from gateway.adapters.hl7v2.er7 import Segment, Value
from gateway.adapters.hl7v2.rules import Scope
from gateway.types import JSON

GTS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
REPEAT_PATTERN_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0335"


def _after(segments: list[Segment], anchor: Segment | None) -> Segment | None:
    """The first segment after `anchor` (or the first at all when there is no anchor)."""
    if anchor is None:
        return segments[0] if segments else None
    later = [s for s in segments if s.index > anchor.index]
    return later[0] if later else (segments[0] if segments else None)


def _number(text: str, ctx: Any) -> int | float | None:
    return datatypes.CONVERTERS["decimal"](Value(text), ctx) if text else None


def _dose(give: Segment, ctx: Any) -> JSON | None:
    """doseQuantity or doseRange from RXE-3/4/5 (or RXO-2/3/4)."""
    low_at, high_at, unit_at = (3, 4, 5) if give.name == "RXE" else (2, 3, 4)
    low = datatypes.quantity(give.get(low_at).c(1), give.get(unit_at), ctx) if give.get(low_at) else None
    high = datatypes.quantity(give.get(high_at).c(1), give.get(unit_at), ctx) if give.get(high_at) else None
    if low and high:
        return {"doseRange": {"low": low, "high": high}}
    if low or high:
        return {"doseQuantity": low or high}
    return None


def _rate(give: Segment, ctx: Any) -> JSON | None:
    """RXE-23/24: the give rate (an infusion's mL/hr)."""
    if give.name != "RXE" or not give.get(23):
        return None
    return datatypes.quantity(give.get(23).c(1), give.get(24), ctx)


def _timing_code(code: str, ctx: Any) -> tuple[JSON, JSON | None]:
    """Timing.code, and Timing.repeat when the repeat pattern is a known abbreviation."""
    known = ctx.tables.map("repeat-pattern", code)
    if isinstance(known, dict):
        system = GTS_SYSTEM if known.get("gts") else REPEAT_PATTERN_SYSTEM
        concept = {
            "coding": [{"system": system, "code": code.upper(), "display": known.get("display", code)}]
        }
        repeat = {k: v for k, v in known.items() if k not in ("display", "asNeeded", "gts")}
        return concept, repeat or None
    return {"coding": [{"system": REPEAT_PATTERN_SYSTEM, "code": code}]}, None


def _timing(tq1: Segment | None, legacy: Value, ctx: Any) -> tuple[JSON | None, bool]:
    """Timing from TQ1 (2.5+) or a TQ field (RXE-1, ORC-7); and whether the dose is as needed."""
    pattern, start, end, duration = "", Value(""), Value(""), None
    if tq1 is not None:
        pattern = tq1.get(3).c(1)
        start, end = tq1.get(7), tq1.get(8)
        if tq1.get(6):
            duration = datatypes.CONVERTERS["Quantity"](tq1.get(6), ctx)
    elif legacy:
        pattern = legacy.part(2).c(1)
        start, end = legacy.part(4), legacy.part(5)
    timing: JSON = {}
    as_needed = pattern.upper() == "PRN"
    if pattern:
        known = ctx.tables.map("repeat-pattern", pattern)
        as_needed = as_needed or (isinstance(known, dict) and bool(known.get("asNeeded")))
        code, repeat = _timing_code(pattern, ctx)
        timing["code"] = code
        if repeat:
            timing["repeat"] = repeat
    bounds = {}
    for name, value in (("start", start), ("end", end)):
        converted = datatypes.CONVERTERS["dateTime"](value, ctx) if value else None
        if converted:
            bounds[name] = converted
    if bounds:
        timing.setdefault("repeat", {})["boundsPeriod"] = bounds
    elif duration:
        timing.setdefault("repeat", {})["boundsDuration"] = duration
    return (timing or None), as_needed


def _cwe_texts(segment: Segment, at: int) -> list[str]:
    """The text of each repetition of a CWE field: component 2 (text), 9 (original text) or 1."""
    texts = [rep.c(2) or rep.c(9) or rep.c(1) for rep in segment.repetitions(at)]
    return [t for t in texts if t]


def _instructions(give: Segment, tq1: Segment | None) -> str:
    """Dosage.text: the prescriber's administration instructions (RXE-7 or RXO-7) and TQ1-11's text."""
    parts = _cwe_texts(give, 7)
    if tq1 is not None and tq1.get(11):
        parts.append(tq1.get(11).text)
    return "; ".join(parts)


def _sig(dose: JSON | None, route: JSON | None, timing: JSON | None, as_needed: bool) -> str:
    """A readable SIG when the prescriber wrote none: '100 mg oral BID as needed'."""
    parts: list[str] = []
    if dose and "doseQuantity" in dose:
        quantity = dose["doseQuantity"]
        parts.append(f"{quantity.get('value', '')} {quantity.get('unit', quantity.get('code', ''))}".strip())
    elif dose and "doseRange" in dose:
        low, high = dose["doseRange"]["low"], dose["doseRange"]["high"]
        parts.append(
            f"{low.get('value')}-{high.get('value')} {high.get('unit', high.get('code', ''))}".strip()
        )
    if route:
        parts.append(
            route.get("text")
            or next((c.get("display") or c.get("code") for c in route.get("coding", [])), "")
        )
    if timing and timing.get("code"):
        coding = timing["code"]["coding"][0]
        parts.append(coding.get("code", ""))
    if as_needed:
        parts.append("as needed")
    return " ".join(p for p in parts if p)


def dosage(scope: Scope, ctx: Any) -> list[JSON]:
    """One Dosage for the order, from the encoded order (RXE) or else the requested one (RXO)."""
    rxe, rxo = scope.first("RXE"), scope.first("RXO")
    give = rxe or rxo
    if give is None:
        return []
    rxr = _after(scope.segments("RXR"), rxe)
    tq1 = _after(scope.segments("TQ1"), rxe)
    orc = scope.first("ORC")
    legacy = rxe.get(1) if rxe is not None and rxe.get(1) else (orc.get(7) if orc is not None else Value(""))
    result: JSON = {}
    dose = _dose(give, ctx)
    rate = _rate(give, ctx)
    route = (
        datatypes.CONVERTERS["CodeableConcept"](rxr.get(1), ctx) if rxr is not None and rxr.get(1) else None
    )
    site = (
        datatypes.CONVERTERS["CodeableConcept"](rxr.get(2), ctx) if rxr is not None and rxr.get(2) else None
    )
    timing, as_needed = _timing(tq1, legacy, ctx)
    text = _instructions(give, tq1) or _sig(dose, route, timing, as_needed)
    if text:
        result["text"] = text
    if timing:
        result["timing"] = timing
    condition = tq1.get(10).text if tq1 is not None else ""
    if condition:  # TQ1-10 condition text: "as needed for <condition>"
        result["asNeededCodeableConcept"] = {"text": condition}
    elif as_needed:
        result["asNeededBoolean"] = True
    if site:
        result["site"] = site
    if route:
        result["route"] = route
    if dose or rate:
        result["doseAndRate"] = [{**(dose or {}), **({"rateQuantity": rate} if rate else {})}]
    return [result] if result else []


def dispense_request(scope: Scope, ctx: Any) -> JSON | None:
    """Quantity to dispense and refills: RXE-10/11/12, else RXO-11/12/13."""
    rxe, rxo = scope.first("RXE"), scope.first("RXO")
    give = rxe or rxo
    if give is None:
        return None
    amount_at, unit_at, refills_at = (10, 11, 12) if give.name == "RXE" else (11, 12, 13)
    result: JSON = {}
    if give.get(amount_at):
        quantity = datatypes.quantity(give.get(amount_at).c(1), give.get(unit_at), ctx)
        if quantity:
            result["quantity"] = quantity
    refills = give.get(refills_at).c(1)
    if refills:
        count = _number(refills, ctx)
        if isinstance(count, int) and count >= 0:
            result["numberOfRepeatsAllowed"] = count
        else:
            ctx.problems.append(
                f"{give.name}-{refills_at}: number of refills {refills!r} is not a whole number"
            )
    return result or None


def dispense_quantity(rxd: Segment, ctx: Any) -> JSON | None:
    """RXD-4 (actual dispense amount) with RXD-5 (its units)."""
    if not rxd.get(4):
        return None
    return datatypes.quantity(rxd.get(4).c(1), rxd.get(5), ctx)


def pharmacy_instructions(value: Value, ctx: Any) -> JSON | None:
    """RXO-6 / RXE-21, the prescriber's instructions to the pharmacy: a note for the pharmacist."""
    text = value.c(2) or value.c(9) or value.c(1)
    return {"text": f"Pharmacy instructions: {text}"} if text else None


SCOPE_CONVERTERS = {"dosage": dosage, "dispense-request": dispense_request}
VALUE_CONVERTERS = {"pharmacy-instructions": pharmacy_instructions}
