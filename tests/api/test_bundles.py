"""Transaction (all or nothing) and batch Bundles."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.service.gateway import Gateway
from tests.factories import MRN_SYSTEM, lab_observation, patient

PATIENT_URN = "urn:uuid:7f1b2a3c-0000-4000-8000-000000000001"


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


async def count(api: httpx.AsyncClient, rtype: str) -> int:
    return int((await api.get(f"/fhir/{rtype}", params={"_summary": "count"})).json()["total"])


async def test_transaction_resolves_urn_uuid_references(api: httpx.AsyncClient) -> None:
    bundle = transaction(
        post(lab_observation("placeholder", subject={"reference": PATIENT_URN})),
        post(patient("T1"), PATIENT_URN),
    )
    answer = await api.post("/fhir", json=bundle)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created", "201 Created"]
    patient_id = result["entry"][1]["resource"]["id"]
    assert result["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
    found = (await api.get("/fhir/Observation", params={"patient": patient_id})).json()
    assert found["total"] == 1


async def test_transaction_with_one_invalid_entry_changes_nothing(api: httpx.AsyncClient) -> None:
    bad = lab_observation("x", subject={"reference": PATIENT_URN})
    bad["status"] = 17  # not a code
    bundle = transaction(post(patient("T2"), PATIENT_URN), post(bad))
    answer = await api.post("/fhir", json=bundle)
    assert answer.status_code == 422
    (issue,) = [i for i in answer.json()["issue"] if i["severity"] == "error"]  # others: dom-6 warnings
    assert issue["expression"] == ["Bundle.entry[1].resource.status"]
    assert await count(api, "Patient") == 0
    assert await count(api, "Observation") == 0


async def test_transaction_failing_a_precondition_rolls_back_earlier_writes(api: httpx.AsyncClient) -> None:
    existing = (await api.post("/fhir/Patient", json=patient("T3"))).json()
    bundle = transaction(
        post(patient("T4")),
        {
            "resource": {**existing, "gender": "male"},
            "request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"9"'},
        },
    )
    answer = await api.post("/fhir", json=bundle)
    assert answer.status_code == 412
    assert "Bundle.entry[1]" in answer.json()["issue"][0]["diagnostics"]
    assert await count(api, "Patient") == 1
    assert (await api.get(f"/fhir/Patient/{existing['id']}")).json()["meta"]["versionId"] == "1"


async def test_transaction_conditional_create_and_conditional_reference(api: httpx.AsyncClient) -> None:
    existing = (await api.post("/fhir/Patient", json=patient("T5"))).json()
    bundle = transaction(
        post(patient("T5"), PATIENT_URN, ifNoneExist=f"identifier={MRN_SYSTEM}|T5"),
        post(lab_observation("x", subject={"reference": PATIENT_URN})),
        post(lab_observation("x", subject={"reference": f"Patient?identifier={MRN_SYSTEM}|T5"})),
    )
    answer = await api.post("/fhir", json=bundle)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[1]["resource"]["subject"]["reference"] == f"Patient/{existing['id']}"
    assert entries[2]["resource"]["subject"]["reference"] == f"Patient/{existing['id']}"
    assert await count(api, "Patient") == 1


async def test_transaction_unresolvable_conditional_reference_is_refused(api: httpx.AsyncClient) -> None:
    bundle = transaction(post(lab_observation("x", subject={"reference": "Patient?identifier=nobody"})))
    answer = await api.post("/fhir", json=bundle)
    assert answer.status_code == 412
    assert await count(api, "Observation") == 0


async def test_transaction_changing_one_resource_twice_is_refused(api: httpx.AsyncClient) -> None:
    put = {"resource": patient("T6", id="same"), "request": {"method": "PUT", "url": "Patient/same"}}
    answer = await api.post("/fhir", json=transaction(put, put))
    assert answer.status_code == 400


async def test_transaction_runs_deletes_before_creates_and_reads_last(api: httpx.AsyncClient) -> None:
    old = (await api.post("/fhir/Patient", json=patient("T7"))).json()
    bundle = transaction(
        {"request": {"method": "GET", "url": "Patient?identifier=T8"}},
        post(patient("T8")),
        {"request": {"method": "DELETE", "url": f"Patient/{old['id']}"}},
    )
    answer = await api.post("/fhir", json=bundle)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    assert entries[0]["resource"]["total"] == 1  # the GET ran after the POST
    assert entries[2]["response"]["status"] == "204 No Content"


async def test_batch_entries_succeed_or_fail_on_their_own(api: httpx.AsyncClient) -> None:
    bad = lab_observation("x")
    bad["status"] = 17
    bundle = transaction(
        post(patient("B1")),
        post(bad),
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        kind="batch",
    )
    answer = await api.post("/fhir", json=bundle)
    assert answer.status_code == 200
    statuses = [e["response"]["status"] for e in answer.json()["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "404 Not Found"]
    assert answer.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert await count(api, "Patient") == 1


async def test_only_transaction_and_batch_bundles_are_accepted(api: httpx.AsyncClient) -> None:
    answer = await api.post("/fhir", json={"resourceType": "Bundle", "type": "collection", "entry": []})
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["expression"] == ["Bundle.type"]
    answer = await api.post("/fhir", json={"resourceType": "Patient"})
    assert answer.status_code == 400


@pytest.mark.parametrize("method", [["POST"], {"POST": 1}, 1, None])
async def test_an_entry_whose_method_is_not_a_string_is_a_400(api: httpx.AsyncClient, method: Any) -> None:
    """Found by fuzzing: a list or an object there was a 500."""
    entry = {"resource": {"resourceType": "Patient"}, "request": {"method": method, "url": "Patient"}}
    answer = await api.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["expression"] == ["Bundle.entry[0].request"]
    assert await count(api, "Patient") == 0


# --- bounded: entries per Bundle and the size of a batch's answer ---------------------------------------


def get(url: str) -> dict[str, Any]:
    return {"request": {"method": "GET", "url": url}}


@pytest.mark.parametrize("kind", ["batch", "transaction"])
async def test_a_bundle_over_the_entry_cap_is_refused_whole(api: httpx.AsyncClient, kind: str) -> None:
    entries = [post(patient(f"CAP-{n}")) for n in range(501)]
    answer = await api.post("/fhir", json=transaction(*entries, kind=kind))
    assert answer.status_code == 413, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "501 entries" in outcome["issue"][0]["diagnostics"] and "500" in outcome["issue"][0]["diagnostics"]
    assert await count(api, "Patient") == 0


async def test_a_bundle_at_the_entry_cap_is_served(api: httpx.AsyncClient) -> None:
    answer = await api.post("/fhir", json=transaction(*[get("Patient?_count=1")] * 500, kind="batch"))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["entry"]) == 500


@pytest.fixture
def small_response_budget(gateway: Gateway) -> Iterator[int]:
    budget = 20_000
    original = gateway.bundles.max_response_bytes
    gateway.bundles.max_response_bytes = budget
    yield budget
    gateway.bundles.max_response_bytes = original


async def test_a_batch_answer_stays_within_the_response_budget(
    api: httpx.AsyncClient, small_response_budget: int
) -> None:
    for n in range(10):
        assert (await api.post("/fhir/Patient", json=patient(f"BIG-{n}"))).status_code == 201
    answer = await api.post("/fhir", json=transaction(*[get("Patient?_count=10")] * 40, kind="batch"))
    assert answer.status_code == 200
    assert len(answer.content) < small_response_budget + 40 * 1000  # entries past the budget are short
    entries = answer.json()["entry"]
    assert len(entries) == 40
    statuses = [e["response"]["status"] for e in entries]
    assert statuses[0] == "200 OK" and statuses[-1].startswith("413")
    refused = entries[-1]["response"]["outcome"]["issue"][0]
    assert refused["code"] == "too-costly" and "response" in refused["diagnostics"]


async def test_a_transaction_whose_reads_exceed_the_budget_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, small_response_budget: int
) -> None:
    for n in range(10):
        assert (await api.post("/fhir/Patient", json=patient(f"TXBIG-{n}"))).status_code == 201
    bundle = transaction(post(patient("TX-NEW")), *[get("Patient?_count=10")] * 40)
    answer = await api.post("/fhir", json=bundle)
    assert answer.status_code == 413, answer.text
    assert await count(api, "Patient") == 10
