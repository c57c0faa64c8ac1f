"""The audit trail over HTTP: every request's AuditRecord (begun and queued by the Observability
middleware), the token endpoint's claimed client, `/fhir/AuditEvent` and the audit log's metrics.

Registered before the generic FHIR routes: AuditEvent is not a resource of the store.

Which requests are audited: every request to a route except the open ones (metadata, health, metrics,
discovery, API docs); requests to no route at all are not (they reach nothing). What an HTTP request is
follows from its route: `GET /fhir/{type}/{id}` a read of Type/id, `POST /fhir/{type}` a create, a `$`
segment an operation, `POST /hl7v2` and the payer feeds an Import, `POST /auth/token` a login. The
interactions add what the route cannot know (the id a create assigned, what a conditional write hit, the
resources read, searched or written and so their Patients); the HL7 v2 pipeline adds the message and its
ACK code.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.responses import Response
from starlette.types import Scope

from gateway.auth.assertions import InvalidClientAssertion, assertion_client_id
from gateway.exceptions import MethodNotAllowed
from gateway.fhir import dates
from gateway.fhir.audit import LOGIN, AuditRecord, outcome_of_status
from gateway.fhir.searchparams import RESOURCE_TYPES
from gateway.service.fhirapi.audit import AuditLog
from gateway.transports.http.deps import Ctx, GatewayDep
from gateway.transports.http.responses import fhir_response

log = logging.getLogger("gateway.audit")

router = APIRouter(prefix="/fhir", tags=["Audit"])

# Routes anyone may call, with nothing to audit.
OPEN_ROUTES = frozenset(
    {
        "/fhir/metadata",
        "/healthz",
        "/metrics",
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/console/static/{name}",  # the console's style sheet and script: no data
    }
)
# Non-FHIR routes that bring data in from outside.
IMPORT_ROUTES = frozenset({"/hl7v2", "/payer/pas/notifications", "/payer/files"})
TOKEN_ROUTE = "/auth/token"

# FHIR route shapes after the type (an `{...}` is any path parameter) -> interaction, by method.
_FHIR_SHAPES: dict[tuple[str, ...], dict[str, str]] = {
    (): {"GET": "search-type", "POST": "create", "PUT": "update", "DELETE": "delete"},
    ("_search",): {"POST": "search-type", "GET": "search-type"},
    ("_history",): {"GET": "history-type"},
    ("{}",): {"GET": "read", "PUT": "update", "DELETE": "delete", "PATCH": "patch"},
    ("{}", "_history"): {"GET": "history-instance"},
    ("{}", "_history", "{}"): {"GET": "vread"},
}


# -- the middleware's part -----------------------------------------------------------------------------


def begin(scope: Scope) -> None:
    """A request arrives: its record starts (when and from where); the route and interactions fill it."""
    client = scope.get("client")
    scope.setdefault("state", {})["audit"] = AuditRecord(
        recorded_us=dates.now_us(), address=client[0] if client else None
    )


def record_of(request: Request) -> AuditRecord | None:
    record = request.scope.get("state", {}).get("audit")
    return record if isinstance(record, AuditRecord) else None


def finish(scope: Scope, status: int) -> None:
    """The request was answered: complete its record from the route and the status, and queue it."""
    record = (scope.get("state") or {}).get("audit")
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(record, AuditRecord) or template is None or template in OPEN_ROUTES:
        return
    gateway = getattr(getattr(scope.get("app"), "state", None), "gateway", None)
    audit = getattr(gateway, "audit", None)
    if not isinstance(audit, AuditLog):
        return
    try:
        describe(record, scope["method"], template, scope.get("path_params") or {}, scope.get("query_string"))
        if record.kind == "login" and record.outcome_desc is not None and status < 500:
            record.finish(record.outcome)  # a person's login or logout: the console route said how it went
        elif status >= 400 or record.outcome_desc is None:
            record.finish(outcome_of_status(status), f"HTTP {status}")
        else:  # the HL7 v2 ACK code said how it went
            record.finish(record.outcome)
        audit.record(record)
    except Exception:  # the answer is sent; a broken record must not break the server
        log.exception("auditing %s %s failed", scope["method"], template)


def describe(
    record: AuditRecord, method: str, template: str, path_params: dict[str, Any], query_string: bytes | None
) -> None:
    """What the route says about a request, where the interactions did not say it already."""
    segments = [s for s in template.split("/") if s]
    if template == TOKEN_ROUTE:
        record.kind, record.subtype = "login", LOGIN
        return
    if template in IMPORT_ROUTES:
        record.kind = "import"
        if template != "/hl7v2":
            record.operation = f"{method} {template}"
        return
    if not segments or segments[0] != "fhir":
        _describe_other(record, method, template, path_params, query_string)
        return
    fhir = segments[1:]
    if not fhir:  # the base: a batch or transaction (the Bundle processor says which)
        record.subtype = record.subtype or "batch"
        return
    values = [str(path_params.get(s[1:-1], s)) if s.startswith("{") else s for s in fhir]
    resource_type = values[0]
    operation = next((s for s in fhir if s.startswith("$")), None)
    if operation is not None:
        record.subtype = record.subtype or "operation"
        record.operation = record.operation or operation
        if len(fhir) > 2 and fhir[1].startswith("{"):
            record.touch(resource_type, values[1], resolve=resource_type in RESOURCE_TYPES)
        return
    shape = tuple("{}" if s.startswith("{") else s for s in fhir[1:])
    interaction = _FHIR_SHAPES.get(shape, {}).get(method)
    record.subtype = record.subtype or interaction or "operation"
    if shape and shape[0] == "{}":
        record.touch(resource_type, values[1], resolve=resource_type in RESOURCE_TYPES)
    if interaction in ("search-type", "history-type") and not record.queries:
        # Refused before the search ran (scopes, bad parameters): the query as sent.
        params = parse_qsl((query_string or b"").decode("latin-1"), keep_blank_values=True)
        record.searched(resource_type, params, patients=resource_type != "AuditEvent")


def _describe_other(
    record: AuditRecord, method: str, template: str, path_params: dict[str, Any], query_string: bytes | None
) -> None:
    """The gateway's own routes (the HL7 v2 log and senders): an operation named by its route."""
    record.subtype = record.subtype or "operation"
    record.operation = record.operation or f"{method} {template}"
    message_id = path_params.get("message_id")
    if message_id and record.message is None:
        record.message = (str(message_id), "", "")
    if query_string:
        record.queries.append(("", query_string.decode("latin-1")))


# -- the token endpoint's part -------------------------------------------------------------------------


def note_token_request(request: Request, form: dict[str, str]) -> None:
    """A token request: the client it claims to be (before anything is checked: a failed login is
    recorded under the id that was tried). Secrets never reach the record."""
    record = record_of(request)
    if record is not None:
        record.kind, record.subtype = "login", LOGIN
        record.agent = claimed_client(form, request.headers.get("authorization"))


def claimed_client(form: dict[str, str], authorization: str | None) -> str | None:
    """The client id a token request names: Basic credentials, `client_id`, or the assertion's issuer."""
    if authorization and authorization.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return unquote(decoded.partition(":")[0]) or None
    if "client_assertion" in form:
        try:
            return assertion_client_id(form["client_assertion"])
        except InvalidClientAssertion:
            return None
    return form.get("client_id") or None


# -- reading the trail ---------------------------------------------------------------------------------


@router.get("/AuditEvent", summary="search the audit trail (needs audit/events.read)")
async def search(request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    params = list(request.query_params.multi_items())
    settings = gateway.settings
    outcome = await gateway.audit.search(
        ctx, params, default_count=settings.default_page_size, max_count=settings.max_page_size
    )
    return fhir_response(outcome)


@router.get("/AuditEvent/{event_id}", summary="one AuditEvent (needs audit/events.read)")
async def read(event_id: str, ctx: Ctx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.audit.read(ctx, event_id))


@router.api_route("/AuditEvent", methods=["POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
@router.api_route(
    "/AuditEvent/{event_id}", methods=["POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
)
async def read_only() -> Response:
    raise MethodNotAllowed("The audit trail is read-only: AuditEvents are written by the gateway alone")


# -- metrics -------------------------------------------------------------------------------------------


class AuditCollector:
    """The audit log's counters at scrape time: written, dropped (queue full), queued."""

    def __init__(self, source: Callable[[], AuditLog]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        audit = self.source()
        written = CounterMetricFamily("gateway_audit_events_written", "AuditEvents written")
        written.add_metric([], audit.written)
        dropped = CounterMetricFamily(
            "gateway_audit_events_dropped", "AuditEvents dropped because the audit queue was full"
        )
        dropped.add_metric([], audit.dropped)
        queued = GaugeMetricFamily("gateway_audit_queue", "AuditEvents waiting to be written")
        queued.add_metric([], audit.queued)
        yield from (written, dropped, queued)
