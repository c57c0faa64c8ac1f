"""FastAPI dependencies: the gateway, the caller's context (token, Prefer, formats)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.exceptions import NotAcceptable, UnsupportedMediaType
from gateway.fhir.audit import AuditRecord
from gateway.service.access.clients import grants_for
from gateway.service.access.context import PreferReturn, RequestContext
from gateway.service.gateway import Gateway

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "json", "text/json")


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def fhir_base(request: Request, gateway: Gateway) -> str:
    if gateway.settings.base_url:
        return gateway.settings.base_url.rstrip("/")
    return str(request.base_url).rstrip("/") + "/fhir"


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


async def authenticated_context(request: Request) -> RequestContext:
    """The caller's context from its bearer token, for any route (FHIR or not)."""
    gateway = get_gateway(request)  # not a nested dependency: each one costs on every request
    claims = await gateway.auth.verify_bearer(request.headers.get("authorization"))
    state = request.scope.setdefault("state", {})
    state["client_id"] = claims.client_id
    audit = state.get("audit")  # begun by the Observability middleware (audit_routes.begin)
    if isinstance(audit, AuditRecord):
        audit.agent = claims.client_id
    returning, strict = parse_prefer(request.headers.get("prefer", ""))
    return RequestContext(
        base_url=fhir_base(request, gateway),
        grants=grants_for(claims.scope),
        client_id=claims.client_id,
        prefer_return=returning,
        strict_handling=strict,
        audit=audit if isinstance(audit, AuditRecord) else None,
    )


async def request_context(request: Request) -> RequestContext:
    """The context of a FHIR request: authenticated, and in a format this server speaks."""
    ctx = await authenticated_context(request)
    check_formats(request)
    return ctx


Ctx = Annotated[RequestContext, Depends(request_context)]
AuthCtx = Annotated[RequestContext, Depends(authenticated_context)]
