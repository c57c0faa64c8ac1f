"""HL7 v2 over HTTP: one message in, its ACK out; and the message log for analysts."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from gateway.exceptions import BadRequest, NotFound
from gateway.service.access.context import CREATE, READ, UPDATE, RequestContext
from gateway.service.gateway import Gateway
from gateway.service.hl7.pipeline import Result, Source
from gateway.store import messages as message_log
from gateway.store.messages import LoggedMessage
from gateway.transports.http.deps import AuthCtx, GatewayDep

router = APIRouter(tags=["HL7 v2"])

ER7 = "x-application/hl7-v2+er7; charset=utf-8"


# Every message a sender may send writes at least its Patient and a Provenance: a token that may not is
# refused before anything is logged (the types a message makes are checked again once translated).
INGEST_PERMISSIONS = (("Patient", CREATE), ("Patient", UPDATE), ("Provenance", CREATE))
LOG_READ = "hl7v2/messages.read"
LOG_REPROCESS = "hl7v2/messages.reprocess"


@router.post("/hl7v2", summary="one HL7 v2 message (ER7) in the body; the answer is its ACK")
async def receive(request: Request, ctx: AuthCtx, gateway: GatewayDep) -> Response:
    for resource_type, permission in INGEST_PERMISSIONS:
        ctx.require(resource_type, permission)
    client = request.client.host if request.client else "-"
    result = await gateway.pipeline.submit(await request.body(), Source("http", client, ctx.audit), ctx=ctx)
    return Response(
        result.ack.replace("\r", "\r\n").encode(), media_type=ER7, headers={"X-HL7-Ack": result.code}
    )


def may_read_content(ctx: RequestContext, row: LoggedMessage) -> bool:
    """Whether the caller may read everything the message made (and so its content): Patient at least."""
    made = {str(r).split("/", 1)[0] for r in orjson.loads(row.resources)} | {"Patient"}
    return all(ctx.can(t, READ) for t in made)


_QUOTED = re.compile(r"'[^']*'")


def masked_problems(problems: list[str]) -> list[str]:
    """Problem notes quote the values they could not map (a malformed birth date): hidden from readers
    who may not read the clinical content."""
    return [_QUOTED.sub("'***'", p) for p in problems]


def masked_raw(raw: str) -> str:
    """The message's structure without its content: MSH as sent, other segments' fields as `***`."""
    lines = []
    for line in raw.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if not line or line.startswith("MSH") or len(line) < 4:
            lines.append(line)
            continue
        separator = line[3]
        fields = line.split(separator)
        lines.append(separator.join([fields[0], *("***" if f else "" for f in fields[1:])]))
    return "\r".join(lines)


def _summary(row: LoggedMessage, ctx: RequestContext) -> dict[str, Any]:
    problems = orjson.loads(row.problems)
    return {
        "id": row.id,
        "sender": row.sender,
        "controlId": row.control_id,
        "messageType": row.message_type,
        "source": row.source,
        "status": row.status,
        "ackCode": row.ack_code,
        "attempts": row.attempts,
        "received": row.received_us,
        "errors": orjson.loads(row.errors),
        "problems": problems if may_read_content(ctx, row) else masked_problems(problems),
        "unusedSegments": orjson.loads(row.unused),
        "unmappedFields": orjson.loads(row.unmapped or "[]"),
        "notes": orjson.loads(row.notes or "[]"),
        "resources": orjson.loads(row.resources),
    }


@router.get("/hl7v2/messages", summary="the message log (newest first; no message content)")
async def list_messages(
    ctx: AuthCtx,
    gateway: GatewayDep,
    status: str | None = None,
    sender: str | None = None,
    count: int = 50,
    offset: int = 0,
) -> JSONResponse:
    ctx.require_operation(LOG_READ)
    if offset > gateway.settings.search_max_offset:
        # Paged like a search, with its cap: past 64 bits the database driver cannot even bind the number.
        raise BadRequest(
            f"offset must be at most {gateway.settings.search_max_offset}; narrow by status or sender"
        )
    async with gateway.db.read() as conn:
        rows, total = await message_log.search(
            conn, status=status, sender=sender, count=min(max(count, 1), 500), offset=max(offset, 0)
        )
    return JSONResponse({"total": total, "messages": [_summary(r, ctx) for r in rows]})


async def load_message(gateway: Gateway, message_id: str) -> LoggedMessage:
    async with gateway.db.read() as conn:
        row = await message_log.get(conn, message_id)
    if row is None:
        raise NotFound(f"No HL7 v2 message with id {message_id}")
    return row


async def reprocess_logged(gateway: Gateway, ctx: RequestContext, message_id: str) -> Result:
    """Run a logged message again as first received (the API's `$reprocess` and the console's button):
    the pipeline checks the caller may write what it makes."""
    ctx.require_operation(LOG_REPROCESS)
    row = await load_message(gateway, message_id)
    return await gateway.pipeline.submit(
        row.raw, Source("reprocess", f"log:{message_id}", ctx.audit), ctx=ctx, reprocess_id=message_id
    )


@router.get("/hl7v2/messages/{message_id}", summary="one logged message, with its content and ACK")
async def get_message(message_id: str, ctx: AuthCtx, gateway: GatewayDep) -> JSONResponse:
    """The message with its ACK; its raw content only for a reader who may read what it made (else its
    structure, values masked, and `rawMasked: true`)."""
    ctx.require_operation(LOG_READ)
    row = await load_message(gateway, message_id)
    clinical = may_read_content(ctx, row)
    raw = row.raw if clinical else masked_raw(row.raw)
    return JSONResponse({**_summary(row, ctx), "raw": raw, "rawMasked": not clinical, "ack": row.ack})


@router.get("/hl7v2/senders", summary="every sender in the message log, with its message count")
async def list_senders(ctx: AuthCtx, gateway: GatewayDep) -> JSONResponse:
    ctx.require_operation(LOG_READ)
    async with gateway.db.read() as conn:
        rows = await message_log.senders(conn)
    return JSONResponse(
        {"senders": [{"sender": s, "messages": n, "lastReceived": last} for s, n, last in rows]}
    )


@router.get(
    "/hl7v2/senders/{sender}/coverage",
    summary="the fields a sender sends that no mapping reads (what a site override would need)",
)
async def sender_coverage(sender: str, ctx: AuthCtx, gateway: GatewayDep) -> JSONResponse:
    ctx.require_operation(LOG_READ)
    async with gateway.db.read() as conn:
        totals, fields = await message_log.coverage(conn, sender)
    if not totals:
        raise NotFound(f"No HL7 v2 messages from sender {sender!r} (MSH-3|MSH-4) are logged")
    return JSONResponse(
        {
            "sender": sender,
            "messages": totals,
            "unmappedFields": [
                {
                    "field": f.field,
                    "messageType": f.message_type,
                    "messages": f.messages,
                    "share": round(f.messages / totals.get(f.message_type, f.messages), 4),
                    "firstSeen": f.first_seen_us,
                    "lastSeen": f.last_seen_us,
                    "lastMessage": f.last_message_id,
                }
                for f in fields
            ],
        }
    )


@router.post(
    "/hl7v2/messages/{message_id}/$reprocess", summary="run a logged message again (after a mapping fix)"
)
async def reprocess(message_id: str, ctx: AuthCtx, gateway: GatewayDep) -> JSONResponse:
    result = await reprocess_logged(gateway, ctx, message_id)
    return JSONResponse(
        {"id": result.log_id, "ackCode": result.code, "errors": result.errors, "ack": result.ack}
    )
