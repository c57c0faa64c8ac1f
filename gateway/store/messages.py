"""The HL7 v2 message log: every message as received, its ACK, its errors and the resources it made."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store import driver_sql
from gateway.store.tables import hl7_field_coverage, hl7_message


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    id: str
    sender: str
    control_id: str
    content_hash: str | None
    message_type: str
    source: str
    source_detail: str
    received_us: int
    processed_us: int
    status: str
    ack_code: str
    attempts: int
    raw: str
    ack: str
    errors: str
    problems: str
    unused: str
    unmapped: str | None
    notes: str | None
    resources: str


_FIELDS = [c.name for c in hl7_message.columns]
_COLUMNS = ", ".join(_FIELDS)


def _row(row: Any) -> LoggedMessage:
    return LoggedMessage(**{name: getattr(row, name) for name in _FIELDS})


async def by_keys(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[LoggedMessage]]:
    """Logged messages by (sender, control id), oldest first (a control id may have been reused)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    # Every message's first statement: the driver's own SQL (gateway/store/driver_sql.py).
    where = " OR ".join(["(sender = ? AND control_id = ?)"] * len(wanted))
    sql = f"SELECT {_COLUMNS} FROM hl7_message WHERE {where} ORDER BY received_us, id"
    found: dict[tuple[str, str], list[LoggedMessage]] = {}
    for values in await driver_sql.fetch(conn, sql, tuple(v for key in wanted for v in key)):
        row = LoggedMessage(**dict(zip(_FIELDS, values, strict=True)))
        found.setdefault((row.sender, row.control_id), []).append(row)
    return found


async def get(conn: AsyncConnection, message_id: str) -> LoggedMessage | None:
    row = (await conn.execute(select(hl7_message).where(hl7_message.c.id == message_id))).first()
    return _row(row) if row is not None else None


async def insert_many(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Log rows (a column left out is NULL), in one executemany on the driver."""
    if rows:
        sql = f"INSERT INTO hl7_message ({_COLUMNS}) VALUES ({driver_sql.marks(len(_FIELDS))})"
        values = [tuple(row.get(name) for name in _FIELDS) for row in rows]
        await driver_sql.execute_many(conn, sql, values)


async def replace(conn: AsyncConnection, message_id: str, values: dict[str, Any]) -> None:
    """Overwrite a logged message's outcome (a re-sent or reprocessed message), counting the attempt.

    The message as received is never replaced: a re-send that is the same message (same content hash)
    changes its outcome, and whatever is reprocessed later is what was first received.
    """
    values = {k: v for k, v in values.items() if k not in ("id", "raw", "content_hash", "received_us")}
    await conn.execute(
        update(hl7_message)
        .where(hl7_message.c.id == message_id)
        .values(**values, attempts=hl7_message.c.attempts + 1)
    )


async def search(
    conn: AsyncConnection, *, status: str | None, sender: str | None, count: int, offset: int
) -> tuple[list[LoggedMessage], int]:
    conditions = []
    if status:
        conditions.append(hl7_message.c.status == status)
    if sender:
        conditions.append(hl7_message.c.sender == sender)
    total = (
        await conn.execute(select(func.count()).select_from(hl7_message).where(*conditions))
    ).scalar_one()
    rows = await conn.execute(
        select(hl7_message)
        .where(*conditions)
        .order_by(hl7_message.c.received_us.desc())
        .limit(count)
        .offset(offset)
    )
    return [_row(row) for row in rows], int(total)


async def count_unmapped(
    conn: AsyncConnection, counts: dict[tuple[str, str, str], tuple[int, str]], now_us: int
) -> None:
    """Add to the per-sender coverage: (sender, message type, field) -> (messages, last message id)."""
    if not counts:
        return
    rows = [
        {
            "sender": sender,
            "message_type": message_type,
            "field": field,
            "messages": messages,
            "first_seen_us": now_us,
            "last_seen_us": now_us,
            "last_message_id": last,
        }
        for (sender, message_type, field), (messages, last) in sorted(counts.items())
    ]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(hl7_field_coverage)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["sender", "message_type", "field"],
            set_={
                "messages": hl7_field_coverage.c.messages + statement.excluded.messages,
                "last_seen_us": statement.excluded.last_seen_us,
                "last_message_id": statement.excluded.last_message_id,
            },
        ),
        rows,
    )


@dataclass(frozen=True, slots=True)
class FieldCoverage:
    message_type: str
    field: str
    messages: int
    first_seen_us: int
    last_seen_us: int
    last_message_id: str


async def coverage(conn: AsyncConnection, sender: str) -> tuple[dict[str, int], list[FieldCoverage]]:
    """Messages logged per type for a sender, and the fields it sends that no mapping reads."""
    totals = await conn.execute(
        select(hl7_message.c.message_type, func.count())
        .where(hl7_message.c.sender == sender)
        .group_by(hl7_message.c.message_type)
    )
    rows = await conn.execute(
        select(hl7_field_coverage)
        .where(hl7_field_coverage.c.sender == sender)
        .order_by(hl7_field_coverage.c.messages.desc(), hl7_field_coverage.c.field)
    )
    fields = [
        FieldCoverage(r.message_type, r.field, r.messages, r.first_seen_us, r.last_seen_us, r.last_message_id)
        for r in rows
    ]
    return {str(t): int(n) for t, n in totals}, fields


async def senders(conn: AsyncConnection) -> list[tuple[str, int, int]]:
    """Every sender in the log: (sender, messages, last received)."""
    rows = await conn.execute(
        select(hl7_message.c.sender, func.count(), func.max(hl7_message.c.received_us))
        .where(hl7_message.c.sender != "")
        .group_by(hl7_message.c.sender)
        .order_by(hl7_message.c.sender)
    )
    return [(str(s), int(n), int(last)) for s, n, last in rows]
