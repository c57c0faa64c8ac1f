"""Running a parsed SearchQuery against the index tables.

Each criterion becomes `rid IN (SELECT rid FROM sp_<kind> WHERE res_type=? AND param=? AND ...)`; the
composite indexes on the sp_* tables answer these without touching other types' rows, which is what
keeps a search by patient as fast at 200k resources as at 10k.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, Table, and_, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import KeyedColumnElement

from gateway.fhir.query import (
    DateValue,
    Filter,
    Include,
    PatientRestriction,
    ReferenceValue,
    SearchQuery,
    TokenValue,
)
from gateway.fhir.searchparams import ParamType
from gateway.store.resources import Stored, current_select, load_by_keys, load_by_rids, to_stored
from gateway.store.tables import resource, sp_date, sp_reference, sp_string, sp_token

_TABLES = {
    ParamType.TOKEN: sp_token,
    ParamType.REFERENCE: sp_reference,
    ParamType.DATE: sp_date,
    ParamType.STRING: sp_string,
}
# Upper bound for a prefix range: sorts after every string under byte-wise collation.
_MAX_CHAR = "\U0010ffff"


def _date_condition(
    low: ColumnElement[int], high: ColumnElement[int], value: DateValue
) -> ColumnElement[bool]:
    """FHIR date prefixes (search.html#prefix) over a stored range [low, high] and a value range."""
    p_low, p_high = value.low, value.high
    match value.prefix:
        case "eq":
            return and_(low >= p_low, high <= p_high)
        case "ne":
            return or_(low < p_low, high > p_high)
        case "gt":
            return high > p_high
        case "lt":
            return low < p_low
        case "ge":
            return high >= p_low
        case "le":
            return low <= p_high
        case "sa":
            return low > p_high
        case "eb":
            return high < p_low
    raise ValueError(value.prefix)


def _token_condition(value: TokenValue, table: Table = sp_token) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    if value.code is not None:
        conditions.append(table.c.code == value.code)
    if value.system is not None:
        conditions.append(table.c.system == value.system)
    elif value.system_absent:
        conditions.append(table.c.system.is_(None))
    return and_(true(), *conditions)


def _value_condition(f: Filter, value: Any) -> ColumnElement[bool]:
    if f.kind is ParamType.TOKEN:
        return _token_condition(value)
    if f.kind is ParamType.DATE:
        return _date_condition(sp_date.c.low_us, sp_date.c.high_us, value)
    if f.kind is ParamType.REFERENCE:
        assert isinstance(value, ReferenceValue)
        cond = sp_reference.c.target_id == value.id
        if value.type is not None:
            cond = and_(cond, sp_reference.c.target_type == value.type)
        return cond
    column: ColumnElement[str] = sp_string.c.value
    text = str(value)
    if f.modifier == "exact":
        return column == text
    if f.modifier == "contains":
        return column.contains(text, autoescape=True)
    return and_(column >= text, column < text + _MAX_CHAR)


def filter_condition(f: Filter, resource_type: str, r: FromClause = resource) -> ColumnElement[bool]:
    """The WHERE condition on resource table `r` for one criterion."""
    if f.param is None:  # _id and _lastUpdated live on the resource row itself
        if f.name == "_id":
            ids = [v.code for v in f.values if isinstance(v, TokenValue) and v.code]
            return r.c.res_id.in_(ids)
        return or_(
            *[
                _date_condition(r.c.updated_us, r.c.updated_us, v)
                for v in f.values
                if isinstance(v, DateValue)
            ]
        )
    table = _TABLES[f.kind]
    base = [table.c.res_type == resource_type, table.c.param == f.name]
    if f.modifier == "missing":
        present = select(table.c.rid).where(*base)
        return r.c.rid.not_in(present) if f.missing else r.c.rid.in_(present)
    if f.chain is not None:
        target = resource.alias("chained")
        inner = filter_condition(f.chain.inner, f.chain.target_type, target)
        target_ids = select(target.c.res_id).where(
            target.c.res_type == f.chain.target_type, target.c.deleted.is_(False), inner
        )
        matching = select(sp_reference.c.rid).where(
            *base, sp_reference.c.target_type == f.chain.target_type, sp_reference.c.target_id.in_(target_ids)
        )
        return r.c.rid.in_(matching)
    matching = select(table.c.rid).where(*base, or_(*[_value_condition(f, v) for v in f.values]))
    if f.modifier == "not":
        return r.c.rid.not_in(matching)
    return r.c.rid.in_(matching)


def _narrows_by_index(f: Filter) -> bool:
    """True when the criterion is `rid IN (index rows of this type)`, which already implies the type."""
    if f.param is None or f.modifier == "not":
        return False
    return not (f.modifier == "missing" and f.missing)


def restriction_condition(
    resource_type: str, restriction: PatientRestriction, r: FromClause = resource
) -> ColumnElement[bool]:
    """Only the records of the restriction's patients: linked to one of them, and to no other Patient."""
    ids = sorted(restriction.patient_ids)
    if resource_type == "Patient":
        return r.c.res_id.in_(ids)
    links = [
        sp_reference.c.res_type == resource_type,
        sp_reference.c.param.in_(restriction.params),
        sp_reference.c.target_type == "Patient",
    ]
    inside = select(sp_reference.c.rid).where(*links, sp_reference.c.target_id.in_(ids))
    outside = select(sp_reference.c.rid).where(*links, sp_reference.c.target_id.not_in(ids))
    return and_(r.c.rid.in_(inside), r.c.rid.not_in(outside))


def _where(query: SearchQuery) -> list[ColumnElement[bool]]:
    conditions = [filter_condition(f, query.resource_type) for f in query.filters]
    if query.restriction is not None:
        conditions.append(restriction_condition(query.resource_type, query.restriction))
    if not any(_narrows_by_index(f) for f in query.filters):
        # Only when no index criterion implies the type: a redundant `res_type = ?` on the resource table
        # lures planners without statistics (a fresh PostgreSQL, SQLite) into scanning the type's rows.
        conditions.insert(0, resource.c.res_type == query.resource_type)
    return [resource.c.deleted.is_(False), *conditions]


def _sort_key(query: SearchQuery, name: str, descending: bool) -> KeyedColumnElement[Any] | Any:
    if name == "_id":
        key: Any = resource.c.res_id
    elif name == "_lastUpdated":
        key = resource.c.updated_us
    else:
        bound = func.max(sp_date.c.high_us) if descending else func.min(sp_date.c.low_us)
        key = select(bound).where(sp_date.c.rid == resource.c.rid, sp_date.c.param == name).scalar_subquery()
    return key.desc() if descending else key.asc()


def page_select(query: SearchQuery) -> Select[Any]:
    order = [_sort_key(query, name, desc) for name, desc in query.sort]
    order.append(resource.c.rid.desc() if query.sort and query.sort[-1][1] else resource.c.rid.asc())
    stmt: Select[Any] = current_select().where(*_where(query)).order_by(*order)
    return stmt.limit(query.count).offset(query.offset)


async def count(conn: AsyncConnection, query: SearchQuery) -> int:
    stmt = select(func.count()).select_from(resource).where(*_where(query))
    return int((await conn.execute(stmt)).scalar_one())


async def search(conn: AsyncConnection, query: SearchQuery) -> tuple[list[Stored], int | None]:
    """One page of matches and, unless _total=none, the total number of matches."""
    matches: list[Stored] = []
    if query.count > 0 and not query.summary_count:
        matches = [to_stored(row) for row in await conn.execute(page_select(query))]
    total: int | None = None
    if query.total == "accurate" or query.summary_count:
        if not query.summary_count and query.offset == 0 and len(matches) < query.count:
            total = len(matches)  # the whole result fits on this page: no need to count
        else:
            total = await count(conn, query)
    return matches, total


async def matching_ids(conn: AsyncConnection, query: SearchQuery, limit: int) -> list[str]:
    """Ids of up to `limit` matches, for conditional interactions (which need to know 0, 1 or many)."""
    stmt = select(resource.c.res_id).where(*_where(query)).order_by(resource.c.rid).limit(limit)
    return [row.res_id for row in await conn.execute(stmt)]


async def included(
    conn: AsyncConnection,
    matches: list[Stored],
    includes: list[Include],
    revincludes: list[Include],
    limit: int,
) -> list[Stored]:
    """Resources pulled in by _include (what matches point at) and _revinclude (what points at them)."""
    if not matches:
        return []
    seen = {(m.type, m.id) for m in matches}
    found: list[Stored] = []
    rids = [m.rid for m in matches]
    for inc in includes:
        conditions = [
            sp_reference.c.rid.in_(rids),
            sp_reference.c.param == inc.param.name,
            sp_reference.c.res_type == inc.source_type,
        ]
        if inc.target_type:
            conditions.append(sp_reference.c.target_type == inc.target_type)
        rows = await conn.execute(
            select(sp_reference.c.target_type, sp_reference.c.target_id).where(*conditions)
        )
        keys = {(row.target_type, row.target_id) for row in rows} - seen
        for stored in await load_by_keys(conn, sorted(keys)[:limit]):
            seen.add((stored.type, stored.id))
            found.append(stored)
    ids_by_type: dict[str, list[str]] = {}
    for m in matches:
        ids_by_type.setdefault(m.type, []).append(m.id)
    for inc in revincludes:
        target_type = inc.target_type or matches[0].type
        ids = ids_by_type.get(target_type, [])
        if not ids:
            continue
        rows = await conn.execute(
            select(sp_reference.c.rid)
            .where(
                sp_reference.c.res_type == inc.source_type,
                sp_reference.c.param == inc.param.name,
                sp_reference.c.target_type == target_type,
                sp_reference.c.target_id.in_(ids),
            )
            .limit(limit)
        )
        loaded = await load_by_rids(conn, [row.rid for row in rows])
        for stored in loaded.values():
            if (stored.type, stored.id) not in seen and not stored.deleted:
                seen.add((stored.type, stored.id))
                found.append(stored)
    return found[:limit]


async def ids_by_identifier(
    conn: AsyncConnection, resource_type: str, identifiers: list[tuple[str | None, str]]
) -> dict[tuple[str | None, str], str]:
    """Ids of live resources of a type carrying each (system, value) identifier (one of them if several)."""
    if not identifiers:
        return {}
    wanted = set(identifiers)
    rows = await conn.execute(
        select(sp_token.c.system, sp_token.c.code, resource.c.res_id)
        .join(resource, resource.c.rid == sp_token.c.rid)
        .where(
            sp_token.c.res_type == resource_type,
            sp_token.c.param == "identifier",
            sp_token.c.code.in_(sorted({value for _, value in wanted})),
            resource.c.deleted.is_(False),
        )
        .order_by(resource.c.rid)
    )
    found: dict[tuple[str | None, str], str] = {}
    for row in rows:
        key = (row.system, row.code)
        if key in wanted:
            found.setdefault(key, row.res_id)
    return found


async def all_ids_by_identifier(
    conn: AsyncConnection, resource_type: str, identifiers: list[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """Ids of every live resource of a type carrying each (system, value) identifier: the system must
    match exactly (a bare value matches nothing but bare values)."""
    if not identifiers:
        return {}
    wanted = set(identifiers)
    rows = await conn.execute(
        select(sp_token.c.system, sp_token.c.code, resource.c.res_id)
        .join(resource, resource.c.rid == sp_token.c.rid)
        .where(
            sp_token.c.res_type == resource_type,
            sp_token.c.param == "identifier",
            sp_token.c.code.in_(sorted({value for _, value in wanted})),
            resource.c.deleted.is_(False),
        )
        .order_by(resource.c.rid)
    )
    found: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        key = (row.system, row.code)
        if key in wanted and row.res_id not in found.get(key, []):
            found.setdefault(key, []).append(row.res_id)
    return found


async def all_current(conn: AsyncConnection, resource_type: str) -> list[Stored]:
    """Every live resource of a type, current versions (for small types such as Subscription)."""
    rows = await conn.execute(
        current_select().where(resource.c.res_type == resource_type, resource.c.deleted.is_(False))
    )
    return [to_stored(row) for row in rows]


async def by_reference(
    conn: AsyncConnection, resource_type: str, param: str, targets: list[str]
) -> list[Stored]:
    """Live resources of a type whose reference parameter points at any of `targets` ("Type/id")."""
    by_type: dict[str, set[str]] = {}
    for target in targets:
        if "/" in target:
            target_type, target_id = target.split("/", 1)
            by_type.setdefault(target_type, set()).add(target_id)
    if not by_type:
        return []
    r = sp_reference.c
    # One IN list per target type: a flat OR of thousands of pairs is too deep an expression for SQLite.
    rids = (
        select(r.rid)
        .where(
            r.res_type == resource_type,
            r.param == param,
            or_(*(and_(r.target_type == t, r.target_id.in_(sorted(ids))) for t, ids in by_type.items())),
        )
        .scalar_subquery()
    )
    rows = await conn.execute(current_select().where(resource.c.rid.in_(rids), resource.c.deleted.is_(False)))
    return [to_stored(row) for row in rows]


async def by_token(conn: AsyncConnection, resource_type: str, param: str, codes: list[str]) -> list[Stored]:
    """Live resources of a type with any of `codes` (any system) in a token parameter."""
    t = sp_token.c
    rids = (
        select(t.rid)
        .where(t.res_type == resource_type, t.param == param, t.code.in_(codes))
        .scalar_subquery()
    )
    rows = await conn.execute(current_select().where(resource.c.rid.in_(rids), resource.c.deleted.is_(False)))
    return [to_stored(row) for row in rows]


async def by_reference_and_token(
    conn: AsyncConnection, resource_type: str, reference: tuple[str, str], token: tuple[str, list[str]]
) -> list[Stored]:
    """Live resources of a type pointing at one target ("Type/id") in a reference parameter and holding
    any of the codes (any system) in a token parameter: a patient's results of some codes, read through
    both indexes (neither the patient's whole record nor every patient's results of those codes)."""
    (param, target), (token_param, codes) = reference, token
    target_type, _, target_id = target.partition("/")
    r, t = sp_reference.c, sp_token.c
    referring = select(r.rid).where(
        r.res_type == resource_type, r.param == param, r.target_type == target_type, r.target_id == target_id
    )
    coded = select(t.rid).where(t.res_type == resource_type, t.param == token_param, t.code.in_(codes))
    rows = await conn.execute(
        current_select().where(
            resource.c.rid.in_(referring.scalar_subquery()),
            resource.c.rid.in_(coded.scalar_subquery()),
            resource.c.deleted.is_(False),
        )
    )
    return [to_stored(row) for row in rows]
