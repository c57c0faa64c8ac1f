"""`POST /fhir/Patient/{id}/$match-pharmacist`: ranking, assignment (CareTeam), the unassigned work item."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.pharmacist.facts import BCP47_SYSTEM, CASELOAD_CAPACITY, PLAN_NET_QUALIFICATION, USPS_SYSTEM
from gateway.service.gateway import Gateway
from gateway.service.pharmacist.matching import CARE_TEAM_CATEGORY, UNASSIGNED_PATIENT, WORK_ITEM_TYPE
from tests import factories as f
from tests.conftest import ClientFactory

pytestmark = pytest.mark.asyncio

MEDRT = "http://va.gov/terminology/medrt"
SNOMED = "http://snomed.info/sct"
ROLE_CODES = "http://terminology.hl7.org/CodeSystem/practitioner-role"
ASSIGN = {"resourceType": "Parameters", "parameter": [{"name": "assign", "valueBoolean": True}]}


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def licence(state: str) -> dict[str, Any]:
    return {
        "code": {"text": "Pharmacist licence"},
        "extension": [
            {
                "url": PLAN_NET_QUALIFICATION,
                "extension": [
                    {"url": "status", "valueCode": "active"},
                    {
                        "url": "whereValid",
                        "valueCodeableConcept": {"coding": [{"system": USPS_SYSTEM, "code": state}]},
                    },
                ],
            }
        ],
    }


async def pharmacist(
    api: httpx.AsyncClient,
    family: str,
    languages: list[str],
    states: list[str],
    *,
    capacity: int = 30,
    snomed: bool = True,
) -> tuple[str, str]:
    """A Practitioner and their pharmacist PractitionerRole (antipsychotic specialty): their ids."""
    practitioner = await create(
        api,
        {
            "resourceType": "Practitioner",
            "name": [{"family": family}],
            "communication": [{"coding": [{"system": BCP47_SYSTEM, "code": code}]} for code in languages],
            "qualification": [licence(state) for state in states],
        },
    )
    code = {"system": SNOMED, "code": "46255001"} if snomed else {"system": ROLE_CODES, "code": "pharmacist"}
    role = await create(
        api,
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner}"},
            "code": [{"coding": [code]}],
            "specialty": [{"coding": [{"system": MEDRT, "code": "antipsychotic"}]}],
            "extension": [{"url": CASELOAD_CAPACITY, "valueInteger": capacity}],
        },
    )
    return practitioner, role


async def spanish_texan(api: httpx.AsyncClient) -> str:
    patient = await create(
        api,
        f.patient(
            communication=[
                {"language": {"coding": [{"system": BCP47_SYSTEM, "code": "es"}]}, "preferred": True}
            ],
            address=[{"use": "home", "city": "El Paso", "state": "TX"}],
        ),
    )
    await create(api, f.medication_request(patient))  # clozapine: antipsychotic
    return patient


def parts(parameter: dict[str, Any]) -> dict[str, Any]:
    """A candidate's parts by name (values unwrapped; `reason` as {code: text})."""
    found: dict[str, Any] = {"reason": {}}
    for part in parameter["part"]:
        if part["name"] == "reason":
            code, text = (p.get("valueCode") or p.get("valueString") for p in part["part"])
            found["reason"][code] = text
        else:
            found[part["name"]] = next(v for k, v in part.items() if k.startswith("value"))
    return found


def candidates(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [parts(p) for p in body["parameter"] if p["name"] == "candidate"]


def named(body: dict[str, Any], name: str) -> Any:
    return next(p for p in body["parameter"] if p["name"] == name)


async def match(api: httpx.AsyncClient, patient: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = await api.post(
        f"/fhir/Patient/{patient}/$match-pharmacist", json=body or {"resourceType": "Parameters"}
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    assert result["resourceType"] == "Parameters"
    return result


async def care_teams(api: httpx.AsyncClient, patient: str) -> list[dict[str, Any]]:
    answer = await api.get("/fhir/CareTeam", params={"patient": f"Patient/{patient}"})
    assert answer.status_code == 200, answer.text
    return [e["resource"] for e in answer.json().get("entry", []) if e["search"]["mode"] == "match"]


async def test_ranks_the_spanish_speaking_texan_first_with_reasons(api: httpx.AsyncClient) -> None:
    patient = await spanish_texan(api)
    spanish_tx = await pharmacist(api, "Garcia", ["es", "en"], ["TX"])
    english_tx = await pharmacist(api, "Smith", ["en"], ["TX"], snomed=False)
    spanish_ca = await pharmacist(api, "Lopez", ["es"], ["CA"])

    body = await match(api, patient)

    assert named(body, "patient")["valueReference"]["reference"] == f"Patient/{patient}"
    ranked = candidates(body)
    assert [c["practitionerRole"]["reference"] for c in ranked] == [
        f"PractitionerRole/{spanish_tx[1]}",
        f"PractitionerRole/{english_tx[1]}",
        f"PractitionerRole/{spanish_ca[1]}",
    ]
    best = ranked[0]
    assert best["rank"] == 1 and best["eligible"] is True
    assert best["practitioner"]["reference"] == f"Practitioner/{spanish_tx[0]}"
    assert best["score"] == 90.0  # 40 preferred language + 30 drug class + 20 capacity (0/30)
    assert best["load"] == 0 and best["capacity"] == 30
    assert best["reason"] == {
        "licensed": "TX",
        "language-match": "speaks es (patient prefers es)",
        "drug-class-match": "antipsychotic (1 of 1)",
        "capacity": "0/30 (30 free)",
    }
    assert ranked[1]["eligible"] is True and "no-shared-language" in ranked[1]["reason"]
    outsider = ranked[2]
    assert outsider["eligible"] is False and outsider["rank"] == 3
    assert outsider["reason"]["not-licensed"] == "TX (licensed in CA)"
    assert not [p for p in body["parameter"] if p["name"] in ("assignment", "careTeam", "task")]
    assert await care_teams(api, patient) == []  # ranking alone writes nothing


async def test_assign_creates_one_care_team_and_a_second_call_changes_nothing(api: httpx.AsyncClient) -> None:
    patient = await spanish_texan(api)
    _, role = await pharmacist(api, "Garcia", ["es"], ["TX"])
    await pharmacist(api, "Lopez", ["es"], ["CA"])

    first = await match(api, patient, ASSIGN)
    assert named(first, "assignment")["valueCode"] == "assigned"
    team = named(first, "careTeam")["resource"]
    assert team["status"] == "active" and team["subject"]["reference"] == f"Patient/{patient}"
    assert team["category"][0]["coding"][0] == {
        "system": CARE_TEAM_CATEGORY,
        "code": "pharmacist-assignment",
        "display": "Pharmacist assignment",
    }
    (participant,) = team["participant"]
    assert participant["member"]["reference"] == f"PractitionerRole/{role}"
    assert participant["role"][0]["coding"][0]["code"] == "46255001"
    assert "start" in participant["period"] and "end" not in participant["period"]

    second = await match(api, patient, ASSIGN)
    assert named(second, "assignment")["valueCode"] == "unchanged"
    assert named(second, "careTeam")["resource"]["id"] == team["id"]
    assert candidates(second)[0]["load"] == 0  # the patient's own assignment is no load against them
    stored = await care_teams(api, patient)
    assert [t["id"] for t in stored] == [team["id"]] and stored[0]["meta"]["versionId"] == "1"


async def test_a_pharmacist_at_capacity_is_not_chosen_and_a_change_ends_the_previous_part(
    api: httpx.AsyncClient,
) -> None:
    patient = await spanish_texan(api)
    _, full = await pharmacist(api, "Garcia", ["es"], ["TX"], capacity=1)
    _, other = await pharmacist(api, "Smith", ["en"], ["TX"])
    someone_else = await create(api, f.patient())
    await create(
        api,
        {
            "resourceType": "CareTeam",
            "status": "active",
            "subject": {"reference": f"Patient/{someone_else}"},
            "participant": [{"member": {"reference": f"PractitionerRole/{full}"}}],
        },
    )
    body = await match(api, patient, ASSIGN)
    ranked = candidates(body)
    at_capacity = next(c for c in ranked if c["practitionerRole"]["reference"] == f"PractitionerRole/{full}")
    assert at_capacity["eligible"] is False and at_capacity["reason"]["at-capacity"] == "1/1"
    assert ranked[0]["practitionerRole"]["reference"] == f"PractitionerRole/{other}"
    team = named(body, "careTeam")["resource"]
    assert [p["member"]["reference"] for p in team["participant"]] == [f"PractitionerRole/{other}"]

    # Room again for the Spanish speaker: the assignment moves to them and the previous part ends.
    update = await api.put(
        f"/fhir/PractitionerRole/{full}",
        json={
            **(await api.get(f"/fhir/PractitionerRole/{full}")).json(),
            "extension": [{"url": CASELOAD_CAPACITY, "valueInteger": 30}],
        },
    )
    assert update.status_code == 200, update.text
    moved = await match(api, patient, ASSIGN)
    assert named(moved, "assignment")["valueCode"] == "reassigned"
    previous, current = named(moved, "careTeam")["resource"]["participant"]
    assert previous["member"]["reference"] == f"PractitionerRole/{other}" and "end" in previous["period"]
    assert current["member"]["reference"] == f"PractitionerRole/{full}" and "end" not in current["period"]
    assert len(await care_teams(api, patient)) == 1


async def test_no_eligible_pharmacist_opens_one_unassigned_task(api: httpx.AsyncClient) -> None:
    patient = await spanish_texan(api)
    await pharmacist(api, "Lopez", ["es"], ["CA"])

    body = await match(api, patient, ASSIGN)
    assert named(body, "assignment")["valueCode"] == "unassigned"
    task = named(body, "task")["resource"]
    assert task["status"] == "requested" and task["for"]["reference"] == f"Patient/{patient}"
    assert task["code"]["coding"][0]["system"] == WORK_ITEM_TYPE
    assert task["code"]["coding"][0]["code"] == UNASSIGNED_PATIENT
    assert "none of the 1 candidates is eligible" in task["reasonCode"]["text"]
    assert "not-licensed: TX (licensed in CA)" in task["note"][0]["text"]
    summary = {p["part"][0]["valueCode"] for p in body["parameter"] if p["name"] == "reason"}
    assert summary == {"none-eligible"}

    again = await match(api, patient, ASSIGN)
    assert named(again, "task")["resource"]["id"] == task["id"]
    found = await api.get("/fhir/Task", params={"patient": f"Patient/{patient}", "code": UNASSIGNED_PATIENT})
    assert found.json()["total"] == 1
    assert await care_teams(api, patient) == []

    # A person closed it, and still nobody is eligible: the same Task is reopened, not a second one.
    closed = {**(await api.get(f"/fhir/Task/{task['id']}")).json(), "status": "completed"}
    assert (await api.put(f"/fhir/Task/{task['id']}", json=closed)).status_code == 200
    reopened = named(await match(api, patient, ASSIGN), "task")["resource"]
    assert reopened["id"] == task["id"] and reopened["status"] == "requested"


async def test_scopes_are_checked_before_anything_is_read(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    patient = await spanish_texan(api)
    narrow = await client_factory(
        "system/Patient.r system/Practitioner.r system/MedicationRequest.r system/CareTeam.r"
    )
    answer = await narrow.post(
        f"/fhir/Patient/{patient}/$match-pharmacist", json={"resourceType": "Parameters"}
    )
    assert answer.status_code == 403
    assert "system/PractitionerRole.r" in answer.text

    reader = await client_factory(
        "system/Patient.r system/PractitionerRole.r system/Practitioner.r system/MedicationRequest.r"
        " system/CareTeam.r"
    )
    assert (await reader.post(f"/fhir/Patient/{patient}/$match-pharmacist")).status_code == 200
    refused = await reader.post(f"/fhir/Patient/{patient}/$match-pharmacist", json=ASSIGN)
    assert refused.status_code == 403
    assert "system/CareTeam.cu" in refused.text and "system/Task.cu" in refused.text


async def test_unknown_patient_and_bad_parameters(api: httpx.AsyncClient) -> None:
    assert (await api.post("/fhir/Patient/nobody/$match-pharmacist")).status_code == 404
    patient = await spanish_texan(api)
    wrong = {"resourceType": "Parameters", "parameter": [{"name": "assign", "valueString": "yes"}]}
    assert (await api.post(f"/fhir/Patient/{patient}/$match-pharmacist", json=wrong)).status_code == 400
    for odd in ({"resourceType": "Parameters", "parameter": 5}, [1], {"resourceType": "Patient"}):
        assert (await api.post(f"/fhir/Patient/{patient}/$match-pharmacist", json=odd)).status_code == 400
    other = {"resourceType": "Parameters", "parameter": [{"name": "dryRun", "valueBoolean": True}]}
    assert (await api.post(f"/fhir/Patient/{patient}/$match-pharmacist", json=other)).status_code == 400


async def test_the_operation_is_audited_with_the_patient(
    api: httpx.AsyncClient, client_factory: ClientFactory, gateway: Gateway
) -> None:
    auditor = await client_factory("audit/events.read")
    patient = await spanish_texan(api)
    _, role = await pharmacist(api, "Garcia", ["es"], ["TX"])
    body = await match(api, patient, ASSIGN)
    team = named(body, "careTeam")["resource"]["id"]

    await gateway.audit.flush()
    answer = await auditor.get(
        "/fhir/AuditEvent", params={"patient": f"Patient/{patient}", "subtype": "operation"}
    )
    assert answer.status_code == 200, answer.text
    (event,) = [e["resource"] for e in answer.json().get("entry", [])]
    entities = event["entity"]
    assert any(e.get("description") == "$match-pharmacist" for e in entities)
    whats = {e["what"]["reference"] for e in entities if "reference" in e.get("what", {})}
    assert {f"Patient/{patient}", f"PractitionerRole/{role}", f"CareTeam/{team}"} <= whats


async def test_only_an_active_assignment_team_names_a_patients_pharmacist(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    """What an alert's owner comes from: the patient's active pharmacist-assignment CareTeam, not an
    ended one, not a team of another category, not another patient's."""
    from gateway.service.pharmacist.matching import PHARMACIST_ASSIGNMENT, assigned_pharmacists

    def team(subject: str, member: str, *, status: str = "active", code: str = PHARMACIST_ASSIGNMENT) -> dict:
        return {
            "resourceType": "CareTeam",
            "status": status,
            "category": [{"coding": [{"system": CARE_TEAM_CATEGORY, "code": code}]}],
            "subject": {"reference": subject},
            "participant": [{"member": {"reference": member}, "period": {"start": "2024-01-01T00:00:00Z"}}],
        }

    one, two, three = [f"Patient/{await create(api, f.patient())}" for _ in range(3)]
    await create(api, team(one, "Practitioner/ended", status="inactive"))
    await create(api, team(one, "Practitioner/other-kind", code="other-team"))
    await create(api, team(one, "Practitioner/current"))
    await create(api, team(two, "Practitioner/ended-only", status="inactive"))
    async with gateway.db.read() as conn:
        owners = await assigned_pharmacists(conn, [one, two, three])
    assert owners == {one: "Practitioner/current"}
