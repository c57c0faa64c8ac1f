"""Lab results for three topics: abnormal, critical, and drug-lab monitoring. Pure functions over FHIR JSON.

Thresholds come from `mappings/monitoring/` (`gateway.mapping.monitoring`); this module only knows how to
read an Observation. When a comparison cannot be made honestly (units that do not convert, no reference
range for a "x ULN" band, a censored value such as "<5" against an upper limit) it is not made: a missed
band is visible in the result itself, a wrong alert sends a pharmacist after nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

from gateway.fhir.references import parse_reference
from gateway.mapping.monitoring import Band, CriticalThreshold, DrugLabRule, MonitoringRules
from gateway.routing import units
from gateway.types import JSON

WITHDRAWN_STATUSES = frozenset({"entered-in-error", "cancelled"})
# Interpretations that say "nothing wrong": normal, and the negative results of qualitative tests.
NORMAL_INTERPRETATIONS = frozenset({"N", "NEG", "ND", "NR"})
POSITIVE_INTERPRETATIONS = frozenset({"POS", "DET", "A"})
SNOMED = "http://snomed.info/sct"
POSITIVE_SNOMED = frozenset({"10828004", "260373001", "11214006"})  # positive, detected, reactive
_POSITIVE_TEXT = re.compile(r"^\s*(positive|pos|detected|reactive)\b", re.IGNORECASE)

Operator = Literal["below", "at_most", "above", "at_least"]
_BAND_OPERATORS: dict[str, Operator] = {"below": "below", "above": "above", "at_least": "at_least"}


@dataclass(frozen=True, slots=True)
class MonitoringAlert:
    rule_id: str
    drug: str
    medication_request_id: str | None
    lab_code: str
    lab_display: str
    value: float | None  # as reported, in `unit`
    unit: str | None
    band: str  # e.g. "< 1000 /uL"
    action: str
    severity: str
    source: str
    # (system, code) of every coding of the ordered medication, for subscription filters on the drug
    medication_codes: tuple[tuple[str | None, str], ...] = ()


class _Measured(NamedTuple):
    value: float
    unit: str | None
    comparator: str | None  # "<", "<=", ">=", ">" for censored results


def observation_codes(obs: JSON) -> set[tuple[str | None, str]]:
    """(system, code) of every coding of Observation.code."""
    return {
        (coding.get("system"), coding["code"])
        for coding in _codings(obs.get("code"))
        if isinstance(coding.get("code"), str)
    }


def is_abnormal(obs: JSON) -> bool:
    """Flagged other than normal, or a value outside the normal reference range."""
    if _withdrawn(obs):
        return False
    if any(code not in NORMAL_INTERPRETATIONS for code in _interpretations(obs)):
        return True
    return _outside_range(obs)


def critical_reasons(obs: JSON, rules: MonitoringRules) -> list[str]:
    """Why the result is a critical value ("interpretation HH", "2823-3 7.1 mmol/L above critical 6.5")."""
    if _withdrawn(obs):
        return []
    reasons = [
        f"interpretation {code}" for code in _interpretations(obs) if code in rules.critical_interpretations
    ]
    measured = _measured(obs)
    if measured is not None:
        codes = observation_codes(obs)
        for threshold in rules.critical_thresholds:
            if (threshold.system, threshold.code) in codes:
                reasons.extend(_threshold_reasons(threshold, measured))
    return reasons


def monitoring_alerts(
    obs: JSON,
    medication_requests: list[JSON],
    rules: MonitoringRules,
    medications: dict[str, JSON] | None = None,
) -> list[MonitoringAlert]:
    """One alert per active order and rule whose lab this is, with the most severe band that holds.

    `medications` resolves medicationReference ("Medication/id" -> Medication); contained ones resolve
    from the order itself.
    """
    if _withdrawn(obs):
        return []
    alerts = []
    for rule in rules.drug_lab:
        lab = _matching_lab(rule, obs)
        if lab is None:
            continue
        band = next((band for band in rule.bands if _band_holds(band, obs)), None)
        if band is None:
            continue
        for request in medication_requests:
            if request.get("status") != "active" or not _same_subject(obs, request):
                continue
            concepts = _medication_concepts(request, medications or {})
            if _orders_drug(rule, concepts):
                alerts.append(_alert(rule, band, request, obs, lab, concepts))
    return alerts


def ordered_rules(
    request: JSON, rules: MonitoringRules, medications: dict[str, JSON] | None = None
) -> list[DrugLabRule]:
    """The drug-lab rules whose drug this MedicationRequest orders (by code or by name), whatever its
    status (pharmacist matching reads the drug classes of a patient's active orders from them)."""
    concepts = _medication_concepts(request, medications or {})
    return [rule for rule in rules.drug_lab if _orders_drug(rule, concepts)]


# --- reading an Observation ---------------------------------------------------------------------------


def _codings(concept: Any) -> list[JSON]:
    if not isinstance(concept, dict) or not isinstance(concept.get("coding"), list):
        return []
    return [coding for coding in concept["coding"] if isinstance(coding, dict)]


def _withdrawn(obs: JSON) -> bool:
    return obs.get("status") in WITHDRAWN_STATUSES


def _interpretations(obs: JSON) -> list[str]:
    """Interpretation codes from any system (v3 ObservationInterpretation and v2 0078 share them)."""
    found: dict[str, None] = {}  # ordered and without repeats when both systems are sent
    for concept in obs.get("interpretation") or []:
        for coding in _codings(concept):
            if isinstance(coding.get("code"), str):
                found[coding["code"]] = None
    return list(found)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _unit_of(quantity: JSON) -> str | None:
    """The UCUM code when there is one, else the unit text."""
    unit = quantity.get("code") or quantity.get("unit")
    return unit if isinstance(unit, str) else None


def _measured(obs: JSON) -> _Measured | None:
    quantity = obs.get("valueQuantity")
    if not isinstance(quantity, dict):
        return None
    value = _number(quantity.get("value"))
    if value is None:
        return None
    return _Measured(value, units.normalise(_unit_of(quantity)), quantity.get("comparator"))


def _normal_range(obs: JSON) -> JSON | None:
    """The first reference range that is the normal range (no type, or type "normal")."""
    for candidate in obs.get("referenceRange") or []:
        if not isinstance(candidate, dict):
            continue
        types = {coding.get("code") for coding in _codings(candidate.get("type"))}
        if not types or "normal" in types:
            return candidate
    return None


def _limit_in(quantity: Any, unit: str | None) -> float | None:
    """A reference range limit expressed in `unit`; raw when either unit is absent (then they match)."""
    if not isinstance(quantity, dict):
        return None
    value = _number(quantity.get("value"))
    limit_unit = units.normalise(_unit_of(quantity))
    if value is None or unit is None or limit_unit is None:
        return value
    return units.convert(value, limit_unit, unit)


def _holds(measured: _Measured, operator: Operator, limit: float) -> bool:
    """Whether the true value is surely `operator` `limit`, taking a censored result ("<5") into account."""
    value, comparator = measured.value, measured.comparator
    if comparator in ("<", "<="):  # the true value is at most `value`: only "low" questions have answers
        if operator == "below":
            return value <= limit if comparator == "<" else value < limit
        return operator == "at_most" and value <= limit
    if comparator in (">", ">="):
        if operator == "above":
            return value >= limit if comparator == ">" else value > limit
        return operator == "at_least" and value >= limit
    return {
        "below": value < limit,
        "at_most": value <= limit,
        "above": value > limit,
        "at_least": value >= limit,
    }[operator]


def _outside_range(obs: JSON) -> bool:
    measured, normal = _measured(obs), _normal_range(obs)
    if measured is None or normal is None:
        return False
    low, high = _limit_in(normal.get("low"), measured.unit), _limit_in(normal.get("high"), measured.unit)
    return (low is not None and _holds(measured, "below", low)) or (
        high is not None and _holds(measured, "above", high)
    )


def _in_unit(measured: _Measured, unit: str | None, monovalent: bool) -> _Measured | None:
    """`measured` in a rule's unit; a rule without one (a ratio such as INR) takes the value as reported."""
    if unit is None:
        return measured
    value = units.convert(measured.value, measured.unit, unit, monovalent=monovalent)
    return None if value is None else measured._replace(value=value, unit=unit)


def _shown(measured: _Measured) -> str:
    number = f"{measured.comparator or ''}{measured.value:g}"
    return f"{number} {measured.unit}" if measured.unit else number


# --- critical values ----------------------------------------------------------------------------------


def _threshold_reasons(threshold: CriticalThreshold, measured: _Measured) -> list[str]:
    converted = _in_unit(measured, threshold.unit, threshold.monovalent)
    if converted is None:
        return []
    shown = _shown(measured) if converted == measured else f"{_shown(measured)} ({_shown(converted)})"
    at = "at or " if threshold.inclusive else ""
    reasons = []
    if threshold.low is not None and _holds(
        converted, "at_most" if threshold.inclusive else "below", threshold.low
    ):
        reasons.append(f"{threshold.code} {shown} {at}below critical {threshold.low:g}")
    if threshold.high is not None and _holds(
        converted, "at_least" if threshold.inclusive else "above", threshold.high
    ):
        reasons.append(f"{threshold.code} {shown} {at}above critical {threshold.high:g}")
    return reasons


# --- drug-lab monitoring ------------------------------------------------------------------------------


def _matching_lab(rule: DrugLabRule, obs: JSON) -> JSON | None:
    """The Observation.code coding that is one of the rule's labs."""
    wanted = {(lab.system, lab.code) for lab in rule.labs}
    return next(
        (
            coding
            for coding in _codings(obs.get("code"))
            if (coding.get("system"), coding.get("code")) in wanted
        ),
        None,
    )


def _is_positive(obs: JSON) -> bool:
    if any(code in POSITIVE_INTERPRETATIONS for code in _interpretations(obs)):
        return True
    concept = obs.get("valueCodeableConcept")
    for coding in _codings(concept):
        if coding.get("system") == SNOMED and coding.get("code") in POSITIVE_SNOMED:
            return True
    texts = [obs.get("valueString"), concept.get("text") if isinstance(concept, dict) else None]
    texts += [coding.get("display") for coding in _codings(concept)]
    return any(isinstance(text, str) and _POSITIVE_TEXT.match(text) for text in texts)


def _band_holds(band: Band, obs: JSON) -> bool:
    if band.condition == "positive":
        return _is_positive(obs)
    measured = _measured(obs)
    if measured is None or band.limit is None:
        return False
    if band.condition == "above_uln":
        normal = _normal_range(obs)
        upper = _limit_in(normal.get("high"), measured.unit) if normal else None
        return upper is not None and _holds(measured, "above", band.limit * upper)
    converted = _in_unit(measured, band.unit, band.monovalent)
    return converted is not None and _holds(converted, _BAND_OPERATORS[band.condition], band.limit)


def _same_subject(obs: JSON, request: JSON) -> bool:
    """False only when both name a patient and they differ: the caller chose the orders, this is a guard."""
    ours, theirs = (_subject(resource) for resource in (obs, request))
    return ours is None or theirs is None or ours == theirs


def _subject(resource: JSON) -> tuple[str, str] | None:
    subject = resource.get("subject")
    reference = subject.get("reference") if isinstance(subject, dict) else None
    return parse_reference(reference) if isinstance(reference, str) else None


def _medication_concepts(request: JSON, medications: dict[str, JSON]) -> list[JSON]:
    """The concepts naming the ordered drug: the order's own, or its Medication's code and ingredients."""
    concept = request.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return [concept]
    medication = _referenced_medication(request, medications)
    if medication is None:
        return []
    concepts = [medication.get("code")]
    concepts += [
        item.get("itemCodeableConcept")
        for item in medication.get("ingredient") or []
        if isinstance(item, dict)
    ]
    return [concept for concept in concepts if isinstance(concept, dict)]


def _referenced_medication(request: JSON, medications: dict[str, JSON]) -> JSON | None:
    reference = request.get("medicationReference")
    target = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(target, str):
        return None
    if target.startswith("#"):
        contained = (r for r in request.get("contained") or [] if isinstance(r, dict))
        return next((r for r in contained if r.get("id") == target[1:]), None)
    parsed = parse_reference(target)
    return medications.get(f"{parsed[0]}/{parsed[1]}" if parsed else target)


@lru_cache(maxsize=1024)
def _name_pattern(name: str) -> re.Pattern[str]:
    # A whole word, so "lithium" matches "Lithium carbonate 300 MG" but "arava" does not match "Saravan".
    return re.compile(rf"(?<![a-z0-9]){re.escape(name.casefold())}(?![a-z0-9])")


def _orders_drug(rule: DrugLabRule, concepts: list[JSON]) -> bool:
    codes = {(code.system, code.code) for code in rule.medication_codes}
    texts: list[str] = []
    for concept in concepts:
        for coding in _codings(concept):
            if (coding.get("system"), coding.get("code")) in codes:
                return True
            texts.append(str(coding.get("display") or ""))
        texts.append(str(concept.get("text") or ""))
    return any(_name_pattern(name).search(text.casefold()) for name in rule.names for text in texts)


def _alert(
    rule: DrugLabRule, band: Band, request: JSON, obs: JSON, lab: JSON, concepts: list[JSON]
) -> MonitoringAlert:
    measured = _measured(obs)
    code = obs.get("code")
    text = code.get("text") if isinstance(code, dict) else None
    return MonitoringAlert(
        rule_id=rule.id,
        drug=rule.drug,
        medication_request_id=request.get("id"),
        lab_code=str(lab["code"]),
        lab_display=str(lab.get("display") or text or lab["code"]),
        value=measured.value if measured else None,
        unit=measured.unit if measured else None,
        band=band.describe(),
        action=band.action,
        severity=band.severity,
        source=band.source,
        medication_codes=tuple(
            dict.fromkeys(
                (coding.get("system"), coding["code"])
                for concept in concepts
                for coding in _codings(concept)
                if isinstance(coding.get("code"), str)
            )
        ),
    )
