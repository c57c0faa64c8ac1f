"""Prior authorization over HTTP: the request operation, the payer-facing endpoints, turnaround.

Registered before the generic FHIR routes (`MedicationRequest/{id}/$request-prior-auth` is not a vread).
Payers authenticate like any client (a token from /auth/token; ClaimResponse create scope).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from gateway.transports.http.deps import AuthCtx, Ctx, GatewayDep
from gateway.transports.http.responses import fhir_response

router = APIRouter(tags=["Prior authorization"])


@router.post(
    "/fhir/MedicationRequest/{request_id}/$request-prior-auth",
    summary="assemble a Da Vinci PAS request for this order, submit it to the payer, return the PA Task",
)
async def request_prior_auth(request_id: str, request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.pa_ops.request(ctx, request_id, await request.body()))


@router.post(
    "/fhir/Task/{task_id}/$appeal",
    summary="appeal a denied prior authorization: a new PA Task partOf it, submitted to the payer",
)
async def appeal(task_id: str, request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.pa_ops.appeal(ctx, task_id, await request.body()))


@router.post(
    "/fhir/Task/{task_id}/$cancel",
    summary="withdraw a prior-authorization request (the payer is sent a cancellation when it has it)",
)
async def cancel(task_id: str, request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.pa_ops.cancel(ctx, task_id, await request.body()))


@router.get("/fhir/Task/$pa-turnaround", summary="prior-authorization turnaround per payer")
async def turnaround(ctx: Ctx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.pa_ops.turnaround(ctx))


@router.post(
    "/payer/pas/notifications",
    summary="payers POST PAS response Bundles and PAS subscription notifications here",
)
async def payer_notifications(request: Request, ctx: AuthCtx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.pa_ops.payer_message(ctx, await request.body()))


@router.post("/payer/files", summary="an X12 278 response or a CSV status file (as `gateway ingest` takes)")
async def payer_files(request: Request, ctx: AuthCtx, gateway: GatewayDep) -> Response:
    ctx.require("ClaimResponse", "c")
    text = (await request.body()).decode("utf-8-sig", errors="replace")
    report = await gateway.pa_ops.payer_file(text, ctx.client_id)
    for answered in report.applied:  # for the audit trail: the Tasks (and so the Patients) it moved
        ctx.note("Task", answered.task_id)
    return PlainTextResponse("\n".join(report.lines()) + "\n")
