"""`GET /fhir/Patient/{id}/$timeline` (gateway/service/pharmacist/timeline.py): a plain JSON document,
not a FHIR resource; with `_stream=true` the live form, as server-sent events
(gateway/service/pharmacist/timeline_stream.py, framed by event_stream.py). Registered before the
generic FHIR routes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.exceptions import Forbidden, NotAcceptable
from gateway.service.pharmacist.timeline import PatientTimeline
from gateway.service.pharmacist.timeline_stream import StreamsUnavailable, TooManyStreams, stream_requested
from gateway.transports.http.deps import GatewayDep, PeopleAuthCtx, check_formats
from gateway.transports.http.event_stream import EVENT_STREAM, EventStreamResponse
from gateway.transports.http.responses import error_response

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])

RETRY_AFTER_SECONDS = "5"


@router.get(
    "/Patient/{patient_id}/$timeline",
    summary="one chronological list of the patient's orders, dispenses, results, PA moves, payer answers,"
    " alerts and interventions, with kind, summary and source; _since, _count, _cursor; _stream=true:"
    " new entries as server-sent events (Last-Event-ID resumes)",
    response_model=None,
)
async def patient_timeline(
    patient_id: str, request: Request, ctx: PeopleAuthCtx, gateway: GatewayDep
) -> Response:
    params = list(request.query_params.multi_items())
    if not stream_requested(params):
        check_formats(request)
        outcome = await PatientTimeline(gateway.fhir).run(ctx, patient_id, params)
        return Response(outcome.body or b"", status_code=outcome.status, media_type="application/json")
    _check_stream_accept(request)
    authorization = request.headers.get("authorization")
    claims = await gateway.auth.verify_bearer(authorization)

    async def check_token() -> None:
        current = await gateway.auth.verify_bearer(authorization)
        if current.user_id is not None:  # a person: still enabled, and still this patient's (CareTeams)
            person = await gateway.people.for_token(current)
            if not person.sees_patient(patient_id):
                raise Forbidden(f"The user no longer reaches Patient/{patient_id}")

    try:
        stream = await gateway.timeline_feed.open(
            ctx,
            patient_id,
            params,
            last_event_id=request.headers.get("last-event-id"),
            expires_at=claims.expires_at,
            check_token=check_token,
        )
    except (TooManyStreams, StreamsUnavailable) as exc:
        refused = error_response(exc)
        refused.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return refused
    return EventStreamResponse(stream, send_timeout=gateway.settings.timeline_stream_send_timeout_seconds)


def _check_stream_accept(request: Request) -> None:
    accept = request.headers.get("accept", "")
    kinds = [part.split(";")[0].strip() for part in accept.split(",")] if accept else []
    if kinds and not any(k in (EVENT_STREAM, "text/*", "*/*", "") for k in kinds):
        raise NotAcceptable(f"Accept: {accept[:100]} does not allow {EVENT_STREAM}, what _stream=true sends")
