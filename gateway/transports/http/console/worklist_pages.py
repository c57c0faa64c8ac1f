"""The console's home: a pharmacist's worklist (the ranked `$worklist`, their own and, where the role
allows, the unassigned work), the alert actions on its rows, recording an interaction, and the live feed
that tells an open worklist to fetch its rows again when work changes.

Actions go through the FHIR service with the person's context, so the alert rules (`move_problems`), the
person's reach and the audit trail apply as to any client's write; a refused action shows why and changes
nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.responses import Response

from gateway.auth.roles import Area
from gateway.exceptions import FhirError, Gone, NotFound
from gateway.fhir import dates, jsonio
from gateway.pharmacist import actions
from gateway.pharmacist.alerts import is_alert
from gateway.pharmacist.timeline import INTERVENTION_DISPLAY
from gateway.service.pharmacist.worklist import PharmacistWorklist
from gateway.store import resources as resources_store
from gateway.transports.http.console.patient_view import patient_label
from gateway.transports.http.console.render import SECTIONS, render
from gateway.transports.http.console.session import Caller, caller_of, csrf_ok, form_of

router = APIRouter(prefix="/console", include_in_schema=False)

DONE = {  # what an action did, by the code a redirect carries (never free text in a URL)
    "claim": "Alert claimed.",
    "acknowledge": "Alert acknowledged.",
    "resolve": "Alert resolved.",
    "escalate": "Alert escalated.",
    "interaction": "Interaction recorded.",
}
WATCHED_TYPES = ("Task", "Observation", "CareTeam", "MedicationRequest", "Communication")
LIVE_POLL_S = 1.0
LIVE_HEARTBEAT_S = 15.0
LIVE_MAX_S = 600.0  # a stream ends after ten minutes; the browser's EventSource opens the next
MAX_LIVE_STREAMS = 200  # per process: a console left open costs one slot, never more
_live_streams = 0


def worklist_service(caller: Caller) -> PharmacistWorklist:
    settings = caller.gateway.settings
    return PharmacistWorklist(
        caller.gateway.fhir,
        caller.gateway.subscriptions.rules,
        expiring_days=settings.pa_expiring_days,
        appeal_days=settings.pa_appeal_days,
    )


def _row_view(caller: Caller, row: dict[str, Any]) -> dict[str, Any]:
    patient = str(row.get("patient") or "")
    patient_id = patient.split("/", 1)[1] if patient.startswith("Patient/") else ""
    task = str(row.get("task") or "")
    return {
        **row,
        "patient_id": patient_id,
        "patient_link": bool(patient_id) and caller.person.sees_patient(patient_id),
        "task_id": task.split("/", 1)[1] if task.startswith("Task/") else "",
        "summary_text": (row.get("summary") or {}).get("text") or "",
    }


async def worklist_rows(caller: Caller) -> dict[str, Any]:
    """The person's own rows and the unassigned ones (each None when the role has none)."""
    service = worklist_service(caller)
    own = unassigned = None
    problem = None
    if caller.person.practitioner and caller.reaches(Area.WORKLIST):
        try:
            found = await service.run(caller.ctx, [("owner", caller.person.practitioner), ("_count", "200")])
            own = orjson.loads(found.body or b"{}")
        except (NotFound, Gone):
            problem = f"{caller.person.practitioner}, whom this user acts as, is not on this server."
    if caller.reaches(Area.UNASSIGNED_WORK):
        found = await service.run(caller.ctx, [("unassigned", "true"), ("_count", "100")])
        unassigned = orjson.loads(found.body or b"{}")
    rows = [*(own or {}).get("rows", []), *(unassigned or {}).get("rows", [])]
    return {
        "names": await patient_names(caller, {_row_view(caller, r)["patient_id"] for r in rows}),
        "own": [_row_view(caller, r) for r in own["rows"]] if own else None,
        "own_total": own["total"] if own else 0,
        "unassigned": [_row_view(caller, r) for r in unassigned["rows"]] if unassigned else None,
        "unassigned_total": unassigned["total"] if unassigned else 0,
        "problem": problem,
    }


async def patient_names(caller: Caller, patient_ids: set[str]) -> dict[str, str]:
    """Patients' names for the rows, as the person may read them (others keep their reference)."""
    wanted = sorted(p for p in patient_ids if p and caller.person.sees_patient(p))
    if not wanted or not caller.ctx.can("Patient", "s"):
        return {}
    found = await caller.gateway.fhir.search(caller.ctx, "Patient", [("_id", ",".join(wanted))])
    bundle = orjson.loads(found.body or b"{}")
    return {
        str(e["resource"]["id"]): patient_label(e["resource"])
        for e in bundle.get("entry", [])
        if e.get("resource", {}).get("resourceType") == "Patient"
    }


@router.get("")
async def home(request: Request) -> Response:
    caller = await caller_of(request)
    if not (caller.reaches(Area.WORKLIST) or caller.reaches(Area.UNASSIGNED_WORK)):
        first = next((href for href, _, area in SECTIONS if caller.reaches(area)), None)
        if first is not None and first != "/console":
            return RedirectResponse(first, status_code=303)
        return render(request, caller, "home.html", "Console")
    return await _worklist_page(request, caller)


async def _worklist_page(
    request: Request, caller: Caller, error: str | None = None, status: int = 200
) -> Response:
    values = await worklist_rows(caller)
    done = DONE.get(request.query_params.get("done", ""))
    return render(
        request,
        caller,
        "worklist.html",
        "Worklist",
        {**values, "done": done, "error": error, "interaction_kinds": INTERVENTION_DISPLAY},
        status,
    )


@router.get("/worklist/rows")
async def rows_fragment(request: Request) -> Response:
    """The worklist's tables alone, for the page's live update."""
    caller = await caller_of(request)
    values = await worklist_rows(caller)
    return render(request, caller, "worklist_fragment.html", "Worklist", values)


@router.post("/tasks/{task_id}/{action}")
async def alert_action(task_id: str, action: str, request: Request) -> Response:
    caller = await caller_of(request)
    form = await form_of(request)
    if not csrf_ok(form, caller):
        return render(request, caller, "refused.html", "Refused", {"message": _EXPIRED}, 403)
    back = "/console" if form.get("back") != "patient" else None
    try:
        if action not in actions.ACTIONS or not caller.person.practitioner:
            raise actions.ActionRefused("This action is not available to this user")
        read = await caller.gateway.fhir.read(caller.ctx, "Task", task_id)
        assert read.stored is not None and read.body is not None
        task = jsonio.loads(read.body)
        if not is_alert(task):
            raise actions.ActionRefused("Only alerts are moved from the worklist")
        moved = actions.alert_move(
            task,
            action,
            caller.person.practitioner,
            dates.format_instant(dates.now_us()),
            form.get("note", ""),
            form.get("role", ""),
        )
        await caller.gateway.fhir.update(
            caller.ctx, "Task", task_id, jsonio.dumps(moved), f'W/"{read.stored.version}"'
        )
    except (FhirError, actions.ActionRefused) as exc:
        return await _worklist_page(request, caller, _reason(exc), _status(exc))
    patient = str((task.get("for") or {}).get("reference") or "")
    target = back or f"/console/patients/{patient.split('/', 1)[-1]}"
    return RedirectResponse(f"{target}?done={action}", status_code=303)


@router.post("/patients/{patient_id}/interactions")
async def record_interaction(patient_id: str, request: Request) -> Response:
    caller = await caller_of(request)
    form = await form_of(request)
    if not csrf_ok(form, caller):
        return render(request, caller, "refused.html", "Refused", {"message": _EXPIRED}, 403)
    try:
        if not caller.person.practitioner:
            raise actions.ActionRefused("Only a user acting as a Practitioner records interactions")
        made = actions.interaction(
            patient_id,
            caller.person.practitioner,
            form.get("kind", ""),
            form.get("text", ""),
            dates.format_instant(dates.now_us()),
            form.get("outcome", ""),
            _about(form.get("about", "")),
        )
        await caller.gateway.fhir.create(caller.ctx, "Communication", jsonio.dumps(made), None)
    except (FhirError, actions.ActionRefused) as exc:
        message = {"message": f"The interaction was not recorded: {_reason(exc)}"}
        return render(request, caller, "refused.html", "Not recorded", message, _status(exc))
    return RedirectResponse(f"/console/patients/{patient_id}?done=interaction", status_code=303)


@router.get("/live")
async def live(request: Request) -> Response:
    """Server-sent events: `changed` whenever work the console shows may have changed (a Task, a result,
    a CareTeam, an order or an interaction was written), so the page fetches its rows again. Ends with
    the session, after LIVE_MAX_S, or when the client leaves."""
    global _live_streams
    caller = await caller_of(request)
    if _live_streams >= MAX_LIVE_STREAMS:
        return Response("busy", status_code=503, headers={"Retry-After": "5"})
    _live_streams += 1
    cookie = request.cookies.get("gateway_session")

    async def events() -> AsyncIterator[bytes]:
        global _live_streams
        try:
            db = caller.gateway.db
            async with db.read() as conn:
                seen = await resources_store.latest_updated_us(conn, WATCHED_TYPES)
            yield b"retry: 2000\n: live\n\n"
            waited = quiet = 0.0
            while waited < LIVE_MAX_S:
                await asyncio.sleep(LIVE_POLL_S)
                waited += LIVE_POLL_S
                quiet += LIVE_POLL_S
                async with db.read() as conn:
                    latest = await resources_store.latest_updated_us(conn, WATCHED_TYPES)
                if latest != seen:
                    seen, quiet = latest, 0.0
                    if await caller.gateway.logins.session(cookie) is None:
                        yield b": closed: session ended\n\n"
                        return
                    yield b"event: changed\ndata: {}\n\n"
                elif quiet >= LIVE_HEARTBEAT_S:
                    quiet = 0.0
                    yield b": heartbeat\n\n"
        finally:
            _live_streams -= 1

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


_EXPIRED = "This form has expired or did not come from this site. Open the page again."


def _about(value: str) -> str:
    kind, _, rid = value.partition("/")
    return (
        value
        if kind in ("Task", "MedicationRequest", "Observation") and rid.replace("-", "").isalnum()
        else ""
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, FhirError) and exc.issues:
        return "; ".join(i.diagnostics for i in exc.issues if i.is_error) or str(exc)
    return str(exc)


def _status(exc: Exception) -> int:
    return exc.status if isinstance(exc, FhirError) else 400
