"""The PAS payer stand-in, driven over real HTTP with httpx: tokens, scenarios, inquiry and notifications."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from tests.payer_standin import (
    ADMINISTRATION_REFERENCE_URL,
    AUTHORIZED_DETAIL_URL,
    PAS_TOPIC,
    PRE_AUTH_PERIOD_URL,
    REASON_SYSTEM,
    REJECT_REASON_SYSTEM,
    REVIEW_ACTION_CODE_URL,
    REVIEW_ACTION_SYSTEM,
    REVIEW_ACTION_URL,
    PayerStandIn,
)

TRACE_SYSTEM = "urn:gateway:pa-trace"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"


def pas_bundle(
    claim_id: str = "claim-1", trace: str = "TRN-1", items: int = 1, quantity: float | None = 30
) -> dict[str, Any]:
    claim_items = []
    for sequence in range(1, items + 1):
        item: dict[str, Any] = {
            "sequence": sequence,
            "productOrService": {"coding": [{"system": HCPCS, "code": f"J{1000 + sequence}"}]},
        }
        if quantity is not None:
            item["quantity"] = {"value": quantity}
        claim_items.append(item)
    claim = {
        "resourceType": "Claim",
        "id": claim_id,
        "identifier": [{"system": TRACE_SYSTEM, "value": trace}],
        "status": "active",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "pharmacy"}]
        },
        "use": "preauthorization",
        "patient": {"reference": "Patient/p1"},
        "created": "2025-03-01T10:00:00+00:00",
        "insurer": {"reference": "Organization/payer"},
        "provider": {"reference": "Organization/clinic"},
        "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/cov1"}}],
        "item": claim_items,
    }
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:gateway:bundle", "value": f"B-{trace}"},
        "type": "collection",
        "timestamp": "2025-03-01T10:00:00+00:00",
        "entry": [
            {"fullUrl": f"urn:uuid:{claim_id}", "resource": claim},
            {
                "fullUrl": "http://gw.example/fhir/Patient/p1",
                "resource": {"resourceType": "Patient", "id": "p1"},
            },
            {
                "fullUrl": "http://gw.example/fhir/Organization/payer",
                "resource": {"resourceType": "Organization", "id": "payer", "name": "Payer"},
            },
            {
                "fullUrl": "http://gw.example/fhir/Organization/clinic",
                "resource": {"resourceType": "Organization", "id": "clinic", "name": "Clinic"},
            },
            {
                "fullUrl": "http://gw.example/fhir/Coverage/cov1",
                "resource": {"resourceType": "Coverage", "id": "cov1", "status": "active"},
            },
        ],
    }


def inquiry_bundle(trace: str) -> dict[str, Any]:
    bundle = pas_bundle(claim_id="inquiry-1", trace=trace)
    bundle["identifier"] = {"system": "urn:gateway:bundle", "value": f"INQ-{trace}"}
    return bundle


def review(item: dict[str, Any]) -> dict[str, Any]:
    """An item's review action as {code, number, reason} (code None when there is none)."""
    extensions = item["adjudication"][0].get("extension", [])
    action = next((e for e in extensions if e["url"] == REVIEW_ACTION_URL), None)
    if action is None:
        return {"code": None}
    parts = {p["url"]: p for p in action["extension"]}
    coding = parts[REVIEW_ACTION_CODE_URL]["valueCodeableConcept"]["coding"][0]
    assert coding["system"] == REVIEW_ACTION_SYSTEM
    return {
        "code": coding["code"],
        "number": parts.get("number", {}).get("valueString"),
        "reason": parts.get("reasonCode", {}).get("valueCodeableConcept", {}).get("coding", [None])[0],
    }


def extension(item: dict[str, Any], url: str) -> dict[str, Any] | None:
    return next((e for e in item.get("extension", []) if e["url"] == url), None)


def codes(response: httpx.Response | dict[str, Any]) -> list[str | None]:
    bundle = response.json() if isinstance(response, httpx.Response) else response
    return [review(item)["code"] for item in bundle["entry"][0]["resource"].get("item", [])]


@pytest.fixture
def payer() -> Iterator[PayerStandIn]:
    with PayerStandIn() as stand_in:
        yield stand_in


@pytest.fixture
def client(payer: PayerStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=payer.base_url, timeout=5.0) as http:
        token = http.post(
            payer.token_url, data={"grant_type": "client_credentials"}, auth=("gateway", payer.client_secret)
        ).json()["access_token"]
        http.headers["authorization"] = f"Bearer {token}"
        yield http


def submit(client: httpx.Client, bundle: dict[str, Any] | None = None) -> httpx.Response:
    return client.post(
        "/Claim/$submit",
        content=orjson.dumps(bundle or pas_bundle()),
        headers={"content-type": "application/fhir+json"},
    )


# -- tokens -------------------------------------------------------------------------------------------


def test_token_by_basic_auth_and_by_form_fields(payer: PayerStandIn) -> None:
    with httpx.Client(timeout=5.0) as http:
        basic = http.post(
            payer.token_url,
            data={"grant_type": "client_credentials"},
            auth=(payer.client_id, payer.client_secret),
        )
        form = http.post(
            payer.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": payer.client_id,
                "client_secret": payer.client_secret,
                "scope": "system/Claim.write",
            },
        )
    assert basic.status_code == 200 and form.status_code == 200
    assert basic.headers["content-type"] == "application/json"
    answer = basic.json()
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 300
    assert form.json()["scope"] == "system/Claim.write"
    assert payer.issued_tokens == [answer["access_token"], form.json()["access_token"]]
    assert answer["access_token"] != form.json()["access_token"]
    assert [r.body["grant_type"] for r in payer.token_requests] == ["client_credentials"] * 2


def test_token_refused_for_wrong_credentials_or_grant(payer: PayerStandIn) -> None:
    with httpx.Client(timeout=5.0) as http:
        wrong = http.post(
            payer.token_url, data={"grant_type": "client_credentials"}, auth=("gateway", "nope")
        )
        unknown = http.post(
            payer.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": "other",
                "client_secret": payer.client_secret,
            },
        )
        missing = http.post(payer.token_url, data={"grant_type": "client_credentials"})
        grant = http.post(
            payer.token_url, data={"grant_type": "password"}, auth=("gateway", payer.client_secret)
        )
    assert [r.status_code for r in (wrong, unknown, missing)] == [401, 401, 401]
    assert wrong.json()["error"] == "invalid_client"
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    assert payer.issued_tokens == []


def test_operations_need_a_valid_bearer_token(payer: PayerStandIn, client: httpx.Client) -> None:
    with httpx.Client(base_url=payer.base_url, timeout=5.0) as anonymous:
        none = submit(anonymous)
        anonymous.headers["authorization"] = "Bearer not-issued"
        wrong = submit(anonymous)
    assert none.status_code == 401 and wrong.status_code == 401
    assert none.json()["resourceType"] == "OperationOutcome"
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert submit(client).status_code == 200
    payer.expire_tokens()
    assert submit(client).status_code == 401
    # every call was recorded, refused ones too
    assert [r.status for r in payer.on("$submit")] == [401, 401, 200, 401]


def test_static_token_mode(payer: PayerStandIn) -> None:
    payer.static_token = "static-0123456789"
    with httpx.Client(base_url=payer.base_url, timeout=5.0) as http:
        http.headers["authorization"] = "Bearer static-0123456789"
        assert submit(http).status_code == 200
        http.headers["authorization"] = "Bearer static-other"
        assert submit(http).status_code == 401


def test_chunked_request_body(payer: PayerStandIn, client: httpx.Client) -> None:
    body = orjson.dumps(pas_bundle(trace="TRN-chunked"))
    response = client.post("/Claim/$submit", content=iter([body[:100], body[100:]]))
    assert response.status_code == 200
    assert payer.on("$submit")[0].headers["transfer-encoding"] == "chunked"
    assert payer.on("$submit")[0].body == orjson.loads(body)


def test_invalid_requests_are_400(client: httpx.Client) -> None:
    not_json = client.post("/Claim/$submit", content=b"{", headers={"content-type": "application/fhir+json"})
    claim = pas_bundle()["entry"][0]["resource"]
    not_bundle = submit(client, claim)
    wrong_use = pas_bundle()
    wrong_use["entry"][0]["resource"]["use"] = "claim"
    not_claim_first = pas_bundle()
    not_claim_first["entry"].reverse()
    answers = [not_json, not_bundle, submit(client, wrong_use), submit(client, not_claim_first)]
    assert [a.status_code for a in answers] == [400] * 4
    assert all(a.json()["resourceType"] == "OperationOutcome" for a in answers)


# -- scenarios ----------------------------------------------------------------------------------------


def test_approved_answer_shape(payer: PayerStandIn, client: httpx.Client) -> None:
    request = pas_bundle(items=2)
    response = submit(client, request)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert bundle["identifier"] == request["identifier"] and bundle["timestamp"]
    entry = bundle["entry"][0]
    claim_response = entry["resource"]
    assert entry["fullUrl"] == f"{payer.base_url}/ClaimResponse/{claim_response['id']}"
    claim = request["entry"][0]["resource"]
    assert claim_response["resourceType"] == "ClaimResponse"
    assert claim_response["identifier"] == [
        {"system": "http://payer.example/claim-response", "value": "CR-1"}
    ]
    assert claim_response["status"] == "active" and claim_response["use"] == "preauthorization"
    assert claim_response["type"] == claim["type"]
    assert claim_response["patient"] == {"reference": "Patient/p1"}
    assert claim_response["insurer"] == claim["insurer"] and claim_response["requestor"] == claim["provider"]
    assert claim_response["request"] == {"reference": "Claim/claim-1", "identifier": claim["identifier"][0]}
    assert claim_response["outcome"] == "complete" and claim_response["preAuthRef"] == "AUTH-1"
    created = datetime.fromisoformat(claim_response["created"])
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    today = datetime.now(UTC).date()
    for sequence, item in enumerate(claim_response["item"], start=1):
        assert item["itemSequence"] == sequence
        assert review(item) == {"code": "A1", "number": "AUTH-1", "reason": None}
        period = extension(item, PRE_AUTH_PERIOD_URL)
        assert period is not None
        assert period["valuePeriod"] == {
            "start": today.isoformat(),
            "end": (today + timedelta(days=180)).isoformat(),
        }
    copied = [e["fullUrl"] for e in bundle["entry"][1:]]
    assert copied == [
        "http://gw.example/fhir/Patient/p1",
        "http://gw.example/fhir/Organization/payer",
        "http://gw.example/fhir/Organization/clinic",
    ]
    recorded = payer.on("$submit")[0]
    assert recorded.body == request and recorded.headers["content-type"] == "application/fhir+json"


def test_scenarios_are_taken_in_order_then_approved(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.extend(["pended", "denied"])
    payer.approved_days = 30
    answers = [submit(client, pas_bundle(claim_id=f"c{i}", trace=f"T{i}")) for i in range(3)]
    assert [codes(a) for a in answers] == [["A4"], ["A3"], ["A1"]]
    assert [a.json()["entry"][0]["resource"]["identifier"][0]["value"] for a in answers] == [
        "CR-1",
        "CR-2",
        "CR-3",
    ]
    item = answers[2].json()["entry"][0]["resource"]["item"][0]
    period = extension(item, PRE_AUTH_PERIOD_URL)
    assert period is not None
    start = datetime.fromisoformat(period["valuePeriod"]["start"])
    assert datetime.fromisoformat(period["valuePeriod"]["end"]) - start == timedelta(days=30)


def test_pended_answer(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("pended")
    claim_response = submit(client, pas_bundle(items=2)).json()["entry"][0]["resource"]
    assert claim_response["outcome"] == "complete" and "preAuthRef" not in claim_response
    for item in claim_response["item"]:
        assert review(item) == {"code": "A4", "number": None, "reason": None}
        reference = extension(item, ADMINISTRATION_REFERENCE_URL)
        assert reference is not None and reference["valueString"] == "PEND-1"


def test_denied_answer(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("denied")
    claim_response = submit(client).json()["entry"][0]["resource"]
    action = review(claim_response["item"][0])
    assert action["code"] == "A3" and action["number"] is None
    assert action["reason"]["system"] == REASON_SYSTEM and action["reason"]["code"]
    assert "medically necessary" in claim_response["disposition"]


def test_partial_answer_with_several_items(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("partial")
    response = submit(client, pas_bundle(items=3))
    assert codes(response) == ["A1", "A3", "A3"]
    items = response.json()["entry"][0]["resource"]["item"]
    assert review(items[0])["number"] == "AUTH-1" and review(items[1])["reason"] is not None


def test_partial_answer_with_one_item_halves_the_quantity(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.extend(["partial", "partial"])
    for requested, authorized in ((30, 15), (None, 15)):
        response = submit(client, pas_bundle(quantity=requested))
        item = response.json()["entry"][0]["resource"]["item"][0]
        assert review(item)["code"] == "A2"
        detail = extension(item, AUTHORIZED_DETAIL_URL)
        assert detail is not None
        parts = {p["url"]: p for p in detail["extension"]}
        assert parts["quantity"]["valueQuantity"] == {"value": authorized}
        assert parts["productOrServiceCode"]["valueCodeableConcept"]["coding"][0]["code"] == "J1001"


def test_modified_answer(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("modified")
    claim_response = submit(client).json()["entry"][0]["resource"]
    item = claim_response["item"][0]
    assert review(item)["code"] == "A6" and extension(item, AUTHORIZED_DETAIL_URL) is not None
    [added] = claim_response["addItem"]
    assert added["itemSequence"] == [1]
    assert added["productOrService"]["coding"][0]["code"] == "J1001"
    assert added["quantity"]["value"] != 30
    assert review(added)["code"] == "A6"


def test_rejected_answer(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("rejected")
    response = submit(client)
    assert response.status_code == 200
    claim_response = response.json()["entry"][0]["resource"]
    assert claim_response["outcome"] == "error" and "item" not in claim_response
    coding = claim_response["error"][0]["code"]["coding"][0]
    assert (coding["system"], coding["code"]) == (REJECT_REASON_SYSTEM, "15")


def test_received_answer_has_no_review_action(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("received")
    response = submit(client, pas_bundle(items=2))
    assert codes(response) == [None, None]
    assert response.json()["entry"][0]["resource"]["outcome"] == "complete"


def test_error500(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("error500")
    response = submit(client)
    assert response.status_code == 500
    assert response.json()["resourceType"] == "OperationOutcome"
    assert codes(submit(client)) == ["A1"]


def test_timeout_makes_a_shorter_client_give_up(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("timeout")
    payer.timeout_delay_s = 1.5
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/Claim/$submit",
            content=orjson.dumps(pas_bundle()),
            headers={"content-type": "application/fhir+json"},
            timeout=0.5,
        )
    assert len(payer.on("$submit")) == 1


# -- inquiry, decisions and notifications ---------------------------------------------------------------


def test_pended_then_inquire_then_decide(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("pended")
    assert codes(submit(client, pas_bundle(trace="TRN-9"))) == ["A4"]

    def inquire(trace: str) -> httpx.Response:
        return client.post("/Claim/$inquire", content=orjson.dumps(inquiry_bundle(trace)))

    first = inquire("TRN-9")
    assert first.status_code == 200 and codes(first) == ["A4"]
    assert first.json()["identifier"]["value"] == "INQ-TRN-9"
    decided = payer.decide("TRN-9", "approved")
    assert codes(decided) == ["A1"]
    second = inquire("TRN-9")
    assert codes(second) == ["A1"]
    claim_response = second.json()["entry"][0]["resource"]
    first_response = first.json()["entry"][0]["resource"]
    assert claim_response["id"] == first_response["id"]
    assert claim_response["identifier"] == first_response["identifier"]
    assert claim_response["preAuthRef"] == "AUTH-1"
    unknown = inquire("TRN-unknown")
    assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"
    assert [r.status for r in payer.on("$inquire")] == [200, 200, 404]
    with pytest.raises(KeyError):
        payer.decide("TRN-unknown", "approved")
    with pytest.raises(ValueError):
        payer.decide("TRN-9", "timeout")


def test_notification_shape(payer: PayerStandIn, client: httpx.Client) -> None:
    payer.scenarios.append("pended")
    submit(client, pas_bundle(claim_id="claim-7", trace="TRN-7"))
    notification = payer.notification("claim-7", "denied", subscription_id="sub-42", event_number=3)
    assert notification["resourceType"] == "Bundle" and notification["type"] == "history"
    status_entry, response_entry = notification["entry"]
    status = status_entry["resource"]
    assert status["resourceType"] == "Parameters"
    assert status_entry["request"] == {
        "method": "GET",
        "url": f"{payer.base_url}/Subscription/sub-42/$status",
    }
    assert status_entry["response"] == {"status": "200"}
    parameters = {p["name"]: p for p in status["parameter"]}
    assert parameters["subscription"]["valueReference"] == {"reference": "Subscription/sub-42"}
    assert parameters["topic"]["valueCanonical"] == PAS_TOPIC
    assert parameters["status"]["valueCode"] == "active"
    assert parameters["type"]["valueCode"] == "event-notification"
    assert parameters["events-since-subscription-start"]["valueString"] == "3"
    event = {p["name"]: p for p in parameters["notification-event"]["part"]}
    assert event["event-number"]["valueString"] == "3" and event["timestamp"]["valueInstant"]
    response = response_entry["resource"]
    assert response_entry["request"] == {"method": "POST", "url": "ClaimResponse"}
    assert response_entry["response"] == {"status": "200"}
    assert response["resourceType"] == "Bundle" and response["entry"][0]["resource"]["resourceType"] == (
        "ClaimResponse"
    )
    assert event["focus"]["valueReference"]["reference"] == response["entry"][0]["fullUrl"]
    assert codes(response) == ["A3"]
    reference = extension(response["entry"][0]["resource"]["item"][0], ADMINISTRATION_REFERENCE_URL)
    assert reference is not None and reference["valueString"] == "PEND-1"


def test_send_notification_posts_the_bundle(payer: PayerStandIn, client: httpx.Client) -> None:
    received: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        submit(client, pas_bundle(trace="TRN-5"))
        bundle = payer.notification("TRN-5", "approved")
        url = f"http://127.0.0.1:{server.server_address[1]}/pas/notify"
        assert payer.send_notification(url, bundle, "gw-token") == 202
        assert payer.send_notification(url, bundle, None) == 202
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    (path, headers, body), (_, anonymous, _) = received
    assert path == "/pas/notify" and orjson.loads(body) == bundle
    assert headers["authorization"] == "Bearer gw-token"
    assert headers["content-type"] == "application/fhir+json"
    assert "authorization" not in anonymous


def test_restart_on_the_same_port_and_metadata() -> None:
    with PayerStandIn() as payer:
        port = payer.port
        assert payer.base_url == f"http://127.0.0.1:{port}/fhir"
        assert payer.token_url == f"http://127.0.0.1:{port}/oauth/token"
        payer.stop()
        with httpx.Client(timeout=2.0) as http:
            with pytest.raises(httpx.ConnectError):
                http.get(f"{payer.base_url}/metadata")
            payer.start()
            assert payer.port == port
            metadata = http.get(f"{payer.base_url}/metadata").json()
        assert metadata["resourceType"] == "CapabilityStatement"
        operations = [o["name"] for o in metadata["rest"][0]["resource"][0]["operation"]]
        assert operations == ["submit", "inquire"]
