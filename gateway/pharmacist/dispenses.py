"""Fills for the PDC from FHIR R4 MedicationDispense resources (JSON dicts).

Why a separate step: a dispense that cannot be counted (not completed, no hand-over date, no days
supply, an unknown medication) changes the PDC as surely as a missed fill, so each one left out is
reported with its reason, for the pharmacist to see, instead of being dropped.

The drug key decides which fills are "the same drug" (shifted past each other). PQA counts by active
ingredient, so a strength switch stays the same drug. Orders and dispenses carry clinical-drug codes
(strength-specific), and mapping them to ingredients needs RxNorm data the gateway does not hold; the
default key therefore reads the ingredient from the RxNorm-style name ("clozapine 100 MG Oral Tablet
[Clozaril]" -> "clozapine"), else uses the RxNorm code. Callers with an ingredient table pass their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from gateway.pharmacist.pdc import Fill

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
_DAY_UNITS = frozenset({"d", "day", "days"})

# (RxNorm code, medication name) -> the drug key, or None when the drug is not known.
DrugKey = Callable[[str | None, str | None], str | None]

_BRAND = re.compile(r"\[[^\]]*\]")
_QUANTITY_PREFIX = re.compile(r"^\d+(?:\.\d+)?\s+\S+\s+")  # "1 ML adalimumab 40 MG/ML ..." (injectables)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A dispense not counted, and why."""

    reference: str | None  # "MedicationDispense/<id>" when it has an id
    reason: str


@dataclass(frozen=True, slots=True)
class Extracted:
    fills: tuple[Fill, ...]
    skipped: tuple[Skipped, ...]


def ingredient_name(name: str) -> str | None:
    """The ingredient words of an RxNorm clinical or branded drug name, lower case: the words of each
    "/"-separated part before its first strength ("abacavir 600 MG / lamivudine 300 MG Oral Tablet" ->
    "abacavir / lamivudine"). None when the name has no strength to cut at."""
    text = _QUANTITY_PREFIX.sub("", _BRAND.sub("", name).strip())
    parts = []
    for part in text.split(" / "):
        words = part.split()
        cut = next((i for i, word in enumerate(words) if word[0].isdigit()), None)
        if not cut:  # no strength, or nothing before it
            return None
        parts.append(" ".join(words[:cut]).casefold())
    return " / ".join(parts)


def default_drug_key(rxnorm_code: str | None, name: str | None) -> str | None:
    ingredient = ingredient_name(name) if name else None
    if ingredient:
        return ingredient
    if rxnorm_code:
        return f"rxnorm:{rxnorm_code}"
    return name.strip().casefold() if name and name.strip() else None


def _medication(
    dispense: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]
) -> tuple[Mapping[str, Any] | None, str | None]:
    """The medication's CodeableConcept, or the reason there is none."""
    concept = dispense.get("medicationCodeableConcept")
    if isinstance(concept, Mapping):
        return concept, None
    reference = (dispense.get("medicationReference") or {}).get("reference")
    if not isinstance(reference, str):
        return None, "no medicationCodeableConcept or medicationReference"
    if reference.startswith("#"):
        found = next(
            (
                r
                for r in dispense.get("contained") or []
                if isinstance(r, Mapping)
                and r.get("resourceType") == "Medication"
                and r.get("id") == reference[1:]
            ),
            None,
        )
    else:
        found = medications.get(reference)
    if found is None:
        return None, f"medication {reference} not found"
    code = found.get("code")
    return (code, None) if isinstance(code, Mapping) else (None, f"medication {reference} has no code")


def _code_and_name(concept: Mapping[str, Any]) -> tuple[str | None, str | None]:
    codings = [c for c in concept.get("coding") or [] if isinstance(c, Mapping)]
    rxnorm = next((c for c in codings if c.get("system") == RXNORM and c.get("code")), None)
    name = (rxnorm or {}).get("display") or concept.get("text")
    name = name or next((c.get("display") for c in codings if c.get("display")), None)
    return (rxnorm or {}).get("code"), name


def _handed_over(value: Any) -> date | None:
    """The hand-over day as written (the pharmacy's local day, which is the PQA's date of service)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _days_supply(value: Any) -> int | str:
    """Whole days, or the reason the quantity is not usable."""
    if not isinstance(value, Mapping) or value.get("value") is None:
        return "no daysSupply"
    unit = value.get("code") or value.get("unit")
    if unit is not None and str(unit).casefold() not in _DAY_UNITS:
        return f"daysSupply in {unit!r}, not days"
    amount = value["value"]
    if isinstance(amount, bool) or not isinstance(amount, int | float) or amount != int(amount):
        return f"daysSupply {amount!r} is not a whole number of days"
    if amount < 1:
        return f"daysSupply {amount!r} is not positive"
    return int(amount)


def fills_from_dispenses(
    dispenses: Iterable[Mapping[str, Any]],
    medications: Mapping[str, Mapping[str, Any]] | None = None,
    drug_key: DrugKey = default_drug_key,
) -> Extracted:
    """Fills from completed MedicationDispenses; every other dispense comes back in `skipped`.

    `medications` resolves `medicationReference`s that are not contained ("Medication/1" -> resource).
    """
    fills: list[Fill] = []
    skipped: list[Skipped] = []
    for dispense in dispenses:
        ident = dispense.get("id")
        reference = f"MedicationDispense/{ident}" if ident else None
        reason: str | None = None
        status = dispense.get("status")
        handed_over = _handed_over(dispense.get("whenHandedOver"))
        supply = _days_supply(dispense.get("daysSupply"))
        concept, reason = _medication(dispense, medications or {})
        key = drug_key(*_code_and_name(concept)) if concept is not None else None
        if status != "completed":
            reason = f"status {status!r}, not completed"
        elif handed_over is None:
            reason = f"whenHandedOver {dispense.get('whenHandedOver')!r} is not a day"
        elif isinstance(supply, str):
            reason = supply
        elif reason is None and key is None:
            reason = "medication has no RxNorm code or name to tell the drug by"
        if reason is not None or handed_over is None or isinstance(supply, str) or key is None:
            skipped.append(Skipped(reference, reason or "not usable"))
            continue
        fills.append(Fill(key, handed_over, supply, reference))
    return Extracted(tuple(fills), tuple(skipped))
