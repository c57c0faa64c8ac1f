"""An EHR pushing FHIR (the client `example-ehr`, mappings/fhir/clients/example-ehr.yaml), on both backends:
its local lab code is normalized to LOINC by its mapping, what it writes has a Provenance naming it, and
a lab result it pushes that also arrives over HL7 v2 from the lab ends as ONE Observation, whichever came
first; a different value or time stays a separate Observation."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest_asyncio

from gateway.service.gateway import Gateway
from gateway.transports.http.app import create_app
from tests.hl7_messages import AUTHORITY, anc_oru

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.23"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"  # AUTHORITY's universal id: the PID-3 identifier system
_clients: dict[str, tuple[str, str]] = {}  # per database: the EHR client is registered once by name


@pytest_asyncio.fixture
async def ehr(gateway: Gateway) -> Any:
    """An HTTP client holding a token of the client registered as `example-ehr`."""
    url = gateway.settings.database_url
    if url not in _clients:
        made = await gateway.auth.add_client("example-ehr", "system/*.cruds")
        _clients[url] = (made.client_id, made.client_secret or "")
    client_id, secret = _clients[url]
    app = create_app(gateway.settings, gateway)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as c:
        token = await c.post(
            "/auth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
        )
        assert token.status_code == 200, token.text
        c.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield c


def pushed_anc(patient: str, value: float = 1.2, when: str = "2024-03-01T08:00:00-05:00") -> dict[str, Any]:
    """A US Core laboratory Observation as the EHR sends it: its own local code for ANC."""
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:example-ehr:result", "value": f"R-{uuid.uuid4().hex[:8]}"}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOCAL, "code": "ANCLOC", "display": "ANC"}], "text": "ANC"},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": "10*3/uL",
            "system": "http://unitsofmeasure.org",
            "code": "10*3/uL",
        },
    }


async def lab_sends(api: httpx.AsyncClient, mrn: str, value: str = "1.2") -> None:
    answer = await api.post(
        "/hl7v2", content=anc_oru(f"C{uuid.uuid4().hex[:8]}", mrn, value).encode(), headers=ER7
    )
    assert "MSA|AA" in answer.text, answer.text


async def patient_by_mrn(api: httpx.AsyncClient, mrn: str) -> str:
    bundle = (await api.get("/fhir/Patient", params={"identifier": f"{MRN_SYSTEM}|{mrn}"})).json()
    (entry,) = bundle["entry"]
    return str(entry["resource"]["id"])


async def ancs(api: httpx.AsyncClient, patient: str) -> list[dict[str, Any]]:
    bundle = (
        await api.get("/fhir/Observation", params={"patient": patient, "code": "http://loinc.org|751-8"})
    ).json()
    return [e["resource"] for e in bundle.get("entry", [])]


async def test_lab_first_then_the_ehr_push_is_one_observation(
    api: httpx.AsyncClient, ehr: httpx.AsyncClient
) -> None:
    mrn = f"M{uuid.uuid4().hex[:8]}"
    await lab_sends(api, mrn)
    patient = await patient_by_mrn(api, mrn)
    (from_lab,) = await ancs(api, patient)
    answer = await ehr.post("/fhir/Observation", json=pushed_anc(patient))
    assert answer.status_code == 200, answer.text  # merged into the stored one, not created
    assert answer.json()["id"] == from_lab["id"]
    (one,) = await ancs(api, patient)
    assert one["id"] == from_lab["id"] and one["meta"]["versionId"] == "2"
    # the lab's content stays, the EHR's identifier and feed tag are added
    assert one["valueQuantity"]["value"] == 1.2
    assert any(i["system"] == "urn:example-ehr:result" for i in one["identifier"])
    assert any(t["code"] == "ehr-fhir:example-ehr" for t in one["meta"]["tag"])
    provenances = (await api.get("/fhir/Provenance", params={"target": f"Observation/{one['id']}"})).json()
    agents = [a["who"].get("display") for e in provenances["entry"] for a in e["resource"]["agent"]]
    assert "EHR over FHIR: example-ehr" in agents


async def test_ehr_first_then_the_lab_is_one_observation_and_the_code_is_normalized(
    api: httpx.AsyncClient, ehr: httpx.AsyncClient
) -> None:
    mrn = f"M{uuid.uuid4().hex[:8]}"
    await lab_sends(
        api, mrn, "2.4"
    )  # an earlier result registers the patient (another time? no: another value)
    patient = await patient_by_mrn(api, mrn)
    # the EHR pushes a result the lab has not sent yet (drawn an hour later)
    later = "2024-03-01T09:00:00-05:00"
    made = await ehr.post("/fhir/Observation", json=pushed_anc(patient, 1.9, later))
    assert made.status_code == 201, made.text
    pushed = made.json()
    assert pushed["code"]["coding"][0] == {
        "system": "http://loinc.org", "code": "751-8",
        "display": "Neutrophils [#/volume] in Blood by Automated count",
    }  # fmt: skip
    assert pushed["code"]["coding"][1]["code"] == "ANCLOC"  # the local code is kept after the standard one
    # a different value at the same time is another result: kept apart
    other = await ehr.post("/fhir/Observation", json=pushed_anc(patient, 0.7, later))
    assert other.status_code == 201 and other.json()["id"] != pushed["id"]
    assert len(await ancs(api, patient)) == 3
    await ehr.delete(f"/fhir/Observation/{other.json()['id']}")
    # now the lab's message for that draw comes: filed under the pushed Observation's id
    message = anc_oru(f"C{uuid.uuid4().hex[:8]}", mrn, "1.9", placer="ORD2002")  # its own order
    message = message.replace("20240301080000-0500", "20240301090000-0500")
    answer = await api.post("/hl7v2", content=message.encode(), headers=ER7)
    assert "MSA|AA" in answer.text, answer.text
    found = await ancs(api, patient)
    assert len(found) == 2, [
        (o["id"], o["meta"]["versionId"], o["valueQuantity"], o["effectiveDateTime"]) for o in found
    ]
    merged = next(o for o in found if o["id"] == pushed["id"])
    assert merged["meta"]["versionId"] == "2", [
        (o["id"][:6], o["meta"]["versionId"], o["valueQuantity"]["value"], o["effectiveDateTime"])
        for o in found
    ] + [pushed["id"][:6]]
    assert any(i["system"] == "urn:example-ehr:result" for i in merged.get("identifier", []))
    assert "basedOn" in merged  # the lab's links (the order's ServiceRequest) are there now
    assert AUTHORITY  # the messages use the test authority of tests.hl7_messages


def pushed_patient(mrn: str, birth_date: str = "1980-02-03") -> dict[str, Any]:
    """The same person as the HL7 v2 PID of tests.hl7_messages (Alex Testperson, F), as the EHR sends it."""
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": MRN_SYSTEM, "value": mrn},
            {"system": "urn:example-ehr:patient", "value": f"E{mrn}"},
        ],
        "name": [{"family": "Testperson", "given": ["Alex"]}],
        "birthDate": birth_date,
        "gender": "female",
    }


async def test_a_pushed_patient_is_matched_by_identifier_and_guarded_by_demographics(
    api: httpx.AsyncClient, ehr: httpx.AsyncClient
) -> None:
    mrn = f"M{uuid.uuid4().hex[:8]}"
    await lab_sends(api, mrn)
    known = await patient_by_mrn(api, mrn)
    # the same person: one Patient, now also carrying the EHR's own identifier
    same = await ehr.post("/fhir/Patient", json=pushed_patient(mrn))
    assert same.status_code == 200 and same.json()["id"] == known, same.text
    systems = {i["system"] for i in same.json()["identifier"]}
    assert {"urn:example-ehr:patient", MRN_SYSTEM} <= systems
    # the MRN of someone born on another day: refused, naming the element; no second Patient
    other = await ehr.post("/fhir/Patient", json=pushed_patient(mrn, "1961-07-30"))
    assert other.status_code == 409 and "birthDate" in other.text
    assert await patient_by_mrn(api, mrn) == known
    # a result naming the patient only by identifier is filed under the stored Patient
    result = pushed_anc("ignored", 3.3)
    result["subject"] = {"identifier": {"system": "urn:example-ehr:patient", "value": f"E{mrn}"}}
    filed = await ehr.post("/fhir/Observation", json=result)
    assert filed.status_code == 201, filed.text
    assert filed.json()["subject"]["reference"] == f"Patient/{known}"
    # an identifier nobody carries: refused, naming where
    result["subject"] = {"identifier": {"system": "urn:example-ehr:patient", "value": "NOBODY"}}
    refused = await ehr.post("/fhir/Observation", json=result)
    assert refused.status_code == 422 and "Observation.subject.identifier" in refused.text


async def test_a_resource_the_gateway_cannot_accept_is_refused_naming_element_and_rule(
    api: httpx.AsyncClient, ehr: httpx.AsyncClient
) -> None:
    mrn = f"M{uuid.uuid4().hex[:8]}"
    await lab_sends(api, mrn)
    patient = await patient_by_mrn(api, mrn)
    no_status = pushed_anc(patient)
    del no_status["status"]  # R4 and US Core: 1..1
    not_a_number = pushed_anc(patient)
    not_a_number["valueQuantity"]["value"] = "1,2"
    for broken, element in (
        (no_status, "Observation.status"),
        (not_a_number, "Observation.valueQuantity.value"),
    ):
        answer = await ehr.post("/fhir/Observation", json=broken)
        assert answer.status_code == 422
        errors = [i for i in answer.json()["issue"] if i["severity"] == "error"]
        assert any(element in i.get("expression", []) and i["diagnostics"] for i in errors), errors
    assert len(await ancs(api, patient)) == 1  # only the lab's
