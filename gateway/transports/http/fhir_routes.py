"""FHIR REST routes under /fhir. Thin: each one parses the HTTP request and calls one interaction."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import __version__
from gateway.fhir.capability import capability_statement
from gateway.fhir.urls import check_type
from gateway.transports.http.deps import GatewayDep, PeopleCtx, check_formats, fhir_base
from gateway.transports.http.responses import FHIR_JSON, fhir_response

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])

Params = list[tuple[str, str]]


def query_params(request: Request) -> Params:
    return list(request.query_params.multi_items())


@router.get("/metadata", summary="CapabilityStatement (open, no token needed)")
async def metadata(request: Request, gateway: GatewayDep) -> Response:
    import orjson

    check_formats(request)
    base = fhir_base(request, gateway)
    statement = capability_statement(
        base_url=base,
        version=__version__,
        token_url=str(request.base_url).rstrip("/") + "/auth/token",
        profiles_for=gateway.profiles.profiles_for,
        topic_urls=[t.url for t in gateway.subscriptions.topics.topics],
    )
    return Response(orjson.dumps(statement), media_type=FHIR_JSON)


@router.post("/", include_in_schema=False)
@router.post("", summary="transaction or batch Bundle")
async def bundle(request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.bundles.process(ctx, await request.body()))


@router.get("/{rtype}", summary="search")
async def search(rtype: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.fhir.search(ctx, rtype, query_params(request)))


@router.post("/{rtype}/_search", summary="search with form-encoded parameters")
async def search_post(rtype: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    check_type(rtype)
    form = await request.form()
    params = query_params(request) + [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    return fhir_response(await gateway.fhir.search(ctx, rtype, params))


@router.post(
    "/{rtype}", summary="create (If-None-Exist, or search parameters in the URL, for conditional create)"
)
async def create(rtype: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    body = await request.body()
    return fhir_response(await gateway.fhir.create(ctx, rtype, body, create_criteria(request)))


def create_criteria(request: Request) -> str | None:
    """A conditional create's search: If-None-Exist, else the URL's parameters (POST Type?params: what
    fhirpy's get_or_create sends, an Aidbox convention); None for a plain create."""
    criteria = request.headers.get("if-none-exist")
    if criteria is None:
        params = [(k, v) for k, v in query_params(request) if k not in ("_format", "_pretty")]
        criteria = urlencode(params) or None
    return criteria


@router.put("/{rtype}", summary="conditional update")
async def conditional_update(rtype: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    outcome = await gateway.fhir.conditional_update(
        ctx, rtype, query_params(request), await request.body(), request.headers.get("if-match")
    )
    return fhir_response(outcome)


@router.delete("/{rtype}", summary="conditional delete")
async def conditional_delete(rtype: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.fhir.conditional_delete(ctx, rtype, query_params(request)))


@router.get("/{rtype}/_history", summary="type history")
async def type_history(rtype: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.fhir.history(ctx, rtype, None, query_params(request)))


@router.get("/{rtype}/{rid}", summary="read")
async def read(rtype: str, rid: str, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.fhir.read(ctx, rtype, rid))


@router.put("/{rtype}/{rid}", summary="update (If-Match for optimistic locking)")
async def update(rtype: str, rid: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    outcome = await gateway.fhir.update(
        ctx, rtype, rid, await request.body(), request.headers.get("if-match")
    )
    return fhir_response(outcome)


@router.delete("/{rtype}/{rid}", summary="delete")
async def delete(rtype: str, rid: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.fhir.delete(ctx, rtype, rid, request.headers.get("if-match")))


@router.get("/{rtype}/{rid}/_history", summary="instance history")
async def instance_history(
    rtype: str, rid: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep
) -> Response:
    return fhir_response(await gateway.fhir.history(ctx, rtype, rid, query_params(request)))


@router.get("/{rtype}/{rid}/_history/{vid}", summary="vread")
async def vread(rtype: str, rid: str, vid: str, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.fhir.vread(ctx, rtype, rid, vid))
