"""Pharmacist interventions as Communication, both backends: stored, validated, searched by patient,
category, sender, recipient, based-on, status and sent, and part of the Patient's `$everything`."""

from __future__ import annotations

from typing import Any

import httpx

from tests import factories as f

INTERVENTION = "https://specialty-gateway.org/fhir/CodeSystem/intervention-type"
OUTCOME = "https://specialty-gateway.org/fhir/StructureDefinition/intervention-outcome"


def intervention(
    patient: str,
    kind: str,
    *,
    about: str | None = None,
    sent: str = "2024-03-05T14:00:00Z",
    sender: str | None = None,
    recipient: str | None = None,
    outcome: str = "prescriber agreed to hold the dose",
) -> dict[str, Any]:
    """A pharmacist intervention as the README describes it."""
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": INTERVENTION, "code": kind}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "sent": sent,
        "payload": [{"contentString": "ANC 1.2 x10^3/uL: hold clozapine until repeat"}],
        "extension": [{"url": OUTCOME, "valueCodeableConcept": {"text": outcome}}],
    }
    if about is not None:
        resource["about"] = [{"reference": about}]
        resource["basedOn"] = [{"reference": about}]
    if sender is not None:
        resource["sender"] = {"reference": sender}
    if recipient is not None:
        resource["recipient"] = [{"reference": recipient}]
    return resource


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def search(api: httpx.AsyncClient, **params: str) -> list[str]:
    answer = await api.get("/fhir/Communication", params=params)
    assert answer.status_code == 200, answer.text
    return [e["resource"]["id"] for e in answer.json().get("entry", []) if e["search"]["mode"] == "match"]


async def test_an_intervention_is_stored_and_found_by_patient_and_its_links(api: httpx.AsyncClient) -> None:
    patient = await create(api, f.patient())
    other = await create(api, f.patient())
    request = await create(api, f.medication_request(patient))
    pharmacist = await create(api, {"resourceType": "Practitioner", "name": [{"family": "Pharm"}]})
    prescriber = await create(api, {"resourceType": "Practitioner", "name": [{"family": "Presc"}]})
    message = await create(
        api,
        intervention(
            patient,
            "prescriber-message",
            about=f"MedicationRequest/{request}",
            sender=f"Practitioner/{pharmacist}",
            recipient=f"Practitioner/{prescriber}",
        ),
    )
    call = await create(api, intervention(patient, "call", sent="2024-03-07T09:00:00Z"))
    await create(api, intervention(other, "call"))

    stored = (await api.get(f"/fhir/Communication/{message}")).json()
    assert stored["about"] == [{"reference": f"MedicationRequest/{request}"}]
    assert stored["extension"][0]["valueCodeableConcept"]["text"] == "prescriber agreed to hold the dose"

    assert sorted(await search(api, patient=patient)) == sorted([message, call])
    assert sorted(await search(api, subject=f"Patient/{patient}")) == sorted([message, call])
    assert await search(api, patient=patient, category=f"{INTERVENTION}|call") == [call]
    assert await search(api, sender=f"Practitioner/{pharmacist}") == [message]
    assert await search(api, recipient=f"Practitioner/{prescriber}") == [message]
    assert await search(api, **{"based-on": f"MedicationRequest/{request}"}) == [message]
    assert await search(api, patient=patient, sent="ge2024-03-06") == [call]
    assert sorted(await search(api, patient=patient, status="completed")) == sorted([message, call])


async def test_a_communication_status_outside_r4_is_refused(api: httpx.AsyncClient) -> None:
    patient = await create(api, f.patient())
    bad = {**intervention(patient, "call"), "status": "done"}
    answer = await api.post("/fhir/Communication", json=bad)
    assert answer.status_code == 422, answer.text
    assert "Communication.status" in answer.text


async def test_an_intervention_is_in_the_patients_everything(api: httpx.AsyncClient) -> None:
    patient = await create(api, f.patient())
    other = await create(api, f.patient())
    mine = await create(api, intervention(patient, "patient-education"))
    await create(api, intervention(other, "patient-education"))
    answer = await api.get(f"/fhir/Patient/{patient}/$everything", params={"_type": "Communication"})
    assert answer.status_code == 200, answer.text
    assert [e["resource"]["id"] for e in answer.json().get("entry", [])] == [mine]
