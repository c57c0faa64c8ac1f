"""A payer's Da Vinci PAS endpoint for the self-served demo: a small real HTTP server on 127.0.0.1.

The demo's gateway lists it in its payers file (`static-token` auth: the gateway presents the token the
demo generated) and sends prior-authorization requests to it like to any payer:

- `POST /fhir/Claim/$submit` (a PAS request Bundle, first entry the Claim): the payer pends every request
  for clinical review: the response Bundle's ClaimResponse has `outcome` complete and review action A4 on
  each item, with an administration reference number, as PAS shapes a pended answer;
- `POST /fhir/Claim/$inquire`: the current answer about a claim it has seen (404 for others);
- `GET /fhir/metadata`: what it offers.

`approve(claim_id)` is the reviewer's decision later: A1 on each item with an authorization number and
a six-month period, sent to the gateway as the PAS subscription notification (R4 backport,
`event-notification`, full resource) a payer POSTs to `/payer/pas/notifications`, with a token the payer
gets from the gateway's token endpoint as the API client registered for it.

Nothing is logged: requests carry patient data.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from gateway.demo.client import DemoError, next_second

JSON = dict[str, Any]
PAS = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/"
REVIEW_ACTION_SYSTEM = "https://codesystem.x12.org/005010/306"
PAS_TOPIC = "http://hl7.org/fhir/us/davinci-pas/SubscriptionTopic/PASSubscriptionTopic"
RESPONSE_ID_SYSTEM = "urn:oid:2.16.840.1.113883.19.7.2"  # the demo payer's own ClaimResponse numbers
FHIR_JSON = "application/fhir+json"
APPROVED_DAYS = 182


def _instant() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _outcome(code: str, text: str) -> JSON:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


@dataclass
class _Claim:
    n: int
    claim: JSON
    bundle_identifier: JSON | None
    decision: str = "pended"  # or approved
    response_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    approved_on: date | None = None


class DemoPayer:
    """The demo's stand-in payer. `token` is what the gateway must present; `gateway_client` the API
    client (id, secret) the payer answers the gateway with."""

    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(24)
        self.gateway_url: str | None = None
        self.gateway_client: tuple[str, str] | None = None
        self._claims: dict[str, _Claim] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="demo-payer", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self) -> DemoPayer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def payers_file(self, name: str, insurer: str, payer_client_id: str | None = None) -> str:
        """A payers file (YAML) naming this payer for the insurer (`system|value`); the API client it answers
        the gateway with, when given, may then answer only this payer's requests."""
        text = (
            "# Written by `gateway demo`: the demo's stand-in payer (see gateway/demo/payer.py).\n"
            "payers:\n"
            f"  - name: {name}\n"
            f"    base_url: {self.base_url}\n"
            f"    insurers: ['{insurer}']\n"
            "    auth:\n"
            "      type: static-token\n"
            "      token_env: GATEWAY_DEMO_PAYER_TOKEN\n"
            "    timeout_seconds: 10\n"
            "    retry: {max_attempts: 3, first_delay_seconds: 5, max_delay_seconds: 30}\n"
            "    inquire_every_seconds: 0\n"
            "    claim_type: pharmacy\n"
        )
        return text + (f"    clients: [{payer_client_id}]\n" if payer_client_id else "")

    @property
    def claims(self) -> list[JSON]:
        """The Claims received, oldest first."""
        with self._lock:
            states = sorted({id(s): s for s in self._claims.values()}.values(), key=lambda s: s.n)
            return [s.claim for s in states]

    # -- the reviewer's decision -----------------------------------------------------------------------

    def approve(self, claim_id: str) -> JSON:
        """Approves a pended claim and notifies the gateway; the gateway's answer (which Tasks moved)."""
        if self.gateway_url is None or self.gateway_client is None:
            raise DemoError("the demo payer does not know the gateway to notify")
        with self._lock:
            state = self._claims.get(claim_id)
            if state is None:
                raise DemoError(f"the demo payer never received Claim/{claim_id}")
            state.decision = "approved"
            state.approved_on = datetime.now(UTC).date()
            notification = self._notification(state)
        next_second()  # the notification leaves after the decision (see `next_second`)
        with httpx.Client(base_url=self.gateway_url, timeout=30.0) as http:
            token = http.post(
                "/auth/token", data={"grant_type": "client_credentials"}, auth=self.gateway_client
            )
            if token.status_code != 200:
                raise DemoError(f"the gateway refused the demo payer's client: HTTP {token.status_code}")
            answer = http.post(
                "/payer/pas/notifications",
                content=orjson.dumps(notification),
                headers={
                    "content-type": FHIR_JSON,
                    "accept": FHIR_JSON,
                    "authorization": f"Bearer {token.json()['access_token']}",
                },
            )
        if answer.status_code != 200:
            raise DemoError(
                f"the gateway refused the payer's notification: HTTP {answer.status_code} {answer.text[:300]}"
            )
        body = answer.json()
        return body if isinstance(body, dict) else {}

    # -- answers -------------------------------------------------------------------------------------

    def _response_bundle(self, state: _Claim) -> JSON:
        bundle: JSON = {"resourceType": "Bundle", "id": str(uuid.uuid4())}
        if state.bundle_identifier:
            bundle["identifier"] = state.bundle_identifier
        bundle.update(
            {
                "type": "collection",
                "timestamp": _instant(),
                "entry": [
                    {
                        "fullUrl": f"{self.base_url}/ClaimResponse/{state.response_id}",
                        "resource": self._claim_response(state),
                    }
                ],
            }
        )
        return bundle

    def _claim_response(self, state: _Claim) -> JSON:
        claim = state.claim
        approved = state.decision == "approved"
        number = f"BHP-PA-{state.n:05d}"
        period = None
        if approved and state.approved_on:
            end = state.approved_on + timedelta(days=APPROVED_DAYS)
            period = {"start": state.approved_on.isoformat(), "end": end.isoformat()}
        items = []
        for index, item in enumerate(claim.get("item") or [{"sequence": 1}]):
            review: list[JSON] = []
            if approved:
                review.append({"url": "number", "valueString": number})
            review.append(
                {
                    "url": PAS + "extension-reviewActionCode",
                    "valueCodeableConcept": {
                        "coding": [
                            {
                                "system": REVIEW_ACTION_SYSTEM,
                                "code": "A1" if approved else "A4",
                                "display": "Certified in total" if approved else "Pended",
                            }
                        ]
                    },
                }
            )
            extensions: list[JSON] = [
                {"url": PAS + "extension-administrationReferenceNumber", "valueString": f"REF-{state.n:05d}"}
            ]
            if period:
                extensions.append({"url": PAS + "extension-itemPreAuthPeriod", "valuePeriod": period})
            items.append(
                {
                    "extension": extensions,
                    "itemSequence": item.get("sequence", index + 1),
                    "adjudication": [
                        {
                            "extension": [{"url": PAS + "extension-reviewAction", "extension": review}],
                            "category": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/adjudication",
                                        "code": "submitted",
                                    }
                                ]
                            },
                        }
                    ],
                }
            )
        request: JSON = {"reference": f"Claim/{claim.get('id')}"}
        if claim.get("identifier"):
            request["identifier"] = claim["identifier"][0]
        response: JSON = {
            "resourceType": "ClaimResponse",
            "id": state.response_id,
            "identifier": [{"system": RESPONSE_ID_SYSTEM, "value": f"CR-{state.n:05d}"}],
            "status": "active",
            "type": claim.get("type")
            or {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "pharmacy"}]
            },
            "use": "preauthorization",
            "patient": claim.get("patient") or {"display": "patient"},
            "created": _instant(),
            "insurer": claim.get("insurer") or {"display": "payer"},
            "request": request,
            "outcome": "complete",
            "disposition": "Certified in total" if approved else "Pended for clinical review",
            "item": items,
        }
        if approved and period:
            response["preAuthRef"] = number
            response["preAuthPeriod"] = period
        return response

    def _notification(self, state: _Claim) -> JSON:
        response = self._response_bundle(state)
        status_id = str(uuid.uuid4())
        with_number = str(state.n)
        status = {
            "resourceType": "Parameters",
            "id": status_id,
            "parameter": [
                {"name": "subscription", "valueReference": {"reference": "Subscription/demo-pas"}},
                {"name": "topic", "valueCanonical": PAS_TOPIC},
                {"name": "status", "valueCode": "active"},
                {"name": "type", "valueCode": "event-notification"},
                {"name": "events-since-subscription-start", "valueString": with_number},
                {
                    "name": "notification-event",
                    "part": [
                        {"name": "event-number", "valueString": with_number},
                        {"name": "timestamp", "valueInstant": _instant()},
                        {"name": "focus", "valueReference": {"reference": response["entry"][0]["fullUrl"]}},
                    ],
                },
            ],
        }
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "history",
            "timestamp": _instant(),
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{status_id}",
                    "resource": status,
                    "request": {"method": "GET", "url": f"{self.base_url}/Subscription/demo-pas/$status"},
                    "response": {"status": "200"},
                },
                {
                    "fullUrl": f"{self.base_url}/Bundle/{response['id']}",
                    "resource": response,
                    "request": {"method": "POST", "url": "ClaimResponse"},
                    "response": {"status": "200"},
                },
            ],
        }

    # -- HTTP ----------------------------------------------------------------------------------------

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, JSON]:
        if method == "GET" and path.endswith("/metadata"):
            return 200, self._capabilities()
        if method != "POST" or not path.endswith(("/Claim/$submit", "/Claim/$inquire")):
            return 404, _outcome("not-found", f"{method} {path} is not offered here")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.token):
            return 401, _outcome("login", "a valid bearer token is required")
        try:
            bundle = orjson.loads(body)
            claim = bundle["entry"][0]["resource"]
        except (ValueError, KeyError, IndexError, TypeError):
            return 400, _outcome("structure", "expected a PAS Bundle whose first entry is the Claim")
        if not isinstance(claim, dict) or claim.get("resourceType") != "Claim":
            return 400, _outcome("invalid", "the Bundle's first entry must be a Claim")
        with self._lock:
            if path.endswith("$inquire"):
                keys = [claim.get("id")] + [i.get("value") for i in claim.get("identifier") or []]
                found = next((self._claims[k] for k in keys if k in self._claims), None)
                if found is None:
                    return 404, _outcome("not-found", "no such claim here")
                return 200, self._response_bundle(found)
            self._count += 1
            state = _Claim(self._count, claim, bundle.get("identifier"))
            for key in [claim.get("id")] + [i.get("value") for i in claim.get("identifier") or []]:
                if isinstance(key, str):
                    self._claims[key] = state
            return 200, self._response_bundle(state)

    def _capabilities(self) -> JSON:
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": _instant(),
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "implementation": {"description": "gateway demo: stand-in PAS payer", "url": self.base_url},
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "Claim",
                            "operation": [
                                {
                                    "name": "submit",
                                    "definition": "http://hl7.org/fhir/us/davinci-pas/OperationDefinition/Claim-submit",
                                },
                                {
                                    "name": "inquire",
                                    "definition": "http://hl7.org/fhir/us/davinci-pas/OperationDefinition/Claim-inquiry",
                                },
                            ],
                        }
                    ],
                }
            ],
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        payer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # no access log: the bodies are patients' data and the paths name claims

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, answer = payer._answer(method, urlsplit(self.path).path, headers, body)
                data = orjson.dumps(answer)
                self.send_response(status)
                self.send_header("Content-Type", FHIR_JSON)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
