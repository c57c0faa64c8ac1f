"""A payer's Da Vinci PAS endpoint on 127.0.0.1 for tests: a real HTTP server, not a mock.

`PayerStandIn` runs `http.server` in a thread and speaks to the gateway the way a payer would:

- `POST /oauth/token`: OAuth 2.0 client credentials (client id and secret by HTTP Basic or form fields);
  answers a random bearer token that the FHIR operations then accept (as does `static_token` when set).
- `POST /fhir/Claim/$submit`: takes a PAS request Bundle (first entry a Claim with `use=preauthorization`)
  and answers a PAS response Bundle whose first entry is the ClaimResponse.
- `POST /fhir/Claim/$inquire`: finds a claim submitted earlier (by Claim.identifier or id) and answers its
  current state; 404 for one it never saw.
- `GET /fhir/metadata`: a small CapabilityStatement naming the two operations.

Every request to the FHIR operations is recorded (`requests`), every token request too (`token_requests`).

What a `$submit` gets is decided by `scenarios`, a deque: each submission takes the leftmost one, and
"approved" when it is empty. The decision sits on each `ClaimResponse.item.adjudication` in the PAS
reviewAction extension (X12 306 review action code, authorization `number`, `reasonCode`):

- approved: A1 on every item, number AUTH-<n>, itemPreAuthPeriod today .. today + `approved_days`.
- pended: A4 on every item with administrationReferenceNumber PEND-<n>; `outcome` stays complete. The
  claim is resolved later by `decide(...)`, which `$inquire` then reports, or by `notification(...)`, a
  subscription notification (R4 backport, full resource) that `send_notification(...)` POSTs to the gateway.
- denied: A3 with a reasonCode (X12 external code list 886) and a disposition text.
- partial: with two items or more the first is A1 and the others A3; with one item A2 and an
  itemAuthorizedDetail of half the requested quantity.
- modified: A6 with an addItem (and itemAuthorizedDetail) for a smaller quantity than requested.
- rejected: `outcome=error` and `ClaimResponse.error` (X12 901 code 15), no item adjudicated.
- received: items without any reviewAction (acknowledged, not decided).
- timeout: waits `timeout_delay_s` before answering as approved, so a client with a shorter timeout gives up.
- error500: HTTP 500 with an OperationOutcome.
- accepted: HTTP 202 with an empty body (queued for review, no decision yet); the claim is remembered as
  "received", so `$inquire`, `decide` and `notification` answer it later.

Numbers are deterministic: the n-th accepted `$submit` gets n (AUTH-n, PEND-n, CR-n). A claim keeps its
ClaimResponse id and identifier across later decisions, as a payer updating its own ClaimResponse would.
The denial reason code is a stand-in value: the X12 886 list is licensed and was not checked here.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import orjson

PAS = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/"
REVIEW_ACTION_URL = PAS + "extension-reviewAction"
REVIEW_ACTION_CODE_URL = PAS + "extension-reviewActionCode"
PRE_AUTH_PERIOD_URL = PAS + "extension-itemPreAuthPeriod"
PRE_AUTH_ISSUE_DATE_URL = PAS + "extension-itemPreAuthIssueDate"
ADMINISTRATION_REFERENCE_URL = PAS + "extension-administrationReferenceNumber"
AUTHORIZED_DETAIL_URL = PAS + "extension-itemAuthorizedDetail"
REVIEW_ACTION_SYSTEM = "https://codesystem.x12.org/005010/306"
REASON_SYSTEM = "https://codesystem.x12.org/external/886"
REJECT_REASON_SYSTEM = "https://codesystem.x12.org/005010/901"
ADJUDICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/adjudication"
CLAIM_RESPONSE_ID_SYSTEM = "http://payer.example/claim-response"
PAS_TOPIC = "http://hl7.org/fhir/us/davinci-pas/SubscriptionTopic/PASSubscriptionTopic"
FHIR_JSON = "application/fhir+json"

REVIEW_ACTIONS = {
    "A1": "Certified in total",
    "A2": "Certified - partial",
    "A3": "Not certified",
    "A4": "Pended",
    "A6": "Modified",
}
# The scenarios a claim can be in (and `decide` can move it to); "timeout" and "error500" only shape
# how a `$submit` is answered.
DECISIONS = ("approved", "pended", "denied", "partial", "modified", "rejected", "received")
SCENARIOS = (*DECISIONS, "timeout", "error500", "accepted")


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # lowercased names
    body: Any  # the parsed JSON (FHIR operations) or form fields (token requests); None if unreadable
    at: float  # time.time() on arrival
    status: int = 0  # the status answered, set once the answer is known
    raw: bytes = b""  # the body as sent (FHIR operations), for what parsing would change


@dataclass
class _Claim:
    """A claim the payer has seen and what it currently says about it."""

    n: int
    claim: dict[str, Any]
    request_bundle: dict[str, Any]
    scenario: str
    claim_response_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    was_pended: bool = False


class _Reply(Exception):
    """Ends a request with this status and JSON body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _today() -> date:
    return datetime.now(UTC).date()


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


class PayerStandIn:
    def __init__(
        self,
        port: int = 0,
        *,
        scenarios: Iterable[str] = (),
        client_id: str = "gateway",
        client_secret: str = "payer-secret-0123456789",
        static_token: str | None = None,
    ) -> None:
        self.scenarios: deque[str] = deque(scenarios)
        # Response Bundles answered as they are, before any scenario (first in, first out).
        self.canned: deque[dict[str, Any]] = deque()
        self.client_id = client_id
        self.client_secret = client_secret
        self.static_token = static_token
        self.token_ttl_s = 300
        self.approved_days = 180
        self.timeout_delay_s = 5.0
        self.denial_reason = _coding(REASON_SYSTEM, "47", "Not medically necessary")
        self.requests: list[Recorded] = []
        self.token_requests: list[Recorded] = []
        self.issued_tokens: list[str] = []
        self._token_expiry: dict[str, float] = {}
        self._claims: dict[str, _Claim] = {}  # by claim id, identifier value and system|value
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.start()

    # -- server --------------------------------------------------------------------------------------

    def start(self) -> None:
        ThreadingHTTPServer.allow_reuse_address = True
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Down: the listening socket is closed; a request held back by "timeout" is dropped unanswered."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> PayerStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth/token"

    # -- what was received ---------------------------------------------------------------------------

    def on(self, operation: str) -> list[Recorded]:
        """Recorded requests to one operation, e.g. `on("$submit")`."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/" + operation)]

    def expire_tokens(self) -> None:
        """Every issued token stops working (the client has to fetch a new one)."""
        with self._lock:
            self._token_expiry.clear()

    # -- decisions -----------------------------------------------------------------------------------

    def decide(self, claim_key: str, scenario: str) -> dict[str, Any]:
        """The payer decides a remembered claim (by Claim id or identifier value); its new response Bundle."""
        if scenario not in DECISIONS:
            raise ValueError(f"cannot decide a claim as {scenario!r}; one of {', '.join(DECISIONS)}")
        with self._lock:
            state = self._claims.get(claim_key)
            if state is None:
                raise KeyError(f"the payer has no claim {claim_key!r}")
            state.scenario = scenario
            state.was_pended = state.was_pended or scenario == "pended"
            return self._response_bundle(state, state.request_bundle)

    def response_for(self, claim_key: str) -> dict[str, Any]:
        """The current response Bundle of a remembered claim."""
        with self._lock:
            state = self._claims[claim_key]
            return self._response_bundle(state, state.request_bundle)

    def notification(
        self, claim_key: str, scenario: str, *, subscription_id: str = "pas-sub-1", event_number: int = 1
    ) -> dict[str, Any]:
        """An R4 backport event notification (full resource) carrying the claim's answer after deciding it."""
        response = self.decide(claim_key, scenario)
        claim_response_url = response["entry"][0]["fullUrl"]
        now = _now()
        status = {
            "resourceType": "Parameters",
            "id": str(uuid.uuid4()),
            "parameter": [
                {"name": "subscription", "valueReference": {"reference": f"Subscription/{subscription_id}"}},
                {"name": "topic", "valueCanonical": PAS_TOPIC},
                {"name": "status", "valueCode": "active"},
                {"name": "type", "valueCode": "event-notification"},
                {"name": "events-since-subscription-start", "valueString": str(event_number)},
                {
                    "name": "notification-event",
                    "part": [
                        {"name": "event-number", "valueString": str(event_number)},
                        {"name": "timestamp", "valueInstant": now},
                        {"name": "focus", "valueReference": {"reference": claim_response_url}},
                    ],
                },
            ],
        }
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "history",
            "timestamp": now,
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{status['id']}",
                    "resource": status,
                    "request": {
                        "method": "GET",
                        "url": f"{self.base_url}/Subscription/{subscription_id}/$status",
                    },
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

    def send_notification(self, url: str, bundle: dict[str, Any], token: str | None = None) -> int:
        """POSTs a notification Bundle to the gateway; the HTTP status it answered."""
        headers = {"content-type": FHIR_JSON, "accept": FHIR_JSON}
        if token:
            headers["authorization"] = f"Bearer {token}"
        with httpx.Client(timeout=10.0) as client:
            return client.post(url, content=orjson.dumps(bundle), headers=headers).status_code

    # -- request handling ----------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        payer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_PUT(self) -> None:
                self._dispatch("PUT")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

            def _dispatch(self, method: str) -> None:
                path = urlsplit(self.path).path
                raw = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status, body, extra = payer._route(method, path, headers, raw)
                except _Reply as reply:
                    status, body, extra = reply.status, reply.body, reply.headers
                if status == 0:  # stopped while holding the answer back
                    return
                content_type = extra.pop("content-type", FHIR_JSON)
                data = b"" if body is None else orjson.dumps(body)  # None: an empty body (202)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a shorter timeout than the payer's delay)

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("transfer-encoding", "").lower():
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()  # the CRLF after the chunk
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                length = int(self.headers.get("content-length", "0") or "0")
                return self.rfile.read(length) if length else b""

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def _route(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if path == "/oauth/token":
            if method != "POST":
                raise _Reply(405, {"error": "invalid_request"}, {"content-type": "application/json"})
            return self._token(headers, raw)
        if path == "/fhir/metadata" and method == "GET":
            return 200, self._capability_statement(), {}
        if path in ("/fhir/Claim/$submit", "/fhir/Claim/$inquire"):
            if method != "POST":
                raise _Reply(405, operation_outcome("not-supported", f"{method} is not supported here"))
            recorded = Recorded(path, headers, None, time.time(), raw=raw)
            with self._lock:
                self.requests.append(recorded)
            with contextlib.suppress(orjson.JSONDecodeError):
                recorded.body = orjson.loads(raw)
            try:
                result = self._operation(path, headers, recorded.body)
            except _Reply as reply:
                recorded.status = reply.status
                raise
            recorded.status = result[0]
            return result
        raise _Reply(404, operation_outcome("not-found", f"no such endpoint: {method} {path}"))

    # -- OAuth client credentials --------------------------------------------------------------------

    def _token(self, headers: dict[str, str], raw: bytes) -> tuple[int, Any, dict[str, str]]:
        json_type = {"content-type": "application/json", "Cache-Control": "no-store"}
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        with self._lock:
            self.token_requests.append(Recorded("/oauth/token", headers, form, time.time()))
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except ValueError:
                decoded = ""
            user, _, password = decoded.partition(":")
            client_id, client_secret = unquote(user), unquote(password)
        if form.get("grant_type") != "client_credentials":
            raise _Reply(400, {"error": "unsupported_grant_type"}, json_type)
        if not (
            client_id is not None
            and client_secret is not None
            and secrets.compare_digest(client_id, self.client_id)
            and secrets.compare_digest(client_secret, self.client_secret)
        ):
            raise _Reply(
                401,
                {"error": "invalid_client", "error_description": "unknown client or wrong secret"},
                {**json_type, "WWW-Authenticate": 'Basic realm="payer"'},
            )
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.issued_tokens.append(token)
            self._token_expiry[token] = time.time() + self.token_ttl_s
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.token_ttl_s,
        }
        if form.get("scope"):
            answer["scope"] = form["scope"]
        return 200, answer, json_type

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        if self.static_token is not None and secrets.compare_digest(token, self.static_token):
            return True
        with self._lock:
            expiry = self._token_expiry.get(token)
        return expiry is not None and expiry > time.time()

    # -- PAS operations ------------------------------------------------------------------------------

    def _operation(self, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        if not self._authorized(headers):
            raise _Reply(
                401,
                operation_outcome("login", "a valid bearer token is required"),
                {"WWW-Authenticate": 'Bearer realm="payer"'},
            )
        claim = self._claim_of(body)
        if path.endswith("$inquire"):
            return 200, self._inquire(claim, body), {}
        return self._submit(claim, body)

    @staticmethod
    def _claim_of(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise _Reply(400, operation_outcome("structure", "the body must be a FHIR Bundle"))
        entries = body.get("entry") or []
        first = entries[0].get("resource") if entries and isinstance(entries[0], dict) else None
        if not isinstance(first, dict) or first.get("resourceType") != "Claim":
            raise _Reply(400, operation_outcome("invalid", "the Bundle's first entry must be a Claim"))
        if first.get("use") != "preauthorization":
            raise _Reply(400, operation_outcome("invalid", "Claim.use must be preauthorization"))
        return first

    def _submit(self, claim: dict[str, Any], bundle: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            if self.canned:  # a response Bundle given as is (e.g. a published PAS example)
                return 200, self.canned.popleft(), {}
            scenario = self.scenarios.popleft() if self.scenarios else "approved"
            if scenario not in SCENARIOS:
                raise _Reply(
                    500, operation_outcome("exception", f"the stand-in has no scenario {scenario!r}")
                )
            n = next(self._counter)
        if scenario == "error500":
            raise _Reply(500, operation_outcome("exception", "the payer had an internal error"))
        if scenario == "timeout":
            if self._stopping.wait(self.timeout_delay_s):
                return 0, None, {}
            scenario = "approved"
        accepted = scenario == "accepted"
        if accepted:
            scenario = "received"  # queued: decided later
        state = _Claim(n, claim, bundle, scenario, was_pended=scenario == "pended")
        with self._lock:
            for key in self._keys(claim):
                self._claims[key] = state
            if accepted:
                return 202, None, {}
            return 200, self._response_bundle(state, bundle), {}

    def _inquire(self, inquiry: dict[str, Any], bundle: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            state = next((self._claims[k] for k in self._keys(inquiry) if k in self._claims), None)
            if state is None:
                raise _Reply(404, operation_outcome("not-found", "the payer has no such claim"))
            return self._response_bundle(state, bundle)

    @staticmethod
    def _keys(claim: dict[str, Any]) -> list[str]:
        """How a claim is found again: identifiers (system|value, then value) first, then its id."""
        keys: list[str] = []
        for identifier in claim.get("identifier") or []:
            value = identifier.get("value")
            if value:
                if identifier.get("system"):
                    keys.append(f"{identifier['system']}|{value}")
                keys.append(value)
        if claim.get("id"):
            keys.append(claim["id"])
        return keys

    # -- answers -------------------------------------------------------------------------------------

    def _response_bundle(self, state: _Claim, request_bundle: dict[str, Any]) -> dict[str, Any]:
        claim_response = self._claim_response(state)
        bundle: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4())}
        if request_bundle.get("identifier"):
            bundle["identifier"] = request_bundle["identifier"]
        bundle["type"] = "collection"
        bundle["timestamp"] = _now()
        bundle["entry"] = [
            {"fullUrl": f"{self.base_url}/ClaimResponse/{claim_response['id']}", "resource": claim_response},
            *self._referenced_entries(state),
        ]
        return bundle

    @staticmethod
    def _referenced_entries(state: _Claim) -> list[dict[str, Any]]:
        """The request Bundle's entries for the Claim's patient, insurer and provider, when it has them."""
        found: list[dict[str, Any]] = []
        for element in ("patient", "insurer", "provider"):
            reference = (state.claim.get(element) or {}).get("reference")
            if not reference:
                continue
            for entry in state.request_bundle.get("entry") or []:
                resource = entry.get("resource") or {}
                local = f"{resource.get('resourceType')}/{resource.get('id')}"
                full_url = entry.get("fullUrl") or ""
                if reference in (local, full_url) or full_url.endswith("/" + reference):
                    if all(f["resource"] is not resource for f in found):
                        found.append({"fullUrl": full_url or local, "resource": resource})
                    break
        return found

    def _claim_response(self, state: _Claim) -> dict[str, Any]:
        claim = state.claim
        scenario = state.scenario
        response: dict[str, Any] = {
            "resourceType": "ClaimResponse",
            "id": state.claim_response_id,
            "identifier": [{"system": CLAIM_RESPONSE_ID_SYSTEM, "value": f"CR-{state.n}"}],
            "status": "active",
        }
        if claim.get("type"):
            response["type"] = claim["type"]
        response["use"] = "preauthorization"
        if claim.get("patient"):
            response["patient"] = claim["patient"]
        response["created"] = _now()
        if claim.get("insurer"):
            response["insurer"] = claim["insurer"]
        if claim.get("provider"):
            response["requestor"] = claim["provider"]
        request: dict[str, Any] = {}
        if claim.get("id"):
            request["reference"] = f"Claim/{claim['id']}"
        if claim.get("identifier"):
            request["identifier"] = claim["identifier"][0]
        response["request"] = request
        response["outcome"] = "error" if scenario == "rejected" else "complete"
        if scenario == "rejected":
            response["disposition"] = "Request rejected: required application data missing"
            response["error"] = [
                {
                    "code": {
                        "coding": [_coding(REJECT_REASON_SYSTEM, "15", "Required application data missing")]
                    }
                }
            ]
            return response
        items = [item for item in claim.get("item") or [] if isinstance(item, dict)] or [{"sequence": 1}]
        number = f"AUTH-{state.n}"
        start = _today()
        period = {"start": start.isoformat(), "end": (start + timedelta(days=self.approved_days)).isoformat()}
        adjudicated: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            sequence = item.get("sequence", index + 1)
            if scenario == "approved" or (scenario == "partial" and len(items) > 1 and index == 0):
                adjudicated.append(self._item(sequence, "A1", state, number=number, period=period))
            elif scenario == "pended":
                adjudicated.append(self._item(sequence, "A4", state))
            elif scenario == "denied" or (scenario == "partial" and len(items) > 1):
                adjudicated.append(self._item(sequence, "A3", state, reason=self.denial_reason))
            elif scenario == "partial":
                half = _quantity(item) / 2
                detail = _authorized_detail(item, int(half) if half.is_integer() else half)
                adjudicated.append(
                    self._item(sequence, "A2", state, number=number, period=period, detail=detail)
                )
            elif scenario == "modified":
                quantity = max(1, round(_quantity(item) * 2 / 3))
                detail = _authorized_detail(item, quantity)
                adjudicated.append(
                    self._item(sequence, "A6", state, number=number, period=period, detail=detail)
                )
                add: dict[str, Any] = {
                    "extension": [{"url": PRE_AUTH_PERIOD_URL, "valuePeriod": period}],
                    "itemSequence": [sequence],
                }
                if item.get("productOrService"):
                    add["productOrService"] = item["productOrService"]
                add["quantity"] = {"value": quantity}
                add["adjudication"] = [_adjudication(_review_action("A6", number=number))]
                added.append(add)
            else:  # received
                adjudicated.append(self._item(sequence, None, state))
        response["item"] = adjudicated
        if added:
            response["addItem"] = added
        if scenario in ("approved", "partial", "modified"):
            response["preAuthRef"] = number
            response["preAuthPeriod"] = period
        if scenario == "denied":
            response["disposition"] = f"Denied: {self.denial_reason.get('display', 'not certified')}"
        elif scenario == "pended":
            response["disposition"] = "Pended for clinical review"
        return response

    def _item(
        self,
        sequence: int,
        action: str | None,
        state: _Claim,
        *,
        number: str | None = None,
        period: dict[str, str] | None = None,
        reason: dict[str, Any] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        extensions: list[dict[str, Any]] = []
        if period:
            extensions.append({"url": PRE_AUTH_ISSUE_DATE_URL, "valueDate": _today().isoformat()})
            extensions.append({"url": PRE_AUTH_PERIOD_URL, "valuePeriod": period})
        if detail:
            extensions.append(detail)
        if state.was_pended:
            extensions.append({"url": ADMINISTRATION_REFERENCE_URL, "valueString": f"PEND-{state.n}"})
        item: dict[str, Any] = {}
        if extensions:
            item["extension"] = extensions
        item["itemSequence"] = sequence
        review = [_review_action(action, number=number, reason=reason)] if action else []
        item["adjudication"] = [_adjudication(*review)]
        return item

    def _capability_statement(self) -> dict[str, Any]:
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": _now(),
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "implementation": {"description": "PAS payer stand-in", "url": self.base_url},
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


def _review_action(
    action: str, *, number: str | None = None, reason: dict[str, Any] | None = None
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if number:
        parts.append({"url": "number", "valueString": number})
    if reason:
        parts.append({"url": "reasonCode", "valueCodeableConcept": {"coding": [reason]}})
    parts.append(
        {
            "url": REVIEW_ACTION_CODE_URL,
            "valueCodeableConcept": {
                "coding": [_coding(REVIEW_ACTION_SYSTEM, action, REVIEW_ACTIONS[action])]
            },
        }
    )
    return {"url": REVIEW_ACTION_URL, "extension": parts}


def _adjudication(*extensions: dict[str, Any]) -> dict[str, Any]:
    adjudication: dict[str, Any] = {}
    if extensions:
        adjudication["extension"] = list(extensions)
    adjudication["category"] = {"coding": [_coding(ADJUDICATION_SYSTEM, "submitted")]}
    return adjudication


def _quantity(item: dict[str, Any]) -> float:
    value = (item.get("quantity") or {}).get("value")
    return float(value) if isinstance(value, int | float) else 30.0


def _authorized_detail(item: dict[str, Any], quantity: float) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if item.get("productOrService"):
        parts.append({"url": "productOrServiceCode", "valueCodeableConcept": item["productOrService"]})
    parts.append({"url": "quantity", "valueQuantity": {"value": quantity}})
    return {"url": AUTHORIZED_DETAIL_URL, "extension": parts}
