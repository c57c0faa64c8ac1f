"""CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/): discovery and the `order-sign` prior-authorization service.

Deviation from the specification: CDS clients normally authenticate with a JWT the EHR signs; here the
caller is a registered client with a gateway bearer token (read on Patient, Coverage, Observation and
MedicationRequest), like every other API client.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from gateway.exceptions import NotFound
from gateway.service.priorauth.coverage import SERVICE_ID
from gateway.transports.http.deps import AuthCtx, GatewayDep

router = APIRouter(tags=["CDS Hooks"])


@router.get("/cds-services", summary="CDS Hooks discovery: the services this gateway offers")
async def discovery(gateway: GatewayDep) -> Response:
    # Discovery is public in CDS Hooks: it says what exists, never anything about a patient.
    return JSONResponse(gateway.coverage.discovery())


@router.post(
    "/cds-services/{service_id}",
    summary="order-sign: prior authorization required, missing documentation, open the PA request",
)
async def call_service(service_id: str, request: Request, ctx: AuthCtx, gateway: GatewayDep) -> Response:
    if service_id != SERVICE_ID:
        raise NotFound(f"No CDS service {service_id!r} here (see GET /cds-services)")
    return JSONResponse(await gateway.coverage.order_sign(ctx, service_id, await request.body()))
