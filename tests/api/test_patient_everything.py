"""`GET /fhir/Patient/{id}/$everything`, both backends: the compartment, paging, `_type`, `_since`,
what a narrow token sees (never a type it may not read), errors, the audit trail and HL7 v2 ingest."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.fhir.compartment import check_table
from gateway.service.gateway import Gateway
from tests import factories as f
from tests.conftest import ClientFactory
from tests.hl7_messages import ack_code, anc_oru

WORK_ITEM_TYPE = "https://specialty-gateway.org/fhir/CodeSystem/work-item-type"

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
EVERYTHING_URL = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
# Every read this test needs except Observation.
NO_OBSERVATION = " ".join(
    f"system/{t}.rs"
    for t in (
        "Patient",
        "MedicationRequest",
        "MedicationDispense",
        "DiagnosticReport",
        "Task",
        "Provenance",
        "Practitioner",
        "Organization",
        "Medication",
        "ServiceRequest",
        "Specimen",
    )
)


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def record(api: httpx.AsyncClient) -> dict[str, Any]:
    """A patient with one resource of each kind, and ids of all of it ("Type/id")."""
    patient = await create(api, f.patient())
    prescriber = await create(api, {"resourceType": "Practitioner", "name": [{"family": "Prescriber"}]})
    # Referenced only by an Observation: must not appear for a token that cannot read Observations.
    performer = await create(api, {"resourceType": "Practitioner", "name": [{"family": "Labtech"}]})
    observations = [
        await create(api, f.lab_observation(patient, performer=[{"reference": f"Practitioner/{performer}"}])),
        await create(api, f.lab_observation(patient, code="751-8", value=1.1, unit="10*3/uL")),
    ]
    request = await create(
        api, f.medication_request(patient, requester={"reference": f"Practitioner/{prescriber}"})
    )
    dispense = await create(
        api,
        {
            "resourceType": "MedicationDispense",
            "status": "completed",
            "medicationCodeableConcept": {"text": "clozapine 100 MG Oral Tablet"},
            "subject": {"reference": f"Patient/{patient}"},
            "authorizingPrescription": [{"reference": f"MedicationRequest/{request}"}],
            "whenHandedOver": "2024-03-02T10:00:00Z",
        },
    )
    report = await create(
        api,
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"coding": [{"system": f.LOINC, "code": "57021-8"}]},
            "subject": {"reference": f"Patient/{patient}"},
        },
    )
    task = await create(api, f.pa_task(patient, request))
    provenance = await create(
        api,
        {
            "resourceType": "Provenance",
            "target": [{"reference": f"Patient/{patient}"}, {"reference": f"MedicationRequest/{request}"}],
            "recorded": "2024-03-01T09:00:00Z",
            "agent": [{"who": {"display": "City Lab"}}],
        },
    )
    # A first specialty order with no pharmacist on file opens the patient's unassigned-patient work item.
    unassigned = (
        await api.get(
            "/fhir/Task", params={"patient": patient, "code": f"{WORK_ITEM_TYPE}|unassigned-patient"}
        )
    ).json()
    (work_item,) = unassigned["entry"]
    return {
        "patient": patient,
        "observations": [f"Observation/{o}" for o in observations],
        "performer": f"Practitioner/{performer}",
        "compartment": {
            f"Patient/{patient}",
            *(f"Observation/{o}" for o in observations),
            f"MedicationRequest/{request}",
            f"MedicationDispense/{dispense}",
            f"DiagnosticReport/{report}",
            f"Task/{task}",
            f"Task/{work_item['resource']['id']}",
            f"Provenance/{provenance}",
        },
        "referenced": {f"Practitioner/{prescriber}", f"Practitioner/{performer}"},
    }


def keys(bundle: dict[str, Any], mode: str | None = None) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] != "outcome" and (mode is None or e["search"]["mode"] == mode)
    ]


async def everything(client: httpx.AsyncClient, patient: str, **params: str) -> dict[str, Any]:
    answer = await client.get(f"/fhir/Patient/{patient}/$everything", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


async def all_pages(client: httpx.AsyncClient, patient: str, **params: str) -> tuple[list[str], int]:
    """Every entry of every page, following next links; and how many pages."""
    url: str | None = f"/fhir/Patient/{patient}/$everything"
    found: list[str] = []
    pages = 0
    query: dict[str, str] | None = params
    while url is not None:
        answer = await client.get(url, params=query)
        assert answer.status_code == 200, answer.text
        bundle = answer.json()
        found += keys(bundle)
        pages += 1
        assert pages < 50
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
        query = None
    return found, pages


def test_compartment_table_names_indexed_patient_references() -> None:
    check_table()


async def test_everything_returns_the_patients_record_and_nothing_of_another(api: httpx.AsyncClient) -> None:
    mine = await record(api)
    theirs = await record(api)
    bundle = await everything(api, mine["patient"])
    assert set(keys(bundle, "match")) == mine["compartment"]
    assert set(keys(bundle, "include")) == mine["referenced"]
    assert keys(bundle)[0] == f"Patient/{mine['patient']}"  # the Patient first
    assert bundle["total"] == len(mine["compartment"]) + len(mine["referenced"])
    raw = (await api.get(f"/fhir/Patient/{mine['patient']}/$everything")).text
    for key in theirs["compartment"] | {theirs["performer"]}:
        assert key.split("/")[1] not in raw
    assert not any(link["relation"] == "next" for link in bundle["link"])


async def test_type_filters(api: httpx.AsyncClient) -> None:
    mine = await record(api)
    bundle = await everything(api, mine["patient"], _type="Observation,Task")
    expected = {k for k in mine["compartment"] if k.split("/")[0] in ("Observation", "Task")}
    assert set(keys(bundle)) == expected
    assert bundle["total"] == len(expected)
    only_practitioners = await everything(api, mine["patient"], _type="Practitioner")
    assert set(keys(only_practitioners)) == mine["referenced"]
    unknown = await everything(api, mine["patient"], _type="Encounter")
    assert keys(unknown) == []
    outcome = [e for e in unknown["entry"] if e["search"]["mode"] == "outcome"]
    assert "Encounter" in outcome[0]["resource"]["issue"][0]["diagnostics"]


async def test_since_filters(api: httpx.AsyncClient) -> None:
    mine = await record(api)
    first = await everything(api, mine["patient"])
    newest = max(e["resource"]["meta"]["lastUpdated"] for e in first["entry"])
    await asyncio.sleep(0.01)
    later = await create(api, f.lab_observation(mine["patient"], code="2345-7", value=5.5, unit="mmol/L"))
    answer = await everything(api, mine["patient"], _since=newest)
    stamps = [e["resource"]["meta"]["lastUpdated"] for e in answer["entry"]]
    assert all(s >= newest for s in stamps)
    assert f"Observation/{later}" in keys(answer)
    assert len(keys(answer)) < len(keys(first)) + 1
    after = await everything(api, mine["patient"], _since="2999-01-01T00:00:00Z")
    assert keys(after) == [] and after["total"] == 0
    bad = await api.get(f"/fhir/Patient/{mine['patient']}/$everything", params={"_since": "yesterday"})
    assert bad.status_code == 400


async def test_count_pages_through_next_links_without_duplicates(api: httpx.AsyncClient) -> None:
    mine = await record(api)
    await record(api)
    unpaged = keys(await everything(api, mine["patient"], _count="1000"))
    paged, pages = await all_pages(api, mine["patient"], _count="2")
    assert len(paged) == len(set(paged))
    assert paged == unpaged  # the same order, page after page
    assert set(paged) == mine["compartment"] | mine["referenced"]
    assert pages == (len(unpaged) + 1) // 2
    typed, _ = await all_pages(api, mine["patient"], _count="2", _type="Observation,Practitioner")
    assert set(typed) == set(mine["observations"]) | mine["referenced"]
    for cursor in (
        "nonsense!",
        "WyJUYXNrIiwxMDAwMDAwMDAwMDAwMDAwMDAwMF0",
    ):  # ["Task",10**19]: past SQL's integers
        bad = await api.get(f"/fhir/Patient/{mine['patient']}/$everything", params={"_cursor": cursor})
        assert bad.status_code == 400, cursor


async def test_count_is_capped_by_the_max_page_size(gateway: Gateway, api: httpx.AsyncClient) -> None:
    mine = await record(api)
    capped = await everything(api, mine["patient"], _count="999999")
    self_link = next(link["url"] for link in capped["link"] if link["relation"] == "self")
    assert f"_count={gateway.settings.max_page_size}" in self_link


async def test_a_type_the_token_cannot_read_is_never_seen(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    mine = await record(api)
    narrow = await client_factory(NO_OBSERVATION)
    answer = await narrow.get(f"/fhir/Patient/{mine['patient']}/$everything")
    assert answer.status_code == 200
    raw = answer.text
    for key in mine["observations"]:
        assert key.split("/")[1] not in raw
    assert "Observation" not in raw  # not an entry, not a count, not a warning
    assert mine["performer"].split("/")[1] not in raw  # referenced only by an Observation
    bundle = answer.json()
    expected = {k for k in mine["compartment"] if not k.startswith("Observation/")}
    assert set(keys(bundle, "match")) == expected
    assert set(keys(bundle, "include")) == mine["referenced"] - {mine["performer"]}
    assert bundle["total"] == len(expected) + 1
    only = await narrow.get(f"/fhir/Patient/{mine['patient']}/$everything", params={"_type": "Observation"})
    assert only.status_code == 200
    assert keys(only.json()) == [] and only.json()["total"] == 0
    assert "Observation" not in only.text.replace("_type=Observation", "")
    paged, _ = await all_pages(narrow, mine["patient"], _count="2")
    assert not any(k.startswith("Observation/") for k in paged)


async def test_without_patient_read_403_and_unknown_patient_404(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    mine = await record(api)
    no_patient = await client_factory("system/Observation.rs system/Task.rs")
    refused = await no_patient.get(f"/fhir/Patient/{mine['patient']}/$everything")
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    # The same answer whether or not the Patient exists.
    assert (await no_patient.get("/fhir/Patient/nobody/$everything")).status_code == 403
    missing = await api.get("/fhir/Patient/nobody/$everything")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"


async def test_start_and_end_are_ignored_with_a_warning(api: httpx.AsyncClient) -> None:
    mine = await record(api)
    bundle = await everything(api, mine["patient"], start="2024-01-01", end="2024-12-31")
    assert set(keys(bundle)) == mine["compartment"] | mine["referenced"]
    outcome = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "not supported" in outcome[0]["issue"][0]["diagnostics"]


async def test_audited_as_a_read_of_the_patient_with_the_types(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    mine = await record(api)
    narrow = await client_factory(NO_OBSERVATION)
    assert (await narrow.get(f"/fhir/Patient/{mine['patient']}/$everything")).status_code == 200
    await gateway.audit.flush()
    auditor = await client_factory("audit/events.read")
    found = (
        await auditor.get("/fhir/AuditEvent", params={"patient": mine["patient"], "subtype": "operation"})
    ).json()
    events = [e["resource"] for e in found["entry"]]
    event = next(e for e in events if any("$everything" in x.get("description", "") for x in e["entity"]))
    assert event["action"] == "R"
    description = next(x["description"] for x in event["entity"] if "$everything" in x.get("description", ""))
    assert "MedicationRequest" in description and "Task" in description
    assert "Observation" not in description


async def test_audit_events_only_for_holders_of_audit_read(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    mine = await record(api)
    await api.get(f"/fhir/Patient/{mine['patient']}")
    await gateway.audit.flush()
    auditor = await client_factory("system/Patient.rs audit/events.read")
    with_audit = await everything(auditor, mine["patient"], _type="AuditEvent")
    assert with_audit["total"] >= 1
    assert all(e["resource"]["resourceType"] == "AuditEvent" for e in with_audit["entry"])
    without = await everything(api, mine["patient"], _type="AuditEvent")
    assert keys(without) == [] and without["total"] == 0


async def test_an_ingested_oru_shows_up(api: httpx.AsyncClient, client_factory: ClientFactory) -> None:
    answer = await api.post("/hl7v2", content=anc_oru("EV-1", "MRN-EV1").encode(), headers=ER7)
    assert ack_code(answer.text) == "AA", answer.text
    search = (await api.get("/fhir/Patient", params={"identifier": "MRN-EV1"})).json()
    patient = search["entry"][0]["resource"]["id"]
    bundle = await everything(api, patient)
    types = {k.split("/")[0] for k in keys(bundle)}
    assert {"Patient", "Observation", "DiagnosticReport", "Provenance"} <= types
    observations = [k.split("/")[1] for k in keys(bundle) if k.startswith("Observation/")]
    # A token without Observation read gets the report and the message's Provenance, never an Observation.
    # Their references to it (`result`, `target`) are kept as stored: references inside resources the
    # token may read (a plain read of them shows the same), never the Observation's content.
    narrow = await everything(await client_factory(NO_OBSERVATION), patient)
    narrow_types = {k.split("/")[0] for k in keys(narrow)}
    assert "Observation" not in narrow_types and {"DiagnosticReport", "Provenance"} <= narrow_types
    raw = str(narrow)
    for oid in observations:
        assert raw.count(oid) == raw.count(f"Observation/{oid}")  # only ever as a reference
    assert "valueQuantity" not in raw and "Neutrophils" not in raw


@pytest.mark.parametrize("param", ["_count=-1", "_count=abc"])
async def test_bad_count_is_400(api: httpx.AsyncClient, param: str) -> None:
    mine = await record(api)
    assert (await api.get(f"/fhir/Patient/{mine['patient']}/$everything?{param}")).status_code == 400


async def test_capability_statement_lists_the_operation(api: httpx.AsyncClient) -> None:
    statement = (await api.get("/fhir/metadata")).json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "everything", "definition": EVERYTHING_URL} in patient["operation"]


async def test_the_patients_care_team_is_in_the_record(api: httpx.AsyncClient) -> None:
    mine = await record(api)
    team = {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": f"Patient/{mine['patient']}"},
    }
    created = await api.post("/fhir/CareTeam", json=team)
    assert created.status_code == 201, created.text
    bundle = await everything(api, mine["patient"], _type="CareTeam")
    assert keys(bundle) == [f"CareTeam/{created.json()['id']}"]
