"""Reading and writing resource versions and their search index rows.

Every write adds a `resource_version` row; `resource` points at the current version. Updates are
optimistic: `UPDATE ... WHERE version = :expected` succeeds for exactly one of two racing writers, on
both backends, without table locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.fhir.extract import IndexRows
from gateway.store.tables import (
    INDEX_TABLES,
    resource,
    resource_version,
    sp_date,
    sp_reference,
    sp_string,
    sp_token,
)


@dataclass(frozen=True, slots=True)
class Head:
    """The current state of a logical resource, without its content."""

    rid: int
    type: str
    id: str
    version: int
    updated_us: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored version of a resource. `content` is None for a deletion."""

    rid: int
    type: str
    id: str
    version: int
    updated_us: int
    deleted: bool
    content: bytes | None
    method: str = "PUT"


class VersionConflict(Exception):
    """Another writer changed the resource between our read and our update."""


_CURRENT_COLUMNS = (
    resource.c.rid,
    resource.c.res_type,
    resource.c.res_id,
    resource.c.version,
    resource.c.updated_us,
    resource.c.deleted,
    resource_version.c.content,
    resource_version.c.method,
)


def current_select() -> Any:
    """SELECT of current versions with content; callers add WHERE/ORDER/LIMIT."""
    return select(*_CURRENT_COLUMNS).select_from(
        resource.join(
            resource_version,
            and_(resource_version.c.rid == resource.c.rid, resource_version.c.version == resource.c.version),
        )
    )


def to_stored(row: Row[Any] | Any) -> Stored:
    content = row.content
    return Stored(
        row.rid,
        row.res_type,
        row.res_id,
        row.version,
        row.updated_us,
        row.deleted,
        content.encode() if isinstance(content, str) else content,
        row.method,
    )


async def head(conn: AsyncConnection, resource_type: str, resource_id: str) -> Head | None:
    row = (
        await conn.execute(
            select(resource.c.rid, resource.c.version, resource.c.updated_us, resource.c.deleted).where(
                resource.c.res_type == resource_type, resource.c.res_id == resource_id
            )
        )
    ).first()
    if row is None:
        return None
    return Head(row.rid, resource_type, resource_id, row.version, row.updated_us, row.deleted)


async def current(conn: AsyncConnection, resource_type: str, resource_id: str) -> Stored | None:
    row = (
        await conn.execute(
            current_select().where(resource.c.res_type == resource_type, resource.c.res_id == resource_id)
        )
    ).first()
    return to_stored(row) if row is not None else None


async def version(conn: AsyncConnection, resource_type: str, resource_id: str, number: int) -> Stored | None:
    v = resource_version.c
    row = (
        await conn.execute(
            select(
                v.rid, v.res_type, v.res_id, v.version, v.updated_us, v.deleted, v.content, v.method
            ).where(v.res_type == resource_type, v.res_id == resource_id, v.version == number)
        )
    ).first()
    return to_stored(row) if row is not None else None


async def load_by_rids(conn: AsyncConnection, rids: Sequence[int]) -> dict[int, Stored]:
    if not rids:
        return {}
    rows = await conn.execute(current_select().where(resource.c.rid.in_(list(rids))))
    return {row.rid: to_stored(row) for row in rows}


async def load_by_keys(conn: AsyncConnection, keys: Iterable[tuple[str, str]]) -> list[Stored]:
    """Current, non-deleted versions of the given (type, id) pairs that exist."""
    by_type: dict[str, set[str]] = {}
    for rtype, rid in keys:
        by_type.setdefault(rtype, set()).add(rid)
    if not by_type:
        return []
    clauses = [
        and_(resource.c.res_type == rtype, resource.c.res_id.in_(sorted(ids)))
        for rtype, ids in by_type.items()
    ]
    rows = await conn.execute(current_select().where(or_(*clauses), resource.c.deleted.is_(False)))
    return [to_stored(row) for row in rows]


async def _write_index(conn: AsyncConnection, rid: int, resource_type: str, rows: IndexRows) -> None:
    common = {"rid": rid, "res_type": resource_type}
    if rows.tokens:
        await conn.execute(
            insert(sp_token), [{**common, "param": p, "system": s, "code": c} for p, s, c in rows.tokens]
        )
    if rows.references:
        await conn.execute(
            insert(sp_reference),
            [{**common, "param": p, "target_type": t, "target_id": i} for p, t, i in rows.references],
        )
    if rows.dates:
        await conn.execute(
            insert(sp_date), [{**common, "param": p, "low_us": lo, "high_us": hi} for p, lo, hi in rows.dates]
        )
    if rows.strings:
        await conn.execute(insert(sp_string), [{**common, "param": p, "value": s} for p, s in rows.strings])


async def _clear_index(conn: AsyncConnection, rid: int) -> None:
    for table in INDEX_TABLES:
        await conn.execute(delete(table).where(table.c.rid == rid))


def _insert_ignoring_conflict(conn: AsyncConnection) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for the connection's dialect (cheaper than a savepoint)."""
    if conn.dialect.name == "postgresql":
        return postgresql_insert(resource).on_conflict_do_nothing()
    return sqlite_insert(resource).on_conflict_do_nothing()


async def insert_new(
    conn: AsyncConnection,
    *,
    resource_type: str,
    resource_id: str,
    updated_us: int,
    content: bytes,
    index: IndexRows,
    method: str = "POST",
) -> int:
    """Store version 1 of a new logical resource; returns its row id.

    Raises VersionConflict when a resource with that type and id already exists (a concurrent create)."""
    rid = (
        await conn.execute(
            _insert_ignoring_conflict(conn)
            .values(res_type=resource_type, res_id=resource_id, version=1, updated_us=updated_us, deleted=False)
            .returning(resource.c.rid)
        )
    ).scalar()
    if rid is None:
        raise VersionConflict(f"{resource_type}/{resource_id} already exists")
    await conn.execute(
        insert(resource_version).values(
            rid=rid,
            version=1,
            res_type=resource_type,
            res_id=resource_id,
            updated_us=updated_us,
            method=method,
            deleted=False,
            content=content.decode(),
        )
    )
    await _write_index(conn, rid, resource_type, index)
    return int(rid)


async def write_version(
    conn: AsyncConnection,
    *,
    current_head: Head,
    new_version: int,
    updated_us: int,
    content: bytes | None,
    index: IndexRows | None,
    method: str,
) -> None:
    """Make `new_version` current (content None: a deletion). Raises VersionConflict on a lost race."""
    deleted = content is None
    result = await conn.execute(
        update(resource)
        .where(resource.c.rid == current_head.rid, resource.c.version == current_head.version)
        .values(version=new_version, updated_us=updated_us, deleted=deleted)
    )
    if result.rowcount != 1:
        raise VersionConflict(f"{current_head.type}/{current_head.id} changed concurrently")
    await conn.execute(
        insert(resource_version).values(
            rid=current_head.rid,
            version=new_version,
            res_type=current_head.type,
            res_id=current_head.id,
            updated_us=updated_us,
            method=method,
            deleted=deleted,
            content=content.decode() if content is not None else None,
        )
    )
    if not current_head.deleted:
        await _clear_index(conn, current_head.rid)
    if index is not None and not deleted:
        await _write_index(conn, current_head.rid, current_head.type, index)


async def history(
    conn: AsyncConnection,
    *,
    resource_type: str,
    resource_id: str | None,
    since_us: int | None,
    at_most_us: int | None,
    count: int,
    offset: int,
) -> tuple[list[Stored], int]:
    """Versions newest first, for one resource or a whole type, with the total number."""
    v = resource_version.c
    conditions = [v.res_type == resource_type]
    if resource_id is not None:
        conditions.append(v.res_id == resource_id)
    if since_us is not None:
        conditions.append(v.updated_us >= since_us)
    if at_most_us is not None:
        conditions.append(v.updated_us <= at_most_us)
    total = (
        await conn.execute(select(func.count()).select_from(resource_version).where(*conditions))
    ).scalar_one()
    rows = await conn.execute(
        select(v.rid, v.res_type, v.res_id, v.version, v.updated_us, v.deleted, v.content, v.method)
        .where(*conditions)
        .order_by(v.updated_us.desc(), v.rid.desc(), v.version.desc())
        .limit(count)
        .offset(offset)
    )
    return [to_stored(row) for row in rows], int(total)
