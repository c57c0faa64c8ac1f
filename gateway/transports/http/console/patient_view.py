"""What the console's patient page shows, read from the resources the page loaded (pure: no I/O; here
rather than in gateway/pharmacist because it joins pharmacist, routing and mapping rules).

- the header: name, identifiers, birth date, gender, preferred language, state of residence;
- the care team: the current participants of the patient's active CareTeams;
- the active orders, each marked specialty when a drug-lab rule orders its drug;
- the prior authorizations: state, decision due, authorized period end and days left;
- the adherence: the lowest PDC over the look-back (worklist.lowest_pdc);
- one chart per monitored lab: the results of the rule's labs over time, the reference range of the
  latest result, and the rule's bands as thresholds, converted to the results' unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from gateway.fhir import dates
from gateway.mapping.monitoring import DrugLabRule, MonitoringRules
from gateway.pa.lifecycle import BUSINESS_STATUS_SYSTEM
from gateway.pharmacist.dispenses import fills_from_dispenses
from gateway.pharmacist.worklist import PA_TASK_CODES, current_members, lowest_pdc
from gateway.routing import units
from gateway.routing.labs import ordered_rules
from gateway.types import JSON


def _text(concept: Any) -> str:
    if not isinstance(concept, Mapping):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, Mapping) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return ""


def _code(concept: Any, system: str | None = None) -> str | None:
    for coding in (concept or {}).get("coding") or [] if isinstance(concept, Mapping) else []:
        if isinstance(coding, Mapping) and (system is None or coding.get("system") == system):
            code = coding.get("code")
            return str(code) if code is not None else None
    return None


def _ref(value: Any) -> str | None:
    reference = value.get("reference") if isinstance(value, Mapping) else None
    return reference if isinstance(reference, str) else None


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    identifiers: tuple[tuple[str, str], ...]  # (system or type, value)
    birth_date: str
    gender: str
    language: str
    state: str


def person_name(resource: Mapping[str, Any]) -> str | None:
    """How a Patient or Practitioner is called: the official name (else the first one), as its `text` or
    its given names and family; None when it has none."""
    names = [n for n in resource.get("name") or [] if isinstance(n, Mapping)]
    first = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    if first is None:
        return None
    if isinstance(first.get("text"), str) and first["text"].strip():
        return str(first["text"])
    given = " ".join(g for g in first.get("given") or [] if isinstance(g, str))
    return " ".join(p for p in (given, str(first.get("family") or "")) if p) or None


def header(patient: JSON) -> Header:
    identifiers = tuple(
        (_text(i.get("type")) or str(i.get("system") or ""), str(i.get("value")))
        for i in patient.get("identifier") or []
        if isinstance(i, Mapping) and i.get("value")
    )
    languages = [c for c in patient.get("communication") or [] if isinstance(c, Mapping)]
    preferred = next((c for c in languages if c.get("preferred")), languages[0] if languages else {})
    addresses = [a for a in patient.get("address") or [] if isinstance(a, Mapping)]
    return Header(
        name=person_name(patient) or "(no name)",
        identifiers=identifiers,
        birth_date=str(patient.get("birthDate") or ""),
        gender=str(patient.get("gender") or ""),
        language=_text(preferred.get("language")),
        state=str(next((a.get("state") for a in addresses if a.get("state")), "")),
    )


def care_team(teams: Iterable[JSON], now_us: int) -> list[str]:
    """The current participants (references) of the active CareTeams, each once, in order."""
    members: list[str] = []
    for team in teams:
        if team.get("status") != "active":
            continue
        for member in current_members(team, now_us):
            if member not in members:
                members.append(member)
    return members


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    medication: str
    authored: str
    specialty: bool
    rules: tuple[str, ...]


def medication_text(request: JSON, medications: Mapping[str, JSON]) -> str:
    concept = request.get("medicationCodeableConcept")
    if concept is None:
        found = medications.get(_ref(request.get("medicationReference")) or "")
        concept = found.get("code") if found else None
    return _text(concept) or "(medication not named)"


def orders(requests: Iterable[JSON], rules: MonitoringRules, medications: Mapping[str, JSON]) -> list[Order]:
    """The active orders, newest first; specialty when a drug-lab rule orders the drug."""
    found = []
    for request in requests:
        if request.get("status") != "active":
            continue
        applied = tuple(r.id for r in ordered_rules(request, rules, dict(medications)))
        found.append(
            Order(
                str(request.get("id")),
                medication_text(request, medications),
                str(request.get("authoredOn") or ""),
                bool(applied),
                applied,
            )
        )
    return sorted(found, key=lambda o: o.authored, reverse=True)


@dataclass(frozen=True, slots=True)
class PriorAuth:
    id: str
    kind: str
    state: str
    due: str
    expires: str
    days_left: int | None


def prior_auths(tasks: Iterable[JSON], today: date) -> list[PriorAuth]:
    """The patient's PA Tasks, newest first, with the authorized period's end and the days left."""
    found = []
    for task in tasks:
        kind = next((c for c in PA_TASK_CODES if _code(task.get("code")) == c), None)
        if kind is None:
            continue
        state = _code(task.get("businessStatus"), BUSINESS_STATUS_SYSTEM) or str(task.get("status") or "")
        end = str(((task.get("restriction") or {}).get("period") or {}).get("end") or "")
        days_left = None
        if end:
            try:
                days_left = (dates.from_us(dates.date_range(end)[0]).date() - today).days
            except dates.DateFormatError:
                days_left = None
        due = next(
            (
                str(e.get("valueDateTime") or e.get("valueDate") or "")
                for e in task.get("extension") or []
                if isinstance(e, Mapping) and str(e.get("url") or "").endswith("pa-decision-due")
            ),
            "",
        )
        found.append(PriorAuth(str(task.get("id")), kind, state, due, end, days_left))
    return sorted(found, key=lambda p: p.id, reverse=True)


def adherence(dispenses: Sequence[JSON], medications: Mapping[str, JSON], today: date) -> str:
    """The lowest PDC, or why there is none (a pharmacist must not read "no PDC" as "adherent")."""
    lowest = lowest_pdc(dispenses, medications, today)
    if lowest is not None:
        return f"{float(lowest.pdc) * 100:.0f} % ({lowest.drug}, {lowest.start} to {lowest.end})"
    skipped = fills_from_dispenses(dispenses, medications).skipped
    if skipped:
        reasons = sorted({s.reason for s in skipped})
        return f"not computed: {len(skipped)} of {len(dispenses)} dispenses not usable ({'; '.join(reasons)})"
    return "not enough fills to tell (two fills of a drug on different days are needed)"


@dataclass(slots=True)
class ChartSpec:
    """One monitored lab: what `charts.render_lab_chart` needs."""

    rule: str
    name: str
    series: list[tuple[datetime, float, str]] = field(default_factory=list)
    reference_range: tuple[float | None, float | None] | None = None
    thresholds: list[tuple[float, str, str, str]] = field(default_factory=list)
    threshold_unit: str = ""
    threshold_factor: float = 1.0
    unit_factors: dict[str, float] = field(default_factory=dict)


_DIRECTION = {"below": "below", "above": "above", "at_least": "above"}


def _point(observation: JSON) -> tuple[datetime, float, str] | None:
    quantity = observation.get("valueQuantity")
    when = observation.get("effectiveDateTime") or (observation.get("effectivePeriod") or {}).get("start")
    if not isinstance(quantity, Mapping) or not isinstance(when, str):
        return None
    value = quantity.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        try:
            value = float(str(value))
        except ValueError:
            return None
    try:
        at = dates.from_us(dates.date_range(when)[0])
    except dates.DateFormatError:
        return None
    return at, float(value), str(quantity.get("code") or quantity.get("unit") or "")


def _range(observation: JSON) -> tuple[float | None, float | None] | None:
    ranges = [r for r in observation.get("referenceRange") or [] if isinstance(r, Mapping)]
    if not ranges:
        return None

    def bound(key: str) -> float | None:
        value = (ranges[0].get(key) or {}).get("value")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    low, high = bound("low"), bound("high")
    return None if low is None and high is None else (low, high)


def chart_specs(
    observations: Iterable[JSON], rules: Sequence[DrugLabRule], withdrawn: frozenset[str]
) -> list[ChartSpec]:
    """One chart per rule that applies to the patient's orders, from the results of its labs (withdrawn
    results left out). Thresholds are the rule's bands with a unit, converted to the latest result's
    unit; a band whose unit does not convert is left off (rather than drawn at the wrong height)."""
    specs = []
    found = [o for o in observations if str(o.get("status")) not in withdrawn]
    for rule in rules:
        labs = {(c.system, c.code) for c in rule.labs}
        mine = [
            o
            for o in found
            if any(
                (c.get("system"), c.get("code")) in labs
                for c in (o.get("code") or {}).get("coding") or []
                if isinstance(c, Mapping)
            )
        ]
        pairs = sorted(((p, o) for o in mine if (p := _point(o)) is not None), key=lambda pair: pair[0][0])
        points = [p for p, _ in pairs]
        name = next((_text(o.get("code")) for o in mine if _text(o.get("code"))), rule.drug)
        spec = ChartSpec(rule.id, f"{name} ({rule.drug})", points)
        if pairs:
            unit = points[-1][2]
            spec.reference_range = _range(pairs[-1][1])  # the latest result's
            for other in {p[2] for p in points} - {unit}:
                factor = units.convert(1.0, other, unit, monovalent=False)
                if factor:
                    spec.unit_factors[other] = factor
            spec.series = [p for p in points if p[2] == unit or p[2] in spec.unit_factors]
            for band in rule.bands:
                if band.limit is None or band.unit is None or band.condition not in _DIRECTION:
                    continue
                factor = units.convert(1.0, unit, band.unit, monovalent=band.monovalent)
                if not factor:
                    continue
                # thresholds are given in one unit per chart: the first band's
                if spec.threshold_unit and spec.threshold_unit != band.unit:
                    continue
                spec.threshold_unit, spec.threshold_factor = band.unit, factor
                # the chart writes "<label> <value> <unit> (<severity>)": the operator is the label
                label = {"below": "<", "above": ">", "at_least": ">="}[band.condition]
                spec.thresholds.append((band.limit, label, band.severity, _DIRECTION[band.condition]))
        specs.append(spec)
    return specs


def patient_label(patient: JSON) -> str:
    """How a person recognises a patient in a list: name, then the first identifier."""
    name = person_name(patient) or "(no name)"
    identifiers = [i.get("value") for i in patient.get("identifier") or [] if isinstance(i, dict)]
    shown = next((str(v) for v in identifiers if v), f"Patient/{patient.get('id')}")
    return f"{name} · {shown}"
