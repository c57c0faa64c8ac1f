"""`GET /fhir/Patient/{id}/$timeline` (gateway/service/pharmacist/timeline.py): a plain JSON document,
not a FHIR resource. Registered before the generic FHIR routes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.service.pharmacist.timeline import PatientTimeline
from gateway.transports.http.deps import Ctx, GatewayDep

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])


@router.get(
    "/Patient/{patient_id}/$timeline",
    summary="one chronological list of the patient's orders, dispenses, results, PA moves, payer answers,"
    " alerts and interventions, with kind, summary and source; _since, _count, _cursor",
)
async def patient_timeline(patient_id: str, request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    params = list(request.query_params.multi_items())
    outcome = await PatientTimeline(gateway.fhir).run(ctx, patient_id, params)
    return Response(outcome.body or b"", status_code=outcome.status, media_type="application/json")
