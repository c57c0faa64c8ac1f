"""`GET /fhir/Patient/{id}/$timeline`, both backends: one chronological list of orders, dispenses, results,
PA moves, payer answers and interventions, with kinds, summaries and sources; scopes; paging."""

from __future__ import annotations

from typing import Any

import httpx

from tests import factories as f
from tests.api.test_communication import intervention
from tests.conftest import ClientFactory
from tests.hl7_messages import ack_code, anc_oru, rde

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
GATEWAY = "https://specialty-gateway.org/fhir"
EVERY_READ = ("Patient", "MedicationRequest", "MedicationDispense", "Observation", "DiagnosticReport")
EVERY_READ += ("Task", "ClaimResponse", "Communication", "Provenance")
NO_OBSERVATION = " ".join(f"system/{t}.rs" for t in EVERY_READ if t != "Observation")


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def timeline(client: httpx.AsyncClient, patient: str, **params: str) -> dict[str, Any]:
    answer = await client.get(f"/fhir/Patient/{patient}/$timeline", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert body["patient"] == f"Patient/{patient}"
    return body


def anc(patient: str, value: float, when: str, flag: str | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if flag:
        extra["interpretation"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": flag,
                    }
                ]
            }
        ]
    observation = f.lab_observation(
        patient, code="751-8", value=value, unit="10*3/uL", effective=when, **extra
    )
    observation["code"]["text"] = "ANC"
    return observation


def dispense(patient: str, request: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": {"text": "clozapine 100 MG Oral Tablet"},
        "subject": {"reference": f"Patient/{patient}"},
        "authorizingPrescription": [{"reference": f"MedicationRequest/{request}"}],
        "quantity": {"value": 60, "unit": "TAB"},
        "whenHandedOver": when,
    }


async def move(api: httpx.AsyncClient, task_id: str, status: str, business: str, when: str) -> None:
    task = (await api.get(f"/fhir/Task/{task_id}")).json()
    task["status"] = status
    task["businessStatus"] = {
        "coding": [{"system": f"{GATEWAY}/CodeSystem/pa-business-status", "code": business}]
    }
    task["lastModified"] = when
    answer = await api.put(f"/fhir/Task/{task_id}", json=task)
    assert answer.status_code == 200, answer.text


async def story(api: httpx.AsyncClient) -> dict[str, str]:
    """The issue's story: an order, its PA moving submitted -> pended -> approved, two dispenses, three
    ANC values over three weeks (written out of order) and a message to the prescriber."""
    patient = await create(api, f.patient())
    order = await create(api, f.medication_request(patient, authoredOn="2024-02-01"))
    task = await create(api, f.pa_task(patient, order, authoredOn="2024-02-02T10:00:00Z"))
    await move(api, task, "in-progress", "pended", "2024-02-05T10:00:00Z")
    await move(api, task, "completed", "approved", "2024-02-09T10:00:00Z")
    first = await create(api, dispense(patient, order, "2024-02-10T12:00:00Z"))
    third = await create(api, anc(patient, 1.2, "2024-02-26T08:00:00Z", "L"))
    anc1 = await create(api, anc(patient, 2.5, "2024-02-12T08:00:00Z"))
    anc2 = await create(api, anc(patient, 1.8, "2024-02-19T08:00:00Z"))
    message = await create(
        api,
        intervention(
            patient, "prescriber-message", about=f"MedicationRequest/{order}", sent="2024-02-26T15:00:00Z"
        ),
    )
    second = await create(api, dispense(patient, order, "2024-03-10T12:00:00Z"))
    return {
        "patient": patient,
        "order": order,
        "task": task,
        "dispense1": first,
        "dispense2": second,
        "anc1": anc1,
        "anc2": anc2,
        "anc3": third,
        "message": message,
    }


async def test_the_story_in_chronological_order(api: httpx.AsyncClient) -> None:
    ids = await story(api)
    other = await create(api, f.patient())
    await create(api, anc(other, 0.4, "2024-02-20T08:00:00Z", "LL"))
    body = await timeline(api, ids["patient"])
    entries = body["entries"]
    assert [(e["kind"], e["id"]) for e in entries] == [
        ("medication-order", f"MedicationRequest/{ids['order']}"),
        ("pa-task", f"Task/{ids['task']}/_history/1"),
        ("pa-task", f"Task/{ids['task']}/_history/2"),
        ("pa-task", f"Task/{ids['task']}/_history/3"),
        ("dispense", f"MedicationDispense/{ids['dispense1']}"),
        ("observation", f"Observation/{ids['anc1']}"),
        ("observation", f"Observation/{ids['anc2']}"),
        ("observation", f"Observation/{ids['anc3']}"),
        ("interaction", f"Communication/{ids['message']}"),
        ("dispense", f"MedicationDispense/{ids['dispense2']}"),
        ("alert", entries[-1]["id"]),  # opened by the low ANC when it was recorded (now, after the story)
    ]
    assert entries[-1]["id"].startswith("Task/alert-")
    assert body["total"] == 11 and body["next"] is None
    times = [e["time"] for e in entries]
    assert (
        times[0] == "2024-02-01"
        and times[2] == "2024-02-05T10:00:00Z"
        and times[-2] == "2024-03-10T12:00:00Z"
    )
    summaries = [e["summary"] for e in entries]
    assert summaries[0] == "Order: clozapine 100 MG Oral Tablet (active)"
    assert [s.split(":")[1].split(",")[0].strip() for s in summaries[1:4]] == [
        "requested",
        "in-progress",
        "completed",
    ]
    assert (
        summaries[1].endswith("submitted")
        and summaries[2].endswith("pended")
        and summaries[3].endswith("approved")
    )
    assert summaries[4] == "Dispensed: clozapine 100 MG Oral Tablet (60 TAB)"
    assert summaries[5:8] == ["ANC 2.5 10*3/uL", "ANC 1.8 10*3/uL", "ANC 1.2 10*3/uL (low)"]
    assert summaries[8].startswith("Message to the prescriber: ANC 1.2")
    assert summaries[8].endswith("(outcome: prescriber agreed to hold the dose)")
    assert entries[7]["resource"] == f"Observation/{ids['anc3']}/_history/1"
    assert summaries[10] == "Alert: clozapine monitoring (clozapine-anc) (moderate, ready)"
    # REST writes have no Provenance: the source is an EHR client (meta.source when it set one).
    assert all(e["source"] == {"system": None, "kind": "fhir-client"} for e in entries)


async def test_an_hl7_result_names_its_sender(api: httpx.AsyncClient) -> None:
    answer = await api.post("/hl7v2", content=anc_oru("TL-1", "MRN-TL1").encode(), headers=ER7)
    assert ack_code(answer.text) == "AA", answer.text
    search = (await api.get("/fhir/Patient", params={"identifier": "MRN-TL1"})).json()
    patient = search["entry"][0]["resource"]["id"]
    provenance = (await api.get("/fhir/Provenance", params={"patient": patient})).json()
    who = provenance["entry"][0]["resource"]["agent"][0]["who"]["display"]
    entries = (await timeline(api, patient))["entries"]
    observations = [e for e in entries if e["kind"] == "observation"]
    assert observations and all(e["source"]["kind"] == "hl7v2" for e in observations)
    assert observations[0]["source"]["system"] == who.removeprefix("HL7 v2 sender ")
    assert observations[0]["summary"].endswith("(low)")


async def test_sources_are_who_wrote_each_version(api: httpx.AsyncClient) -> None:
    """The order stays the EHR's when the pharmacy's dispense repeats it unchanged; the alert is the lab's
    (its result's message opened it); the dispense is the pharmacy's."""

    async def send(message: str) -> None:
        answer = await api.post("/hl7v2", content=message.encode(), headers=ER7)
        assert ack_code(answer.text) == "AA", answer.text

    await send(rde("TLS-1", "MRN-TLS"))
    dispense = (
        rde("TLS-2", "MRN-TLS", control="RE")
        .replace("|EHR|CITY HOSPITAL|", "|RXSYS|SPECIALTY RX|")
        .replace("RDE^O11^RDE_O11", "RDS^O13^RDS_O13")
    ) + "RXD|1|2555^clozapine 100 MG Oral Tablet^RXNORM|20240302101500-0500|60|TAB^tablet^UCUM\r"
    await send(dispense)
    await send(anc_oru("TLS-3", "MRN-TLS"))
    patient = (await api.get("/fhir/Patient", params={"identifier": "MRN-TLS"})).json()["entry"][0][
        "resource"
    ]
    entries = {e["kind"]: e for e in (await timeline(api, patient["id"]))["entries"]}
    assert entries["medication-order"]["source"] == {"system": "EHR / CITY HOSPITAL", "kind": "hl7v2"}
    assert entries["dispense"]["source"] == {"system": "RXSYS / SPECIALTY RX", "kind": "hl7v2"}
    assert entries["observation"]["source"] == {"system": "LABSYS / CITY LAB", "kind": "hl7v2"}
    assert entries["alert"]["source"] == {"system": "LABSYS / CITY LAB", "kind": "hl7v2"}


async def test_no_observation_for_a_token_that_cannot_read_them(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    ids = await story(api)
    narrow = await client_factory(NO_OBSERVATION)
    answer = await narrow.get(f"/fhir/Patient/{ids['patient']}/$timeline")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [e["kind"] for e in body["entries"]].count("observation") == 0
    assert body["total"] == 8  # the alert about the low ANC is a Task: it is there, without the value
    for key in ("anc1", "anc2", "anc3"):
        assert ids[key] not in answer.text
    assert "ANC 2.5" not in answer.text
    no_patient = await client_factory("system/Observation.rs")
    refused = await no_patient.get(f"/fhir/Patient/{ids['patient']}/$timeline")
    assert refused.status_code == 403


async def test_paging_is_stable(api: httpx.AsyncClient) -> None:
    ids = await story(api)
    whole = [e["id"] for e in (await timeline(api, ids["patient"]))["entries"]]
    first = await timeline(api, ids["patient"], _count="4")
    assert [e["id"] for e in first["entries"]] == whole[:4] and first["total"] == 11
    # Written between pages, before where the first page ended: it is not on the pages that follow.
    await create(api, anc(ids["patient"], 3.0, "2024-01-15T08:00:00Z"))
    seen = [e["id"] for e in first["entries"]]
    url = first["next"]
    pages = 1
    while url:
        answer = await api.get(url)
        assert answer.status_code == 200, answer.text
        seen += [e["id"] for e in answer.json()["entries"]]
        url = answer.json()["next"]
        pages += 1
    assert seen == whole and pages == 3
    since = await timeline(api, ids["patient"], _since="2024-02-20")
    assert [e["id"] for e in since["entries"]] == whole[7:]


async def test_bad_input(api: httpx.AsyncClient) -> None:
    patient = await create(api, f.patient())
    assert (
        await api.get(f"/fhir/Patient/{patient}/$timeline", params={"_cursor": "nope"})
    ).status_code == 400
    assert (await api.get(f"/fhir/Patient/{patient}/$timeline", params={"start": "2024"})).status_code == 400
    assert (await api.get("/fhir/Patient/unknown-1/$timeline")).status_code == 404
    assert (await timeline(api, patient))["entries"] == []
