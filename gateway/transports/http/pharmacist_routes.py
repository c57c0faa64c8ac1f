"""Pharmacist operations over HTTP: `$match-pharmacist` (rank, and on request assign, a pharmacist) and
`Task/$worklist` (a plain JSON document, not a FHIR resource).

Registered before the generic FHIR routes (`Patient/{id}/$match-pharmacist` is not a vread, `Task/$worklist`
not a read).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.service.pharmacist.matching import PharmacistMatching
from gateway.service.pharmacist.worklist import PharmacistWorklist
from gateway.transports.http.deps import Ctx, GatewayDep, PeopleCtx
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


@router.get(
    "/fhir/Task/$worklist",
    summary="a pharmacist's work ranked (alerts, overdue labs, PA needing action, unassigned patients),"
    " each row with why it is listed and why at its rank; owner= or unassigned=true, kind, patient,"
    " _count, _cursor",
)
async def worklist(request: Request, ctx: PeopleCtx, gateway: GatewayDep) -> Response:
    settings = gateway.settings
    worklist = PharmacistWorklist(
        gateway.fhir,
        gateway.subscriptions.rules,
        expiring_days=settings.pa_expiring_days,
        appeal_days=settings.pa_appeal_days,
    )
    outcome = await worklist.run(ctx, list(request.query_params.multi_items()))
    return Response(outcome.body or b"", status_code=outcome.status, media_type="application/json")
