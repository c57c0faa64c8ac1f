"""Every Subscription at the console (for a person holding `subscriptions/admin`): its status, topic,
endpoint, owner, last delivery, failures and backlog, and Reactivate for one in `error` or `off`.

Read with the same checks as `$status` (SubscriptionManager.status_of); Reactivate is what a client does
(README, Subscriptions: Lifecycle): the Subscription updated with `status: requested` through the FHIR
service, so validation, the endpoint check, the handshake and the audit trail are the same.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from gateway.auth.roles import Area
from gateway.exceptions import FhirError
from gateway.fhir import jsonio
from gateway.service.subscriptions.manager import ADMIN_SCOPE
from gateway.store import search as store_search
from gateway.store import subscriptions as sub_store
from gateway.transports.http.console.render import render
from gateway.transports.http.console.session import Caller, caller_of, csrf_ok, form_of
from gateway.transports.http.console.subscription_rows import REACTIVATABLE, SubscriptionRow, subscription_row

router = APIRouter(prefix="/console", include_in_schema=False)

DONE = {"reactivate": "Reactivation requested: the gateway calls the endpoint again (handshake)."}
_REFUSED = "Your role does not open the subscriptions."
_EXPIRED = "This form has expired or did not come from this site. Open the page again."


def _may_open(caller: Caller) -> bool:
    return caller.reaches(Area.SUBSCRIPTIONS) and caller.ctx.may(ADMIN_SCOPE)


async def _rows(caller: Caller) -> list[SubscriptionRow]:
    manager = caller.gateway.subscriptions
    rows = []
    async with caller.gateway.db.read() as conn:
        stored = await store_search.all_current(conn, "Subscription")
        for sub_id in sorted(s.id for s in stored):
            resource, state = await manager.status_of(conn, caller.ctx, sub_id)
            last = await sub_store.attempts(conn, sub_id, limit=1)
            rows.append(subscription_row(manager.spec_of(resource), state, last[0] if last else None))
    return rows


async def _page(request: Request, caller: Caller, error: str | None = None, status: int = 200) -> Response:
    try:
        rows = await _rows(caller)
    except FhirError as exc:
        return render(request, caller, "refused.html", "Refused", {"message": str(exc)}, exc.status)
    done = DONE.get(request.query_params.get("done", ""))
    values = {"rows": rows, "done": done, "error": error}
    return render(request, caller, "subscriptions.html", "Subscriptions", values, status)


@router.get("/subscriptions")
async def subscriptions(request: Request) -> Response:
    caller = await caller_of(request)
    if not _may_open(caller):
        return render(request, caller, "refused.html", "Refused", {"message": _REFUSED}, 403)
    return await _page(request, caller)


@router.post("/subscriptions/{sub_id}/reactivate")
async def reactivate(sub_id: str, request: Request) -> Response:
    caller = await caller_of(request)
    if not _may_open(caller):
        return render(request, caller, "refused.html", "Refused", {"message": _REFUSED}, 403)
    form = await form_of(request)
    if not csrf_ok(form, caller):
        return render(request, caller, "refused.html", "Refused", {"message": _EXPIRED}, 403)
    try:
        # The delivery state decides (the resource's status follows it, written by the gateway).
        async with caller.gateway.db.read() as conn:
            _, state = await caller.gateway.subscriptions.status_of(conn, caller.ctx, sub_id)
        if state.status not in REACTIVATABLE:
            return await _page(request, caller, f"Subscription/{sub_id} is {state.status}", 409)
        read = await caller.gateway.fhir.read(caller.ctx, "Subscription", sub_id)
        assert read.stored is not None and read.body is not None
        resource = jsonio.loads(read.body)
        # The read hides the secret and header values; the update keeps the stored ones (restore).
        resource["status"] = "requested"
        await caller.gateway.fhir.update(
            caller.ctx, "Subscription", sub_id, jsonio.dumps(resource), f'W/"{read.stored.version}"'
        )
    except FhirError as exc:
        return await _page(request, caller, f"Not reactivated: {_reason(exc)}", exc.status)
    return RedirectResponse("/console/subscriptions?done=reactivate", status_code=303)


def _reason(exc: FhirError) -> str:
    return "; ".join(i.diagnostics for i in exc.issues if i.is_error) or str(exc)
