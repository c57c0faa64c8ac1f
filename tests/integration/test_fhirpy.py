"""Every interaction through a real FHIR client (fhirpy) against a running `gateway serve`."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import ForbiddenError, MultipleResourcesFound, ResourceNotFound

from tests.factories import MRN_SYSTEM, lab_observation, medication_request, pa_task, patient
from tests.integration.conftest import LiveServer


async def fhir_client(live: LiveServer, scope: str = "system/*.cruds", **extra: object) -> AsyncFHIRClient:
    token = await live.token(scope)
    return AsyncFHIRClient(f"{live.base_url}/fhir", authorization=f"Bearer {token}", **extra)  # type: ignore[arg-type]


async def test_crud_history_and_vread_through_fhirpy(live: LiveServer) -> None:
    client = await fhir_client(live)
    metadata = await client.execute("metadata", method="get")
    assert metadata["fhirVersion"] == "4.0.1"

    pat = client.resource("Patient", **{k: v for k, v in patient().items() if k != "resourceType"})
    await pat.save()  # create
    assert pat["meta"]["versionId"] == "1"
    fetched = await client.reference("Patient", pat.id).to_resource()  # read
    assert fetched["identifier"] == pat["identifier"]

    pat["gender"] = "male"
    await pat.save()  # update
    assert pat["meta"]["versionId"] == "2"
    first = await client.execute(f"Patient/{pat.id}/_history/1", method="get")  # vread
    assert first["gender"] == "female"

    history = await client.execute(f"Patient/{pat.id}/_history", method="get")  # instance history
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]
    type_history = await client.execute("Patient/_history", method="get", params={"_count": 1})
    assert type_history["total"] >= 2 and len(type_history["entry"]) == 1

    await pat.delete()  # delete
    with pytest.raises(ResourceNotFound):
        await client.reference("Patient", pat.id).to_resource()


async def test_search_paging_sort_include_through_fhirpy(live: LiveServer) -> None:
    client = await fhir_client(live)
    pat = client.resource("Patient", **{k: v for k, v in patient().items() if k != "resourceType"})
    await pat.save()
    for day in range(1, 8):
        obs = lab_observation(pat.id, effective=f"2024-04-0{day}T09:00:00Z", value=float(day))
        await client.resource("Observation", **{k: v for k, v in obs.items() if k != "resourceType"}).save()

    search = client.resources("Observation").search(patient=pat.id)
    assert await search.count() == 7
    everything = await search.limit(3).fetch_all()  # follows next links
    assert len(everything) == 7
    assert len({o.id for o in everything}) == 7

    newest_first = await search.sort("-date").limit(3).fetch()
    assert [o["valueQuantity"]["value"] for o in newest_first] == [7.0, 6.0, 5.0]

    recent = await client.resources("Observation").search(patient=pat.id, _lastUpdated="ge2000-01-01").count()
    assert recent == 7
    with_patient = await search.include("Observation", "patient").limit(1).fetch_raw()
    assert {e["search"]["mode"] for e in with_patient["entry"]} == {"match", "include"}
    by_code = (
        await client.resources("Observation").search(code="http://loinc.org|718-7", patient=pat.id).count()
    )
    assert by_code == 7


async def test_conditional_create_update_and_delete_through_fhirpy(live: LiveServer) -> None:
    client = await fhir_client(live)
    mrn = uuid.uuid4().hex[:10]
    body = client.resource("Patient", **{k: v for k, v in patient(mrn).items() if k != "resourceType"})
    first, created = (
        await client.resources("Patient").search(identifier=f"{MRN_SYSTEM}|{mrn}").get_or_create(body)
    )
    again, created_again = (
        await client.resources("Patient").search(identifier=f"{MRN_SYSTEM}|{mrn}").get_or_create(body)
    )
    assert (created, created_again) == (True, False)
    assert first.id == again.id

    header_client = await fhir_client(live, extra_headers={"If-None-Exist": f"identifier={MRN_SYSTEM}|{mrn}"})
    via_header = header_client.resource(
        "Patient", **{k: v for k, v in patient(mrn).items() if k != "resourceType"}
    )
    await via_header.save()
    assert via_header.id == first.id

    body["gender"] = "other"
    updated, was_created = (
        await client.resources("Patient").search(identifier=f"{MRN_SYSTEM}|{mrn}").update(body)
    )
    assert not was_created
    assert updated.id == first.id and updated["gender"] == "other"

    await client.resources("Patient").search(identifier=f"{MRN_SYSTEM}|{mrn}").delete()
    assert await client.resources("Patient").search(identifier=f"{MRN_SYSTEM}|{mrn}").count() == 0


async def test_if_match_through_fhirpy(live: LiveServer) -> None:
    client = await fhir_client(live)
    pat = client.resource("Patient", **{k: v for k, v in patient().items() if k != "resourceType"})
    await pat.save()
    stale = await fhir_client(live, extra_headers={"If-Match": 'W/"1"'})
    copy = await stale.reference("Patient", pat.id).to_resource()
    copy["gender"] = "male"
    await copy.save()  # matches version 1
    copy["gender"] = "other"
    with pytest.raises(MultipleResourcesFound):  # fhirpy raises this for any 412
        await copy.save()


async def test_transaction_and_batch_through_fhirpy(live: LiveServer) -> None:
    client = await fhir_client(live)
    urn = f"urn:uuid:{uuid.uuid4()}"
    pat = patient()
    order = medication_request("x", subject={"reference": urn})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": urn, "resource": pat, "request": {"method": "POST", "url": "Patient"}},
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "resource": order,
                "request": {"method": "POST", "url": "MedicationRequest"},
            },
        ],
    }
    result = await client.execute("", method="post", data=bundle)
    patient_id = result["entry"][0]["resource"]["id"]
    order_id = result["entry"][1]["resource"]["id"]
    assert result["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"

    task = pa_task(patient_id, order_id)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": task, "request": {"method": "POST", "url": "Task"}},
            {"request": {"method": "GET", "url": f"MedicationRequest/{order_id}"}},
        ],
    }
    answer = await client.execute("", method="post", data=batch)
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "200 OK"]
    tasks = (
        await client.resources("Task")
        .search(focus=f"MedicationRequest/{order_id}", **{"business-status": "submitted"})
        .fetch()
    )
    assert len(tasks) == 1


async def test_observation_read_only_client_is_refused_writes(live: LiveServer) -> None:
    admin = await fhir_client(live)
    reader = await fhir_client(live, scope="system/Observation.rs")
    pat = admin.resource("Patient", **{k: v for k, v in patient().items() if k != "resourceType"})
    await pat.save()
    obs = lab_observation(pat.id)
    saved = admin.resource("Observation", **{k: v for k, v in obs.items() if k != "resourceType"})
    await saved.save()
    assert (await reader.reference("Observation", saved.id).to_resource()).id == saved.id
    with pytest.raises(ForbiddenError):
        await reader.resource("Observation", **{k: v for k, v in obs.items() if k != "resourceType"}).save()
    with pytest.raises(ForbiddenError):
        await reader.reference("Observation", saved.id).delete()


async def test_concurrent_if_match_updates_over_http_have_one_winner(live: LiveServer) -> None:
    token = await live.token("system/*.cruds")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{live.base_url}/fhir", headers=headers) as http:
        created = (await http.post("/Patient", json=patient())).json()
        url = f"/Patient/{created['id']}"
        answers = await asyncio.gather(
            *[
                http.put(url, json={**created, "gender": gender}, headers={"If-Match": 'W/"1"'})
                for gender in ("male", "other")
            ]
        )
        assert sorted(a.status_code for a in answers) == [200, 412]
        assert (await http.get(url)).json()["meta"]["versionId"] == "2"


async def test_fifty_megabyte_body_gets_413_from_the_real_server(live: LiveServer) -> None:
    token = await live.token("system/*.cruds")
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(
            f"{live.base_url}/fhir/Patient",
            content=b" " * (50 * 1024 * 1024),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        )
    assert answer.status_code == 413
    assert answer.json()["resourceType"] == "OperationOutcome"
