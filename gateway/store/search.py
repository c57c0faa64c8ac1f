"""Running a parsed SearchQuery against the index tables.

Each criterion becomes `rid IN (SELECT rid FROM sp_<kind> WHERE res_type=? AND param=? AND ...)`; the
composite indexes on the sp_* tables answer these without touching other types' rows, which is what
keeps a search by patient as fast at 200k resources as at 10k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, FromClause, Select, Table, and_, bindparam, func, or_, select, true
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
from gateway.store import driver_sql
from gateway.store.resources import (
    CURRENT_FROM,
    Stored,
    current_select,
    load_by_keys,
    load_by_rids,
    stored_row,
    to_stored,
)
from gateway.store.statements import by_type, kept
from gateway.store.tables import resource, sp_date, sp_reference, sp_string, sp_token

_TABLES = {
    ParamType.TOKEN: sp_token,
    ParamType.REFERENCE: sp_reference,
    ParamType.DATE: sp_date,
    ParamType.STRING: sp_string,
}
# Upper bound for a prefix range: sorts after every string under byte-wise collation.
_MAX_CHAR = "\U0010ffff"


class _Bind:
    """Where a query's values go in its SQL: as literals (`literal`), or as parameters named by where they
    sit in the query (`f0v1c`: filter 0, value 1, its code), so one statement serves every query of the
    same shape. Building a statement and its cache key costs SQLAlchemy about 0.3-0.8 ms, several times
    what running it on an index costs; `_values` names the same parameters without building anything."""

    __slots__ = ("named", "names")

    def __init__(self, named: bool) -> None:
        self.named = named
        self.names: set[str] = set()

    def __call__(self, name: str, value: Any, *, many: bool = False) -> ColumnElement[Any]:
        if not self.named:
            return cast(ColumnElement[Any], value)  # SQLAlchemy binds it anonymously, as before
        self.names.add(name)
        return bindparam(name, value, expanding=many)


_LITERAL = _Bind(named=False)


def _date_condition(
    low: ColumnElement[int],
    high: ColumnElement[int],
    value: DateValue,
    bind: _Bind = _LITERAL,
    name: str = "",
) -> ColumnElement[bool]:
    """FHIR date prefixes (search.html#prefix) over a stored range [low, high] and a value range."""
    p_low, p_high = bind(name + "lo", value.low), bind(name + "hi", value.high)
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


def _token_condition(
    value: TokenValue, table: Table = sp_token, bind: _Bind = _LITERAL, name: str = ""
) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    if value.code is not None:
        conditions.append(table.c.code == bind(name + "c", value.code))
    if value.system is not None:
        conditions.append(table.c.system == bind(name + "s", value.system))
    elif value.system_absent:
        conditions.append(table.c.system.is_(None))
    return and_(true(), *conditions)


def _value_condition(f: Filter, value: Any, bind: _Bind = _LITERAL, name: str = "") -> ColumnElement[bool]:
    if f.kind is ParamType.TOKEN:
        return _token_condition(value, sp_token, bind, name)
    if f.kind is ParamType.DATE:
        return _date_condition(sp_date.c.low_us, sp_date.c.high_us, value, bind, name)
    if f.kind is ParamType.REFERENCE:
        assert isinstance(value, ReferenceValue)
        cond = sp_reference.c.target_id == bind(name + "i", value.id)
        if value.type is not None:
            cond = and_(cond, sp_reference.c.target_type == bind(name + "t", value.type))
        return cond
    column: ColumnElement[str] = sp_string.c.value
    text = str(value)
    if f.modifier == "exact":
        return column == bind(name, text)
    if f.modifier == "contains":
        if bind.named:
            return column.like(bind(name, _like_pattern(text)), escape="/")
        return column.contains(text, autoescape=True)
    return and_(column >= bind(name, text), column < bind(name + "z", text + _MAX_CHAR))


def filter_condition(
    f: Filter, resource_type: str, r: FromClause = resource, bind: _Bind = _LITERAL, name: str = "f"
) -> ColumnElement[bool]:
    """The WHERE condition on resource table `r` for one criterion."""
    if f.param is None:  # _id and _lastUpdated live on the resource row itself
        if f.name == "_id":
            ids = [v.code for v in f.values if isinstance(v, TokenValue) and v.code]
            return r.c.res_id.in_(bind(name + "ids", ids, many=True))
        return or_(
            *[
                _date_condition(r.c.updated_us, r.c.updated_us, v, bind, f"{name}v{j}")
                for j, v in enumerate(f.values)
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
        inner = filter_condition(f.chain.inner, f.chain.target_type, target, bind, name + "x")
        target_ids = select(target.c.res_id).where(
            target.c.res_type == f.chain.target_type, target.c.deleted.is_(False), inner
        )
        matching = select(sp_reference.c.rid).where(
            *base, sp_reference.c.target_type == f.chain.target_type, sp_reference.c.target_id.in_(target_ids)
        )
        return r.c.rid.in_(matching)
    conditions = [_value_condition(f, v, bind, f"{name}v{j}") for j, v in enumerate(f.values)]
    matching = select(table.c.rid).where(*base, or_(*conditions))
    if f.modifier == "not":
        return r.c.rid.not_in(matching)
    return r.c.rid.in_(matching)


def _narrows_by_index(f: Filter) -> bool:
    """True when the criterion is `rid IN (index rows of this type)`, which already implies the type."""
    if f.param is None or f.modifier == "not":
        return False
    return not (f.modifier == "missing" and f.missing)


def restriction_condition(
    resource_type: str, restriction: PatientRestriction, r: FromClause = resource, bind: _Bind = _LITERAL
) -> ColumnElement[bool]:
    """Only the records of the restriction's patients: linked to one of them, and to no other Patient."""
    ids = bind("reach", sorted(restriction.patient_ids), many=True)
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


def _where(query: SearchQuery, bind: _Bind = _LITERAL) -> list[ColumnElement[bool]]:
    conditions = [
        filter_condition(f, query.resource_type, resource, bind, f"f{i}") for i, f in enumerate(query.filters)
    ]
    if query.restriction is not None:
        conditions.append(restriction_condition(query.resource_type, query.restriction, resource, bind))
    if not any(_narrows_by_index(f) for f in query.filters):
        # Only when no index criterion implies the type: a redundant `res_type = ?` on the resource table
        # lures planners without statistics (a fresh PostgreSQL, SQLite) into scanning the type's rows.
        conditions.insert(0, resource.c.res_type == query.resource_type)
    return [resource.c.deleted.is_(False), *conditions]


# -- statements kept by the shape of their query ---------------------------------------------------------


def _filter_values(f: Filter, name: str, out: dict[str, Any], shape: list[Any]) -> None:
    """The parameters `filter_condition` names for one criterion, and what else its SQL depends on."""
    shape.append((f.name, f.kind, f.modifier, f.missing, f.chain.target_type if f.chain else None))
    if f.modifier == "missing" and f.param is not None:
        return
    if f.chain is not None:
        _filter_values(f.chain.inner, name + "x", out, shape)
        return
    if f.param is None and f.name == "_id":
        out[name + "ids"] = [v.code for v in f.values if isinstance(v, TokenValue) and v.code]
        return
    for j, v in enumerate(f.values):
        at = f"{name}v{j}"
        if isinstance(v, TokenValue):
            shape.append((v.code is None, v.system is None, v.system_absent))
            if v.code is not None:
                out[at + "c"] = v.code
            if v.system is not None:
                out[at + "s"] = v.system
        elif isinstance(v, DateValue):
            shape.append(v.prefix)
            out[at + "lo"], out[at + "hi"] = v.low, v.high
        elif isinstance(v, ReferenceValue):
            shape.append(v.type is None)
            out[at + "i"] = v.id
            if v.type is not None:
                out[at + "t"] = v.type
        else:
            text = str(v)
            shape.append("s")
            if f.modifier in ("exact", "contains"):
                out[at] = text if f.modifier == "exact" else _like_pattern(text)
            else:
                out[at], out[at + "z"] = text, text + _MAX_CHAR


def _like_pattern(text: str) -> str:
    """`contains` with a bound value: SQLAlchemy cannot escape a parameter it does not see, so it is done
    here as autoescape does for literals ('/' escapes itself, % and _)."""
    return "%" + text.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


def _values(query: SearchQuery) -> tuple[Any, dict[str, Any]]:
    """The shape of a query (everything its SQL depends on but the values) and its named values."""
    out: dict[str, Any] = {}
    shape: list[Any] = [query.resource_type]
    for i, f in enumerate(query.filters):
        _filter_values(f, f"f{i}", out, shape)
    if query.restriction is not None:
        shape.append(("reach", query.restriction.params))
        out["reach"] = sorted(query.restriction.patient_ids)
    return (tuple(shape), tuple(query.sort)), out


def _kept(kind: str, query: SearchQuery, build: Any) -> tuple[Any, dict[str, Any]]:
    """The statement for this query's shape (built once) and the values to run it with."""
    shape, values = _values(query)

    def checked_build() -> Any:
        bind = _Bind(named=True)
        stmt = build(bind)
        # A parameter `_values` does not name would keep the first query's value for every later one.
        unnamed = bind.names - values.keys() - {"lim", "off"}
        assert not unnamed, f"search parameters without values: {sorted(unnamed)}"
        return stmt

    return kept(("search", kind, shape), checked_build), values


def _sort_key(query: SearchQuery, name: str, descending: bool) -> KeyedColumnElement[Any] | Any:
    if name == "_id":
        key: Any = resource.c.res_id
    elif name == "_lastUpdated":
        key = resource.c.updated_us
    else:
        bound = func.max(sp_date.c.high_us) if descending else func.min(sp_date.c.low_us)
        key = select(bound).where(sp_date.c.rid == resource.c.rid, sp_date.c.param == name).scalar_subquery()
    return key.desc() if descending else key.asc()


def _page_select(query: SearchQuery, bind: _Bind) -> Select[Any]:
    order = [_sort_key(query, name, desc) for name, desc in query.sort]
    order.append(resource.c.rid.desc() if query.sort and query.sort[-1][1] else resource.c.rid.asc())
    stmt: Select[Any] = current_select().where(*_where(query, bind)).order_by(*order)
    return stmt.limit(bind("lim", query.count)).offset(bind("off", query.offset))


def page_select(query: SearchQuery) -> Select[Any]:
    """One page of matches, with the query's values as literals (EXPLAIN, tests)."""
    return _page_select(query, _LITERAL)


async def count(conn: AsyncConnection, query: SearchQuery) -> int:
    stmt, values = _kept(
        "count", query, lambda bind: select(func.count()).select_from(resource).where(*_where(query, bind))
    )
    return int((await conn.execute(stmt, values)).scalar_one())


async def search(conn: AsyncConnection, query: SearchQuery) -> tuple[list[Stored], int | None]:
    """One page of matches and, unless _total=none, the total number of matches."""
    matches: list[Stored] = []
    if query.count > 0 and not query.summary_count:
        stmt, values = _kept("page", query, lambda bind: _page_select(query, bind))
        values["lim"], values["off"] = query.count, query.offset
        matches = [to_stored(row) for row in await conn.execute(stmt, values)]
    total: int | None = None
    if query.total == "accurate" or query.summary_count:
        if not query.summary_count and query.offset == 0 and len(matches) < query.count:
            total = len(matches)  # the whole result fits on this page: no need to count
        else:
            total = await count(conn, query)
    return matches, total


async def matching_ids(conn: AsyncConnection, query: SearchQuery, limit: int) -> list[str]:
    """Ids of up to `limit` matches, for conditional interactions (which need to know 0, 1 or many)."""
    stmt, values = _kept(
        "ids",
        query,
        lambda bind: (
            select(resource.c.res_id)
            .where(*_where(query, bind))
            .order_by(resource.c.rid)
            .limit(bind("lim", limit))
        ),
    )
    values["lim"] = limit
    return [row.res_id for row in await conn.execute(stmt, values)]


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


async def _identified(conn: AsyncConnection, resource_type: str, values: set[str]) -> list[Sequence[Any]]:
    """(system, value, id) of the live resources of a type with any of these identifier values, oldest
    first. On the driver path: every HL7 v2 message looks its patient up by identifier."""
    among, codes = driver_sql.among(conn, sorted(values))
    sql = (
        "SELECT t.system, t.code, r.res_id FROM sp_token t JOIN resource r ON r.rid = t.rid"
        f" WHERE t.res_type = ? AND t.param = 'identifier' AND t.code {among} AND NOT r.deleted"
        " ORDER BY r.rid"
    )
    return await driver_sql.fetch(conn, sql, (resource_type, *codes))


async def ids_by_identifier(
    conn: AsyncConnection, resource_type: str, identifiers: list[tuple[str | None, str]]
) -> dict[tuple[str | None, str], str]:
    """Ids of live resources of a type carrying each (system, value) identifier (one of them if several)."""
    if not identifiers:
        return {}
    wanted = set(identifiers)
    found: dict[tuple[str | None, str], str] = {}
    for system, code, res_id in await _identified(conn, resource_type, {value for _, value in wanted}):
        if (system, code) in wanted:
            found.setdefault((system, code), res_id)
    return found


async def all_ids_by_identifier(
    conn: AsyncConnection, resource_type: str, identifiers: list[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """Ids of every live resource of a type carrying each (system, value) identifier: the system must
    match exactly (a bare value matches nothing but bare values)."""
    if not identifiers:
        return {}
    wanted = set(identifiers)
    found: dict[tuple[str, str], list[str]] = {}
    for system, code, res_id in await _identified(conn, resource_type, {value for _, value in wanted}):
        key = (system, code)
        if key in wanted and res_id not in found.get(key, []):
            found.setdefault(key, []).append(res_id)
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
    """Live resources of a type whose reference parameter points at any of `targets` ("Type/id").

    On the driver path (the alert and calendar observers look up a patient's orders and plans on every
    result): one condition per target type, whose ids are one array parameter on PostgreSQL; a flat OR of
    thousands of pairs would be too deep an expression for SQLite."""
    pairs = (target.partition("/") for target in targets if "/" in target)
    grouped = by_type((target_type, target_id) for target_type, _, target_id in pairs)
    if not grouped:
        return []
    params: list[Any] = [resource_type, param]
    conditions: list[str] = []
    for target_type, ids in grouped.items():
        any_id, id_params = driver_sql.among(conn, ids)
        params += [target_type, *id_params]
        conditions.append(f"(target_type = ? AND target_id {any_id})")
    sql = (
        f"{CURRENT_FROM} WHERE r.rid IN (SELECT rid FROM sp_reference WHERE res_type = ? AND param = ?"
        f" AND ({' OR '.join(conditions)})) AND NOT r.deleted"
    )
    return [stored_row(row) for row in await driver_sql.fetch(conn, sql, tuple(params))]


async def by_token(conn: AsyncConnection, resource_type: str, param: str, codes: list[str]) -> list[Stored]:
    """Live resources of a type with any of `codes` (any system) in a token parameter."""
    t = sp_token.c

    def build() -> Any:
        rids = (
            select(t.rid)
            .where(
                t.res_type == bindparam("rt"),
                t.param == bindparam("p"),
                t.code.in_(bindparam("c", expanding=True)),
            )
            .scalar_subquery()
        )
        return current_select().where(resource.c.rid.in_(rids), resource.c.deleted.is_(False))

    rows = await conn.execute(kept("by-token", build), {"rt": resource_type, "p": param, "c": list(codes)})
    return [to_stored(row) for row in rows]


async def by_reference_and_token(
    conn: AsyncConnection, resource_type: str, reference: tuple[str, str], token: tuple[str, list[str]]
) -> list[Stored]:
    """Live resources of a type pointing at one target ("Type/id") in a reference parameter and holding
    any of the codes (any system) in a token parameter: a patient's results of some codes, read through
    both indexes (neither the patient's whole record nor every patient's results of those codes)."""
    (param, target), (token_param, codes) = reference, token
    target_type, _, target_id = target.partition("/")
    wanted = sorted(codes)
    if not wanted:
        return []
    among, code_params = driver_sql.among(conn, wanted)
    sql = (
        f"{CURRENT_FROM} WHERE r.rid IN (SELECT rid FROM sp_reference WHERE res_type = ? AND param = ?"
        " AND target_type = ? AND target_id = ?)"
        f" AND r.rid IN (SELECT rid FROM sp_token WHERE res_type = ? AND param = ? AND code {among})"
        " AND NOT r.deleted"
    )
    params = (resource_type, param, target_type, target_id, resource_type, token_param, *code_params)
    return [stored_row(row) for row in await driver_sql.fetch(conn, sql, params)]
