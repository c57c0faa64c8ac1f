"""Ranking pharmacists for a patient (`$match-pharmacist`): hard eligibility, then a documented score.

Eligibility is law and workload, not preference, so it is not traded against the score: a candidate must
hold an active role, a licence valid in the patient's state of residence, and a capacity above the
current load. Ineligible candidates are still scored and returned (the reasons say why they were left
out) but always rank after every eligible one.

The score (README, "Pharmacist matching") adds, out of 100:
- language: 40 when the pharmacist speaks the patient's preferred language, else 25 for any language
  they share;
- specialty: up to 30, the share of the patient's drug classes that the role's specialties cover;
- conditions: up to 10, the share of the patient's conditions that the role's specialties cover;
- capacity: up to 20, the share of the capacity still free.

Ties go to the lower load, then the practitioner id, then the role id, so the same facts always give the
same order. Every reason is a short machine code with a human text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.pharmacist.facts import PatientFacts, PharmacistFacts
from gateway.pharmacist.reasons import Reason
from gateway.types import JSON


@dataclass(frozen=True, slots=True)
class Weights:
    """Points of each part of the score (the README's table)."""

    preferred_language: float = 40
    shared_language: float = 25
    drug_classes: float = 30
    conditions: float = 10
    capacity: float = 20


@dataclass(frozen=True, slots=True)
class MatchPolicy:
    """Site choices. `allow_unknown_state`: whether a patient with no known state of residence may be
    matched at all (off by default: no licence can be checked, and practising without one is unlawful)."""

    weights: Weights = Weights()
    allow_unknown_state: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pharmacist in a role, with the number of patients currently assigned to them in it."""

    pharmacist: PharmacistFacts
    load: int


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    practitioner_id: str
    role_id: str
    eligible: bool
    score: float
    load: int
    capacity: int | None
    reasons: tuple[Reason, ...]
    rank: int = 0

    def to_json(self) -> JSON:
        return {
            "rank": self.rank,
            "practitioner": f"Practitioner/{self.practitioner_id}",
            "practitionerRole": f"PractitionerRole/{self.role_id}",
            "eligible": self.eligible,
            "score": self.score,
            "load": self.load,
            "capacity": self.capacity,
            "reasons": [r.to_json() for r in self.reasons],
        }


@dataclass(frozen=True, slots=True)
class MatchResult:
    """The ranking for one patient; `reasons` speaks for the whole (no candidates, none eligible)."""

    patient_id: str
    candidates: tuple[ScoredCandidate, ...]
    reasons: tuple[Reason, ...] = ()

    def to_json(self) -> JSON:
        return {
            "patient": f"Patient/{self.patient_id}",
            "candidates": [c.to_json() for c in self.candidates],
            "reasons": [r.to_json() for r in self.reasons],
        }


def _eligibility(
    patient: PatientFacts, candidate: Candidate, policy: MatchPolicy
) -> list[tuple[bool, Reason]]:
    """(passes, reason) for each hard rule."""
    pharmacist = candidate.pharmacist
    checks: list[tuple[bool, Reason]] = []
    if not pharmacist.active:
        checks.append((False, Reason("inactive-role", "the role or the practitioner is not active")))
    state = patient.state
    held = ", ".join(pharmacist.valid_states()) or "none"
    if state is None:
        allowed = policy.allow_unknown_state
        note = "matched without a licence check (site policy)" if allowed else "no licence can be checked"
        checks.append(
            (allowed, Reason("state-unknown", f"the patient's state of residence is unknown; {note}"))
        )
    elif pharmacist.licensed_in(state):
        checks.append((True, Reason("licensed", state)))
    else:
        lapsed = [lic.why_not for lic in pharmacist.licences if lic.state == state and not lic.valid]
        detail = f"licence {lapsed[0]}" if lapsed else f"licensed in {held}"
        checks.append((False, Reason("not-licensed", f"{state} ({detail})")))
    capacity, load = pharmacist.capacity, candidate.load
    if capacity is None:
        checks.append((False, Reason("capacity-unknown", "the role declares no caseload capacity")))
    elif load >= capacity:
        checks.append((False, Reason("at-capacity", f"{load}/{capacity}")))
    return checks


def _share(wanted: frozenset[str], offered: frozenset[str]) -> tuple[int, list[str]]:
    matched = sorted(wanted & offered)
    return len(wanted), matched


def _score(patient: PatientFacts, candidate: Candidate, weights: Weights) -> tuple[float, list[Reason]]:
    pharmacist = candidate.pharmacist
    points = 0.0
    reasons: list[Reason] = []
    speaks = pharmacist.languages
    shared = [lang for lang in patient.languages if lang in speaks]
    if patient.preferred_language and patient.preferred_language in speaks:
        points += weights.preferred_language
        language = patient.preferred_language
        reasons.append(Reason("language-match", f"speaks {language} (patient prefers {language})"))
    elif shared:
        points += weights.shared_language
        prefers = (
            f"prefers {patient.preferred_language}" if patient.preferred_language else "states no preference"
        )
        reasons.append(Reason("language-shared", f"speaks {shared[0]} (patient {prefers})"))
    elif patient.languages:
        spoken = ", ".join(speaks) or "no recorded language"
        reasons.append(
            Reason("no-shared-language", f"speaks {spoken}; patient speaks {', '.join(patient.languages)}")
        )
    else:
        reasons.append(Reason("language-unknown", "the patient's language is not recorded"))
    for kind, plural, wanted, weight in (
        ("drug-class", "drug classes", patient.drug_classes, weights.drug_classes),
        ("condition", "conditions", patient.conditions, weights.conditions),
    ):
        total, matched = _share(wanted, pharmacist.specialties)
        if not total:
            continue
        if matched:
            points += weight * len(matched) / total
            reasons.append(Reason(f"{kind}-match", f"{', '.join(matched)} ({len(matched)} of {total})"))
        else:
            reasons.append(
                Reason(
                    f"no-{kind}-match",
                    f"the role's specialties cover none of the patient's {plural} ({total})",
                )
            )
    capacity = pharmacist.capacity
    if capacity is not None and candidate.load < capacity:
        free = capacity - candidate.load
        points += weights.capacity * free / capacity
        reasons.append(Reason("capacity", f"{candidate.load}/{capacity} ({free} free)"))
    return round(points, 1), reasons


def match_pharmacists(
    patient: PatientFacts, candidates: Sequence[Candidate], policy: MatchPolicy | None = None
) -> MatchResult:
    """Every candidate scored, eligible ones first, then by score (highest first), load (lowest first),
    practitioner id and role id."""
    policy = policy or MatchPolicy()
    scored: list[ScoredCandidate] = []
    for candidate in candidates:
        checks = _eligibility(patient, candidate, policy)
        points, reasons = _score(patient, candidate, policy.weights)
        pharmacist = candidate.pharmacist
        scored.append(
            ScoredCandidate(
                practitioner_id=pharmacist.practitioner_id,
                role_id=pharmacist.role_id,
                eligible=all(ok for ok, _ in checks),
                score=points,
                load=candidate.load,
                capacity=pharmacist.capacity,
                reasons=(*(reason for _, reason in checks), *reasons),
            )
        )
    scored.sort(key=lambda c: (not c.eligible, -c.score, c.load, c.practitioner_id, c.role_id))
    ranked = tuple(
        ScoredCandidate(c.practitioner_id, c.role_id, c.eligible, c.score, c.load, c.capacity, c.reasons, i)
        for i, c in enumerate(scored, start=1)
    )
    summary: list[Reason] = []
    if not ranked:
        summary.append(Reason("no-candidates", "no pharmacist roles were given to rank"))
    elif not any(c.eligible for c in ranked):
        summary.append(Reason("none-eligible", f"none of the {len(ranked)} candidates is eligible"))
    if patient.state is None:
        summary.append(Reason("state-unknown", "the patient's state of residence is unknown"))
    return MatchResult(patient.patient_id, ranked, tuple(summary))
