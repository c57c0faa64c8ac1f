"""FastAPI dependencies: the gateway, the caller's context (token, Prefer, formats)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.auth.scopes import Grants
from gateway.exceptions import Forbidden, NotAcceptable, UnsupportedMediaType
from gateway.fhir.audit import PRACTITIONER_AGENT, AuditRecord
from gateway.service.access.clients import grants_for
from gateway.service.access.context import PreferReturn, RequestContext
from gateway.service.access.people import PersonAccess
from gateway.service.gateway import Gateway

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "json", "text/json")


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def fhir_base(request: Request, gateway: Gateway) -> str:
    if gateway.settings.base_url:
        return gateway.settings.base_url.rstrip("/")
    # Starlette builds a URL object for request.base_url on every request; its parts are few and repeat.
    scope = request.scope
    root = scope.get("app_root_path", scope.get("root_path", ""))
    key = (scope.get("scheme"), request.headers.get("host"), scope.get("server"), root)
    base = _BASES.get(key)
    if base is None:
        base = str(request.base_url).rstrip("/") + "/fhir"
        if len(_BASES) >= _BASES_KEPT:  # a Host header is the client's to choose: bounded
            _BASES.clear()
        _BASES[key] = base
    return base


_BASES: dict[tuple[object, ...], str] = {}
_BASES_KEPT = 256


def check_formats(request: Request) -> None:
    """Only JSON is served: refuse XML (or anything else) explicitly rather than answer in JSON anyway."""
    fmt = request.query_params.get("_format")
    if fmt is not None and fmt not in JSON_TYPES:
        raise NotAcceptable(f"_format={fmt} is not supported; this server speaks application/fhir+json only")
    accept = request.headers.get("accept", "")
    if accept:
        kinds = [part.split(";")[0].strip() for part in accept.split(",")]
        if not any(k in JSON_TYPES or k in ("*/*", "application/*", "") for k in kinds):
            raise NotAcceptable(f"Accept: {accept} is not supported; use application/fhir+json")
    if request.method in ("POST", "PUT"):
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        allowed = (
            (*JSON_TYPES, "application/x-www-form-urlencoded")
            if request.url.path.endswith("/_search")
            else JSON_TYPES
        )
        if ctype and ctype not in allowed:
            raise UnsupportedMediaType(f"Content-Type {ctype} is not supported; send application/fhir+json")


def parse_prefer(header: str) -> tuple[PreferReturn, bool]:
    returning: PreferReturn = "representation"
    strict = False
    for part in header.split(","):
        for item in part.split(";"):
            key, _, value = item.strip().partition("=")
            value = value.strip('"')
            if key == "return" and value in ("minimal", "representation", "OperationOutcome"):
                returning = value  # type: ignore[assignment]
            elif key == "handling":
                strict = value == "strict"
    return returning, strict


async def _context(request: Request, *, people: bool) -> RequestContext:
    """The caller's context from its bearer token: a client's, or (where `people`) a person's token that
    a SMART app holds, with the person's reach (gateway/service/access/people.py)."""
    gateway = get_gateway(request)  # not a nested dependency: each one costs on every request
    claims = await gateway.auth.verify_bearer(request.headers.get("authorization"))
    state = request.scope.setdefault("state", {})
    state["client_id"] = claims.client_id
    audit = state.get("audit")  # begun by the Observability middleware (audit_routes.begin)
    record = audit if isinstance(audit, AuditRecord) else None
    returning, strict = parse_prefer(request.headers.get("prefer", ""))
    person: PersonAccess | None = None
    if claims.user_id is not None:
        if not people:
            raise Forbidden("This route is for the gateway's clients; a user's token does not open it")
        person = await gateway.people.for_token(claims)
        grants = Grants.for_person(claims.scope)
        if record is not None:
            name_person(record, person)
    else:
        grants = grants_for(claims.scope)
        if record is not None:
            record.agent = claims.client_id
    return RequestContext(
        base_url=fhir_base(request, gateway),
        grants=grants,
        client_id=claims.client_id,
        prefer_return=returning,
        strict_handling=strict,
        audit=record,
        person=person,
    )


def name_person(record: AuditRecord, person: PersonAccess) -> None:
    """The AuditEvent's agent is the person: their Practitioner (user name as altId), else their name."""
    if person.practitioner:
        record.agent, record.agent_kind, record.agent_alt = (
            person.practitioner,
            PRACTITIONER_AGENT,
            person.name,
        )
    else:
        record.agent, record.agent_kind = person.name, "user"


async def authenticated_context(request: Request) -> RequestContext:
    """A client's context, for routes that serve clients only (a person's token is refused, 403)."""
    return await _context(request, people=False)


async def person_or_client_context(request: Request) -> RequestContext:
    """A client's or a person's context, for routes that apply a person's reach."""
    return await _context(request, people=True)


async def request_context(request: Request) -> RequestContext:
    """The context of a FHIR request from a client: authenticated, and in a format this server speaks."""
    ctx = await authenticated_context(request)
    check_formats(request)
    return ctx


async def people_request_context(request: Request) -> RequestContext:
    """The context of a FHIR request from a client or a person."""
    ctx = await person_or_client_context(request)
    check_formats(request)
    return ctx


Ctx = Annotated[RequestContext, Depends(request_context)]
AuthCtx = Annotated[RequestContext, Depends(authenticated_context)]
# Routes that apply a person's reach (FhirService, the patient operations) also take a person's token.
PeopleCtx = Annotated[RequestContext, Depends(people_request_context)]
PeopleAuthCtx = Annotated[RequestContext, Depends(person_or_client_context)]
