"""The demo's story (`gateway.demo.story`): its HL7 v2 messages go through the shipped mappings whole, and
its resources are valid R4 that the gateway's own readers understand (matching facts, NPIs)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.translate import Translator
from gateway.demo.story import Story, npi
from gateway.fhir.profiles import ProfileSet
from gateway.fhir.validation import Validator
from gateway.mapping.files import load
from gateway.pharmacist.facts import patient_facts, pharmacist_facts
from gateway.settings import PROJECT_ROOT

TRANSLATOR = Translator(load(PROJECT_ROOT / "mappings"))
NOW = datetime(2026, 3, 9, 15, 30, tzinfo=UTC)
STORY = Story("0309153000AB", NOW)


def produced(text: str) -> dict[str, list[dict[str, Any]]]:
    translation = TRANSLATOR.translate(Message(text))
    assert translation.problems == [] and translation.unused == []
    found: dict[str, list[dict[str, Any]]] = {}
    for item in translation.resources:
        found.setdefault(item.resource["resourceType"], []).append(item.resource)
    return found


def test_npis_carry_the_luhn_check_digit() -> None:
    assert npi("123456789") == "1234567893"  # CMS's published example
    assert all(len(p.npi) == 10 for p in STORY.pharmacists)


def test_the_clozapine_order_names_its_prescriber_by_npi_and_starts_22_days_ago() -> None:
    (request,) = produced(STORY.clozapine_order())["MedicationRequest"]
    assert request["status"] == "active" and request["authoredOn"].startswith("2026-02-15T09:00:00-06:00")
    assert request["requester"]["identifier"] == {
        "system": "http://hl7.org/fhir/sid/us-npi",
        "value": STORY.psychiatrist.npi,
    }
    assert request["medicationCodeableConcept"]["coding"][0]["code"] == "2626"


def test_a_fill_repeats_the_order_and_dispenses_against_it() -> None:
    order = produced(STORY.clozapine_order())["MedicationRequest"][0]
    for fill in STORY.fills:
        found = produced(STORY.dispense(fill))
        assert found["MedicationRequest"][0]["id"] == order["id"]
        (dispense,) = found["MedicationDispense"]
        assert dispense["authorizingPrescription"] == [{"reference": f"MedicationRequest/{order['id']}"}]
        assert dispense["quantity"]["value"] == fill.quantity


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_ancs_are_weekly_and_the_last_is_low(index: int) -> None:
    lab = STORY.ancs[index]
    (observation,) = produced(STORY.result(lab))["Observation"]
    assert observation["code"]["coding"][0]["code"] == "751-8"
    assert observation["effectiveDateTime"].startswith(lab.collected.date().isoformat())
    low = observation.get("interpretation", [{}])[0].get("coding", [{}])[0].get("code")
    assert low == ("L" if index == 2 else "N")


def test_the_patients_and_pharmacists_are_valid_and_match_as_intended() -> None:
    validator = Validator(ProfileSet.load(PROJECT_ROOT / "profiles"))
    maria = STORY.maria.patient()
    facts = patient_facts({**maria, "id": "p"}, NOW)
    assert facts.preferred_language == "es" and facts.state == "TX"
    for pharmacist in STORY.pharmacists:
        practitioner = {**pharmacist.practitioner(), "id": pharmacist.key}
        role = {**pharmacist.role(pharmacist.key), "id": f"{pharmacist.key}-role"}
        for resource in (practitioner, role):
            assert [i for i in validator.validate(resource) if i.is_error] == []
        read = pharmacist_facts(practitioner, role, NOW)
        assert read.capacity == pharmacist.capacity and read.languages == pharmacist.languages
        assert read.valid_states() == tuple(sorted(s for s, _ in pharmacist.licences))
    assert [i for i in validator.validate(maria) if i.is_error] == []
    communication = STORY.intervention("p", "r", "o", "a", NOW)
    assert [i for i in validator.validate(communication) if i.is_error] == []
