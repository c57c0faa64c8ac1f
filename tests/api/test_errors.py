"""Bad input always gets a clear 4xx OperationOutcome, never a 500, and never changes the store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.factories import lab_observation, medication_request, pa_task, patient

FIFTY_MB = 50 * 1024 * 1024


def assert_outcome(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text[:500]
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    assert body["issue"][0]["diagnostics"]
    return body


async def test_invalid_json_is_400(api: httpx.AsyncClient) -> None:
    body = assert_outcome(await api.post("/fhir/Patient", content=b'{"resourceType": "Patient",'), 400)
    assert "JSON" in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize("payload", [b"[]", b'"text"', b"null", b"", b"{}"])
async def test_bodies_that_are_not_resources_are_400(api: httpx.AsyncClient, payload: bytes) -> None:
    assert_outcome(await api.post("/fhir/Patient", content=payload), 400)


async def test_unknown_resource_type_is_404(api: httpx.AsyncClient) -> None:
    assert_outcome(await api.get("/fhir/Spaceship"), 404)
    assert_outcome(await api.post("/fhir/Spaceship", json={"resourceType": "Spaceship"}), 404)


async def test_wrong_resource_type_is_400(api: httpx.AsyncClient) -> None:
    body = assert_outcome(await api.post("/fhir/Patient", json={"resourceType": "Observation"}), 400)
    assert "Observation" in body["issue"][0]["diagnostics"]


async def test_a_50_mb_body_is_413_before_it_is_read(api: httpx.AsyncClient) -> None:
    assert_outcome(await api.post("/fhir/Patient", content=b" " * FIFTY_MB), 413)


async def test_a_50_mb_streamed_body_without_length_is_413(api: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b" " * (1024 * 1024)

    assert_outcome(await api.post("/fhir/Patient", content=chunks()), 413)


async def test_unknown_elements_are_422_with_their_path(api: httpx.AsyncClient) -> None:
    body = assert_outcome(await api.post("/fhir/Patient", json={**patient(), "shoeSize": 42}), 422)
    assert body["issue"][0]["expression"] == ["Patient.shoeSize"]


async def test_every_structural_problem_is_its_own_issue(api: httpx.AsyncClient) -> None:
    bad = {**patient(), "birthDate": "03/02/1980", "gender": 5, "active": "yes"}
    body = assert_outcome(await api.post("/fhir/Patient", json=bad), 422)
    paths = sorted(e for i in body["issue"] if i["severity"] == "error" for e in i.get("expression", []))
    assert paths == ["Patient.active", "Patient.birthDate", "Patient.gender"]


async def test_datetime_without_time_zone_is_explained(api: httpx.AsyncClient) -> None:
    obs = lab_observation("p1", effective="2024-03-01T08:30:00")
    body = assert_outcome(await api.post("/fhir/Observation", json=obs), 422)
    assert body["issue"][0]["expression"] == ["Observation.effectiveDateTime"]


async def test_lab_observation_profile_violations_are_422(api: httpx.AsyncClient) -> None:
    obs = lab_observation("p1")
    del obs["subject"]
    obs["status"] = "done"
    body = assert_outcome(await api.post("/fhir/Observation", json=obs), 422)
    paths = {e for i in body["issue"] if i["severity"] == "error" for e in i.get("expression", [])}
    assert {"Observation.subject", "Observation.status"} <= paths


async def test_medication_request_profile_violations_are_422(api: httpx.AsyncClient) -> None:
    order = medication_request("p1", intent="wish")
    body = assert_outcome(await api.post("/fhir/MedicationRequest", json=order), 422)
    assert any("MedicationRequest.intent" in i.get("expression", []) for i in body["issue"])


async def test_pa_task_with_an_impossible_lifecycle_pair_is_422(api: httpx.AsyncClient) -> None:
    task = pa_task("p1", "m1", status="completed", business_status="submitted")
    body = assert_outcome(await api.post("/fhir/Task", json=task), 422)
    assert any(i["code"] == "invariant" for i in body["issue"])


async def test_invalid_writes_store_nothing(api: httpx.AsyncClient) -> None:
    await api.post("/fhir/Patient", json={**patient(), "shoeSize": 42})
    await api.post("/fhir/Observation", json={**lab_observation("p1"), "status": "done"})
    assert (await api.get("/fhir/Patient", params={"_summary": "count"})).json()["total"] == 0
    assert (await api.get("/fhir/Observation", params={"_summary": "count"})).json()["total"] == 0


async def test_unknown_route_and_method_are_operation_outcomes(api: httpx.AsyncClient) -> None:
    assert_outcome(await api.get("/fhir/Patient/1/_history/1/extra"), 404)
    assert_outcome(await api.patch("/fhir/Patient/1", json=[]), 405)


async def test_xml_is_refused_explicitly(api: httpx.AsyncClient) -> None:
    assert_outcome(await api.get("/fhir/Patient", headers={"Accept": "application/fhir+xml"}), 406)
    assert_outcome(await api.get("/fhir/Patient", params={"_format": "xml"}), 406)
    answer = await api.post(
        "/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}
    )
    assert_outcome(answer, 415)


async def test_malformed_search_values_are_400(api: httpx.AsyncClient) -> None:
    for params in (
        {"date": "yesterday"},
        {"_count": "many"},
        {"patient": "not a/valid id!"},
        {"_sort": "name"},
    ):
        assert_outcome(await api.get("/fhir/Observation", params=params), 400)


async def test_invalid_ids_are_400(api: httpx.AsyncClient) -> None:
    assert_outcome(await api.get("/fhir/Patient/" + "x" * 65), 400)
    assert_outcome(await api.put("/fhir/Patient/bad_id", json=patient(id="bad_id")), 400)
