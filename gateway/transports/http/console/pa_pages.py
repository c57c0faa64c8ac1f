"""The prior-authorization board (`/console/pa`): the PA Tasks the person reaches, by businessStatus in
lifecycle order (gateway/pa/board.py), with appeal (a denied request) and withdraw (an open one).

Every read goes through the FHIR service with the person's context, so a coordinator sees the PA Tasks of
their patients and nothing else. The actions call the same operations as `POST /fhir/Task/{id}/$appeal`
and `$cancel` (gateway/service/priorauth/operations.py). Those check the context's scopes but then read
and write the store with the PA service's internal context, without the person's reach (their FHIR routes
refuse a user's token for that reason): so the Task is read here first with the person's context, and a
Task out of their reach is a 404 before anything moves.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from gateway.auth.roles import Area
from gateway.exceptions import FhirError
from gateway.fhir import dates, jsonio
from gateway.pa import board, tasks
from gateway.pa.lifecycle import TASK_TYPE_SYSTEM
from gateway.pharmacist.worklist import PA_TASK_CODES
from gateway.transports.http.console.render import render
from gateway.transports.http.console.session import Caller, caller_of, csrf_ok, form_of
from gateway.transports.http.console.worklist_pages import patient_names

router = APIRouter(prefix="/console", include_in_schema=False)

DONE = {  # what an action did, by the code the redirect carries
    "appeal": "Appeal submitted to the payer.",
    "withdraw": "Request withdrawn.",
}
MAX_TASKS = 200  # one page of the board; beyond it the page says how many more there are
_EXPIRED = "This form has expired or did not come from this site. Open the page again."


async def pa_tasks(caller: Caller) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], int]:
    """The PA Tasks the person reaches (newest first), their focus orders they may read, and the total."""
    codes = ",".join(f"{TASK_TYPE_SYSTEM}|{code}" for code in PA_TASK_CODES)
    params = [("code", codes), ("_sort", "-_lastUpdated"), ("_count", str(MAX_TASKS))]
    if caller.ctx.can("MedicationRequest", "r"):
        params.append(("_include", "Task:focus"))
    found = await caller.gateway.fhir.search(caller.ctx, "Task", params)
    bundle = orjson.loads(found.body or b"{}")
    found_tasks: list[dict[str, Any]] = []
    orders: dict[str, dict[str, Any]] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Task" and tasks.is_pa_task(resource):
            found_tasks.append(resource)
        elif resource.get("resourceType") == "MedicationRequest":
            orders[f"MedicationRequest/{resource.get('id')}"] = resource
    return found_tasks, orders, int(bundle.get("total") or len(found_tasks))


@router.get("/pa")
async def pa_board(request: Request) -> Response:
    caller = await caller_of(request)
    return await _board_page(request, caller)


async def _board_page(
    request: Request, caller: Caller, error: str | None = None, status: int = 200
) -> Response:
    if not caller.reaches(Area.PA_WORK):
        message = {"message": "Prior authorizations are not part of this user's role."}
        return render(request, caller, "refused.html", "Refused", message, 403)
    found, orders, total = await pa_tasks(caller)
    columns = board.board(found, orders, dates.now_us())
    patients = {
        c.patient.split("/", 1)[1]
        for col in columns
        for c in col.cards
        if c.patient is not None and c.patient.startswith("Patient/")
    }
    values = {
        "columns": columns,
        "names": await patient_names(caller, patients),
        "shown": len(found),
        "total": total,
        "breached": sum(1 for c in columns for card in c.cards if card.breached),
        "done": DONE.get(request.query_params.get("done", "")),
        "error": error,
    }
    return render(request, caller, "pa.html", "Prior authorizations", values, status)


@router.post("/pa/{task_id}/{action}")
async def pa_action(task_id: str, action: str, request: Request) -> Response:
    caller = await caller_of(request)
    form = await form_of(request)
    if not csrf_ok(form, caller):
        return render(request, caller, "refused.html", "Refused", {"message": _EXPIRED}, 403)
    if action not in DONE or not caller.reaches(Area.PA_WORK):
        message = {"message": "This action is not available to this user."}
        return render(request, caller, "refused.html", "Refused", message, 404 if action not in DONE else 403)
    try:
        # The person's reach first: an out-of-reach Task is a 404 here, before the operation (which
        # writes with the PA service's own context) is called.
        read = await caller.gateway.fhir.read(caller.ctx, "Task", task_id)
        if read.body is None or not tasks.is_pa_task(jsonio.loads(read.body)):
            return render(request, caller, "refused.html", "Not found", {"message": _NOT_PA}, 404)
        body = _reason_parameters(form.get("reason", ""))
        if action == "appeal":
            await caller.gateway.pa_ops.appeal(caller.ctx, task_id, body)
        else:
            await caller.gateway.pa_ops.cancel(caller.ctx, task_id, body)
    except FhirError as exc:
        if exc.status == 404:
            return render(request, caller, "refused.html", "Not found", {"message": _NOT_PA}, 404)
        return await _board_page(request, caller, _reason(exc), exc.status)
    return RedirectResponse(f"/console/pa?done={action}", status_code=303)


_NOT_PA = "There is no prior-authorization Task with this id within this user's reach."


def _reason_parameters(text: str) -> bytes:
    """The optional reason as the operations take it (a Parameters body); empty: no body."""
    reason = text.strip()[:500]
    if not reason:
        return b""
    return orjson.dumps(
        {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": reason}]}
    )


def _reason(exc: FhirError) -> str:
    return "; ".join(i.diagnostics for i in exc.issues if i.is_error) or str(exc)
