"""Reading and writing resource versions and their search index rows.

Every write adds a `resource_version` row; `resource` points at the current version. Updates are
optimistic: `UPDATE ... WHERE version = :expected` succeeds for exactly one of two racing writers, on
both backends, without table locks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Table, and_, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.fhir.extract import IndexRows
from gateway.store import driver_sql
from gateway.store.statements import by_type, kept
from gateway.store.tables import (
    INDEX_TABLES,
    resource,
    resource_version,
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


_CURRENT_SELECT = select(*_CURRENT_COLUMNS).select_from(
    resource.join(
        resource_version,
        and_(resource_version.c.rid == resource.c.rid, resource_version.c.version == resource.c.version),
    )
)


def current_select() -> Any:
    """SELECT of current versions with content; callers add WHERE/ORDER/LIMIT (each of which makes a new
    statement: the shared one is never changed)."""
    return _CURRENT_SELECT


def _current_where(key: str, conditions: Callable[[], list[Any]]) -> Any:
    """Current versions WHERE `conditions()`, kept under `key` (the conditions are built once)."""
    return kept(("current", key), lambda: _CURRENT_SELECT.where(*conditions()))


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
    stmt = kept(
        "head",
        lambda: select(resource.c.rid, resource.c.version, resource.c.updated_us, resource.c.deleted).where(
            resource.c.res_type == bindparam("t"), resource.c.res_id == bindparam("i")
        ),
    )
    row = (await conn.execute(stmt, {"t": resource_type, "i": resource_id})).first()
    if row is None:
        return None
    return Head(row.rid, resource_type, resource_id, row.version, row.updated_us, row.deleted)


# Current versions, for the driver's own SQL (gateway/store/driver_sql.py); `stored_row` reads the columns.
CURRENT_FROM = (
    "SELECT r.rid, r.res_type, r.res_id, r.version, r.updated_us, r.deleted, v.content, v.method"
    " FROM resource r JOIN resource_version v ON v.rid = r.rid AND v.version = r.version"
)
_CURRENT_ONE = CURRENT_FROM + " WHERE r.res_type = ? AND r.res_id = ?"


async def current(conn: AsyncConnection, resource_type: str, resource_id: str) -> Stored | None:
    """The current version of Type/id (a deletion too), in one statement; None if it never existed.

    Every read asks this: the driver's own SQL (gateway/store/driver_sql.py), not a compiled statement."""
    rows = await driver_sql.fetch(conn, _CURRENT_ONE, (resource_type, resource_id))
    return stored_row(rows[0]) if rows else None


def stored_row(row: Sequence[Any]) -> Stored:
    """A Stored from a driver row of the CURRENT_FROM columns, by position."""
    rid, rtype, res_id, number, updated_us, deleted, content, method = row
    return Stored(
        int(rid),
        rtype,
        res_id,
        int(number),
        int(updated_us),
        bool(deleted),  # SQLite's driver gives 0 or 1
        content.encode() if isinstance(content, str) else content,
        method,
    )


def _by_keys_sql(
    conn: AsyncConnection, grouped: dict[str, list[str]], *, live: bool
) -> tuple[str, tuple[Any, ...]]:
    """Current versions of (type, ids) groups: one condition per type; on PostgreSQL the ids are one array
    parameter (the statement's text depends on the number of types only)."""
    conditions: list[str] = []
    params: list[Any] = []
    for rtype, ids in grouped.items():
        any_id, id_params = driver_sql.among(conn, ids)
        params += [rtype, *id_params]
        conditions.append(f"(r.res_type = ? AND r.res_id {any_id})")
    where = " OR ".join(conditions)
    sql = f"{CURRENT_FROM} WHERE ({where})" + (" AND NOT r.deleted" if live else "")
    return sql, tuple(params)


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
    stmt = _current_where("rids", lambda: [resource.c.rid.in_(bindparam("rids", expanding=True))])
    rows = await conn.execute(stmt, {"rids": list(rids)})
    return {row.rid: to_stored(row) for row in rows}


async def load_by_keys(conn: AsyncConnection, keys: Iterable[tuple[str, str]]) -> list[Stored]:
    """Current, non-deleted versions of the given (type, id) pairs that exist."""
    grouped = by_type(keys)
    if not grouped:
        return []
    sql, params = _by_keys_sql(conn, grouped, live=True)
    return [stored_row(row) for row in await driver_sql.fetch(conn, sql, params)]


@dataclass(slots=True)
class PendingVersion:
    """A version about to be written: a new resource (head None), an update, or a deletion (content None)."""

    type: str
    id: str
    version: int
    updated_us: int
    method: str
    content: bytes | None
    index: IndexRows | None
    head: Head | None = None
    previous: bytes | None = None  # the content this version replaces (None: new, or was deleted)

    def stored(self, rid: int) -> Stored:
        return Stored(
            rid,
            self.type,
            self.id,
            self.version,
            self.updated_us,
            self.content is None,
            self.content,
            self.method,
        )


# Rows per multi-row INSERT ... RETURNING: five parameters each, far below SQLite's 32766 limit.
_INSERT_CHUNK = 1000


async def _insert_resources(conn: AsyncConnection, creates: list[PendingVersion]) -> list[int]:
    """Row ids for new logical resources, in order; a clash with an existing (type, id) is a conflict.

    Multi-row INSERT ... RETURNING, a statement per thousand rows: SQLAlchemy's executemany with RETURNING
    runs row by row on SQLite, and a SELECT afterwards depends on the planner choosing the (type, id) index.
    """
    if not creates:
        return []
    rids: dict[tuple[str, str], int] = {}
    for start in range(0, len(creates), _INSERT_CHUNK):
        chunk = creates[start : start + _INSERT_CHUNK]
        values = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
        params = tuple(x for p in chunk for x in (p.type, p.id, p.version, p.updated_us, False))
        sql = (
            "INSERT INTO resource (res_type, res_id, version, updated_us, deleted) VALUES "
            f"{values} RETURNING rid, res_type, res_id"
        )
        try:
            result = await driver_sql.fetch(conn, sql, params)
        except IntegrityError as exc:
            raise VersionConflict("a resource with one of these ids was created concurrently") from exc
        rids.update({(row[1], row[2]): int(row[0]) for row in result})  # rid, res_type, res_id
    return [rids[(p.type, p.id)] for p in creates]


async def _advance_heads(conn: AsyncConnection, updates: list[PendingVersion], updated_us: int) -> None:
    """Move each head to its next version in one statement per kind; any lost race is a VersionConflict.

    `version = version + 1 ... RETURNING version` takes the row locks; comparing what comes back with the
    version each caller read is the optimistic check, for the whole batch at once.
    """
    for deleted in (False, True):
        group = [p for p in updates if (p.content is None) == deleted]
        if not group:
            continue
        assert all(p.head is not None for p in group)
        expected = {p.head.rid: p.version for p in group if p.head is not None}
        result = await conn.execute(
            update(resource)
            .where(resource.c.rid.in_(list(expected)))
            .values(version=resource.c.version + 1, updated_us=updated_us, deleted=deleted)
            .returning(resource.c.rid, resource.c.version)
        )
        moved = {row.rid: row.version for row in result}
        if moved != expected:
            lost = sorted(set(expected.items()) - set(moved.items()))
            raise VersionConflict(
                f"{len(lost)} resource(s) changed concurrently (row ids {[r for r, _ in lost][:5]})"
            )


async def bulk_insert(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """executemany of plain tuples, bypassing SQLAlchemy's per-row parameter processing (and, on
    PostgreSQL, its execution layer: gateway/store/driver_sql.py).

    Index rows are the bulk of every write (about ten per resource); building a dict per row and having
    SQLAlchemy process it cost more than the database's own work for them.
    """
    if not rows:
        return
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({driver_sql.marks(len(columns))})"
    await driver_sql.execute_many(conn, sql, rows)


_VERSION_COLUMNS = ("rid", "version", "res_type", "res_id", "updated_us", "method", "deleted", "content")
# The index tables' columns, in INDEX_TABLES' order (token, reference, date, string).
_INDEX_COLUMNS = (
    ("rid", "res_type", "param", "system", "code"),
    ("rid", "res_type", "param", "target_type", "target_id"),
    ("rid", "res_type", "param", "low_us", "high_us"),
    ("rid", "res_type", "param", "value"),
)
# PostgreSQL's array type for a column's values, by the column's Python type, for unnest().
_ARRAY_TYPES = {int: "bigint", str: "varchar", bool: "boolean"}


def _index_rows(entries: list[tuple[int, PendingVersion]]) -> list[list[tuple[Any, ...]]]:
    """The rows of each index table (INDEX_TABLES' order) for these versions (row id, version)."""
    tokens: list[tuple[Any, ...]] = []
    references: list[tuple[Any, ...]] = []
    dates: list[tuple[Any, ...]] = []
    strings: list[tuple[Any, ...]] = []
    for rid, p in entries:
        if p.index is None or p.content is None:
            continue
        rtype = p.type
        tokens += [(rid, rtype, n, s, c) for n, s, c in p.index.tokens]
        references += [(rid, rtype, n, t, i) for n, t, i in p.index.references]
        dates += [(rid, rtype, n, lo, hi) for n, lo, hi in p.index.dates]
        strings += [(rid, rtype, n, v) for n, v in p.index.strings]
    return [tokens, references, dates, strings]


def _unnest_insert(table: Table, columns: Sequence[str]) -> str:
    arrays = ", ".join(f"?::{_ARRAY_TYPES[table.c[c].type.python_type]}[]" for c in columns)
    return f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"


# One statement for a write's versions and all its index rows, and the stale index rows of the resources
# it updates: a round trip and one execution each, where an executemany per table cost five round trips
# and a bind and execute per row (about a hundred rows per six-OBX ORU). Each table's rows are one array
# per column. The DELETEs see the statement's snapshot, so they remove the old rows and never the new.
_ROWS_AT_ONCE = (
    "WITH "
    + ", ".join(
        [
            f"stale_{n} AS (DELETE FROM {table.name} WHERE rid = ANY(?::bigint[]))"
            for n, table in enumerate(INDEX_TABLES)
        ]
        + [f"version_rows AS ({_unnest_insert(resource_version, _VERSION_COLUMNS)})"]
        + [
            f"index_{n} AS ({_unnest_insert(table, columns)})"
            for n, (table, columns) in enumerate(zip(INDEX_TABLES, _INDEX_COLUMNS, strict=True))
        ]
    )
    + " SELECT 1"
)


async def _write_rows_at_once(
    conn: AsyncConnection,
    stale: list[int],
    versions: list[tuple[Any, ...]],
    index: list[list[tuple[Any, ...]]],
) -> None:
    """PostgreSQL: `_ROWS_AT_ONCE`, its parameters the columns of each table's rows."""
    params: list[Any] = [stale] * len(INDEX_TABLES)
    for rows, width in [(versions, len(_VERSION_COLUMNS))] + [
        (rows, len(columns)) for rows, columns in zip(index, _INDEX_COLUMNS, strict=True)
    ]:
        params += [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width
    await driver_sql.fetch(conn, _ROWS_AT_ONCE, tuple(params))


async def write(conn: AsyncConnection, pending: Sequence[PendingVersion]) -> list[Stored]:
    """Write a batch of versions with a fixed number of statements, whatever the batch size.

    Raises VersionConflict when another writer got in first (the caller's transaction must roll back).
    """
    if not pending:
        return []
    updated_us = pending[0].updated_us
    creates = [p for p in pending if p.head is None]
    updates = [p for p in pending if p.head is not None]
    rids = dict(zip((id(p) for p in creates), await _insert_resources(conn, creates), strict=True))
    await _advance_heads(conn, updates, updated_us)
    for p in updates:
        assert p.head is not None
        rids[id(p)] = p.head.rid
    versions = [
        (
            rids[id(p)],
            p.version,
            p.type,
            p.id,
            p.updated_us,
            p.method,
            p.content is None,
            p.content.decode() if p.content is not None else None,
        )
        for p in pending
    ]
    stale = [p.head.rid for p in updates if p.head is not None and not p.head.deleted]
    index = _index_rows([(rids[id(p)], p) for p in pending])
    if conn.dialect.name == "postgresql":
        await _write_rows_at_once(conn, stale, versions, index)
    else:
        await bulk_insert(conn, resource_version, _VERSION_COLUMNS, versions)
        if stale:
            for table in INDEX_TABLES:
                await conn.execute(delete(table).where(table.c.rid.in_(stale)))
        for table, columns, rows in zip(INDEX_TABLES, _INDEX_COLUMNS, index, strict=True):
            await bulk_insert(conn, table, columns, rows)
    return [p.stored(rids[id(p)]) for p in pending]


async def current_many(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Stored]:
    """Current versions (deleted ones included, without content) of the given (type, id) pairs."""
    grouped = by_type(keys)
    if not grouped:
        return {}
    sql, params = _by_keys_sql(conn, grouped, live=False)
    stored = [stored_row(row) for row in await driver_sql.fetch(conn, sql, params)]
    return {(s.type, s.id): s for s in stored}


def head_of(stored: Stored) -> Head:
    return Head(stored.rid, stored.type, stored.id, stored.version, stored.updated_us, stored.deleted)


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


async def latest_updated_us(conn: AsyncConnection, types: Sequence[str]) -> int:
    """When a resource of these types last changed (0 when none ever did): what a console watches."""
    query = select(func.max(resource.c.updated_us)).where(resource.c.res_type.in_(list(types)))
    found = (await conn.execute(query)).scalar()
    return int(found or 0)
