"""`GET /fhir/Patient/{id}/$everything` (gateway/service/pharmacist/everything.py).

Registered before the generic FHIR routes. The type-level form (`GET /fhir/Patient/$everything`, every
patient) is not offered.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.service.pharmacist.everything import PatientEverything
from gateway.transports.http.deps import GatewayDep, PeopleCtx
from gateway.transports.http.responses import fhir_response

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])


@router.get(
    "/Patient/{patient_id}/$everything",
    summary="the Patient and its compartment (and what it references), paged; _type, _since, _count",
)
async def patient_everything(
    patient_id: str, request: Request, ctx: PeopleCtx, gateway: GatewayDep
) -> Response:
    params = list(request.query_params.multi_items())
    return fhir_response(await PatientEverything(gateway.fhir).run(ctx, patient_id, params))
