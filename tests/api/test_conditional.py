"""Conditional create/update/delete and optimistic locking with If-Match."""

from __future__ import annotations

import asyncio

import httpx

from tests.factories import MRN_SYSTEM, patient


async def test_conditional_create_creates_once_then_returns_the_match(api: httpx.AsyncClient) -> None:
    headers = {"If-None-Exist": f"identifier={MRN_SYSTEM}|K1"}
    first = await api.post("/fhir/Patient", json=patient("K1"), headers=headers)
    second = await api.post("/fhir/Patient", json=patient("K1"), headers=headers)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert (await api.get("/fhir/Patient", params={"identifier": "K1"})).json()["total"] == 1


async def test_conditional_create_with_several_matches_is_412(api: httpx.AsyncClient) -> None:
    await api.post("/fhir/Patient", json=patient("K2", gender="male"))
    await api.post("/fhir/Patient", json=patient("K3", gender="male"))
    answer = await api.post("/fhir/Patient", json=patient("K4"), headers={"If-None-Exist": "gender=male"})
    assert answer.status_code == 412


async def test_conditional_criteria_with_unknown_parameters_are_refused(api: httpx.AsyncClient) -> None:
    answer = await api.post(
        "/fhir/Patient", json=patient("K5"), headers={"If-None-Exist": "favourite-colour=red"}
    )
    assert answer.status_code == 400
    assert (await api.get("/fhir/Patient")).json()["total"] == 0


async def test_conditional_update_creates_then_updates_the_same_resource(api: httpx.AsyncClient) -> None:
    params = {"identifier": f"{MRN_SYSTEM}|K6"}
    created = await api.put("/fhir/Patient", params=params, json=patient("K6"))
    assert created.status_code == 201
    updated = await api.put("/fhir/Patient", params=params, json=patient("K6", gender="other"))
    assert updated.status_code == 200
    assert updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"


async def test_conditional_delete(api: httpx.AsyncClient) -> None:
    created = (await api.post("/fhir/Patient", json=patient("K7"))).json()
    answer = await api.delete("/fhir/Patient", params={"identifier": "K7"})
    assert answer.status_code == 204
    assert (await api.get(f"/fhir/Patient/{created['id']}")).status_code == 410


async def test_if_match_refuses_a_stale_version(api: httpx.AsyncClient) -> None:
    created = (await api.post("/fhir/Patient", json=patient("K8"))).json()
    url = f"/fhir/Patient/{created['id']}"
    ok = await api.put(url, json={**created, "gender": "male"}, headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = await api.put(url, json={**created, "gender": "other"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert (await api.delete(url, headers={"If-Match": 'W/"1"'})).status_code == 412
    assert (await api.get(url)).json()["gender"] == "male"


async def test_two_concurrent_updates_with_the_same_if_match_have_one_winner(api: httpx.AsyncClient) -> None:
    created = (await api.post("/fhir/Patient", json=patient("K9"))).json()
    url = f"/fhir/Patient/{created['id']}"
    answers = await asyncio.gather(
        api.put(url, json={**created, "gender": "male"}, headers={"If-Match": 'W/"1"'}),
        api.put(url, json={**created, "gender": "other"}, headers={"If-Match": 'W/"1"'}),
    )
    assert sorted(a.status_code for a in answers) == [200, 412]
    winner = next(a for a in answers if a.status_code == 200).json()
    current = (await api.get(url)).json()
    assert current["gender"] == winner["gender"]
    assert current["meta"]["versionId"] == "2"


async def test_malformed_if_match_is_400(api: httpx.AsyncClient) -> None:
    created = (await api.post("/fhir/Patient", json=patient("K10"))).json()
    answer = await api.put(f"/fhir/Patient/{created['id']}", json=created, headers={"If-Match": "yesterday"})
    assert answer.status_code == 400
