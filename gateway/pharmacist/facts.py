"""What matching needs to know about a pharmacist and a patient, read from their FHIR R4 resources.

Matching compares facts, not resources, so that its score depends only on what the README documents and
its tests can state facts directly. Where the facts come from (issue 10):

- a pharmacist is a Practitioner and a PractitionerRole. Languages are `Practitioner.communication`
  codings of `urn:ietf:bcp:47`; licences are `Practitioner.qualification` entries carrying the Da Vinci
  Plan-Net `practitioner-qualification` extension, whose `whereValid` names the state (USPS code) and
  whose `status` must not be `inactive`; a licence whose `period` has ended (or not begun) does not count.
  Specialties and drug classes are `PractitionerRole.specialty`; the caseload capacity is the gateway's
  `caseload-capacity` extension (profiles/StructureDefinition-caseload-capacity.json).
- a patient's languages are `Patient.communication` (preferred first) and the state of residence is the
  state of the current home address. The conditions and drug classes of the patient's active specialty
  orders are the caller's to gather (they live in other resources) and are passed in.

Languages compare by primary subtag (`es-MX` and `es` are both `es`): a pharmacist who speaks Spanish
serves a patient who asked for Mexican Spanish.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.fhir.dates import DateFormatError, date_range, to_us
from gateway.types import JSON

BCP47_SYSTEM = "urn:ietf:bcp:47"
USPS_SYSTEM = "https://www.usps.com/"
PLAN_NET_QUALIFICATION = (
    "http://hl7.org/fhir/us/davinci-pdex-plan-net/StructureDefinition/practitioner-qualification"
)
CASELOAD_CAPACITY = "https://specialty-gateway.org/fhir/StructureDefinition/caseload-capacity"

# Address uses that are not where the patient lives now.
_NOT_RESIDENCE = frozenset({"old", "billing"})
# Among current addresses, the order in which one is taken as the state of residence.
_USE_ORDER = {"home": 0, None: 1, "temp": 2, "work": 3}


@dataclass(frozen=True, slots=True)
class Licence:
    """One state licence as the Practitioner states it; `valid` is whether it counts at the time read."""

    state: str
    valid: bool
    why_not: str | None = None  # e.g. "ended 2025-01-31", "status inactive"


@dataclass(frozen=True, slots=True)
class PharmacistFacts:
    """A pharmacist in one role. `specialties` holds each specialty coding as `code` and `system|code`."""

    practitioner_id: str
    role_id: str
    active: bool
    languages: tuple[str, ...]
    licences: tuple[Licence, ...]
    specialties: frozenset[str]
    capacity: int | None

    def licensed_in(self, state: str) -> bool:
        return any(licence.valid and licence.state == state for licence in self.licences)

    def valid_states(self) -> tuple[str, ...]:
        return tuple(sorted({licence.state for licence in self.licences if licence.valid}))


@dataclass(frozen=True, slots=True)
class PatientFacts:
    """A patient as matching sees them. `drug_classes` and `conditions` are codes (bare or `system|code`)
    from the patient's active specialty orders, in the code systems the roles' specialties use."""

    patient_id: str
    languages: tuple[str, ...]
    preferred_language: str | None
    state: str | None
    drug_classes: frozenset[str] = frozenset()
    conditions: frozenset[str] = frozenset()


def primary_language(tag: str) -> str | None:
    """The primary language subtag of a BCP-47 tag, lower case (`es-MX` -> `es`); None if not a tag."""
    primary = tag.strip().split("-", 1)[0].lower()
    return primary if primary.isalpha() and 2 <= len(primary) <= 8 else None


def _codings(concept: Any) -> list[JSON]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings or [] if isinstance(c, dict)] if isinstance(codings, list) else []


def _languages(concept: Any) -> list[str]:
    found = []
    for coding in _codings(concept):
        code = coding.get("code")
        if coding.get("system") == BCP47_SYSTEM and isinstance(code, str):
            language = primary_language(code)
            if language:
                found.append(language)
    return found


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _period_problem(period: Any, now_us: int) -> str | None:
    """Why a Period does not cover `now` ("ended 2025-01-31", "starts ..."); None if it does."""
    if not isinstance(period, dict):
        return None
    try:
        end = period.get("end")
        if isinstance(end, str) and date_range(end)[1] < now_us:
            return f"ended {end}"
        start = period.get("start")
        if isinstance(start, str) and date_range(start)[0] > now_us:
            return f"starts {start}"
    except DateFormatError:
        return "period unreadable"
    return None


def _states(extension: JSON) -> list[str]:
    """The USPS state codes of a Plan-Net qualification extension's `whereValid` sub-extensions."""
    states = []
    for sub in extension.get("extension") or []:
        if isinstance(sub, dict) and sub.get("url") == "whereValid":
            for coding in _codings(sub.get("valueCodeableConcept")):
                code = coding.get("code")
                if coding.get("system") == USPS_SYSTEM and isinstance(code, str) and code.strip():
                    states.append(code.strip().upper())
    return states


def _status(extension: JSON) -> str | None:
    for sub in extension.get("extension") or []:
        if isinstance(sub, dict) and sub.get("url") == "status" and isinstance(sub.get("valueCode"), str):
            return str(sub["valueCode"])
    return None


def licences(practitioner: JSON, now: datetime) -> tuple[Licence, ...]:
    """Every state licence the Practitioner's Plan-Net qualifications name, each valid at `now` or not.

    A licence counts when its qualification's period covers `now` and its Plan-Net status is not
    `inactive` (a missing status, which Plan-Net forbids, is left to the period). `whereValid` given as a
    Location reference names no state here and is ignored.
    """
    now_us = to_us(now)
    found: list[Licence] = []
    for qualification in practitioner.get("qualification") or []:
        if not isinstance(qualification, dict):
            continue
        why_not = _period_problem(qualification.get("period"), now_us)
        for extension in qualification.get("extension") or []:
            if not isinstance(extension, dict) or extension.get("url") != PLAN_NET_QUALIFICATION:
                continue
            status = _status(extension)
            problem = why_not or (f"status {status}" if status == "inactive" else None)
            found += [Licence(state, problem is None, problem) for state in _states(extension)]
    return tuple(found)


def _capacity(role: JSON) -> int | None:
    for extension in role.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == CASELOAD_CAPACITY:
            value = extension.get("valueInteger")
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                return value
    return None


def _specialties(role: JSON) -> frozenset[str]:
    tokens: set[str] = set()
    for concept in role.get("specialty") or []:
        for coding in _codings(concept):
            code, system = coding.get("code"), coding.get("system")
            if isinstance(code, str):
                tokens.add(code)
                if isinstance(system, str):
                    tokens.add(f"{system}|{code}")
    return frozenset(tokens)


def pharmacist_facts(practitioner: JSON, role: JSON, now: datetime) -> PharmacistFacts:
    """The facts of a pharmacist in one role. ValueError if the role is another practitioner's.

    A role is active unless `PractitionerRole.active` or `Practitioner.active` is false or the role's
    period does not cover `now` (FHIR leaves a missing `active` open; the gateway reads it as active).
    """
    practitioner_id = str(practitioner.get("id") or "")
    role_id = str(role.get("id") or "")
    reference = (role.get("practitioner") or {}).get("reference")
    if reference != f"Practitioner/{practitioner_id}":
        raise ValueError(f"PractitionerRole/{role_id} is not Practitioner/{practitioner_id}'s ({reference})")
    active = (
        role.get("active") is not False
        and practitioner.get("active") is not False
        and _period_problem(role.get("period"), to_us(now)) is None
    )
    languages = _unique(lang for c in practitioner.get("communication") or [] for lang in _languages(c))
    return PharmacistFacts(
        practitioner_id=practitioner_id,
        role_id=role_id,
        active=active,
        languages=languages,
        licences=licences(practitioner, now),
        specialties=_specialties(role),
        capacity=_capacity(role),
    )


def residence_state(patient: JSON, now: datetime) -> str | None:
    """The state of the patient's current residence: a home address first, then one without a use, then
    temp, then work; never old or billing ones or ones whose period has ended. None if none names one."""
    now_us = to_us(now)
    candidates: list[tuple[int, int, str]] = []
    for index, address in enumerate(patient.get("address") or []):
        if not isinstance(address, dict) or address.get("use") in _NOT_RESIDENCE:
            continue
        state = address.get("state")
        if not isinstance(state, str) or not state.strip():
            continue
        if _period_problem(address.get("period"), now_us) is not None:
            continue
        candidates.append((_USE_ORDER.get(address.get("use"), 4), index, state.strip().upper()))
    return min(candidates)[2] if candidates else None


def patient_facts(
    patient: JSON,
    now: datetime,
    *,
    drug_classes: Iterable[str] = (),
    conditions: Iterable[str] = (),
) -> PatientFacts:
    """The patient's facts. Languages come preferred first; the preferred language is the one flagged
    `preferred` (the first so flagged), or the only language when just one is given."""
    preferred: list[str] = []
    others: list[str] = []
    for communication in patient.get("communication") or []:
        if isinstance(communication, dict):
            found = _languages(communication.get("language"))
            (preferred if communication.get("preferred") is True else others).extend(found)
    languages = _unique([*preferred, *others])
    preferred_language = preferred[0] if preferred else (languages[0] if len(languages) == 1 else None)
    return PatientFacts(
        patient_id=str(patient.get("id") or ""),
        languages=languages,
        preferred_language=preferred_language,
        state=residence_state(patient, now),
        drug_classes=frozenset(drug_classes),
        conditions=frozenset(conditions),
    )
