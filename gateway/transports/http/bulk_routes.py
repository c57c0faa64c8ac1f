"""Bulk Data `$export` (gateway/service/bulkexport/exports.py): kick-off, status, cancel and files.

Registered before the generic FHIR routes. Clients only: a person's token is refused (403) on all of them.
The status URL is `[base]/$export-jobs/{id}` and the files `[base]/$export-jobs/{id}/files/{n}`.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.fhir.bulkdata import NDJSON
from gateway.fhir.outcome import information, outcome_bytes
from gateway.service.access.context import RequestContext
from gateway.service.gateway import Gateway
from gateway.transports.http.deps import AuthCtx, Ctx, GatewayDep
from gateway.transports.http.responses import FHIR_JSON

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])


async def _kick_off(
    request: Request, ctx: RequestContext, gateway: Gateway, level: str, group_id: str | None, path: str
) -> Response:
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_format", "_pretty")]
    query = request.url.query
    job_id = await gateway.exports.kick_off(
        ctx,
        level=level,
        group_id=group_id,
        params=params,
        request_url=f"{ctx.base_url}/{path}" + (f"?{query}" if query else ""),
        respond_async=any(
            part.strip().lower() == "respond-async"
            for header in request.headers.getlist("prefer")
            for part in header.split(",")
        ),
    )
    return Response(
        outcome_bytes(
            [information(f"Export job {job_id} accepted; poll the Content-Location for its status")]
        ),
        status_code=202,
        headers={"Content-Location": f"{ctx.base_url}/$export-jobs/{job_id}"},
        media_type=FHIR_JSON,
    )


@router.get("/$export", summary="Bulk Data system-level export (Prefer: respond-async; _type, _since)")
async def system_export(request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    return await _kick_off(request, ctx, gateway, "system", None, "$export")


@router.get("/Patient/$export", summary="Bulk Data export of every Patient's compartment")
async def patient_export(request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    return await _kick_off(request, ctx, gateway, "patient", None, "Patient/$export")


@router.get(
    "/Group/{group_id}/$export", summary="Bulk Data export of a Group's member Patients' compartments"
)
async def group_export(group_id: str, request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    return await _kick_off(request, ctx, gateway, "group", group_id, f"Group/{group_id}/$export")


@router.get(
    "/$export-jobs/{job_id}", summary="Bulk Data export status: 202 while running, 200 with the manifest"
)
async def export_status(job_id: str, ctx: AuthCtx, gateway: GatewayDep) -> Response:
    status = await gateway.exports.status(ctx, job_id)
    if status.status == 202:
        return Response(
            status_code=202, headers={"X-Progress": status.progress or "in progress", "Retry-After": "2"}
        )
    if status.body is not None:
        return Response(orjson.dumps(status.body), status_code=200, media_type="application/json")
    return Response(outcome_bytes(status.issues), status_code=status.status, media_type=FHIR_JSON)


@router.delete("/$export-jobs/{job_id}", summary="cancel a Bulk Data export and delete its files")
async def export_cancel(job_id: str, ctx: AuthCtx, gateway: GatewayDep) -> Response:
    await gateway.exports.cancel(ctx, job_id)
    return Response(
        outcome_bytes([information("Export cancelled; its files are deleted")]),
        status_code=202,
        media_type=FHIR_JSON,
    )


@router.get("/$export-jobs/{job_id}/files/{seq}", summary="one ndjson file of a finished Bulk Data export")
async def export_file(job_id: str, seq: int, ctx: AuthCtx, gateway: GatewayDep) -> Response:
    return Response(await gateway.exports.file(ctx, job_id, seq), media_type=NDJSON)
