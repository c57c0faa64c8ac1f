"""Automatic assignment on a patient's first specialty order, both backends: the best match is assigned in
the order's transaction, a second order changes nothing, no one eligible opens the work item, and an order
naming no stored Patient is stored all the same."""

from __future__ import annotations

import httpx

from tests import factories as f
from tests.api.test_match_pharmacist import BCP47_SYSTEM, care_teams, create, pharmacist

GATEWAY = "https://specialty-gateway.org/fhir"
UNASSIGNED = {"code": f"{GATEWAY}/CodeSystem/work-item-type|unassigned-patient"}


async def spanish_texan(api: httpx.AsyncClient) -> str:
    return await create(
        api,
        f.patient(
            communication=[
                {"language": {"coding": [{"system": BCP47_SYSTEM, "code": "es"}]}, "preferred": True}
            ],
            address=[{"use": "home", "city": "El Paso", "state": "TX"}],
        ),
    )


async def unassigned(api: httpx.AsyncClient, patient: str) -> list[str]:
    bundle = (await api.get("/fhir/Task", params={"patient": patient, **UNASSIGNED})).json()
    return [e["resource"]["status"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


async def test_the_first_specialty_order_assigns_the_best_match_once(api: httpx.AsyncClient) -> None:
    _, spanish_role = await pharmacist(api, "Garcia", ["es", "en"], ["TX"])
    await pharmacist(api, "Smith", ["en"], ["TX"])
    await pharmacist(api, "Lopez", ["es"], ["CA"])
    patient = await spanish_texan(api)
    assert await care_teams(api, patient) == []  # a patient alone gets no pharmacist
    await create(api, f.medication_request(patient))  # clozapine: a specialty drug
    (team,) = await care_teams(api, patient)
    assert [p["member"]["reference"] for p in team["participant"]] == [f"PractitionerRole/{spanish_role}"]
    await create(api, f.medication_request(patient))  # a second order: the assignment stands
    (again,) = await care_teams(api, patient)
    assert again["meta"]["versionId"] == "1" and await unassigned(api, patient) == []


async def test_a_non_specialty_order_assigns_no_one(api: httpx.AsyncClient) -> None:
    await pharmacist(api, "Garcia", ["es"], ["TX"])
    patient = await spanish_texan(api)
    ordinary = f.medication_request(patient, rxnorm="197361")
    ordinary["medicationCodeableConcept"]["text"] = "amlodipine 5 MG Oral Tablet"
    await create(api, ordinary)
    assert await care_teams(api, patient) == [] and await unassigned(api, patient) == []


async def test_no_eligible_pharmacist_opens_the_work_item(api: httpx.AsyncClient) -> None:
    await pharmacist(api, "Lopez", ["es"], ["CA"])  # not licensed in Texas
    patient = await spanish_texan(api)
    await create(api, f.medication_request(patient))
    assert await care_teams(api, patient) == [] and await unassigned(api, patient) == ["requested"]


async def test_an_order_for_a_patient_not_stored_is_stored(api: httpx.AsyncClient) -> None:
    order = await create(api, f.medication_request("not-stored"))
    assert (await api.get(f"/fhir/MedicationRequest/{order}")).status_code == 200
