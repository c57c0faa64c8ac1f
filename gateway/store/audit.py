"""The audit trail's tables: batches of AuditEvents written, searched, and deleted after retention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from gateway.fhir.audit import AuditQuery, BuiltEvent
from gateway.store.resources import bulk_insert
from gateway.store.tables import audit_event, audit_event_ref


async def insert_events(conn: AsyncConnection, events: Sequence[BuiltEvent]) -> None:
    """One executemany for the events and one for their patients and entities."""
    if not events:
        return
    rows = [
        (
            e.id,
            e.recorded_us,
            e.type,
            e.subtype[:64] if e.subtype else None,
            e.action,
            e.outcome,
            e.agent[:255] if e.agent else None,
            e.address[:64] if e.address else None,
            e.content.decode(),
        )
        for e in events
    ]
    await bulk_insert(conn, audit_event, _EVENT_COLUMNS, rows)
    refs: list[tuple[Any, ...]] = []
    for e in events:
        seen: set[tuple[str, str]] = set()
        for role, values in (("patient", e.patients), ("entity", e.entities)):
            for ref in values:
                key = (role, ref[:200])
                if key not in seen:
                    seen.add(key)
                    refs.append((e.id, role, key[1], e.recorded_us))
    await bulk_insert(conn, audit_event_ref, ("event_id", "role", "ref", "recorded_us"), refs)


_EVENT_COLUMNS = ("id", "recorded_us", "type", "subtype", "action", "outcome", "agent", "address", "content")


def _referenced(role: str, alternatives: tuple[str, ...]) -> ColumnElement[bool]:
    return audit_event.c.id.in_(
        select(audit_event_ref.c.event_id).where(
            audit_event_ref.c.role == role, audit_event_ref.c.ref.in_(alternatives)
        )
    )


async def search(conn: AsyncConnection, query: AuditQuery, *, limit: int) -> list[tuple[str, str]]:
    """Matching events (id, JSON), newest first, from `query.offset`, at most `limit`."""
    criteria: list[ColumnElement[bool]] = []
    criteria += [audit_event.c.recorded_us >= low for low in query.after_us]
    criteria += [audit_event.c.recorded_us <= high for high in query.before_us]
    columns = (
        (audit_event.c.agent, query.agents),
        (audit_event.c.address, query.addresses),
        (audit_event.c.type, query.types),
        (audit_event.c.subtype, query.subtypes),
        (audit_event.c.action, query.actions),
    )
    for column, groups in columns:
        criteria += [column.in_(values) for values in groups]
    criteria += [audit_event.c.outcome.in_(values) for values in query.outcomes]
    criteria += [_referenced("patient", values) for values in query.patients]
    criteria += [_referenced("entity", values) for values in query.entities]
    statement = (
        select(audit_event.c.id, audit_event.c.content)
        .where(and_(True, *criteria))
        .order_by(audit_event.c.recorded_us.desc(), audit_event.c.id.desc())
        .offset(query.offset)
        .limit(limit)
    )
    return [(row.id, row.content) for row in await conn.execute(statement)]


async def get(conn: AsyncConnection, event_id: str) -> str | None:
    row = (await conn.execute(select(audit_event.c.content).where(audit_event.c.id == event_id))).first()
    return None if row is None else str(row.content)


async def delete_older(conn: AsyncConnection, before_us: int, limit: int) -> int:
    """Delete up to `limit` of the oldest events recorded before `before_us`; returns how many."""
    ids = list(
        (
            await conn.execute(
                select(audit_event.c.id)
                .where(audit_event.c.recorded_us < before_us)
                .order_by(audit_event.c.recorded_us)
                .limit(limit)
            )
        ).scalars()
    )
    if ids:
        await conn.execute(delete(audit_event_ref).where(audit_event_ref.c.event_id.in_(ids)))
        await conn.execute(delete(audit_event).where(audit_event.c.id.in_(ids)))
    return len(ids)
