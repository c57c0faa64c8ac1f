"""Create, read, vread, update, delete and history through the HTTP API, on both backends."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.service.gateway import Gateway
from tests.factories import lab_observation, patient


async def create(api: httpx.AsyncClient, resource: dict) -> dict:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def test_create_assigns_id_version_and_location(api: httpx.AsyncClient) -> None:
    answer = await api.post("/fhir/Patient", json=patient("A1", id="client-chosen"))
    assert answer.status_code == 201
    body = answer.json()
    assert body["id"] != "client-chosen"  # the server assigns ids on create
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert answer.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert answer.headers["etag"] == 'W/"1"'
    assert answer.headers["content-type"].startswith("application/fhir+json")


async def test_read_returns_resource_with_etag_and_last_modified(api: httpx.AsyncClient) -> None:
    created = await create(api, patient("A2"))
    answer = await api.get(f"/fhir/Patient/{created['id']}")
    assert answer.status_code == 200
    assert answer.json() == created
    assert answer.headers["etag"] == 'W/"1"'
    assert answer.headers["last-modified"].endswith("GMT")


async def test_last_modified_is_the_versions_own_second(api: httpx.AsyncClient) -> None:
    from datetime import datetime
    from email.utils import parsedate_to_datetime

    for n in range(3):  # versions a moment apart: none may get another's remembered date
        created = await create(api, patient(f"LM{n}"))
        answer = await api.get(f"/fhir/Patient/{created['id']}")
        updated = datetime.fromisoformat(created["meta"]["lastUpdated"].replace("Z", "+00:00"))
        assert parsedate_to_datetime(answer.headers["last-modified"]) == updated.replace(microsecond=0)


async def test_the_base_in_links_follows_the_host_the_client_named(api: httpx.AsyncClient) -> None:
    created = await create(api, patient("HOST1"))
    for host in ("one.example", "two.example:8443", "one.example"):
        answer = await api.get("/fhir/Patient", params={"_id": created["id"]}, headers={"Host": host})
        bundle = answer.json()
        assert bundle["entry"][0]["fullUrl"] == f"http://{host}/fhir/Patient/{created['id']}"
        assert bundle["link"][0]["url"].startswith(f"http://{host}/fhir/Patient?")


async def test_read_of_unknown_id_is_404_operation_outcome(api: httpx.AsyncClient) -> None:
    answer = await api.get("/fhir/Patient/does-not-exist")
    assert answer.status_code == 404
    assert answer.json()["resourceType"] == "OperationOutcome"


async def test_update_makes_a_new_version_and_keeps_the_old_one(api: httpx.AsyncClient) -> None:
    created = await create(api, patient("A3"))
    changed = {**created, "gender": "male"}
    answer = await api.put(f"/fhir/Patient/{created['id']}", json=changed)
    assert answer.status_code == 200
    assert answer.json()["meta"]["versionId"] == "2"
    assert answer.json()["gender"] == "male"
    old = await api.get(f"/fhir/Patient/{created['id']}/_history/1")
    assert old.status_code == 200
    assert old.json()["gender"] == "female"
    assert old.json()["meta"]["versionId"] == "1"


async def test_update_without_changes_keeps_the_version(api: httpx.AsyncClient) -> None:
    created = await create(api, patient("A4"))
    answer = await api.put(f"/fhir/Patient/{created['id']}", json=created)
    assert answer.status_code == 200
    assert answer.json()["meta"]["versionId"] == "1"


async def test_update_of_unknown_id_creates_it(api: httpx.AsyncClient) -> None:
    answer = await api.put("/fhir/Patient/chosen-id-1", json=patient("A5", id="chosen-id-1"))
    assert answer.status_code == 201
    assert answer.json()["id"] == "chosen-id-1"
    assert (await api.get("/fhir/Patient/chosen-id-1")).status_code == 200


async def test_update_with_mismatched_id_is_refused(api: httpx.AsyncClient) -> None:
    answer = await api.put("/fhir/Patient/one", json=patient("A6", id="two"))
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["expression"] == ["Patient.id"]


async def test_delete_then_read_is_gone_but_history_remains(api: httpx.AsyncClient) -> None:
    created = await create(api, patient("A7"))
    assert (await api.delete(f"/fhir/Patient/{created['id']}")).status_code == 204
    assert (await api.get(f"/fhir/Patient/{created['id']}")).status_code == 410
    assert (await api.get(f"/fhir/Patient/{created['id']}/_history/1")).status_code == 200
    assert (await api.get(f"/fhir/Patient/{created['id']}/_history/2")).status_code == 410
    # deleting again is harmless
    assert (await api.delete(f"/fhir/Patient/{created['id']}")).status_code == 204


async def test_delete_of_unknown_id_is_404(api: httpx.AsyncClient) -> None:
    assert (await api.delete("/fhir/Patient/never-was")).status_code == 404


async def test_update_after_delete_revives_the_resource(api: httpx.AsyncClient) -> None:
    created = await create(api, patient("A8"))
    await api.delete(f"/fhir/Patient/{created['id']}")
    answer = await api.put(f"/fhir/Patient/{created['id']}", json=created)
    assert answer.status_code == 201
    assert answer.json()["meta"]["versionId"] == "3"


async def test_instance_history_lists_versions_newest_first(api: httpx.AsyncClient) -> None:
    created = await create(api, patient("A9"))
    await api.put(f"/fhir/Patient/{created['id']}", json={**created, "gender": "other"})
    await api.delete(f"/fhir/Patient/{created['id']}")
    answer = await api.get(f"/fhir/Patient/{created['id']}/_history")
    assert answer.status_code == 200
    bundle = answer.json()
    assert bundle["type"] == "history"
    assert bundle["total"] == 3
    methods = [e["request"]["method"] for e in bundle["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]
    assert "resource" not in bundle["entry"][0]
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']


async def test_type_history_pages_and_filters_by_since(api: httpx.AsyncClient) -> None:
    first = await create(api, patient("B1"))
    for mrn in ("B2", "B3"):
        await create(api, patient(mrn))
    page = (await api.get("/fhir/Patient/_history", params={"_count": "2"})).json()
    assert page["total"] == 3
    assert len(page["entry"]) == 2
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    rest = (await api.get(next_url)).json()
    assert len(rest["entry"]) == 1
    since = first["meta"]["lastUpdated"]
    newer = (await api.get("/fhir/Patient/_history", params={"_since": since})).json()
    assert newer["total"] == 3
    future = (await api.get("/fhir/Patient/_history", params={"_since": "2999-01-01"})).json()
    assert future["total"] == 0


async def test_prefer_return_minimal_and_operation_outcome(api: httpx.AsyncClient) -> None:
    minimal = await api.post("/fhir/Patient", json=patient("C1"), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert "location" in minimal.headers
    outcome = await api.post(
        "/fhir/Patient", json=patient("C2"), headers={"Prefer": "return=OperationOutcome"}
    )
    assert outcome.json()["resourceType"] == "OperationOutcome"


async def test_every_served_type_supports_create_and_read(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("D1"))
    minimal = {
        "Organization": {"resourceType": "Organization", "name": "Payer One"},
        "Practitioner": {"resourceType": "Practitioner", "name": [{"family": "Doe"}]},
        "Coverage": {
            "resourceType": "Coverage",
            "status": "active",
            "beneficiary": {"reference": f"Patient/{pat['id']}"},
            "payor": [{"reference": "Organization/payer-1"}],
        },
        "Provenance": {
            "resourceType": "Provenance",
            "target": [{"reference": f"Patient/{pat['id']}"}],
            "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": {"display": "lab feed"}}],
        },
        "Observation": lab_observation(pat["id"]),
    }
    for resource in minimal.values():
        created = await create(api, resource)
        read = await api.get(f"/fhir/{resource['resourceType']}/{created['id']}")
        assert read.status_code == 200


async def test_a_create_that_loses_a_race_in_what_it_derives_is_run_again(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    """Two results of one patient at once: the second's alert update can find the alert Task moved on by
    the first (a VersionConflict, seen as 500 under 16 concurrent creates). Nothing of the create was
    committed, so it is run again, as an update is; only a create that loses every time is a 409."""
    from gateway.store.resources import VersionConflict

    lost: list[int] = []

    async def loses_twice(conn: object, ctx: object, pending: list[Any], written: object) -> None:
        if len(lost) < 2 and any(p.type == "Observation" for p in pending):
            lost.append(1)
            raise VersionConflict("an alert Task changed concurrently")

    gateway.fhir.write_observers.append(loses_twice)
    try:
        patient_id = (await create(api, patient("RACE1")))["id"]
        answer = await api.post("/fhir/Observation", json=lab_observation(patient_id))
        assert answer.status_code == 201, answer.text
        assert len(lost) == 2
        found = (await api.get("/fhir/Observation", params={"patient": patient_id})).json()
        assert found["total"] == 1  # the lost attempts left nothing behind
        always = [0]

        async def loses_always(conn: object, ctx: object, pending: object, written: object) -> None:
            always[0] += 1
            raise VersionConflict("an alert Task changed concurrently")

        gateway.fhir.write_observers.append(loses_always)
        try:
            answer = await api.post("/fhir/Observation", json=lab_observation(patient_id))
        finally:
            gateway.fhir.write_observers.remove(loses_always)
        assert answer.status_code == 409 and answer.json()["resourceType"] == "OperationOutcome"
        assert always[0] > 1
    finally:
        gateway.fhir.write_observers.remove(loses_twice)
