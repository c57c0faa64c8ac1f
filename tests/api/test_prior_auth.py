"""Prior authorization end to end, in process, against a real payer stand-in on 127.0.0.1.

The gateway assembles a PAS request for a specialty MedicationRequest, submits it over HTTP with
client-credentials auth, and each answer (synchronous, notification, X12 278, CSV) moves one PA Task
through the lifecycle. Both backends.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from gateway.fhir import dates
from gateway.pa.payers import PayerDirectory, parse_payers
from gateway.service.gateway import Gateway
from gateway.store import priorauth as pa_store
from tests import factories as f
from tests.api.conftest import Order
from tests.conftest import CORPUS, ClientFactory
from tests.payer_standin import PayerStandIn

pytestmark = pytest.mark.asyncio(loop_scope="session")

PAS = CORPUS / "pas" / "davinci-pas-ig-2.2.1"
GATEWAY = "https://specialty-gateway.org/fhir"


def parameters(order: Order, **extra: str) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "coverage", "valueReference": {"reference": f"Coverage/{order.coverage}"}},
        {"name": "supportingInfo", "valueReference": {"reference": f"Observation/{order.anc}"}},
    ]
    params += [{"name": k, "valueCode": v} for k, v in extra.items()]
    return {"resourceType": "Parameters", "parameter": params}


async def request_pa(api: httpx.AsyncClient, order: Order, **extra: str) -> dict[str, Any]:
    answer = await api.post(
        f"/fhir/MedicationRequest/{order.request}/$request-prior-auth", json=parameters(order, **extra)
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def business(task: dict[str, Any]) -> str:
    return str(task["businessStatus"]["coding"][0]["code"])


def outputs(task: dict[str, Any], code: str) -> list[Any]:
    return [
        next(v for k, v in o.items() if k.startswith("value"))
        for o in task.get("output", [])
        if o["type"]["coding"][0]["code"] == code
    ]


def client_id_of(http: httpx.AsyncClient) -> str:
    """The client id inside the bearer token the factory obtained (JWT payload, not verified here)."""
    payload = http.headers["Authorization"].split()[1].split(".")[1]
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims.get("client_id") or claims["sub"])


def corpus(name: str) -> dict[str, Any]:
    return dict(json.loads((PAS / name).read_text()))


# --- building and submitting -------------------------------------------------------------------


async def test_the_request_bundle_passes_the_profile_and_holds_each_resource_once(
    api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    task = await request_pa(api, order)
    assert business(task) == "approved" and task["status"] == "completed"
    submitted = payer.on("$submit")
    assert len(submitted) == 1
    bundle = submitted[0].body
    assert submitted[0].headers["authorization"].startswith("Bearer ")
    assert submitted[0].headers["idempotency-key"].startswith(f"{task['id']}/")
    assert bundle["meta"]["profile"] == [f"{GATEWAY}/StructureDefinition/pas-request-bundle"]
    claim = bundle["entry"][0]["resource"]
    assert claim["resourceType"] == "Claim" and claim["use"] == "preauthorization"
    keys = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]]
    assert len(keys) == len(set(keys))  # exactly once
    assert set(keys) >= {
        ("MedicationRequest", order.request),
        ("Patient", order.patient),
        ("Coverage", order.coverage),
        ("Organization", order.insurer),
        ("Practitioner", order.prescriber),
        ("Observation", order.anc),
    }
    # The gateway validates what it sends: the bundle as sent passes its own profile.
    gateway_issues = [i for i in api_gateway(api).fhir.validator.validate(bundle) if i.is_error]
    assert gateway_issues == []
    # The Task links the Claim and the stored ClaimResponse, and carries the approval.
    claim_ref = next(
        i["valueReference"]["reference"] for i in task["input"] if i["type"]["coding"][0]["code"] == "claim"
    )
    assert claim_ref == f"Claim/{claim['id']}"
    assert (await api.get(f"/fhir/{claim_ref}")).status_code == 200
    response_ref = outputs(task, "claim-response")[0]["reference"]
    stored = (await api.get(f"/fhir/{response_ref}")).json()
    assert (
        stored["request"]["reference"] == claim_ref
        and stored["patient"]["reference"] == f"Patient/{order.patient}"
    )
    assert outputs(task, "authorization-number") == ["AUTH-1"]
    assert task["restriction"]["period"]["end"] == outputs(task, "authorization-period")[0]["end"]
    assert task["owner"]["reference"] == f"Organization/{order.insurer}"
    # Who said so: a Provenance per answer, naming the payer and the Task version it made.
    provenance = (await api.get("/fhir/Provenance", params={"target": f"Task/{task['id']}"})).json()
    (entry,) = provenance["entry"]
    targets = [t["reference"] for t in entry["resource"]["target"]]
    assert f"Task/{task['id']}/_history/{task['meta']['versionId']}" in targets
    assert entry["resource"]["agent"][0]["who"] == {"reference": f"Organization/{order.insurer}"}
    assert entry["resource"]["entity"][0]["what"]["display"] == "PAS Claim/$submit response"


async def test_a_requester_given_only_by_identifier_is_the_practitioner_holding_it(
    api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    """An HL7 v2 order names its prescriber by identifier only (ORC-12): the Practitioner here with that
    identifier is the Claim's provider; with two such Practitioners none is chosen and the request says so."""
    npi = {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1538246790"}
    prescriber = (
        await api.post("/fhir/Practitioner", json={"resourceType": "Practitioner", "identifier": [npi]})
    ).json()["id"]
    logical = {"type": "Practitioner", "identifier": npi, "display": "Daniel Okafor"}
    request = (
        await api.post("/fhir/MedicationRequest", json=f.medication_request(order.patient, requester=logical))
    ).json()["id"]
    answer = await api.post(f"/fhir/MedicationRequest/{request}/$request-prior-auth", json=parameters(order))
    assert answer.status_code == 200, answer.text
    bundle = payer.on("$submit")[-1].body
    assert bundle["entry"][0]["resource"]["provider"] == {"reference": f"Practitioner/{prescriber}"}
    sent = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]}
    assert ("Practitioner", prescriber) in sent

    await api.post("/fhir/Practitioner", json={"resourceType": "Practitioner", "identifier": [npi]})
    other = (
        await api.post("/fhir/MedicationRequest", json=f.medication_request(order.patient, requester=logical))
    ).json()["id"]
    refused = await api.post(f"/fhir/MedicationRequest/{other}/$request-prior-auth", json=parameters(order))
    assert refused.status_code == 422
    assert "supply the provider" in refused.json()["issue"][0]["diagnostics"]


def api_gateway(api: httpx.AsyncClient) -> Gateway:
    transport = api._transport  # the in-process app's gateway
    app = transport.app  # type: ignore[attr-defined]
    return app.state.gateway  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("scenario", "status", "task_status", "check"),
    [
        ("denied", "denied", "completed", "reason"),
        ("partial", "partially-approved", "completed", "items"),
        ("modified", "approved-modified", "completed", "items"),
        ("pended", "pended", "in-progress", None),
        ("rejected", "rejected-by-payer", "rejected", "reason"),
        ("received", "payer-received", "received", None),
    ],
)
async def test_each_payer_answer_puts_the_task_where_the_lifecycle_says(
    api: httpx.AsyncClient,
    order: Order,
    payer: PayerStandIn,
    scenario: str,
    status: str,
    task_status: str,
    check: str | None,
) -> None:
    payer.scenarios.append(scenario)
    task = await request_pa(api, order)
    assert (business(task), task["status"]) == (status, task_status)
    if check == "reason":
        assert task["statusReason"]["text"]
    if check == "items":
        lines = outputs(task, "item-decision")
        assert lines and all(line.startswith("item ") for line in lines)


async def test_a_timeout_leaves_submission_error_and_the_retry_is_a_new_task_version(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.append("timeout")
    task = await request_pa(api, order)
    assert business(task) == "submission-error" and task["status"] == "failed"
    assert "no answer within 1 s" in task["statusReason"]["text"]
    async with gateway.db.read() as conn:
        first = await pa_store.submissions_of(conn, task["id"])
    assert [(s.state, s.attempt) for s in first] == [("failed", 1)]
    # Not yet due: nothing is sent again.
    await gateway.payer_worker.run_once()
    assert len(payer.on("$submit")) == 1
    # Due (the payer's retry policy: 60 s): sent again under a new Task version and a new key.
    await gateway.payer_worker.run_once(dates.now_us() + 61_000_000)
    sent = payer.on("$submit")
    assert len(sent) == 2
    keys = [r.headers["idempotency-key"] for r in sent]
    assert len(set(keys)) == 2 and all(k.startswith(f"{task['id']}/") for k in keys)
    assert sent[0].body["identifier"] == sent[1].body["identifier"]  # the same request, recognisable
    after = (await api.get(f"/fhir/Task/{task['id']}")).json()
    assert business(after) == "approved"
    history = (await api.get(f"/fhir/Task/{task['id']}/_history")).json()
    seen = [business(e["resource"]) for e in reversed(history["entry"])]
    assert seen == ["submitted", "submission-error", "submitted", "approved"]
    # Each Task version was sent at most once.
    async with gateway.db.read() as conn:
        rows = await pa_store.submissions_of(conn, task["id"])
    assert len({(r.task_version, r.kind) for r in rows}) == len(rows)


async def test_a_second_request_while_one_is_live_is_refused(
    api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.append("pended")
    await request_pa(api, order)
    again = await api.post(
        f"/fhir/MedicationRequest/{order.request}/$request-prior-auth", json=parameters(order)
    )
    assert again.status_code == 409
    assert "pended" in again.json()["issue"][0]["diagnostics"]
    assert len(payer.on("$submit")) == 1


async def test_an_insurer_without_a_payer_is_a_clear_error(
    gateway: Gateway, api: httpx.AsyncClient, order: Order
) -> None:
    gateway.priorauth.payers = parse_payers({"payers": []})
    answer = await api.post(
        f"/fhir/MedicationRequest/{order.request}/$request-prior-auth", json=parameters(order)
    )
    assert answer.status_code == 422
    assert "No payer is configured" in answer.json()["issue"][0]["diagnostics"]


# --- the published PAS examples -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "status", "number", "period"),
    [
        (
            "Bundle-ReferralAuthorizationResponseBundleExample.json",
            "approved",
            "AUTH0001",
            {"start": "2005-05-02", "end": "2005-06-02"},
        ),
        ("Bundle-ReferralPendingAuthorizationResponseBundleExample.json", "pended", None, None),
        ("Bundle-RejectionResponseBundleExample.json", "denied", None, None),
    ],
)
async def test_published_pas_responses_drive_the_task(
    api: httpx.AsyncClient,
    order: Order,
    payer: PayerStandIn,
    example: str,
    status: str,
    number: str | None,
    period: dict[str, str] | None,
) -> None:
    payer.canned.append(corpus(example))
    task = await request_pa(api, order)
    assert business(task) == status
    assert outputs(task, "authorization-number") == ([number] if number else [])
    if period:
        assert task["restriction"]["period"] == period
    if status == "denied":
        # The example gives no reason code: the Task still says why (the profile requires a reason).
        assert "A3" in task["statusReason"]["text"]


async def test_published_pended_then_approved_by_the_published_notification(
    api: httpx.AsyncClient, client_factory: ClientFactory, order: Order, payer: PayerStandIn
) -> None:
    payer.canned.append(corpus("Bundle-ReferralPendingAuthorizationResponseBundleExample.json"))
    task = await request_pa(api, order)
    assert business(task) == "pended"
    payer_client = await client_factory("system/ClaimResponse.c")
    answer = await payer_client.post(
        "/payer/pas/notifications", json=corpus("Bundle-PASSubscriptionNotification.json")
    )
    assert answer.status_code == 200, answer.text
    after = (await api.get(f"/fhir/Task/{task['id']}")).json()
    assert business(after) == "approved" and outputs(after, "authorization-number") == ["AUTH0001"]


# --- payer feeds ----------------------------------------------------------------------------------


async def test_notifications_need_the_claimresponse_scope_and_a_matching_request(
    api: httpx.AsyncClient, client_factory: ClientFactory, order: Order, payer: PayerStandIn
) -> None:
    reader = await client_factory("system/Task.rs")
    refused = await reader.post(
        "/payer/pas/notifications", json=corpus("Bundle-PASSubscriptionNotification.json")
    )
    assert refused.status_code == 403
    payer_client = await client_factory("system/ClaimResponse.c")
    unknown = await payer_client.post(
        "/payer/pas/notifications", json=corpus("Bundle-PASSubscriptionNotification.json")
    )
    assert unknown.status_code == 422
    assert "No prior-authorization request here matches" in unknown.json()["issue"][0]["diagnostics"]
    bad = await payer_client.post(
        "/payer/pas/notifications", json=corpus("Bundle-PASClaimInquiryBundleExample.json")
    )
    assert bad.status_code == 400


async def test_invalid_transitions_are_refused(
    api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.append("denied")
    task = await request_pa(api, order)
    approved = {
        **task,
        "status": "completed",
        "businessStatus": {
            "coding": [{"system": f"{GATEWAY}/CodeSystem/pa-business-status", "code": "approved"}]
        },
    }
    answer = await api.put(f"/fhir/Task/{task['id']}", json=approved)
    assert answer.status_code == 422
    issue = answer.json()["issue"][0]
    assert "cannot go from denied to approved" in issue["diagnostics"]
    assert issue["expression"] == ["Task.businessStatus"]
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "denied"


async def test_an_approval_ending_within_the_window_opens_one_renewal_and_later_expires(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    expiring = await api.post(
        "/fhir/Subscription", json=f.subscription("pa-expiring", "http://127.0.0.1:9/expiring")
    )
    sub_id = expiring.json()["id"]
    payer.approved_days = 20
    task = await request_pa(api, order)
    assert business(task) == "approved"
    for _ in range(3):  # timer ticks
        await gateway.payer_worker.run_once()
    status = (await api.get(f"/fhir/Subscription/{sub_id}/$status")).json()["entry"][0]["resource"]
    counts = [p["valueString"] for p in status["parameter"] if p["name"] == "events-since-subscription-start"]
    assert counts == ["1"]  # pa-expiring once, not every tick
    renewals = (
        (await api.get("/fhir/Task", params={"based-on": f"Task/{task['id']}"})).json().get("entry", [])
    )
    assert len(renewals) == 1
    renewal = renewals[0]["resource"]
    assert business(renewal) == "pa-required" and renewal["status"] == "draft"
    assert renewal["code"]["coding"][0]["code"] == "prior-authorization-renewal"
    assert renewal["focus"]["reference"] == f"MedicationRequest/{order.request}"
    # After the period ends, the approval is expired (once).
    later = dates.to_us(datetime.now(UTC) + timedelta(days=22))
    await gateway.payer_worker.run_once(later)
    await gateway.payer_worker.run_once(later)
    after = (await api.get(f"/fhir/Task/{task['id']}")).json()
    assert business(after) == "expired"
    assert after["meta"]["versionId"] == str(int(task["meta"]["versionId"]) + 1)


async def test_tasks_stored_before_tracking_existed_are_tracked_on_start(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    from sqlalchemy import delete

    from gateway.service.priorauth import tracking as pa_tracking
    from gateway.store.tables import pa_tracking as tracking_table

    task = await request_pa(api, order)
    async with gateway.db.write() as conn:
        await conn.execute(delete(tracking_table))
    assert await pa_tracking.backfill(gateway.db) == 1
    assert await pa_tracking.backfill(gateway.db) == 0  # only while nothing is tracked
    async with gateway.db.read() as conn:
        row = await pa_store.tracking(conn, task["id"])
    assert row is not None and row.business_status == "approved" and row.auth_end is not None


async def test_turnaround_per_payer_over_the_api_and_in_metrics(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    await request_pa(api, order)
    report = (await api.get("/fhir/Task/$pa-turnaround")).json()
    part = {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in report["parameter"][0]["part"]
    }
    assert part["payer"] == "standin" and part["decided"] == 1 and part["pending"] == 0
    assert 0 <= part["median-hours"] < 0.1
    await gateway.payer_worker.run_once()  # the worker refreshes what /metrics shows
    metrics = (await api.get("/metrics")).text
    assert 'gateway_pa_decisions_total{payer="standin"} 1.0' in metrics
    assert 'gateway_pa_pending{payer="standin"} 0.0' in metrics
    assert 'gateway_pa_turnaround_hours{payer="standin",statistic="median"}' in metrics


async def test_a_denied_authorization_is_appealed_as_a_new_task_part_of_it(
    api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.extend(["denied", "approved"])
    denied = await request_pa(api, order)
    assert business(denied) == "denied"
    answer = await api.post(f"/fhir/Task/{denied['id']}/$appeal")
    assert answer.status_code == 200, answer.text
    appeal = answer.json()
    assert appeal["id"] != denied["id"]
    assert appeal["partOf"] == [{"reference": f"Task/{denied['id']}"}]
    assert appeal["code"]["coding"][0]["code"] == "prior-authorization-appeal"
    assert business(appeal) == "approved"
    history = (await api.get(f"/fhir/Task/{appeal['id']}/_history")).json()
    assert [business(e["resource"]) for e in reversed(history["entry"])] == ["appeal-submitted", "approved"]
    sent = payer.on("$submit")[-1].body["entry"][0]["resource"]
    denied_claim = next(
        i["valueReference"]["reference"] for i in denied["input"] if i["type"]["coding"][0]["code"] == "claim"
    )
    assert sent["related"][0]["claim"]["reference"] == denied_claim
    assert business((await api.get(f"/fhir/Task/{denied['id']}")).json()) == "denied"  # stays denied
    not_denied = await api.post(f"/fhir/Task/{appeal['id']}/$appeal")
    assert not_denied.status_code == 409


async def test_pended_requests_are_asked_about_on_the_payers_cadence(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.append("pended")
    task = await request_pa(api, order)
    await gateway.payer_worker.run_once()  # not yet due (every 3600 s)
    assert payer.on("$inquire") == []
    hour_later = dates.now_us() + 3_601_000_000
    await gateway.payer_worker.run_once(hour_later)  # due: asked, still pended, nothing changes
    assert len(payer.on("$inquire")) == 1
    still = (await api.get(f"/fhir/Task/{task['id']}")).json()
    assert business(still) == "pended" and still["meta"]["versionId"] == task["meta"]["versionId"]
    claim_id = outputs_input(task, "claim").split("/")[1]
    payer.decide(claim_id, "approved")
    await gateway.payer_worker.run_once(hour_later + 3_601_000_000)
    assert len(payer.on("$inquire")) == 2
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "approved"


def outputs_input(task: dict[str, Any], code: str) -> str:
    return str(
        next(
            i["valueReference"]["reference"] for i in task["input"] if i["type"]["coding"][0]["code"] == code
        )
    )


async def test_an_overdue_decision_raises_pa_overdue_once(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    sub = await api.post(
        "/fhir/Subscription", json=f.subscription("pa-overdue", "http://127.0.0.1:9/overdue")
    )
    assert sub.status_code == 201, sub.text
    sub_id = sub.json()["id"]
    payer.scenarios.append("pended")
    task = await request_pa(api, order, priority="urgent")
    due = next(e["valueDateTime"] for e in task["extension"] if e["url"].endswith("pa-decision-due"))
    assert task["priority"] == "urgent"
    authored = datetime.fromisoformat(task["authoredOn"].replace("Z", "+00:00"))
    assert datetime.fromisoformat(due.replace("Z", "+00:00")) - authored == timedelta(hours=72)

    async def events() -> int:
        status = (await api.get(f"/fhir/Subscription/{sub_id}/$status")).json()
        parameters = status["entry"][0]["resource"]["parameter"]
        return int(
            next(p["valueString"] for p in parameters if p["name"] == "events-since-subscription-start")
        )

    await gateway.payer_worker.run_once()
    assert await events() == 0  # not overdue yet
    three_days_later = dates.now_us() + 73 * 3_600_000_000
    for _ in range(3):
        await gateway.payer_worker.run_once(three_days_later)
    assert await events() == 1
    report = (await api.get("/fhir/Task/$pa-turnaround")).json()
    part = {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in report["parameter"][0]["part"]
    }
    assert part["pending"] == 1 and part["decided"] == 0


async def test_one_submission_is_sent_once_however_many_workers_try(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    sub_id = await gateway.priorauth.prepare_request(
        gateway.priorauth.internal, order.request, parameters(order)
    )
    await asyncio.gather(*(gateway.payer_worker.send(sub_id) for _ in range(5)))
    assert len(payer.on("$submit")) == 1
    await gateway.payer_worker.run_once()
    assert len(payer.on("$submit")) == 1


def certification(bundle: dict[str, Any]) -> str:
    claim = bundle["entry"][0]["resource"]
    extension = next(e for e in claim["item"][0]["extension"] if e["url"].endswith("certificationType"))
    return str(extension["valueCodeableConcept"]["coding"][0]["code"])


async def test_withdrawing_a_pended_request_tells_the_payer_and_cancels_the_task(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.extend(["pended", "timeout"])
    task = await request_pa(api, order)
    claim = outputs_input(task, "claim")
    answer = await api.post(
        f"/fhir/Task/{task['id']}/$cancel",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "reason", "valueString": "therapy stopped"}],
        },
    )
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    assert (business(cancelled), cancelled["status"]) == ("cancelled", "cancelled")
    assert cancelled["statusReason"]["text"] == "therapy stopped"
    sent = payer.on("$submit")
    assert len(sent) == 2 and certification(sent[1].body) == "3"
    assert sent[1].body["entry"][0]["resource"]["related"][0]["claim"]["reference"] == claim
    assert sent[1].headers["idempotency-key"].endswith("/cancel")
    # The payer did not answer in time: the cancellation is sent again later, the Task stays cancelled.
    await gateway.payer_worker.run_once(dates.now_us() + 61_000_000)
    again = payer.on("$submit")
    assert len(again) == 3 and certification(again[2].body) == "3"
    assert again[2].headers["idempotency-key"] != sent[1].headers["idempotency-key"]
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "cancelled"


async def test_final_states_cannot_be_cancelled_and_unsent_ones_are_not_sent(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.append("denied")
    denied = await request_pa(api, order)
    refused = await api.post(f"/fhir/Task/{denied['id']}/$cancel")
    assert refused.status_code == 409
    assert "cannot go from denied to cancelled" in refused.json()["issue"][0]["diagnostics"]
    draft = f.pa_task(order.patient, order.request, status="draft", business_status="pa-required")
    created = (await api.post("/fhir/Task", json=draft)).json()
    answer = await api.post(f"/fhir/Task/{created['id']}/$cancel")
    assert answer.status_code == 200 and business(answer.json()) == "cancelled"
    assert len(payer.on("$submit")) == 1  # only the denied request ever went out


async def test_answering_an_information_request_resubmits_as_an_update_of_the_claim(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.extend(["pended", "approved"])
    task = await request_pa(api, order)
    first_claim = outputs_input(task, "claim")
    report = await gateway.pa_ops.payer_file(
        f"task_id,decision,reason\n{task['id']},info-requested,send labs\n"
    )
    assert [a.business_status for a in report.applied] == ["info-requested"]
    again = await request_pa(api, order)
    assert again["id"] == task["id"] and business(again) == "approved"
    resent = payer.on("$submit")[-1].body["entry"][0]["resource"]
    assert resent["related"][0]["claim"]["reference"] == first_claim
    assert outputs_input(again, "claim") != first_claim


async def test_the_capability_statement_lists_the_prior_authorization_operations(
    api: httpx.AsyncClient,
) -> None:
    statement = (await api.get("/fhir/metadata")).json()
    entries = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert [o["name"] for o in entries["MedicationRequest"]["operation"]] == ["request-prior-auth"]
    task_operations = [o["name"] for o in entries["Task"]["operation"]]
    assert task_operations == ["appeal", "cancel", "pa-turnaround", "worklist"]
    assert "operation" not in entries["Observation"]
    assert f"{GATEWAY}/StructureDefinition/pas-claim" in entries["Claim"]["supportedProfile"]


async def test_the_operations_answer_only_to_tokens_that_may_read_what_they_read_and_return(
    api: httpx.AsyncClient, client_factory: ClientFactory, order: Order, payer: PayerStandIn
) -> None:
    # Each operation reads a MedicationRequest or a Task and answers with the PA Task: a token that may
    # write Tasks and Claims but not read them learns nothing, not even whether the id exists.
    writer = await client_factory("system/Task.cu system/Claim.c")
    for url in (
        f"/fhir/MedicationRequest/{order.request}/$request-prior-auth",
        "/fhir/MedicationRequest/no-such-order/$request-prior-auth",
    ):
        answer = await writer.post(url, json=parameters(order))
        assert answer.status_code == 403, answer.text
    payer.scenarios.append("denied")
    denied = await request_pa(api, order)
    for operation in ("$appeal", "$cancel"):
        answer = await writer.post(f"/fhir/Task/{denied['id']}/{operation}")
        assert answer.status_code == 403, answer.text
        assert denied["id"] not in answer.text
    assert len(payer.on("$submit")) == 1  # nothing more went to the payer
    allowed = await client_factory("system/Task.cru system/Claim.c system/MedicationRequest.r")
    assert (await allowed.post(f"/fhir/Task/{denied['id']}/$cancel")).status_code == 409  # denied is final


# --- answers without a decision, correlation by trace number, payers named by identifier --------------


async def test_a_202_without_a_body_leaves_the_task_payer_received_and_nothing_is_sent_again(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    """STANDARDS: a 2xx without a decision (202, queued) is `received` / payer-received, not a failure:
    the payer has the request, so it is never submitted again; the decision comes later."""
    payer.scenarios.append("accepted")
    task = await request_pa(api, order)
    assert (business(task), task["status"]) == ("payer-received", "received")
    async with gateway.db.read() as conn:
        rows = await pa_store.submissions_of(conn, task["id"])
    assert [(r.kind, r.state, r.http_status) for r in rows] == [("submit", "sent", 202)]
    # Past every retry delay of the payer's policy (60 s, doubling, 3 attempts): still one $submit.
    await gateway.payer_worker.run_once()
    await gateway.payer_worker.run_once(dates.now_us() + 61_000_000)
    await gateway.payer_worker.run_once(dates.now_us() + 700_000_000)
    assert len(payer.on("$submit")) == 1
    still = (await api.get(f"/fhir/Task/{task['id']}")).json()
    assert business(still) == "payer-received" and still["status"] == "received"
    # The decision comes by $inquire on the payer's cadence (or by notification).
    payer.decide(outputs_input(task, "claim").split("/")[1], "approved")
    await gateway.payer_worker.run_once(dates.now_us() + 3_601_000_000)
    assert len(payer.on("$inquire")) == 1 and len(payer.on("$submit")) == 1
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "approved"


def trace_of(task: dict[str, Any]) -> str:
    return str(next(i["value"] for i in task["identifier"] if i["system"] == f"{GATEWAY}/pa-trace-number"))


def echoing_trace(example: dict[str, Any], identifier: dict[str, str]) -> dict[str, Any]:
    """A published PAS answer whose ClaimResponse names the request only by echoing a trace number in
    ClaimResponse.identifier: no request reference, no preAuthRef, no Bundle identifier."""
    copy = json.loads(json.dumps(example))
    bundles = [copy] + [e["resource"] for e in copy["entry"] if e["resource"]["resourceType"] == "Bundle"]
    for bundle in bundles:
        bundle.pop("identifier", None)
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "ClaimResponse":
                resource.pop("request", None)
                resource.pop("preAuthRef", None)
                resource["identifier"] = [identifier]
    return copy


@pytest.mark.parametrize(
    "example",
    ["Bundle-PASSubscriptionNotification.json", "Bundle-ReferralAuthorizationResponseBundleExample.json"],
)
async def test_an_answer_echoing_only_the_trace_number_in_claimresponse_identifier_moves_its_task(
    api: httpx.AsyncClient, client_factory: ClientFactory, order: Order, payer: PayerStandIn, example: str
) -> None:
    payer.scenarios.append("received")  # acknowledged, no decision
    task = await request_pa(api, order)
    assert business(task) == "payer-received"
    trace = trace_of(task)
    payer_client = await client_factory("system/ClaimResponse.c")
    # The trace number's value under another system is another identifier: it matches nothing.
    other = {"system": "http://payer.example/claim-response", "value": trace}
    refused = await payer_client.post("/payer/pas/notifications", json=echoing_trace(corpus(example), other))
    assert refused.status_code == 422, refused.text
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "payer-received"
    echoed = {"system": f"{GATEWAY}/pa-trace-number", "value": trace}
    answer = await payer_client.post("/payer/pas/notifications", json=echoing_trace(corpus(example), echoed))
    assert answer.status_code == 200, answer.text
    after = (await api.get(f"/fhir/Task/{task['id']}")).json()
    assert business(after) == "approved" and outputs(after, "authorization-number") == ["AUTH0001"]


async def test_an_answer_echoing_the_bare_trace_number_value_moves_its_task(
    api: httpx.AsyncClient, client_factory: ClientFactory, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.append("received")  # acknowledged, no decision
    task = await request_pa(api, order)
    payer_client = await client_factory("system/ClaimResponse.c")
    body = echoing_trace(corpus("Bundle-PASSubscriptionNotification.json"), {"value": trace_of(task)})
    answer = await payer_client.post("/payer/pas/notifications", json=body)
    assert answer.status_code == 200, answer.text
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "approved"


async def test_turnaround_names_a_payer_listed_by_insurer_identifier_by_its_name(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    standin = gateway.priorauth.payers.payers[0]
    by_identifier = standin.model_copy(
        update={"name": "standin-by-npi", "insurers": ["http://hl7.org/fhir/sid/us-npi|1234567893"]}
    )
    gateway.priorauth.payers = PayerDirectory([by_identifier])
    task = await request_pa(api, order)
    assert business(task) == "approved"
    # A PA Task written elsewhere whose owner names the insurer by identifier only: the same payer.
    npi = {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}
    other = f.pa_task(order.patient, order.request, owner={"identifier": npi})
    assert (await api.post("/fhir/Task", json=other)).status_code == 201
    report = (await api.get("/fhir/Task/$pa-turnaround")).json()
    rows = [{p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in row["part"]}
            for row in report["parameter"]]  # fmt: skip
    assert [(r["payer"], r["decided"], r["pending"]) for r in rows] == [("standin-by-npi", 1, 1)]
    await gateway.payer_worker.run_once()
    metrics = (await api.get("/metrics")).text
    assert 'gateway_pa_decisions_total{payer="standin-by-npi"} 1.0' in metrics
    assert f"Organization/{order.insurer}" not in metrics


# --- 200 answers carrying an OperationOutcome; payers' numbers kept per payer ---------------------------


def outcome_of(*issues: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": s, "code": c, "diagnostics": f"{s} {c}"} for s, c in issues],
    }


async def test_a_200_with_an_informational_operationoutcome_is_payer_received_and_never_sent_again(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    """A payer that takes the request and answers 200 with an OperationOutcome (no ClaimResponse, only
    information or warnings) has it: payer-received, sent once, like a 202."""
    payer.canned.append(outcome_of(("information", "informational"), ("warning", "business-rule")))
    task = await request_pa(api, order)
    assert (business(task), task["status"]) == ("payer-received", "received")
    async with gateway.db.read() as conn:
        rows = await pa_store.submissions_of(conn, task["id"])
    assert [(r.kind, r.state, r.http_status, r.error) for r in rows] == [("submit", "sent", 200, None)]
    await gateway.payer_worker.run_once(dates.now_us() + 61_000_000)
    await gateway.payer_worker.run_once(dates.now_us() + 700_000_000)
    assert len(payer.on("$submit")) == 1
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "payer-received"


async def test_a_200_operationoutcome_with_errors_is_the_payer_refusing_and_a_transient_one_is_retried(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    """Error issues in a 200 OperationOutcome: the payer refused the request itself, as a 4xx does
    (rejected-by-payer, not retried; requesting again resubmits). A transient issue (FHIR issue-type
    `transient` and its kinds) is a failure to retry, as a 5xx is."""
    payer.canned.append(outcome_of(("information", "informational"), ("error", "required")))
    task = await request_pa(api, order)
    assert (business(task), task["status"]) == ("rejected-by-payer", "rejected")
    assert "error required" in task["statusReason"]["text"]
    await gateway.payer_worker.run_once(dates.now_us() + 700_000_000)
    assert len(payer.on("$submit")) == 1
    payer.canned.append(outcome_of(("error", "throttled")))
    again = await request_pa(api, order)
    assert (business(again), again["status"]) == ("submission-error", "failed")
    await gateway.payer_worker.run_once(dates.now_us() + 61_000_000)  # the retry: approved
    assert len(payer.on("$submit")) == 3
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "approved"


async def second_order(api: httpx.AsyncClient, order: Order) -> Order:
    """Another patient's order, insured by another insurer, by the same prescriber."""
    patient = (await api.post("/fhir/Patient", json=f.patient())).json()["id"]
    insurer = (
        await api.post("/fhir/Organization", json={"resourceType": "Organization", "name": "B"})
    ).json()
    coverage = {
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": {"reference": f"Patient/{patient}"},
        "payor": [{"reference": f"Organization/{insurer['id']}"}],
    }
    coverage_id = (await api.post("/fhir/Coverage", json=coverage)).json()["id"]
    prescriber = {"reference": f"Practitioner/{order.prescriber}"}
    request = f.medication_request(
        patient, requester=prescriber, dispenseRequest={"quantity": {"value": 30, "unit": "tablet"}}
    )
    request_id = (await api.post("/fhir/MedicationRequest", json=request)).json()["id"]
    anc = f.lab_observation(patient, code="751-8", value=2.1, unit="10*3/uL")
    anc_id = (await api.post("/fhir/Observation", json=anc)).json()["id"]
    ids = {"patient": patient, "insurer": insurer["id"], "coverage": coverage_id, "anc": anc_id}
    return Order({**order.ids, **ids, "request": request_id})


async def test_two_payers_may_issue_the_same_number_and_each_answer_moves_only_its_own_task(
    gateway: Gateway,
    api: httpx.AsyncClient,
    client_factory: ClientFactory,
    order: Order,
    payer: PayerStandIn,
) -> None:
    """Payer numbers are the payer's own: A and B both call their pended request 111099 / PEND0001. B's
    answer naming 111099 moves B's Task, never A's; an answer from a client bound to no payer that names
    only a number two payers use is refused (422) rather than guessed."""
    b = await second_order(api, order)
    client_a = await client_factory("system/ClaimResponse.c")
    client_b = await client_factory("system/ClaimResponse.c")
    standin = gateway.priorauth.payers.payers[0]
    gateway.priorauth.payers = PayerDirectory(
        [
            standin.model_copy(update={"name": "payer-a", "clients": [client_id_of(client_a)]}),
            standin.model_copy(
                update={
                    "name": "payer-b",
                    "insurers": [f"Organization/{b.insurer}"],
                    "clients": [client_id_of(client_b)],
                }
            ),
        ]
    )
    pended = corpus("Bundle-ReferralPendingAuthorizationResponseBundleExample.json")
    payer.canned.extend([pended, pended])
    task_a = await request_pa(api, order)
    task_b = await request_pa(api, b)
    assert business(task_a) == business(task_b) == "pended"
    same = {"system": "http://example.org/PATIENT_EVENT_TRACE_NUMBER", "value": "111099"}
    approved = echoing_trace(corpus("Bundle-ReferralAuthorizationResponseBundleExample.json"), same)
    unbound = await client_factory("system/ClaimResponse.c")
    refused = await unbound.post("/payer/pas/notifications", json=approved)
    assert refused.status_code == 422 and "payer-a" in refused.text and "payer-b" in refused.text, (
        refused.text
    )
    answer = await client_b.post("/payer/pas/notifications", json=approved)
    assert answer.status_code == 200, answer.text
    assert business((await api.get(f"/fhir/Task/{task_b['id']}")).json()) == "approved"
    assert business((await api.get(f"/fhir/Task/{task_a['id']}")).json()) == "pended"
