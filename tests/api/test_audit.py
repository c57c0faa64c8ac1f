"""The audit trail: every read, search, write, HL7 v2 message, delivery attempt and token request leaves an
R4 AuditEvent (who, what, which patients, when, from where, outcome), readable at /fhir/AuditEvent by a
client holding `audit/events.read`. Both backends; real MLLP client, real subscriber endpoint."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from hl7.client import MLLPClient

from gateway.fhir import dates
from gateway.fhir.audit import AuditRecord
from gateway.service.gateway import Gateway
from gateway.transports.mllp.pipeline_handler import pipeline_handler
from gateway.transports.mllp.server import MLLPServer
from tests import factories as f
from tests.api.conftest import Order
from tests.conftest import ClientFactory
from tests.hl7_messages import AUTHORITY, ack_code, anc_oru
from tests.payer_standin import PayerStandIn
from tests.receiver import Receiver

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUDITOR = "audit/events.read"
AUDIT_TYPES = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
PATIENT_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"


def client_id(client: httpx.AsyncClient) -> str:
    token = client.headers["Authorization"].split(" ", 1)[1]
    return str(jwt.decode(token, options={"verify_signature": False})["client_id"])


async def trail(gateway: Gateway, auditor: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    """The AuditEvents matching `params`, once everything queued so far is written."""
    await gateway.audit.flush()
    answer = await auditor.get("/fhir/AuditEvent", params=params)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [e["resource"] for e in bundle.get("entry", [])]


async def eventually(
    gateway: Gateway, auditor: httpx.AsyncClient, found: Callable[[list[dict[str, Any]]], bool], **params: str
) -> list[dict[str, Any]]:
    """As `trail`, for events recorded by background work (MLLP, deliveries): waits until `found`."""
    deadline = time.monotonic() + 10
    while True:
        events = await trail(gateway, auditor, **params)
        if found(events) or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.05)


def whats(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", []) if "reference" in e.get("what", {})}


def patients(event: dict[str, Any]) -> set[str]:
    return {
        e["what"]["reference"]
        for e in event.get("entity", [])
        if e.get("role", {}).get("code") == "1" and "reference" in e.get("what", {})
    }


def queries(event: dict[str, Any]) -> list[str]:
    return [base64.b64decode(e["query"]).decode() for e in event.get("entity", []) if "query" in e]


def who(event: dict[str, Any]) -> str:
    return str(event["agent"][0]["who"]["identifier"]["value"])


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


async def created(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_a_failed_token_request_is_audited_as_a_failed_login(
    gateway: Gateway, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    registered = await gateway.auth.add_client(f"victim-{uuid.uuid4().hex[:6]}", "system/*.rs")
    refused = await auditor.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(registered.client_id, "not-the-secret"),
    )
    assert refused.status_code == 401
    granted = await auditor.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(registered.client_id, registered.client_secret or ""),
    )
    assert granted.status_code == 200

    events = await trail(gateway, auditor, agent=registered.client_id, type="110114")
    assert len(events) == 2
    for event in events:
        assert event["type"] == {"system": DCM, "code": "110114", "display": "User Authentication"}
        assert event["subtype"][0]["code"] == "110122"  # Login
        assert event["action"] == "E"
        assert who(event) == registered.client_id
        assert event["agent"][0]["network"]["address"] == "127.0.0.1"
        assert event["source"]["observer"]["display"]
    failed, succeeded = sorted(events, key=lambda e: e["outcome"], reverse=True)
    assert failed["outcome"] == "4" and "401" in failed["outcomeDesc"]
    assert succeeded["outcome"] == "0"
    # The secret is never part of an event.
    assert "not-the-secret" not in str(events) and (registered.client_secret or "?") not in str(events)


async def test_a_read_is_audited_with_the_patient_it_is_about(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    patient_id = await created(api, f.patient())
    obs_id = await created(api, f.lab_observation(patient_id))
    assert (await api.get(f"/fhir/Observation/{obs_id}")).status_code == 200

    events = await trail(gateway, auditor, agent=client_id(api), subtype="read")
    (event,) = [e for e in events if f"Observation/{obs_id}" in whats(e)]
    assert event["resourceType"] == "AuditEvent"
    assert event["type"]["system"] == AUDIT_TYPES and event["type"]["code"] == "rest"
    assert event["subtype"][0] == {
        "system": "http://hl7.org/fhir/restful-interaction",
        "code": "read",
        "display": "read",
    }
    assert event["action"] == "R" and event["outcome"] == "0"
    assert patients(event) == {f"Patient/{patient_id}"}
    assert who(event) == client_id(api)
    assert event["agent"][0]["requestor"] is True
    assert event["agent"][0]["network"] == {"address": "127.0.0.1", "type": "2"}
    recorded = dates.date_range(event["recorded"])[0]
    assert abs(recorded - dates.now_us()) < 60_000_000
    # The same event by patient and by entity, and as itself.
    by_patient = await trail(gateway, auditor, patient=f"Patient/{patient_id}", subtype="read")
    assert event["id"] in {e["id"] for e in by_patient}
    by_entity = await trail(gateway, auditor, entity=f"Observation/{obs_id}")
    assert event["id"] in {e["id"] for e in by_entity}
    single = await auditor.get(f"/fhir/AuditEvent/{event['id']}")
    assert single.status_code == 200 and single.json() == event
    assert (await auditor.get(f"/fhir/AuditEvent/{uuid.uuid4()}")).status_code == 404


async def test_a_refused_read_is_audited_as_a_failure(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    reader = await client_factory("system/Observation.rs")
    patient_id = await created(api, f.patient())
    assert (await reader.get(f"/fhir/Patient/{patient_id}")).status_code == 403
    assert (await reader.get(f"/fhir/Observation/{uuid.uuid4()}")).status_code == 404
    events = await trail(gateway, auditor, agent=client_id(reader), type="rest")
    outcomes = {(subtype(e), e["outcome"], e["outcomeDesc"]) for e in events}
    assert outcomes == {("read", "4", "HTTP 403"), ("read", "4", "HTTP 404")}
    (forbidden,) = [e for e in events if e["outcomeDesc"] == "HTTP 403"]
    assert patients(forbidden) == {f"Patient/{patient_id}"}


async def test_a_search_is_audited_with_its_query_and_patients(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    patient_id = await created(api, f.patient())
    await created(api, f.lab_observation(patient_id, code="751-8"))
    answer = await api.get("/fhir/Observation", params={"code": "751-8", "patient": patient_id})
    assert answer.json()["total"] == 1
    posted = await api.post(
        "/fhir/Observation/_search",
        data={"code": "751-8"},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert posted.status_code == 200

    events = await trail(gateway, auditor, agent=client_id(api), subtype="search-type")
    assert len(events) == 2
    by_query = {q: e for e in events for q in queries(e)}
    assert set(by_query) == {f"Observation?code=751-8&patient={patient_id}", "Observation?code=751-8"}
    for event in events:
        assert event["action"] == "R" and event["outcome"] == "0"
        assert patients(event) == {f"Patient/{patient_id}"}  # the results' patient
        query_entity = next(e for e in event["entity"] if "query" in e)
        assert query_entity["role"]["code"] == "24"
        assert query_entity["type"] == {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}


async def test_writes_are_audited_with_their_outcome(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    patient_id = await created(api, f.patient())
    obs_id = await created(api, f.lab_observation(patient_id))
    invalid = await api.post("/fhir/Observation", json={**f.lab_observation(patient_id), "status": "done"})
    assert invalid.status_code == 422
    assert (await api.delete(f"/fhir/Observation/{obs_id}")).status_code == 204
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": f.lab_observation(patient_id), "request": {"method": "POST", "url": "Observation"}}
        ],
    }
    assert (await api.post("/fhir", json=bundle)).status_code == 200

    events = await trail(gateway, auditor, agent=client_id(api))
    kinds = [(subtype(e), e["action"], e["outcome"]) for e in events]
    assert kinds.count(("create", "C", "0")) == 2  # the Patient and the Observation
    assert ("create", "C", "4") in kinds  # the invalid one
    assert ("delete", "D", "0") in kinds
    assert ("transaction", "E", "0") in kinds
    (made,) = [e for e in events if subtype(e) == "create" and f"Observation/{obs_id}" in whats(e)]
    assert patients(made) == {f"Patient/{patient_id}"}
    (deleted,) = [e for e in events if subtype(e) == "delete"]
    assert f"Observation/{obs_id}" in whats(deleted) and patients(deleted) == {f"Patient/{patient_id}"}
    (transaction,) = [e for e in events if subtype(e) == "transaction"]
    assert patients(transaction) == {f"Patient/{patient_id}"}
    assert any(w.startswith("Observation/") for w in whats(transaction))
    (patient_made,) = [e for e in events if subtype(e) == "create" and whats(e) == {f"Patient/{patient_id}"}]
    assert patients(patient_made) == {f"Patient/{patient_id}"}


async def test_hl7_over_http_is_audited_as_an_import(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    answer = await api.post("/hl7v2", content=anc_oru("AUD-1", "AUD-MRN-1").encode(), headers=ER7)
    assert ack_code(answer.text) == "AA"
    refused = await api.post("/hl7v2", content=b"MSH|^~\\&|broken", headers=ER7)
    assert ack_code(refused.text) == "AR"

    (patient,) = (
        await api.get("/fhir/Patient", params={"identifier": f"{PATIENT_SYSTEM}|AUD-MRN-1"})
    ).json()["entry"]
    patient_ref = f"Patient/{patient['resource']['id']}"
    events = await trail(gateway, auditor, agent=client_id(api), type=f"{DCM}|110107")
    assert len(events) == 2
    accepted, rejected = sorted(events, key=lambda e: e["outcome"])
    assert accepted["type"] == {"system": DCM, "code": "110107", "display": "Import"}
    assert accepted["action"] == "C" and accepted["outcome"] == "0" and accepted["outcomeDesc"] == "ACK AA"
    assert patients(accepted) == {patient_ref}
    assert whats(accepted) == {patient_ref}  # what it wrote is in its log entry and Provenance
    message = next(e for e in accepted["entity"] if "identifier" in e.get("what", {}))
    log = (await api.get("/hl7v2/messages")).json()["messages"]
    assert message["what"]["identifier"]["value"] in {m["id"] for m in log}
    assert rejected["outcome"] == "8" and rejected["outcomeDesc"] == "ACK AR"
    assert who(accepted) == client_id(api)
    # Not audited twice (once by HTTP, once by the pipeline).
    assert [
        e for e in await trail(gateway, auditor, patient=patient_ref) if e["type"]["code"] == "110107"
    ] == [accepted]


async def test_hl7_over_mllp_is_audited_with_the_peer_address(
    gateway: Gateway, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    server = MLLPServer(pipeline_handler(gateway.pipeline))
    await server.start("127.0.0.1", 0)
    try:

        def send() -> tuple[str, str]:
            with MLLPClient("127.0.0.1", server.port) as client:
                local = client.socket.getsockname()
                answer: bytes = client.send_message(anc_oru("AUD-M1", "AUD-MRN-M1"))
            return answer.decode(), f"{local[0]}:{local[1]}"

        ack, peer = await asyncio.to_thread(send)
    finally:
        await server.stop()
    assert ack_code(ack.strip("\x0b\x1c\r")) == "AA"
    events = await eventually(gateway, auditor, bool, agent=peer)
    (event,) = events
    assert event["type"]["code"] == "110107" and event["outcome"] == "0"
    assert event["agent"][0]["who"]["identifier"]["system"].endswith("mllp-peer")
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"
    assert len(patients(event)) == 1
    assert AUTHORITY not in str(event)  # identifiers and names of the patient stay out of the event


async def test_deliveries_are_audited_as_exports(
    delivering: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory, receiver: Receiver
) -> None:
    from tests.api.test_subscriptions import abnormal, subscribe, wait_active

    auditor = await client_factory(AUDITOR)
    sub_id = await subscribe(api, f.subscription("abnormal-lab-result", receiver.url("/audit")))
    await wait_active(api, sub_id)
    patient_id = await created(api, f.patient())
    await created(api, abnormal(patient_id))
    await receiver.until(lambda: receiver.events("/audit"))

    def both(events: list[dict[str, Any]]) -> bool:
        return {subtype(e) for e in events} >= {"handshake", "event-notification"}

    events = await eventually(delivering, auditor, both, entity=f"Subscription/{sub_id}", type="110106")
    assert both(events)
    (note,) = [e for e in events if subtype(e) == "event-notification"]
    assert note["type"] == {"system": DCM, "code": "110106", "display": "Export"}
    assert note["outcome"] == "0" and note["outcomeDesc"] == "HTTP 200"
    assert patients(note) == {f"Patient/{patient_id}"}
    assert who(note) == client_id(api)  # the subscription's owner: to whom the data went
    assert note["agent"][0]["requestor"] is False
    assert note["agent"][0]["network"]["address"] == "127.0.0.1"

    receiver.status = 500  # a failing endpoint: the failed attempt is audited too
    await created(api, abnormal(patient_id))

    def failed(events: list[dict[str, Any]]) -> bool:
        return any(e["outcome"] != "0" for e in events)

    events = await eventually(delivering, auditor, failed, entity=f"Subscription/{sub_id}", outcome="4")
    assert events and all(e["outcomeDesc"] == "HTTP 500" for e in events)


async def test_the_trail_is_searched_by_patient_agent_and_date_with_paging(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    other = await client_factory("system/*.rs")
    patient_id = await created(api, f.patient())
    for _ in range(3):
        assert (await api.get(f"/fhir/Patient/{patient_id}")).status_code == 200
    assert (await other.get(f"/fhir/Patient/{patient_id}")).status_code == 200

    mine = await trail(gateway, auditor, patient=f"Patient/{patient_id}", agent=client_id(api))
    assert [subtype(e) for e in mine] == ["read", "read", "read", "create"]  # newest first
    assert len(await trail(gateway, auditor, patient=f"Patient/{patient_id}")) == 5
    assert len(await trail(gateway, auditor, patient=patient_id)) == 5  # a bare id names a Patient
    theirs = await trail(gateway, auditor, patient=f"Patient/{patient_id}", agent=client_id(other))
    assert len(theirs) == 1 and who(theirs[0]) == client_id(other)

    first = await auditor.get("/fhir/AuditEvent", params={"patient": f"Patient/{patient_id}", "_count": "2"})
    page = first.json()
    assert len(page["entry"]) == 2
    following = next(link["url"] for link in page["link"] if link["relation"] == "next")
    second = (await auditor.get(following)).json()
    third = (await auditor.get(next(x["url"] for x in second["link"] if x["relation"] == "next"))).json()
    ids = [e["resource"]["id"] for p in (page, second, third) for e in p.get("entry", [])]
    assert len(ids) == 5 == len(set(ids))
    assert not any(x["relation"] == "next" for x in third["link"])

    newest = max(dates.date_range(e["recorded"])[0] for e in mine)
    oldest = min(dates.date_range(e["recorded"])[0] for e in mine)
    after = dates.format_instant(oldest + 1)
    assert (
        len(
            await trail(
                gateway, auditor, agent=client_id(api), type="rest", date=f"gt{dates.format_instant(oldest)}"
            )
        )
        == 3
    )
    assert len(await trail(gateway, auditor, agent=client_id(api), type="rest", date=f"ge{after}")) == 3
    assert len(await trail(gateway, auditor, agent=client_id(api), type="rest", date=f"lt{after}")) == 1
    window = [f"ge{dates.format_instant(oldest)}", f"le{dates.format_instant(newest)}"]
    assert len(await trail(gateway, auditor, agent=client_id(api), type="rest", date=window)) == 4  # type: ignore[arg-type]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert await trail(gateway, auditor, agent=client_id(api), type="rest", date=f"ge{tomorrow}") == []
    assert len(await trail(gateway, auditor, agent=client_id(api), type="rest", date=f"le{tomorrow}")) == 4
    bad = await auditor.get("/fhir/AuditEvent", params={"date": "yesterday"})
    assert bad.status_code == 400
    unknown = await auditor.get("/fhir/AuditEvent", params={"favourite-colour": "blue"})
    assert unknown.status_code == 400


async def test_the_trail_needs_audit_events_read_granted_by_name(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    await api.get("/fhir/Patient")
    (event, *_) = await trail(gateway, auditor, agent=client_id(api), type="rest")
    everything = await client_factory("system/*.cruds hl7v2/messages.read subscriptions/admin")
    for path in ("/fhir/AuditEvent", f"/fhir/AuditEvent/{event['id']}"):
        answer = await everything.get(path)
        assert answer.status_code == 403, answer.text
        assert "audit/events.read" in answer.text
    assert (await everything.post("/fhir/AuditEvent", json=event)).status_code in (403, 405)
    assert (await auditor.delete(f"/fhir/AuditEvent/{event['id']}")).status_code == 405
    assert (await auditor.get(f"/fhir/AuditEvent/{event['id']}")).status_code == 200
    # Looking at the trail is itself audited.
    looked = await trail(
        gateway, auditor, agent=client_id(auditor), entity=f"AuditEvent/{event['id']}", subtype="read"
    )
    assert len(looked) == 1
    statement = (await api.get("/fhir/metadata")).json()
    (entry,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert {i["code"] for i in entry["interaction"]} == {"read", "search-type"}
    assert {"date", "agent", "patient", "entity", "type", "subtype", "outcome"} <= {
        p["name"] for p in entry["searchParam"]
    }


async def test_old_events_are_deleted_after_the_retention_period(
    gateway: Gateway, client_factory: ClientFactory
) -> None:
    auditor = await client_factory(AUDITOR)
    agent = f"retention-{uuid.uuid4().hex[:6]}"
    now = dates.now_us()
    day = 86_400_000_000
    retention = gateway.audit.retention_days
    assert retention == 2190  # six years unless configured
    for age_days in (retention + 30, retention + 1, retention - 1, 1):
        record = AuditRecord(recorded_us=now - age_days * day, agent=agent, subtype="read")
        record.touch("Patient", "kept-or-not")
        gateway.audit.record(record)
    await gateway.audit.flush()
    assert len(await trail(gateway, auditor, agent=agent)) == 4
    deleted = await gateway.audit.purge(now_us=now, batch=1)  # small batches, until none is left
    assert deleted >= 2
    left = await trail(gateway, auditor, agent=agent)
    assert sorted(dates.date_range(e["recorded"])[0] for e in left) == [
        now - (retention - 1) * day,
        now - day,
    ]


async def test_events_are_written_in_the_background_and_on_shutdown(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    from gateway.service.fhirapi.audit import AuditLog

    auditor = await client_factory(AUDITOR)
    await api.get("/fhir/Patient")
    # No flush: the writer task writes within its interval.
    deadline = time.monotonic() + 10
    while not (await auditor.get("/fhir/AuditEvent", params={"agent": client_id(api)})).json().get("entry"):
        assert time.monotonic() < deadline, "the background writer wrote nothing"
        await asyncio.sleep(0.1)
    # A log that would wait a minute still writes what it holds when it stops.
    slow = AuditLog(gateway.db, observer="test", interval_s=60.0)
    await slow.start()
    agent = f"shutdown-{uuid.uuid4().hex[:6]}"
    slow.record(AuditRecord(recorded_us=dates.now_us(), agent=agent, subtype="read"))
    await asyncio.sleep(0.05)
    await slow.stop()
    assert len(await trail(gateway, auditor, agent=agent)) == 1


async def test_a_stop_during_a_written_batch_writes_it_once(
    gateway: Gateway, client_factory: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that arrives after a batch is committed, while its connection is still being handed back,
    must not write the batch again (a clean-clone run found a read audited twice after SIGTERM)."""
    from gateway.service.fhirapi.audit import AuditLog

    auditor = await client_factory(AUDITOR)
    log = AuditLog(gateway.db, observer="test", interval_s=0.01)
    committed = asyncio.Event()
    real = AuditLog._write

    async def committed_then_slow(self: AuditLog, records: list[AuditRecord]) -> None:
        await real(self, records)
        committed.set()
        await asyncio.sleep(0.2)  # what follows the commit: the connection going back to its pool

    monkeypatch.setattr(AuditLog, "_write", committed_then_slow)
    await log.start()
    agent = f"stopped-{uuid.uuid4().hex[:6]}"
    log.record(AuditRecord(recorded_us=dates.now_us(), agent=agent, subtype="read"))
    await asyncio.wait_for(committed.wait(), 10)
    await log.stop()
    assert len(await trail(gateway, auditor, agent=agent)) == 1


async def test_a_full_queue_drops_events_counts_them_and_warns(
    gateway: Gateway, client_factory: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.service.fhirapi.audit import AuditLog
    from gateway.transports.http.audit_routes import AuditCollector

    small = AuditLog(gateway.db, observer="test", capacity=2)
    for _ in range(5):
        small.record(AuditRecord(recorded_us=dates.now_us(), agent="flood", subtype="read"))
    assert small.dropped == 3
    registry = CollectorRegistry()
    registry.register(AuditCollector(lambda: small))
    assert "gateway_audit_events_dropped_total 3.0" in generate_latest(registry).decode()
    with caplog.at_level("WARNING", logger="gateway.audit"):
        await small.flush()
    assert any("3" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    assert small.written == 2
    await small.stop()
    # The served app exposes the same counters.
    api = await client_factory("system/*.rs")
    metrics = (await api.get("/metrics")).text
    assert "gateway_audit_events_dropped_total" in metrics and "gateway_audit_events_written_total" in metrics


async def test_a_payer_feed_is_audited_as_an_import_with_the_patient_it_moved(
    gateway: Gateway,
    api: httpx.AsyncClient,
    client_factory: ClientFactory,
    order: Order,
    payer: PayerStandIn,
) -> None:
    from tests.api.test_prior_auth_feeds import pended_orders, trace
    from tests.unit.test_payer_x12_278 import Event, response

    auditor = await client_factory(AUDITOR)
    (task,) = await pended_orders(api, order, payer, 1)
    payer_client = await client_factory("system/ClaimResponse.c")
    answer = await payer_client.post(
        "/payer/files", content=response(Event([f"TRN*2*{trace(task)}*9GATEWAY01", "HCR*A1*AUTH-9"])).encode()
    )
    assert answer.status_code == 200, answer.text
    refused = await payer_client.post("/payer/files", content=b"neither X12 nor CSV")
    assert refused.status_code == 400
    events = await trail(gateway, auditor, agent=client_id(payer_client), type="110107")
    assert [e["outcome"] for e in events] == ["4", "0"]
    applied = events[1]
    assert f"Task/{task['id']}" in whats(applied)
    assert patients(applied) == {f"Patient/{order.patient}"}
    assert any(e.get("description") == "POST /payer/files" for e in applied["entity"])


async def test_a_stop_cancels_a_writer_the_database_never_answers(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown is not held for ever by a write that hangs: after STOP_WAIT_S the writer is cancelled
    (what it held stays queued, and the last flush tries once more)."""
    from gateway.service.fhirapi import audit as audit_module
    from gateway.service.fhirapi.audit import AuditLog

    monkeypatch.setattr(audit_module, "STOP_WAIT_S", 0.2)
    log = AuditLog(gateway.db, observer="test", interval_s=0.01)
    hanging = asyncio.Event()

    async def never(self: AuditLog, records: list[AuditRecord]) -> None:
        hanging.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(AuditLog, "_write", never)
    await log.start()
    log.record(AuditRecord(recorded_us=dates.now_us(), agent="hang", subtype="read"))
    await asyncio.wait_for(hanging.wait(), 10)
    started = time.monotonic()
    monkeypatch.setattr(AuditLog, "flush", lambda self: asyncio.sleep(0))  # the last try, out of the way
    await asyncio.wait_for(log.stop(), 5)
    assert time.monotonic() - started < 2
    assert log.queued == 1  # put back, not lost
