"""Each topic fires on what it promises, whatever the source of the write (REST or HL7 v2), and not otherwise.

Events are read back from the outbox with `$events`, so these tests need no delivery and no waiting.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.adapters.hl7v2.identity import stable_id
from gateway.service.gateway import Gateway
from gateway.service.hl7.pipeline import Source
from tests import factories as f
from tests.hl7_messages import ack_code, anc_oru, compound_rde, obx, oru, rde

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def subscribe(api: httpx.AsyncClient, topic: str, *filters: str) -> str:
    answer = await api.post(
        "/fhir/Subscription", json=f.subscription(topic, "http://127.0.0.1:9/unused", filters=filters)
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def events(api: httpx.AsyncClient, sub_id: str) -> list[dict[str, Any]]:
    """Each event of the subscription as {number, focus, detail: {...}}."""
    bundle = (await api.get(f"/fhir/Subscription/{sub_id}/$events")).json()
    found = []
    for p in bundle["entry"][0]["resource"]["parameter"]:
        if p["name"] != "notification-event":
            continue
        parts = {x["name"]: x for x in p["part"]}
        detail = {
            e["url"]: e["valueString"] for ext in p.get("extension", []) for e in ext.get("extension", [])
        }
        found.append(
            {
                "number": int(parts["event-number"]["valueString"]),
                "focus": parts["focus"]["valueReference"]["reference"].split("/fhir/", 1)[-1],
                "context": [
                    x["valueReference"]["reference"].split("/fhir/", 1)[-1]
                    for x in p["part"]
                    if x["name"] == "additional-context"
                ],
                "detail": detail,
            }
        )
    return found


async def test_medication_monitoring_names_drug_rule_and_action_from_hl7_feeds(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    clozapine = await subscribe(api, "medication-monitoring", "medication=clozapine-anc")
    unfiltered = await subscribe(api, "medication-monitoring")
    other_drug = await subscribe(api, "medication-monitoring", "medication=methotrexate-liver")
    # An ANC result before any order: nothing to monitor yet.
    result = await gateway.pipeline.submit(anc_oru("MM-0", "MM-MRN", "1.2"), Source("http"))
    assert result.code == "AA"
    assert await events(api, unfiltered) == []
    order = await gateway.pipeline.submit(rde("MM-1", "MM-MRN"), Source("http"))
    assert order.code == "AA", order.ack
    ack = await gateway.pipeline.submit(anc_oru("MM-2", "MM-MRN", "1.1", placer="ORD2"), Source("http"))
    assert ack_code(ack.ack) == "AA"
    fired = await events(api, clozapine)
    assert len(fired) == 1
    event = fired[0]
    assert event["focus"].startswith("Observation/")
    assert event["context"][0].startswith("MedicationRequest/")
    detail = {k.rsplit("/", 1)[-1]: v for k, v in event["detail"].items()}
    assert detail["drug"].lower().startswith("clozapine")
    assert detail["rule"] == "clozapine-anc"
    assert "1500" in detail["band"] and "1000" not in detail["band"]  # 1100/uL: monitor, not interrupt
    assert detail["action"]
    assert len(await events(api, unfiltered)) == 1
    assert await events(api, other_drug) == []


async def test_medication_monitoring_finds_the_drug_in_a_compound_orders_medication(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    # The order's own code (RXE-2) is a compound's; clozapine is one of its components (RXC), which the
    # referenced Medication carries as an ingredient.
    clozapine = await subscribe(api, "medication-monitoring", "medication=clozapine-anc")
    order = await gateway.pipeline.submit(compound_rde("CM-1", "CM-MRN"), Source("http"))
    assert order.code == "AA", order.ack
    result = await gateway.pipeline.submit(anc_oru("CM-2", "CM-MRN", "0.4"), Source("http"))
    assert result.code == "AA", result.ack
    (event,) = await events(api, clozapine)
    assert event["context"] == [f"MedicationRequest/{stable_id('MedicationRequest', 'EHR', 'RX6001')}"]
    detail = {k.rsplit("/", 1)[-1]: v for k, v in event["detail"].items()}
    assert detail["rule"] == "clozapine-anc" and detail["severity"] == "critical"


async def test_medication_order_fires_for_a_compound_order(gateway: Gateway, api: httpx.AsyncClient) -> None:
    every_order = await subscribe(api, "medication-order")
    order = await gateway.pipeline.submit(compound_rde("CO-1", "CO-MRN"), Source("http"))
    assert order.code == "AA", order.ack
    (event,) = await events(api, every_order)
    assert event["focus"] == f"MedicationRequest/{stable_id('MedicationRequest', 'EHR', 'RX6001')}"


@pytest.mark.parametrize(
    "criteria",
    ["code=CMPD-101", f"medication=Medication/{stable_id('Medication', 'EHR', 'RX6001')}"],
    ids=["product-code", "medication-reference"],
)
async def test_medication_order_filters_find_a_compound_order(
    gateway: Gateway, api: httpx.AsyncClient, criteria: str
) -> None:
    filtered = await subscribe(api, "medication-order", criteria)
    order = await gateway.pipeline.submit(compound_rde("CF-1", "CF-MRN"), Source("http"))
    assert order.code == "AA", order.ack
    assert len(await events(api, filtered)) == 1


async def test_medication_order_fires_on_create_and_status_change_only(api: httpx.AsyncClient) -> None:
    sub_id = await subscribe(api, "medication-order", "status=active,stopped")
    patient_id = (await api.post("/fhir/Patient", json=f.patient())).json()["id"]
    created = (await api.post("/fhir/MedicationRequest", json=f.medication_request(patient_id))).json()
    note = {**created, "note": [{"text": "take with food"}]}
    assert (await api.put(f"/fhir/MedicationRequest/{created['id']}", json=note)).status_code == 200
    stopped = {**note, "status": "stopped"}
    assert (await api.put(f"/fhir/MedicationRequest/{created['id']}", json=stopped)).status_code == 200
    fired = await events(api, sub_id)
    assert [e["number"] for e in fired] == [1, 2]
    statuses = [{k.rsplit("/", 1)[-1]: v for k, v in e["detail"].items()}.get("status") for e in fired]
    assert statuses == ["active", "stopped"]


async def test_pa_status_changes_fire_by_business_status_filter(api: httpx.AsyncClient) -> None:
    approved_only = await subscribe(api, "pa-status-changed", "business-status=approved")
    every_change = await subscribe(api, "pa-status-changed")
    patient_id = (await api.post("/fhir/Patient", json=f.patient())).json()["id"]
    request_id = (await api.post("/fhir/MedicationRequest", json=f.medication_request(patient_id))).json()[
        "id"
    ]
    task = (await api.post("/fhir/Task", json=f.pa_task(patient_id, request_id))).json()
    pended = {**task, "status": "in-progress", "businessStatus": _business("pended")}
    await api.put(f"/fhir/Task/{task['id']}", json=pended)
    same_again = {**pended, "note": [{"text": "payer called"}]}
    await api.put(f"/fhir/Task/{task['id']}", json=same_again)
    approved = {**same_again, "status": "completed", "businessStatus": _business("approved")}
    await api.put(f"/fhir/Task/{task['id']}", json=approved)
    assert len(await events(api, every_change)) == 3  # created, pended, approved (the note changes nothing)
    only = await events(api, approved_only)
    assert len(only) == 1 and only[0]["focus"] == f"Task/{task['id']}"


def _business(code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{f.GATEWAY}/CodeSystem/pa-business-status", "code": code}]}


async def test_pa_expiring_timer_fires_once_per_authorization(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    sub_id = await subscribe(api, "pa-expiring")
    patient_id = (await api.post("/fhir/Patient", json=f.patient())).json()["id"]
    request_id = (await api.post("/fhir/MedicationRequest", json=f.medication_request(patient_id))).json()[
        "id"
    ]
    today = datetime.now(UTC).date()
    soon, later = (today + timedelta(days=5)).isoformat(), (today + timedelta(days=90)).isoformat()
    for end in (soon, later):
        task = f.pa_task(patient_id, request_id, status="completed", business_status="approved")
        task["restriction"] = {"period": {"start": today.isoformat(), "end": end}}
        assert (await api.post("/fhir/Task", json=task)).status_code == 201
    denied = f.pa_task(patient_id, request_id, status="completed", business_status="denied")
    denied["restriction"] = {"period": {"end": soon}}
    await api.post("/fhir/Task", json=denied)
    await gateway.payer_worker.run_once()
    await gateway.payer_worker.run_once()  # not again for the same authorization period
    fired = await events(api, sub_id)
    assert len(fired) == 1
    detail = {k.rsplit("/", 1)[-1]: v for k, v in fired[0]["detail"].items()}
    assert detail["daysLeft"] in ("4", "5") and detail["periodEnd"].startswith(soon)


async def test_critical_results_from_flags_and_thresholds(gateway: Gateway, api: httpx.AsyncClient) -> None:
    sub_id = await subscribe(api, "critical-lab-result")
    flagged = oru("CR-1", "CR-MRN", [obx(1, "751-8", "0.3", flag="LL", name="Neutrophils")], placer="CR1")
    by_value = oru(
        "CR-2",
        "CR-MRN",
        [obx(1, "2823-3", "7.2", units="mmol/L^^UCUM", range_="3.5-5.1", flag="H")],
        placer="CR2",
    )
    merely_high = oru(
        "CR-3",
        "CR-MRN",
        [obx(1, "2823-3", "5.4", units="mmol/L^^UCUM", range_="3.5-5.1", flag="H")],
        placer="CR3",
    )
    for message in (flagged, by_value, merely_high):
        assert (await gateway.pipeline.submit(message, Source("http"))).code == "AA"
    fired = await events(api, sub_id)
    assert len(fired) == 2
    reasons = [{k.rsplit("/", 1)[-1]: v for k, v in e["detail"].items()}["reason"] for e in fired]
    assert "LL" in reasons[0] and "6.5" in reasons[1]


async def test_event_numbers_continue_across_a_deleted_and_recreated_focus(api: httpx.AsyncClient) -> None:
    sub_id = await subscribe(api, "abnormal-lab-result")
    patient_id = (await api.post("/fhir/Patient", json=f.patient())).json()["id"]
    observation = f.lab_observation(patient_id, interpretation=[{"coding": [{"code": "H"}]}])
    created = (await api.post("/fhir/Observation", json=observation)).json()
    await api.delete(f"/fhir/Observation/{created['id']}")
    await api.put(f"/fhir/Observation/{created['id']}", json={**observation, "id": created["id"]})
    assert [e["number"] for e in await events(api, sub_id)] == [1, 2]


async def test_deleted_or_off_subscriptions_stop_collecting_and_a_failed_transaction_registers_nothing(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    deleted = await subscribe(api, "abnormal-lab-result")
    off = await subscribe(api, "abnormal-lab-result")
    kept = await subscribe(api, "abnormal-lab-result")
    resource = (await api.get(f"/fhir/Subscription/{off}")).json()
    assert (await api.put(f"/fhir/Subscription/{off}", json={**resource, "status": "off"})).status_code == 200
    assert (await api.delete(f"/fhir/Subscription/{deleted}")).status_code == 204
    failed = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": f.subscription("abnormal-lab-result", "http://127.0.0.1:9/x"),
                "request": {"method": "POST", "url": "Subscription"},
            },
            {
                "resource": {"resourceType": "Observation"},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    assert (await api.post("/fhir", json=failed)).status_code in (400, 422)
    assert set(gateway.subscriptions.index.specs) == {kept}
    patient_id = (await api.post("/fhir/Patient", json=f.patient())).json()["id"]
    observation = f.lab_observation(patient_id, interpretation=[{"coding": [{"code": "H"}]}])
    await api.post("/fhir/Observation", json=observation)
    assert len(await events(api, kept)) == 1
    assert await events(api, off) == []
    assert (await api.get(f"/fhir/Subscription/{deleted}/$status")).status_code == 404
