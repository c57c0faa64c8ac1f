"""When two Observations are the same lab result: one pushed by an EHR over FHIR, one from the lab over
HL7 v2 (or the EHR pushing it twice). Pure.

Same result: the same Patient, a shared coding (system and code, after the sender's local codes were
mapped), the same effective time (to the second: HL7 v2 times and FHIR instants of one draw agree there),
and the same value (a quantity's number and unit, a coded or text value) when both carry one. Anything
less is kept apart: two Observations are better than one that mixes two results.

EHR-pushed Observations carry a tag naming the feed (`FEED_TAG`); only those are candidates when an HL7
v2 result looks for its twin, so two results of one lab message are never merged with each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.fhir import dates
from gateway.fhir.references import parse_reference

FEED_TAG_SYSTEM = "https://specialty-gateway.org/fhir/CodeSystem/feed"
FEED_SECOND_US = 1_000_000


def feed_tag(client: str) -> dict[str, str]:
    return {"system": FEED_TAG_SYSTEM, "code": f"ehr-fhir:{client}", "display": f"EHR over FHIR ({client})"}


def from_ehr_feed(resource: Mapping[str, Any]) -> bool:
    tags = (resource.get("meta") or {}).get("tag") or []
    return any(isinstance(t, Mapping) and t.get("system") == FEED_TAG_SYSTEM for t in tags)


@dataclass(frozen=True)
class ResultKey:
    patient: str
    codes: frozenset[tuple[str, str]]
    effective_s: int  # seconds since the epoch
    value: tuple[str, ...] | None


def _codes(concept: Any) -> frozenset[tuple[str, str]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return frozenset(
        (str(c["system"]), str(c["code"]))
        for c in codings or []
        if isinstance(c, Mapping) and c.get("system") and c.get("code")
    )


def _value(resource: Mapping[str, Any]) -> tuple[str, ...] | None:
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, Mapping) and quantity.get("value") is not None:
        try:
            number = Decimal(str(quantity["value"])).normalize()
        except InvalidOperation:
            return ("unreadable",)
        unit = str(quantity.get("code") or quantity.get("unit") or "")
        return ("quantity", format(number, "f"), unit)
    if isinstance(resource.get("valueCodeableConcept"), Mapping):
        return ("coded", *sorted(f"{s}|{c}" for s, c in _codes(resource["valueCodeableConcept"])))
    if isinstance(resource.get("valueString"), str):
        return ("text", " ".join(resource["valueString"].split()).casefold())
    return None


def result_key(resource: Mapping[str, Any], local_bases: tuple[str, ...] = ()) -> ResultKey | None:
    """What makes this Observation a result that another could duplicate; None when it cannot be told
    (no Patient subject, no coded code, or no effective time)."""
    if resource.get("resourceType") != "Observation":
        return None
    subject = resource.get("subject")
    parsed = (
        parse_reference(str(subject.get("reference") or ""), local_bases)
        if isinstance(subject, Mapping)
        else None
    )
    if parsed is None or parsed[0] != "Patient":
        return None
    codes = _codes(resource.get("code"))
    when = resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start")
    if not codes or not isinstance(when, str):
        return None
    try:
        low = dates.date_range(when)[0]
    except dates.DateFormatError:
        return None
    return ResultKey(parsed[1], codes, low // FEED_SECOND_US, _value(resource))


def same_result(a: ResultKey, b: ResultKey) -> bool:
    if a.patient != b.patient or a.effective_s != b.effective_s or not (a.codes & b.codes):
        return False
    return a.value is None or b.value is None or a.value == b.value


def merged_marks(kept: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """`kept` with the identifiers and feed tags of `other` added (each once): what one source knows the
    result by survives the merge."""
    merged = dict(kept)
    identifiers = list(kept.get("identifier") or [])
    identifiers += [i for i in other.get("identifier") or [] if i not in identifiers]
    if identifiers:
        merged["identifier"] = identifiers
    tags = list((kept.get("meta") or {}).get("tag") or [])
    tags += [t for t in (other.get("meta") or {}).get("tag") or [] if t not in tags]
    if tags:
        merged["meta"] = {**(kept.get("meta") or {}), "tag": tags}
    return merged
