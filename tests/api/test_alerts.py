"""Alerts as work items, both backends: one alert Task per result and rule, re-sends, corrections, results
back to normal (the same one corrected, or a later one), the moves people make, the topic, and scopes."""

from __future__ import annotations

from typing import Any

import httpx

from tests import factories as f
from tests.api.test_patient_timeline import anc
from tests.api.test_subscription_topics import events, subscribe
from tests.conftest import ClientFactory
from tests.hl7_messages import ack_code, anc_oru, rde

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
GATEWAY = "https://specialty-gateway.org/fhir"
ALERTS = {"code": f"{GATEWAY}/CodeSystem/work-item-type|alert"}


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def alerts(api: httpx.AsyncClient, patient: str) -> list[dict[str, Any]]:
    bundle = (await api.get("/fhir/Task", params={**ALERTS, "patient": patient})).json()
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


async def send(api: httpx.AsyncClient, text: str) -> None:
    answer = await api.post("/hl7v2", content=text.encode(), headers=ER7)
    assert ack_code(answer.text) == "AA", answer.text


async def patient_by_mrn(api: httpx.AsyncClient, mrn: str) -> str:
    bundle = (await api.get("/fhir/Patient", params={"identifier": mrn})).json()
    (entry,) = bundle["entry"]
    return str(entry["resource"]["id"])


async def assigned(api: httpx.AsyncClient, patient: str) -> str:
    """A pharmacist assignment CareTeam for the patient; returns the member reference."""
    role = await create(
        api,
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "46255001"}]}],
        },
    )
    member = f"PractitionerRole/{role}"
    await create(
        api,
        {
            "resourceType": "CareTeam",
            "status": "active",
            "category": [
                {
                    "coding": [
                        {
                            "system": f"{GATEWAY}/CodeSystem/care-team-category",
                            "code": "pharmacist-assignment",
                        }
                    ]
                }
            ],
            "subject": {"reference": f"Patient/{patient}"},
            "participant": [{"member": {"reference": member}, "period": {"start": "2024-01-01"}}],
        },
    )
    return member


async def clozapine_patient(api: httpx.AsyncClient) -> tuple[str, str]:
    patient = await create(api, f.patient())
    order = await create(api, f.medication_request(patient))
    return patient, order


def said(task: dict[str, Any]) -> str:
    """Everything the Task says but its ids, references and times (where "1.2" may occur by chance)."""
    kept = {
        k: v
        for k, v in task.items()
        if k not in ("id", "meta", "authoredOn", "lastModified", "focus", "for", "basedOn", "owner")
    }
    kept["note"] = [n.get("text") for n in task.get("note") or []]
    return str(kept)


def mark(task: dict[str, Any]) -> str | None:
    concept = task.get("businessStatus")
    return concept["coding"][0]["code"] if concept else None


async def test_a_low_anc_opens_one_alert_about_the_order_for_the_pharmacist(api: httpx.AsyncClient) -> None:
    patient, order = await clozapine_patient(api)
    member = await assigned(api, patient)
    obs = await create(api, anc(patient, 1.2, "2024-03-01T08:00:00Z", "L"))
    (task,) = await alerts(api, patient)
    assert task["status"] == "ready" and task["priority"] == "urgent"  # moderate band (< 1500 /uL)
    assert task["focus"] == {"reference": f"Observation/{obs}"}
    assert task["for"] == {"reference": f"Patient/{patient}"}
    assert task["basedOn"] == [{"reference": f"MedicationRequest/{order}"}]
    assert task["reasonCode"]["coding"][0]["code"] == "clozapine-anc"
    assert task["owner"] == {"reference": member}
    assert "input" not in task and task["description"].startswith("clozapine monitoring (clozapine-anc)")
    # No result value in the Task: who reads Tasks but not Observations learns only that the rule fired.
    assert "1.2" not in said(task) and "1200" not in said(task)


async def test_the_same_result_resent_never_opens_a_second_alert(api: httpx.AsyncClient) -> None:
    await send(api, rde("AL-0", "MRN-AL1"))
    await send(api, anc_oru("AL-1", "MRN-AL1", "1.2"))
    patient = await patient_by_mrn(api, "MRN-AL1")
    (first,) = await alerts(api, patient)
    await send(api, anc_oru("AL-2", "MRN-AL1", "1.2"))  # the lab sends the same report again
    (again,) = await alerts(api, patient)
    assert again["id"] == first["id"] and again["meta"]["versionId"] == first["meta"]["versionId"]
    assert first["reasonCode"]["coding"][0]["code"] == "clozapine-anc" and "basedOn" in first


async def test_a_corrected_result_updates_the_open_alert_and_says_so(api: httpx.AsyncClient) -> None:
    await send(api, rde("AC-0", "MRN-AC1"))
    await send(api, anc_oru("AC-1", "MRN-AC1", "1.2"))
    patient = await patient_by_mrn(api, "MRN-AC1")
    (opened,) = await alerts(api, patient)
    await send(api, anc_oru("AC-2", "MRN-AC1", "0.4", status="C", flag="LL"))  # corrected: now critical
    (task,) = await alerts(api, patient)
    assert task["id"] == opened["id"] and task["status"] == "ready"
    assert task["priority"] == "stat" and mark(task) == "corrected"
    assert task["note"][-1]["text"].startswith("Result corrected")
    assert "0.4" not in said(task)


async def test_a_corrected_result_back_to_normal_leaves_the_alert_open_but_marked(
    api: httpx.AsyncClient,
) -> None:
    await send(api, rde("AN-0", "MRN-AN1"))
    await send(api, anc_oru("AN-1", "MRN-AN1", "1.2"))
    patient = await patient_by_mrn(api, "MRN-AN1")
    await send(api, anc_oru("AN-2", "MRN-AN1", "2.4", status="C", flag="N"))
    (task,) = await alerts(api, patient)
    assert task["status"] == "ready" and mark(task) == "back-to-normal"
    assert "back within limits" in task["note"][-1]["text"]


async def test_a_later_normal_result_marks_the_alert_and_an_older_one_does_not(
    api: httpx.AsyncClient,
) -> None:
    patient, _ = await clozapine_patient(api)
    await create(api, anc(patient, 1.2, "2024-03-08T08:00:00Z", "L"))
    # Sent after, taken before: a re-sent older result says nothing about the patient now.
    await create(api, anc(patient, 2.6, "2024-03-01T08:00:00Z"))
    (task,) = await alerts(api, patient)
    assert mark(task) is None and task["meta"]["versionId"] == "1"
    later = await create(api, anc(patient, 2.2, "2024-03-15T08:00:00Z"))
    (task,) = await alerts(api, patient)
    assert task["status"] == "ready" and mark(task) == "back-to-normal"
    assert f"Observation/{later}" in task["note"][-1]["text"]


async def test_a_critical_anc_on_clozapine_is_one_alert_not_two(api: httpx.AsyncClient) -> None:
    patient, _ = await clozapine_patient(api)
    await create(api, anc(patient, 0.3, "2024-03-01T08:00:00Z", "LL"))
    (task,) = await alerts(api, patient)
    assert task["reasonCode"]["coding"][0]["code"] == "clozapine-anc" and task["priority"] == "stat"


async def test_without_a_drug_rule_a_critical_value_and_an_abnormal_result_alert_on_their_own(
    api: httpx.AsyncClient,
) -> None:
    patient = await create(api, f.patient())
    potassium = f.lab_observation(patient, code="2823-3", value=7.1, unit="mmol/L")
    critical = await create(api, potassium)
    glucose = f.lab_observation(
        patient,
        code="2345-7",
        value=140,
        unit="mg/dL",
        referenceRange=[{"low": {"value": 70, "unit": "mg/dL"}, "high": {"value": 99, "unit": "mg/dL"}}],
    )
    abnormal = await create(api, glucose)
    await create(api, f.lab_observation(patient))  # a normal hemoglobin: no alert
    found = {t["focus"]["reference"]: t for t in await alerts(api, patient)}
    assert set(found) == {f"Observation/{critical}", f"Observation/{abnormal}"}
    assert found[f"Observation/{critical}"]["reasonCode"]["coding"][0]["code"] == "critical-value"
    assert found[f"Observation/{critical}"]["priority"] == "stat"
    assert found[f"Observation/{abnormal}"]["reasonCode"]["coding"][0]["code"] == "abnormal-result"
    assert found[f"Observation/{abnormal}"]["priority"] == "routine"
    assert all("basedOn" not in t and "owner" not in t for t in found.values())  # no order, no pharmacist


async def put(api: httpx.AsyncClient, task: dict[str, Any], **changes: Any) -> httpx.Response:
    return await api.put(f"/fhir/Task/{task['id']}", json={**task, **changes})


async def test_claim_work_resolve_and_the_moves_refused(api: httpx.AsyncClient) -> None:
    patient, _ = await clozapine_patient(api)
    await create(api, anc(patient, 1.2, "2024-03-01T08:00:00Z", "L"))
    (task,) = await alerts(api, patient)
    me = {"reference": "Practitioner/ph-1"}

    refused = await put(api, task, status="accepted")
    assert refused.status_code == 422 and "owner" in refused.text
    claimed = await put(api, task, status="accepted", owner=me)
    assert claimed.status_code == 200, claimed.text
    task = claimed.json()
    fixed = await put(api, task, focus={"reference": "Observation/other"})
    assert fixed.status_code == 422 and "Task.focus" in fixed.text
    working = await put(api, task, status="in-progress")
    assert working.status_code == 200, working.text
    task = working.json()
    no_note = await put(api, task, status="completed")
    assert no_note.status_code == 422 and "note" in no_note.text
    note = [{"text": "Called the prescriber: dose held, ANC recheck in 3 days."}]
    done = await put(api, task, status="completed", note=note)
    assert done.status_code == 200, done.text
    reopened = await put(api, done.json(), status="in-progress")
    assert reopened.status_code == 422 and "cannot move from completed" in reopened.text


async def test_escalation_names_the_role_and_the_reason(api: httpx.AsyncClient) -> None:
    patient, _ = await clozapine_patient(api)
    await create(api, anc(patient, 0.8, "2024-03-01T08:00:00Z", "L"))
    (task,) = await alerts(api, patient)
    escalated = {"coding": [{"system": f"{GATEWAY}/CodeSystem/alert-mark", "code": "escalated"}]}
    bare = await put(api, task, businessStatus=escalated)
    assert bare.status_code == 422 and "performerType" in bare.text and "statusReason" in bare.text
    role = [
        {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "158965000", "display": "Medical practitioner"}
            ]
        }
    ]
    answer = await put(
        api, task, businessStatus=escalated, performerType=role, statusReason={"text": "ANC 2nd drop"}
    )
    assert answer.status_code == 200, answer.text
    own_mark = {"coding": [{"system": f"{GATEWAY}/CodeSystem/alert-mark", "code": "back-to-normal"}]}
    assert (await put(api, answer.json(), businessStatus=own_mark)).status_code == 422


async def test_alert_changed_fires_on_opening_and_on_claiming(api: httpx.AsyncClient) -> None:
    patient, _ = await clozapine_patient(api)
    sub_id = await subscribe(api, "alert-changed", f"Task?patient=Patient/{patient}")
    await create(api, anc(patient, 1.2, "2024-03-01T08:00:00Z", "L"))
    (task,) = await alerts(api, patient)
    claimed = await put(api, task, status="accepted", owner={"reference": "Practitioner/ph-1"})
    assert claimed.status_code == 200, claimed.text
    fired = await events(api, sub_id)
    assert [e["focus"] for e in fired] == [f"Task/{task['id']}", f"Task/{task['id']}"]
    statuses = [e["detail"].get("status") for e in fired]
    assert statuses == ["ready", "accepted"]


async def test_a_token_without_observation_read_sees_the_alert_not_the_value(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    patient, _ = await clozapine_patient(api)
    await create(api, anc(patient, 1.2, "2024-03-01T08:00:00Z", "L"))
    narrow = await client_factory("system/Task.rs system/Patient.rs")
    (task,) = await alerts(narrow, patient)
    assert task["reasonCode"]["coding"][0]["code"] == "clozapine-anc"
    assert "1.2" not in said(task) and "valueQuantity" not in str(task)


async def test_a_result_deleted_and_written_again_under_its_id_keeps_its_one_alert(
    api: httpx.AsyncClient,
) -> None:
    patient, _ = await clozapine_patient(api)
    result = {**anc(patient, 1.2, "2024-03-01T08:00:00Z", "L"), "id": "anc-again"}
    assert (await api.put("/fhir/Observation/anc-again", json=result)).status_code == 201
    (first,) = await alerts(api, patient)
    assert (await api.delete("/fhir/Observation/anc-again")).status_code in (200, 204)
    again = await api.put("/fhir/Observation/anc-again", json={**result, "status": "corrected"})
    assert again.status_code == 201, again.text
    (task,) = await alerts(api, patient)
    assert task["id"] == first["id"] and mark(task) == "corrected"
