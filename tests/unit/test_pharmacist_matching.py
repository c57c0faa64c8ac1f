"""Pharmacist matching: facts read from Practitioner, PractitionerRole and Patient; eligibility; the score."""

from __future__ import annotations

import json
import pathlib
import random
from datetime import UTC, datetime
from typing import Any

from gateway.fhir.profiles import ProfileSet
from gateway.pharmacist.facts import (
    BCP47_SYSTEM,
    CASELOAD_CAPACITY,
    PLAN_NET_QUALIFICATION,
    USPS_SYSTEM,
    PatientFacts,
    patient_facts,
    pharmacist_facts,
)
from gateway.pharmacist.matching import Candidate, MatchPolicy, match_pharmacists

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PROFILES_DIR = pathlib.Path(__file__).resolve().parents[2] / "profiles"
DRUG_CLASS = "http://va.gov/terminology/medrt"


def licence(state: str, *, end: str | None = None, status: str = "active") -> dict[str, Any]:
    qualification: dict[str, Any] = {
        "code": {"text": "Pharmacist licence"},
        "extension": [
            {
                "url": PLAN_NET_QUALIFICATION,
                "extension": [
                    {"url": "status", "valueCode": status},
                    {
                        "url": "whereValid",
                        "valueCodeableConcept": {"coding": [{"system": USPS_SYSTEM, "code": state}]},
                    },
                ],
            }
        ],
    }
    if end:
        qualification["period"] = {"start": "2020-01-01", "end": end}
    return qualification


def practitioner(pid: str, languages: list[str], licences: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": pid,
        "communication": [{"coding": [{"system": BCP47_SYSTEM, "code": code}]} for code in languages],
        "qualification": licences,
    }


def role(
    pid: str, *, capacity: int | None = 30, classes: tuple[str, ...] = (), active: bool = True
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": f"{pid}-role",
        "active": active,
        "practitioner": {"reference": f"Practitioner/{pid}"},
        "specialty": [{"coding": [{"system": DRUG_CLASS, "code": code}]} for code in classes],
    }
    if capacity is not None:
        resource["extension"] = [{"url": CASELOAD_CAPACITY, "valueInteger": capacity}]
    return resource


def candidate(
    pid: str,
    languages: list[str],
    licences: list[dict[str, Any]],
    *,
    load: int = 10,
    **role_args: Any,
) -> Candidate:
    facts = pharmacist_facts(practitioner(pid, languages, licences), role(pid, **role_args), NOW)
    return Candidate(facts, load)


def spanish_texan(**changes: Any) -> PatientFacts:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "communication": [
            {"language": {"coding": [{"system": BCP47_SYSTEM, "code": "en"}]}},
            {"language": {"coding": [{"system": BCP47_SYSTEM, "code": "es-MX"}]}, "preferred": True},
        ],
        "address": [
            {"use": "old", "state": "CA"},
            {"use": "home", "state": "tx", "period": {"start": "2019-05-01"}},
        ],
    }
    patient.update(changes)
    return patient_facts(patient, NOW, drug_classes=["antipsychotic"], conditions=["schizophrenia"])


def codes(result: Any) -> list[str]:
    return [r.code for r in result.reasons]


# ------------------------------------------------------------------------------------------------ facts


def test_practitioner_facts_read_languages_licences_specialties_and_capacity() -> None:
    facts = pharmacist_facts(
        practitioner("ph-1", ["es-MX", "en-US", "es"], [licence("TX"), licence("CA", end="2025-01-31")]),
        role("ph-1", capacity=25, classes=("antipsychotic",)),
        NOW,
    )
    assert facts.languages == ("es", "en")
    assert facts.valid_states() == ("TX",)
    assert facts.licensed_in("TX") and not facts.licensed_in("CA")
    assert [lic.why_not for lic in facts.licences] == [None, "ended 2025-01-31"]
    assert facts.specialties == {"antipsychotic", f"{DRUG_CLASS}|antipsychotic"}
    assert facts.capacity == 25
    assert facts.active


def test_an_inactive_plan_net_status_does_not_license() -> None:
    facts = pharmacist_facts(practitioner("ph-1", [], [licence("TX", status="inactive")]), role("ph-1"), NOW)
    assert not facts.licensed_in("TX")
    assert facts.licences[0].why_not == "status inactive"


def test_a_role_of_another_practitioner_is_refused() -> None:
    try:
        pharmacist_facts(practitioner("ph-1", [], []), role("ph-2"), NOW)
    except ValueError as exc:
        assert "ph-2-role" in str(exc)
    else:
        raise AssertionError("expected ValueError")


def test_patient_facts_put_the_preferred_language_first_and_take_the_home_state() -> None:
    facts = spanish_texan()
    assert facts.languages == ("es", "en")
    assert facts.preferred_language == "es"
    assert facts.state == "TX"


def test_an_ended_home_address_is_not_the_residence() -> None:
    facts = spanish_texan(address=[{"use": "home", "state": "TX", "period": {"end": "2025-12-31"}}])
    assert facts.state is None


def test_the_capacity_extension_definition_ships_and_loads() -> None:
    sd = json.loads((PROFILES_DIR / "StructureDefinition-caseload-capacity.json").read_text())
    assert sd["url"] == CASELOAD_CAPACITY
    assert sd["type"] == "Extension" and sd["context"] == [
        {"type": "element", "expression": "PractitionerRole"}
    ]
    loaded = ProfileSet.load(PROFILES_DIR).resources()
    assert any(r.get("url") == CASELOAD_CAPACITY for r in loaded)


# --------------------------------------------------------------------------------------------- matching


def test_spanish_speaking_texan_gets_the_spanish_speaking_pharmacist_licensed_in_texas() -> None:
    result = match_pharmacists(
        spanish_texan(),
        [
            candidate("english-tx", ["en"], [licence("TX")], classes=("antipsychotic",)),
            candidate("spanish-ca", ["es"], [licence("CA")], classes=("antipsychotic",)),
            candidate("spanish-tx", ["es", "en"], [licence("TX")], classes=("antipsychotic",)),
        ],
    )
    ranked = [(c.practitioner_id, c.eligible) for c in result.candidates]
    assert ranked == [("spanish-tx", True), ("english-tx", True), ("spanish-ca", False)]
    best = result.candidates[0]
    assert "language-match: speaks es (patient prefers es)" in [str(r) for r in best.reasons]
    assert "licensed: TX" in [str(r) for r in best.reasons]
    assert best.score == 83.3  # 40 language + 30 drug class + 0 condition + 20 * 20/30 capacity
    assert "language-shared: speaks en (patient prefers es)" in [str(r) for r in result.candidates[1].reasons]
    assert "not-licensed: TX (licensed in CA)" in [str(r) for r in result.candidates[2].reasons]
    assert result.reasons == ()


def test_a_pharmacist_at_capacity_is_not_eligible() -> None:
    result = match_pharmacists(
        spanish_texan(),
        [
            candidate("full", ["es"], [licence("TX")], capacity=30, load=30),
            candidate("free", ["en"], [licence("TX")]),
        ],
    )
    assert [c.practitioner_id for c in result.candidates] == ["free", "full"]
    full = result.candidates[1]
    assert not full.eligible
    assert "at-capacity: 30/30" in [str(r) for r in full.reasons]


def test_an_expired_licence_in_the_patients_state_is_not_eligible() -> None:
    result = match_pharmacists(
        spanish_texan(), [candidate("lapsed", ["es"], [licence("TX", end="2026-02-28")])]
    )
    (only,) = result.candidates
    assert not only.eligible
    assert "not-licensed: TX (licence ended 2026-02-28)" in [str(r) for r in only.reasons]
    assert codes(result) == ["none-eligible"]


def test_inactive_role_and_missing_capacity_are_not_eligible() -> None:
    result = match_pharmacists(
        spanish_texan(),
        [
            candidate("off", ["es"], [licence("TX")], active=False),
            candidate("nocap", ["es"], [licence("TX")], capacity=None),
        ],
    )
    reasons = {c.practitioner_id: {r.code for r in c.reasons} for c in result.candidates}
    assert "inactive-role" in reasons["off"]
    assert "capacity-unknown" in reasons["nocap"]
    assert not any(c.eligible for c in result.candidates)


def test_unknown_state_is_ineligible_unless_the_policy_allows_it() -> None:
    patient = spanish_texan(address=[])
    people = [candidate("ph", ["es"], [licence("TX")])]
    strict = match_pharmacists(patient, people)
    assert not strict.candidates[0].eligible
    assert codes(strict) == ["none-eligible", "state-unknown"]
    lenient = match_pharmacists(patient, people, MatchPolicy(allow_unknown_state=True))
    assert lenient.candidates[0].eligible
    assert "state-unknown" in {r.code for r in lenient.candidates[0].reasons}


def test_ties_go_to_the_lower_load_then_the_id_whatever_the_input_order() -> None:
    people = [
        candidate("b", ["es"], [licence("TX")], capacity=10, load=5),
        candidate("a", ["es"], [licence("TX")], capacity=20, load=10),  # same free share, higher load
        candidate("c", ["es"], [licence("TX")], capacity=10, load=5),
    ]
    expected = ["b", "c", "a"]
    for seed in range(10):
        shuffled = list(people)
        random.Random(seed).shuffle(shuffled)
        result = match_pharmacists(spanish_texan(), shuffled)
        assert [c.practitioner_id for c in result.candidates] == expected
        assert len({c.score for c in result.candidates}) == 1
        assert [c.rank for c in result.candidates] == [1, 2, 3]


def test_no_candidates_gives_an_empty_ranking_with_a_reason() -> None:
    result = match_pharmacists(spanish_texan(), [])
    assert result.candidates == ()
    assert codes(result) == ["no-candidates"]
    assert result.to_json() == {
        "patient": "Patient/p1",
        "candidates": [],
        "reasons": [{"code": "no-candidates", "text": "no pharmacist roles were given to rank"}],
    }


def test_candidate_json_has_the_documented_shape() -> None:
    result = match_pharmacists(
        spanish_texan(), [candidate("ph-7", ["es"], [licence("TX")], classes=("antipsychotic",), load=12)]
    )
    assert result.candidates[0].to_json() == {
        "rank": 1,
        "practitioner": "Practitioner/ph-7",
        "practitionerRole": "PractitionerRole/ph-7-role",
        "eligible": True,
        "score": 82.0,
        "load": 12,
        "capacity": 30,
        "reasons": [
            {"code": "licensed", "text": "TX"},
            {"code": "language-match", "text": "speaks es (patient prefers es)"},
            {"code": "drug-class-match", "text": "antipsychotic (1 of 1)"},
            {
                "code": "no-condition-match",
                "text": "the role's specialties cover none of the patient's conditions (1)",
            },
            {"code": "capacity", "text": "12/30 (18 free)"},
        ],
    }
