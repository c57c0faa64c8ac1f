"""The queries behind `Patient/{id}/$everything`: one segment (a resource type) at a time, paged by key.

A segment is the resources of one type that belong to the answer. Each page reads at most the rows it
returns plus one per segment it looks into, ordered by row id (`rid`: the order resources were created,
which an update never changes), so paging through a patient's record never loads it whole and an entry
never moves between pages. The AuditEvents about the patient are a segment of their own, ordered by
(recorded, id).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.fhir.compartment import PATIENT_COMPARTMENT, PATIENT_LINK
from gateway.store.resources import Stored, current_select, to_stored
from gateway.store.tables import audit_event, audit_event_ref, resource, sp_reference


def _pointing_at(patient_id: str, resource_type: str, params: Sequence[str]) -> Select[Any]:
    """Row ids of resources of a type whose reference parameters name the Patient."""
    r = sp_reference.c
    return select(r.rid).where(
        r.res_type == resource_type,
        r.param.in_(list(params)),
        r.target_id == patient_id,
        r.target_type == "Patient",
    )


def _patient_condition(patient_id: str) -> ColumnElement[bool]:
    """The Patient itself and the Patients linked to it."""
    return and_(
        resource.c.res_type == "Patient",
        or_(
            resource.c.res_id == patient_id,
            resource.c.rid.in_(_pointing_at(patient_id, "Patient", (PATIENT_LINK,))),
        ),
    )


def compartment_condition(patient_id: str, resource_type: str) -> ColumnElement[bool]:
    """Which resources of `resource_type` are in the Patient's compartment."""
    if resource_type == "Patient":
        return _patient_condition(patient_id)
    return resource.c.rid.in_(_pointing_at(patient_id, resource_type, PATIENT_COMPARTMENT[resource_type]))


def referenced_condition(
    patient_id: str, resource_type: str, source_types: Sequence[str]
) -> ColumnElement[bool]:
    """Resources of `resource_type` that the Patient, or compartment resources of `source_types`,
    reference (only those types' references are followed: never through a type the caller may not read)."""
    sources = [
        select(resource.c.rid).where(_patient_condition(patient_id)),
        *(_pointing_at(patient_id, t, PATIENT_COMPARTMENT[t]) for t in source_types),
    ]
    r = sp_reference.c
    targets = select(r.target_id).where(r.target_type == resource_type, r.rid.in_(union(*sources)))
    return and_(resource.c.res_type == resource_type, resource.c.res_id.in_(targets))


def _where(condition: ColumnElement[bool], since_us: int | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [resource.c.deleted.is_(False), condition]
    if since_us is not None:
        where.append(resource.c.updated_us >= since_us)
    return where


async def page(
    conn: AsyncConnection,
    condition: ColumnElement[bool],
    *,
    since_us: int | None,
    after_rid: int | None,
    limit: int,
) -> list[Stored]:
    """Up to `limit` current resources meeting `condition`, by row id, after `after_rid`."""
    where = _where(condition, since_us)
    if after_rid is not None:
        where.append(resource.c.rid > after_rid)
    stmt = current_select().where(*where).order_by(resource.c.rid).limit(limit)
    return [to_stored(row) for row in await conn.execute(stmt)]


async def count(conn: AsyncConnection, condition: ColumnElement[bool], *, since_us: int | None) -> int:
    stmt = select(func.count()).select_from(resource).where(*_where(condition, since_us))
    return int((await conn.execute(stmt)).scalar_one())


def _audit_where(patient_id: str, since_us: int | None) -> list[ColumnElement[bool]]:
    about = select(audit_event_ref.c.event_id).where(
        audit_event_ref.c.role == "patient", audit_event_ref.c.ref == f"Patient/{patient_id}"
    )
    where: list[ColumnElement[bool]] = [audit_event.c.id.in_(about)]
    if since_us is not None:
        where.append(audit_event.c.recorded_us >= since_us)
    return where


async def audit_page(
    conn: AsyncConnection,
    patient_id: str,
    *,
    since_us: int | None,
    after: tuple[int, str] | None,
    limit: int,
) -> list[tuple[int, str, str]]:
    """Up to `limit` AuditEvents about the Patient (recorded_us, id, JSON), oldest first, after `after`."""
    where = _audit_where(patient_id, since_us)
    if after is not None:
        recorded_us, event_id = after
        where.append(
            or_(
                audit_event.c.recorded_us > recorded_us,
                and_(audit_event.c.recorded_us == recorded_us, audit_event.c.id > event_id),
            )
        )
    stmt = (
        select(audit_event.c.recorded_us, audit_event.c.id, audit_event.c.content)
        .where(*where)
        .order_by(audit_event.c.recorded_us, audit_event.c.id)
        .limit(limit)
    )
    return [(row.recorded_us, row.id, str(row.content)) for row in await conn.execute(stmt)]


async def audit_count(conn: AsyncConnection, patient_id: str, *, since_us: int | None) -> int:
    stmt = select(func.count()).select_from(audit_event).where(*_audit_where(patient_id, since_us))
    return int((await conn.execute(stmt)).scalar_one())
