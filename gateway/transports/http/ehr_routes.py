"""Where upstream EHRs deliver their subscription notifications (gateway/service/ehrpull/subscriber.py).

Not a FHIR endpoint and no gateway token: each upstream's Subscription carries a bearer secret of its own,
checked (constant time) before the body is read. The body is read up to the subscriber's limit (413
beyond it), so a peer cannot make us hold more.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.exceptions import PayloadTooLarge
from gateway.fhir import jsonio
from gateway.transports.http.deps import GatewayDep
from gateway.transports.http.responses import FHIR_JSON

router = APIRouter(tags=["EHRs over FHIR"])


@router.post(
    "/ehr/notifications/{upstream}",
    summary="an upstream EHR's subscription notifications (handshake, heartbeat, events; R4 backport)",
)
async def upstream_notification(upstream: str, request: Request, gateway: GatewayDep) -> Response:
    subscriber = gateway.subscriber
    config = subscriber.check_secret(upstream, request.headers.get("authorization"))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > subscriber.max_body_bytes:
            subscriber.counts[upstream].rejected += 1
            raise PayloadTooLarge(f"A notification may hold at most {subscriber.max_body_bytes} bytes")
    outcome = await subscriber.receive(config, bytes(body))
    return Response(jsonio.dumps(outcome), status_code=200, media_type=FHIR_JSON)
