"""The HL7 v2 message log: every message as received, its ACK, its errors and the resources it made."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import hl7_message


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    id: str
    sender: str
    control_id: str
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
    resources: str


_FIELDS = [c.name for c in hl7_message.columns]


def _row(row: Any) -> LoggedMessage:
    return LoggedMessage(**{name: getattr(row, name) for name in _FIELDS})


async def by_keys(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], LoggedMessage]:
    """Logged messages by (sender, control id)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    clauses = [and_(hl7_message.c.sender == s, hl7_message.c.control_id == c) for s, c in wanted]
    rows = await conn.execute(select(hl7_message).where(or_(*clauses)))
    return {(row.sender, row.control_id): _row(row) for row in rows}


async def get(conn: AsyncConnection, message_id: str) -> LoggedMessage | None:
    row = (await conn.execute(select(hl7_message).where(hl7_message.c.id == message_id))).first()
    return _row(row) if row is not None else None


async def insert_many(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(hl7_message), list(rows))


async def replace(conn: AsyncConnection, message_id: str, values: dict[str, Any]) -> None:
    """Overwrite a logged message's outcome (a re-sent or reprocessed message), counting the attempt."""
    values = {k: v for k, v in values.items() if k != "id"}
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
