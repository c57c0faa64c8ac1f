"""Pharmacist operations over HTTP: `$match-pharmacist` (rank, and on request assign, a pharmacist).

Registered before the generic FHIR routes (`Patient/{id}/$match-pharmacist` is not a vread).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.service.pharmacist.matching import PharmacistMatching
from gateway.transports.http.deps import Ctx, GatewayDep
from gateway.transports.http.responses import fhir_response

router = APIRouter(tags=["Pharmacist"])


@router.post(
    "/fhir/Patient/{patient_id}/$match-pharmacist",
    summary="rank the pharmacists for this patient; with assign=true, assign the best one (a CareTeam)"
    " or open an unassigned-patient Task",
)
async def match_pharmacist(patient_id: str, request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    matching = PharmacistMatching(gateway.fhir, gateway.subscriptions.rules)
    return fhir_response(await matching.run(ctx, patient_id, await request.body()))
