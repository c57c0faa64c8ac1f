"""Decimals keep their written precision through storage and every API response, on both backends.

A lab result written `7.20` comes back `7.20`, never `7.2`. Every assertion here is on the raw response
bytes (`response.content`): parsing them again (`.json()`) would turn the literals back into floats.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest

from gateway.fhir import jsonio
from gateway.service.gateway import Gateway
from tests import factories as f
from tests.api.conftest import Order
from tests.api.test_prior_auth import request_pa
from tests.api.test_subscriptions import subscribe, wait_active
from tests.conftest import ClientFactory
from tests.payer_standin import PayerStandIn
from tests.receiver import Receiver

pytestmark = pytest.mark.asyncio(loop_scope="session")

REPRESENTATION = {"Prefer": "return=representation"}
PRECISION = "http://example.org/fhir/StructureDefinition/precision-test"
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"

# Markers in a resource built as a dict, replaced by the literal a sender wrote.
LITERALS = {
    "@value@": b"7.20",  # trailing zero: three significant figures
    "@low@": b"0.100",
    "@high@": b"1.0E3",  # an exponent: two significant figures
    "@component@": b"-0.0",  # a negative zero
    "@big@": b"123456789012345678901234567890",  # beyond 64 bits: orjson would make it a float
    "@extension@": b"2.50",  # a decimal in an extension
}
# What each literal looks like in a response, where it must be found exactly.
WRITTEN = [
    b'"value":7.20',
    b'"value":0.100',
    b'"value":1.0E3',
    b'"value":-0.0',
    b'"valueDecimal":123456789012345678901234567890',
    b'"valueDecimal":2.50',
]


def as_written(resource: dict[str, Any]) -> bytes:
    """The resource as JSON bytes with every marker replaced by its literal."""
    text = orjson.dumps(resource)
    for marker, literal in LITERALS.items():
        text = text.replace(b'"' + marker.encode() + b'"', literal)
    return text


def observation(patient_id: str, **extra: Any) -> dict[str, Any]:
    return f.lab_observation(
        patient_id,
        code="2823-3",
        value="@value@",  # type: ignore[arg-type]
        unit="mmol/L",
        referenceRange=[
            {"low": {"value": "@low@", "unit": "mmol/L"}, "high": {"value": "@high@", "unit": "mmol/L"}}
        ],
        component=[
            {
                "code": {"coding": [{"system": f.LOINC, "code": "2951-2"}]},
                "valueQuantity": {"value": "@component@", "unit": "mmol/L"},
            }
        ],
        extension=[
            {"url": f"{PRECISION}/big", "valueDecimal": "@big@"},
            {"url": f"{PRECISION}/decimal", "valueDecimal": "@extension@"},
        ],
        **extra,
    )


def assert_literals(body: bytes, times: int = 1) -> None:
    """Every literal is in `body` as written, `times` times (once per copy of the resource)."""
    for literal in WRITTEN:
        assert body.count(literal) == times, f"{literal!r} is there {body.count(literal)} times, not {times}"
    assert b"7.2," not in body and b"0.1," not in body and b"1000.0" not in body


async def make_patient(api: httpx.AsyncClient) -> str:
    answer = await api.post("/fhir/Patient", json=f.patient())
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def create(api: httpx.AsyncClient, body: bytes, resource_type: str = "Observation") -> httpx.Response:
    answer = await api.post(
        f"/fhir/{resource_type}",
        content=body,
        headers={"Content-Type": "application/fhir+json", **REPRESENTATION},
    )
    assert answer.status_code == 201, answer.text
    return answer


async def test_create_read_and_vread_give_back_the_literals(api: httpx.AsyncClient) -> None:
    patient_id = await make_patient(api)
    created = await create(api, as_written(observation(patient_id)))
    assert_literals(created.content)
    obs_id = created.json()["id"]
    assert_literals((await api.get(f"/fhir/Observation/{obs_id}")).content)
    assert_literals((await api.get(f"/fhir/Observation/{obs_id}/_history/1")).content)


async def test_update_and_history_give_back_the_literals(api: httpx.AsyncClient) -> None:
    patient_id = await make_patient(api)
    obs_id = (await create(api, as_written(observation(patient_id)))).json()["id"]
    body = as_written({**observation(patient_id, status="amended"), "id": obs_id})
    updated = await api.put(f"/fhir/Observation/{obs_id}", content=body, headers=REPRESENTATION)
    assert updated.status_code == 200, updated.text
    assert b'"versionId":"2"' in updated.content
    assert_literals(updated.content)
    assert_literals((await api.get(f"/fhir/Observation/{obs_id}/_history")).content, times=2)
    assert_literals((await api.get("/fhir/Observation/_history")).content, times=2)


async def test_an_update_that_only_changes_precision_is_a_new_version(api: httpx.AsyncClient) -> None:
    patient_id = await make_patient(api)
    obs_id = (await create(api, as_written(observation(patient_id)))).json()["id"]
    body = as_written({**observation(patient_id), "id": obs_id})
    same = await api.put(f"/fhir/Observation/{obs_id}", content=body, headers=REPRESENTATION)
    assert same.status_code == 200 and b'"versionId":"1"' in same.content  # the same content: no version
    # The lab corrects the precision of its result: 7.20 becomes 7.2 (equal as numbers).
    corrected = await api.put(
        f"/fhir/Observation/{obs_id}", content=body.replace(b"7.20", b"7.2"), headers=REPRESENTATION
    )
    assert corrected.status_code == 200 and b'"versionId":"2"' in corrected.content
    assert b'"value":7.2,' in corrected.content
    # Key order is not content: the same resource written differently makes no version either.
    reordered = jsonio.dumps(dict(reversed(list(jsonio.loads(corrected.content).items()))))
    again = await api.put(f"/fhir/Observation/{obs_id}", content=reordered, headers=REPRESENTATION)
    assert again.status_code == 200 and b'"versionId":"2"' in again.content


async def test_search_and_include_give_back_the_literals(api: httpx.AsyncClient) -> None:
    patient = {
        **f.patient(),
        "extension": [{"url": f"{PRECISION}/weight", "valueDecimal": "@extension@"}],
    }
    patient_id = (await create(api, as_written(patient), "Patient")).json()["id"]
    await create(api, as_written(observation(patient_id)))
    found = await api.get(
        "/fhir/Observation", params={"subject": f"Patient/{patient_id}", "_include": "Observation:subject"}
    )
    assert found.status_code == 200, found.text
    assert_literals(found.content.replace(b'"valueDecimal":2.50', b"", 1))  # the Patient's is extra
    assert found.content.count(b'"valueDecimal":2.50') == 2
    assert found.content.count(b'"search":{"mode":"include"}') == 1


async def test_conditional_create_gives_back_the_literals(api: httpx.AsyncClient) -> None:
    patient_id = await make_patient(api)
    identifier = str(uuid.uuid4())
    body = as_written(observation(patient_id, identifier=[{"system": "urn:test", "value": identifier}]))
    headers = {**REPRESENTATION, "If-None-Exist": f"identifier=urn:test|{identifier}"}
    first = await api.post("/fhir/Observation", content=body, headers=headers)
    assert first.status_code == 201, first.text
    assert_literals(first.content)
    second = await api.post("/fhir/Observation", content=body, headers=headers)
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    assert_literals(second.content)


def _bundle(kind: str, patient_id: str, obs_id: str) -> bytes:
    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": observation(patient_id),
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "fullUrl": f"Observation/{obs_id}",
            "resource": {**observation(patient_id, status="amended"), "id": obs_id},
            "request": {"method": "PUT", "url": f"Observation/{obs_id}"},
        },
        {"request": {"method": "GET", "url": f"Observation/{obs_id}"}},
    ]
    return as_written({"resourceType": "Bundle", "type": kind, "entry": entries})


@pytest.mark.parametrize("kind", ["transaction", "batch"])
async def test_transaction_and_batch_give_back_the_literals(api: httpx.AsyncClient, kind: str) -> None:
    patient_id = await make_patient(api)
    obs_id = (await create(api, as_written(observation(patient_id)))).json()["id"]
    answer = await api.post("/fhir", content=_bundle(kind, patient_id, obs_id), headers=REPRESENTATION)
    assert answer.status_code == 200, answer.text
    assert b'"type":"' + kind.encode() + b'-response"' in answer.content
    assert_literals(answer.content, times=3)  # the created, the updated, and the one read back
    created = orjson.loads(answer.content)["entry"][0]["response"]["location"].split("/_history")[0]
    assert_literals((await api.get(f"/fhir/{created}")).content)


async def test_full_resource_notifications_keep_the_literals(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub_id = await subscribe(api, f.subscription("abnormal-lab-result", receiver.url("/d")))
    await wait_active(api, sub_id)
    patient_id = await make_patient(api)
    abnormal = observation(
        patient_id,
        interpretation=[
            {
                "coding": [
                    {
                        "system": f"{TERMINOLOGY}/v3-ObservationInterpretation",
                        "code": "H",
                    }
                ]
            }
        ],
    )
    await create(api, as_written(abnormal))
    await receiver.until(lambda: receiver.events("/d"))
    note = receiver.events("/d")[0]
    assert note.signed_with(f.SECRET)
    assert_literals(note.body)
    replay = await api.get(f"/fhir/Subscription/{sub_id}/$events", params={"content": "full-resource"})
    assert replay.status_code == 200, replay.text
    assert_literals(replay.content)


async def test_a_pa_request_sends_and_answers_keep_the_literals(
    api: httpx.AsyncClient, client_factory: ClientFactory, order: Order, payer: PayerStandIn
) -> None:
    request = f.medication_request(
        order.patient,
        requester={"reference": f"Practitioner/{order.prescriber}"},
        dispenseRequest={"quantity": {"value": "@extension@", "unit": "mL"}},
    )
    request_id = (await create(api, as_written(request), "MedicationRequest")).json()["id"]
    payer.scenarios.append("pended")
    task = await request_pa(api, Order({**order.ids, "request": request_id}))
    sent = payer.on("$submit")[-1]
    assert b'"value":2.50' in sent.raw  # the MedicationRequest in the PAS Bundle, as written
    claim_id = next(
        i["valueReference"]["reference"] for i in task["input"] if i["type"]["coding"][0]["code"] == "claim"
    ).split("/")[1]
    # The payer's ClaimResponse is stored as received: its amounts as the payer wrote them.
    notification = payer.notification(claim_id, "approved")
    pas_response = notification["entry"][1]["resource"]  # the PAS response Bundle
    claim_response = pas_response["entry"][0]["resource"]
    assert claim_response["resourceType"] == "ClaimResponse"
    claim_response["total"] = [
        {
            "category": {"coding": [{"system": f"{TERMINOLOGY}/adjudication", "code": "submitted"}]},
            "amount": {"value": "@value@", "currency": "USD"},
        }
    ]
    payer_client = await client_factory("system/ClaimResponse.c")
    answer = await payer_client.post(
        "/payer/pas/notifications",
        content=as_written(notification),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert answer.status_code == 200, answer.text
    after = (await api.get(f"/fhir/Task/{task['id']}")).json()
    stored = next(
        o["valueReference"]["reference"]
        for o in after["output"]
        if o["type"]["coding"][0]["code"] == "claim-response"
    )
    assert b'"value":7.20' in (await api.get(f"/fhir/{stored}")).content
