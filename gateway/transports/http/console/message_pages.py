"""The HL7 v2 message log at the console: the log newest first (by sender, by status), one message with its
segments, ACK, resources, errors and unmapped fields, and a Reprocess button.

Read through the same store functions and checks as `/hl7v2/messages` (hl7_routes.py): the log needs
`hl7v2/messages.read`; the content is shown as sent only to a person with clinical values who may read
everything the message made, and masked otherwise (gateway/adapters/hl7v2/masking.py).

Reprocessing (the API's `$reprocess`, hl7_routes.reprocess_logged) needs the role's
`hl7v2/messages.reprocess` and then runs the message as the pipeline does on receipt, with the
pipeline's own rights: an analyst, whose job is to run a message again once its mapping is fixed, holds
the operation but no right to write patients' records, and the message writes what its sender sent, not
what the analyst chose. The request's AuditEvent names the person who pressed the button.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from gateway.adapters.hl7v2 import masking
from gateway.auth.roles import Area
from gateway.exceptions import FhirError
from gateway.fhir import dates
from gateway.service.access.context import RequestContext
from gateway.store import messages as message_log
from gateway.store.messages import LoggedMessage
from gateway.transports.http.console.render import render
from gateway.transports.http.console.session import Caller, caller_of, csrf_ok, form_of
from gateway.transports.http.hl7_routes import (
    LOG_READ,
    LOG_REPROCESS,
    load_message,
    masked_problems,
    may_read_content,
    reprocess_logged,
)

router = APIRouter(prefix="/console", include_in_schema=False)

PAGE_SIZE = 50
STATUSES = ("accepted", "error", "rejected", "quarantined", "failed")
DONE = {"reprocess": "The message was processed again; the log shows the new outcome."}
_REFUSED = "Your role does not open the HL7 v2 message log."
_EXPIRED = "This form has expired or did not come from this site. Open the page again."


def _refused(request: Request, caller: Caller) -> Response:
    return render(request, caller, "refused.html", "Refused", {"message": _REFUSED}, 403)


def _may_open(caller: Caller) -> bool:
    return caller.reaches(Area.MESSAGE_LOG) and caller.ctx.may(LOG_READ)


def _shows_content(caller: Caller, row: LoggedMessage) -> bool:
    return caller.reaches(Area.CLINICAL_VALUES) and may_read_content(caller.ctx, row)


def _row_view(row: LoggedMessage, content: bool) -> dict[str, Any]:
    errors = [str(e) for e in orjson.loads(row.errors)]
    return {
        "id": row.id,
        "received": dates.format_instant(row.received_us),
        "sender": row.sender,
        "message_type": row.message_type,
        "control_id": row.control_id,
        "status": row.status,
        "ack_code": row.ack_code,
        # Errors may quote a value they could not read: masked like the API masks problems.
        "errors": errors if content else masked_problems(errors),
        "resources": [str(r) for r in orjson.loads(row.resources)],
        "unmapped": [str(f) for f in orjson.loads(row.unmapped or "[]")],
    }


@router.get("/messages")
async def messages(request: Request) -> Response:
    caller = await caller_of(request)
    if not _may_open(caller):
        return _refused(request, caller)
    query = request.query_params
    status = query.get("status") if query.get("status") in STATUSES else None
    sender = query.get("sender") or None
    offset = min(_whole(query.get("offset")), caller.gateway.settings.search_max_offset)
    async with caller.gateway.db.read() as conn:
        rows, total = await message_log.search(
            conn, status=status, sender=sender, count=PAGE_SIZE, offset=offset
        )
        senders = await message_log.senders(conn)
    keep = {k: v for k, v in (("status", status), ("sender", sender)) if v}
    values = {
        "rows": [_row_view(r, _shows_content(caller, r)) for r in rows],
        "total": total,
        "first": offset + 1 if rows else 0,
        "last": offset + len(rows),
        "previous": _page_link(keep, offset - PAGE_SIZE) if offset > 0 else None,
        "next": _page_link(keep, offset + PAGE_SIZE) if offset + len(rows) < total else None,
        "statuses": STATUSES,
        "senders": [s for s, _, _ in senders],
        "status": status or "",
        "sender": sender or "",
    }
    return render(request, caller, "messages.html", "Message log", values)


@router.get("/messages/{message_id}")
async def message(message_id: str, request: Request) -> Response:
    caller = await caller_of(request)
    if not _may_open(caller):
        return _refused(request, caller)
    return await _message_page(request, caller, message_id)


async def _message_page(
    request: Request, caller: Caller, message_id: str, error: str | None = None, status: int = 200
) -> Response:
    try:
        row = await load_message(caller.gateway, message_id)
    except FhirError as exc:
        return render(request, caller, "refused.html", "Not found", {"message": str(exc)}, exc.status)
    content = _shows_content(caller, row)
    problems = [str(p) for p in orjson.loads(row.problems)]
    values = {
        "message": _row_view(row, content),
        "masked": not content,
        "segments": masking.segments(row.raw) if content else masking.masked_message(row.raw),
        "ack": masking.segments(row.ack) if content else masking.masked_message(row.ack),
        "problems": problems if content else masked_problems(problems),
        "attempts": row.attempts,
        "source": row.source,
        "may_reprocess": caller.ctx.may(LOG_REPROCESS),
        "done": DONE.get(request.query_params.get("done", "")),
        "error": error,
    }
    return render(request, caller, "message.html", f"Message {row.control_id}", values, status)


@router.post("/messages/{message_id}/reprocess")
async def reprocess(message_id: str, request: Request) -> Response:
    caller = await caller_of(request)
    if not _may_open(caller):
        return _refused(request, caller)
    form = await form_of(request)
    if not csrf_ok(form, caller):
        return render(request, caller, "refused.html", "Refused", {"message": _EXPIRED}, 403)
    try:
        caller.ctx.require_operation(LOG_REPROCESS)
        as_pipeline = RequestContext(
            base_url=caller.ctx.base_url, client_id=caller.ctx.client_id, audit=caller.ctx.audit
        )
        result = await reprocess_logged(caller.gateway, as_pipeline, message_id)
    except FhirError as exc:
        reason = f"The message was not processed again: {exc}"
        return await _message_page(request, caller, message_id, reason, exc.status)
    # The log keeps one row per message: a reprocess overwrites its outcome under the same id.
    target = result.log_id or message_id
    return RedirectResponse(f"/console/messages/{target}?done=reprocess", status_code=303)


def _whole(text: str | None) -> int:
    return int(text) if text and text.isdigit() and len(text) < 19 else 0


def _page_link(keep: dict[str, str], offset: int) -> str:
    return "/console/messages?" + urlencode({**keep, "offset": max(offset, 0)})
