"""A MeasureReport (R4) from a Measure definition and the groups its tallies computed (pure).

Group and stratifier codes are copied from the Measure, so a reader matches report groups to definition
groups by code; population codes are R4's measure-population codes. The report is not stored: it is the
answer of `$evaluate-measure`, as R4 allows, so it has no id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from gateway.fhir import dates
from gateway.pharmacist.measures import GroupResult, Period, Stratum

JSON = dict[str, Any]
MEASURE_POPULATION: Final = "http://terminology.hl7.org/CodeSystem/measure-population"
UCUM: Final = "http://unitsofmeasure.org"
REPORTER: Final = "specialty-gateway"

ReportType = Literal["individual", "summary"]


def _code(definition: Mapping[str, Any] | None, code: str) -> JSON:
    """The definition's CodeableConcept for a group or stratifier code (copied), or a bare one."""
    concept = (definition or {}).get("code")
    if isinstance(concept, Mapping):
        return dict(concept)
    return {
        "coding": [{"system": "https://specialty-gateway.org/fhir/CodeSystem/measure-group", "code": code}]
    }


def _has_code(element: Mapping[str, Any], code: str) -> bool:
    concepts = element.get("code")
    concepts = concepts if isinstance(concepts, list) else [concepts]
    return any(
        isinstance(concept, Mapping)
        and any(isinstance(c, Mapping) and c.get("code") == code for c in concept.get("coding") or [])
        for concept in concepts
    )


def _group_definition(measure: Mapping[str, Any], code: str) -> Mapping[str, Any] | None:
    return next((g for g in measure.get("group") or [] if _has_code(g, code)), None)


def _populations(populations: Sequence[tuple[str, int]]) -> list[JSON]:
    return [
        {"code": {"coding": [{"system": MEASURE_POPULATION, "code": code}]}, "count": count}
        for code, count in populations
    ]


def _score(value: float | None, unit: str | None) -> JSON | None:
    if value is None:
        return None
    if unit is None:
        return {"value": value}
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _stratum(stratum: Stratum, unit: str | None) -> JSON:
    found: JSON = {"value": {"text": stratum.value}, "population": _populations(stratum.populations)}
    score = _score(stratum.score, unit)
    if score is not None:
        found["measureScore"] = score
    return found


def _group(measure: Mapping[str, Any], result: GroupResult) -> JSON:
    definition = _group_definition(measure, result.code)
    group: JSON = {"code": _code(definition, result.code), "population": _populations(result.populations)}
    score = _score(result.score, result.unit)
    if score is not None:
        group["measureScore"] = score
    if result.stratifier is not None:
        stratifier = next(
            (s for s in (definition or {}).get("stratifier") or [] if _has_code(s, result.stratifier)), None
        )
        group["stratifier"] = [
            {
                "code": [_code(stratifier, result.stratifier)],
                "stratum": [_stratum(s, result.unit) for s in result.strata],
            }
        ]
    return group


def measure_report(
    measure: Mapping[str, Any],
    *,
    report_type: ReportType,
    subject: str | None,
    period: Period,
    groups: Sequence[GroupResult],
    evaluated: Sequence[str] = (),
    now_us: int | None = None,
) -> JSON:
    """The MeasureReport of `measure` over `period`: individual (about one Patient) or summary (about a
    population: everyone, or a Practitioner's patients when `subject` names the Practitioner)."""
    report: JSON = {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": report_type,
        "measure": measure["url"],
    }
    if subject is not None:
        report["subject"] = {"reference": subject}
    report["date"] = dates.format_instant(now_us if now_us is not None else dates.now_us())
    report["reporter"] = {"display": REPORTER}
    report["period"] = {"start": period.start.isoformat(), "end": period.end.isoformat()}
    if isinstance(measure.get("improvementNotation"), Mapping):
        report["improvementNotation"] = dict(measure["improvementNotation"])
    report["group"] = [_group(measure, g) for g in groups]
    if evaluated:
        report["evaluatedResource"] = [{"reference": r} for r in evaluated]
    return report
