"""The reads behind `Patient/{id}/$timeline`: a patient's compartment rows of one type, the versions of
some resources (the PA moves), and the Provenances naming some resources."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.everything import compartment_condition
from gateway.store.resources import Stored, current_select, to_stored
from gateway.store.tables import resource, resource_version, sp_reference

CHUNK = 400  # keys per statement: far below SQLite's and asyncpg's variable limits


async def compartment(conn: AsyncConnection, patient_id: str, resource_type: str, limit: int) -> list[Stored]:
    """Up to `limit` current, not deleted resources of a type in the Patient's compartment, by row id."""
    stmt = (
        current_select()
        .where(resource.c.deleted.is_(False), compartment_condition(patient_id, resource_type))
        .order_by(resource.c.rid)
        .limit(limit)
    )
    return [to_stored(row) for row in await conn.execute(stmt)]


async def versions(conn: AsyncConnection, rids: Sequence[int]) -> list[Stored]:
    """Every version of the resources with these row ids, by row id then version."""
    v = resource_version.c
    found: list[Stored] = []
    for start in range(0, len(rids), CHUNK):
        stmt = (
            select(v.rid, v.res_type, v.res_id, v.version, v.updated_us, v.deleted, v.content, v.method)
            .where(v.rid.in_(list(rids[start : start + CHUNK])))
            .order_by(v.rid, v.version)
        )
        found += [to_stored(row) for row in await conn.execute(stmt)]
    return found


async def provenances_naming(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> list[Stored]:
    """Current Provenances whose `target` names one of these (type, id) resources (any version)."""
    r = sp_reference.c
    found: dict[int, Stored] = {}
    for start in range(0, len(keys), CHUNK):
        part = list(keys[start : start + CHUNK])
        naming = select(r.rid).where(
            r.res_type == "Provenance",
            r.param == "target",
            tuple_(r.target_type, r.target_id).in_(part),
        )
        stmt = current_select().where(
            resource.c.res_type == "Provenance", resource.c.deleted.is_(False), resource.c.rid.in_(naming)
        )
        for row in await conn.execute(stmt):
            found[row.rid] = to_stored(row)
    return [found[rid] for rid in sorted(found)]
