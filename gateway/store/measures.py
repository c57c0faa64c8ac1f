"""The reads behind the pharmacist measures (`$evaluate-measure`, the gauges on `/metrics`): current
resources of one type meeting index criteria, page by page (keyset on the row id), the Patients such
resources point at (keyset on the Patient id), and some resources by id. (Every version of some
resources, for the alert Tasks' history, is `gateway.store.timeline.versions`.)

Criteria are conditions on `resource.rid` built from the index tables (`sp_reference`, `sp_date`,
`sp_token`), so each page reads only the rows it returns whatever the store's size.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.resources import Stored, current_select, to_stored
from gateway.store.tables import resource, sp_date, sp_reference, sp_token

CHUNK = 400  # keys per statement: far below SQLite's and asyncpg's variable limits


def refers_to(resource_type: str, param: str, target_type: str, ids: Sequence[str]) -> ColumnElement[bool]:
    """Resources whose reference parameter points at one of these resources of `target_type`."""
    r = sp_reference.c
    return resource.c.rid.in_(
        select(r.rid).where(
            r.res_type == resource_type,
            r.param == param,
            r.target_type == target_type,
            r.target_id.in_(list(ids)),
        )
    )


def dated_within(resource_type: str, param: str, low_us: int, high_us: int) -> ColumnElement[bool]:
    """Resources whose date parameter overlaps [low_us, high_us]."""
    d = sp_date.c
    return resource.c.rid.in_(
        select(d.rid).where(
            d.res_type == resource_type, d.param == param, d.low_us <= high_us, d.high_us >= low_us
        )
    )


def coded(resource_type: str, param: str, system: str | None, codes: Sequence[str]) -> ColumnElement[bool]:
    """Resources with one of these codes of `system` in a token parameter (None: a bare code, as `status`)."""
    t = sp_token.c
    in_system = t.system.is_(None) if system is None else t.system == system
    return resource.c.rid.in_(
        select(t.rid).where(t.res_type == resource_type, t.param == param, in_system, t.code.in_(list(codes)))
    )


def _live(resource_type: str, conditions: Sequence[ColumnElement[bool]]) -> list[ColumnElement[bool]]:
    return [resource.c.res_type == resource_type, resource.c.deleted.is_(False), *conditions]


async def page(
    conn: AsyncConnection,
    resource_type: str,
    conditions: Sequence[ColumnElement[bool]],
    *,
    after_rid: int | None,
    limit: int,
) -> list[Stored]:
    """Up to `limit` current, live resources of a type meeting every condition, by row id after
    `after_rid`."""
    where = _live(resource_type, conditions)
    if after_rid is not None:
        where.append(resource.c.rid > after_rid)
    stmt = current_select().where(*where).order_by(resource.c.rid).limit(limit)
    return [to_stored(row) for row in await conn.execute(stmt)]


async def patients_page(
    conn: AsyncConnection,
    resource_type: str,
    param: str,
    conditions: Sequence[ColumnElement[bool]],
    *,
    after: str | None,
    limit: int,
) -> list[str]:
    """Up to `limit` ids of the Patients that live resources of a type meeting every condition point at
    (by the reference parameter `param`), in id order after `after`."""
    r = sp_reference.c
    where = [
        *_live(resource_type, conditions),
        r.res_type == resource_type,
        r.param == param,
        r.target_type == "Patient",
    ]
    if after is not None:
        where.append(r.target_id > after)
    stmt = (
        select(r.target_id)
        .distinct()
        .select_from(sp_reference.join(resource, resource.c.rid == r.rid))
        .where(*where)
        .order_by(r.target_id)
        .limit(limit)
    )
    return [row.target_id for row in await conn.execute(stmt)]


async def current_of(conn: AsyncConnection, resource_type: str, ids: Sequence[str]) -> list[Stored]:
    """Current, live versions of these resources of one type (those that exist)."""
    found: list[Stored] = []
    unique = sorted(set(ids))
    for start in range(0, len(unique), CHUNK):
        stmt = current_select().where(
            *_live(resource_type, [resource.c.res_id.in_(unique[start : start + CHUNK])])
        )
        found += [to_stored(row) for row in await conn.execute(stmt)]
    return found
