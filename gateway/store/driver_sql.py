"""Plain SQL run on the driver's own connection, past SQLAlchemy's execution layer, for the statements every
write and read sends: the index rows, the versions, the new resources, a read's current version.

Why: through SQLAlchemy, a one-row SELECT on asyncpg cost 54-63 us of CPU against the driver's own 10.5 us
(a greenlet switch, an execution context, a result proxy, the adapter's cursor; measured in one process
against the local PostgreSQL, issue 13). A six-OBX ORU sends a dozen such statements. Here they go to
asyncpg directly, inside the same transaction:

- the transaction SQLAlchemy begins lazily (on its first statement) is begun first, as its adapter would;
- the adapter's lock on the connection is held, as its cursor does;
- an error from the driver becomes the SQLAlchemy exception `exec_driver_sql` would raise (an
  IntegrityError for a unique clash, an OperationalError or InterfaceError for a lost connection), so
  callers and the transaction's rollback see what they always saw; a lost connection is invalidated, as
  SQLAlchemy does, so the pool never hands it out again;
- `before_cursor_execute` listeners still hear of each statement (tests and `bench sql` count them).

Statements are written once, with `?` placeholders (SQLite's); for asyncpg they are numbered here ($1, $2,
...), so no caller needs to know the driver's style. No driver statement has a `?` of its own (in a string
literal, say).

On SQLite the statement is one trip to the connection's thread (gateway/store/sqlite_driver.py) without
SQLAlchemy's cursor; its transactions begin eagerly (BEGIN IMMEDIATE on SQLAlchemy's "begin" event), so
there is nothing to begin here. A driver or adapter these assumptions do not hold for takes
`exec_driver_sql`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.sqlite_driver import OneTripConnection


async def execute_many(conn: AsyncConnection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """INSERT (or any statement without rows back) once per parameter tuple."""
    if rows:
        await _send(conn, sql, rows, many=True)


async def fetch(conn: AsyncConnection, sql: str, params: tuple[Any, ...]) -> list[Sequence[Any]]:
    """The rows of one statement (e.g. INSERT ... RETURNING), each indexable by column position."""
    return await _send(conn, sql, params, many=False)


def marks(count: int) -> str:
    """`count` placeholders, comma-separated: "?, ?, ?"."""
    return ", ".join("?" * count)


def among(conn: AsyncConnection, values: Sequence[str]) -> tuple[str, list[Any]]:
    """A condition's right-hand side for "equals any of these strings", and its parameters: one array
    parameter on PostgreSQL (the statement's text is the same for any number of values, so asyncpg's
    statement cache keeps it), an IN list on SQLite."""
    if conn.dialect.name == "postgresql":
        return "= ANY(?::varchar[])", [list(values)]
    return f"IN ({marks(len(values))})", list(values)


def _numbered(sql: str) -> str:
    """`?` placeholders as asyncpg wants them: $1, $2, ... (statements repeat: short ones are remembered)."""
    return _numbered_kept(sql) if len(sql) <= _KEPT_SQL_CHARS else _number(sql)


_KEPT_SQL_CHARS = 4096  # a big batch's multi-row INSERT is numbered each time rather than kept


def _number(sql: str) -> str:
    parts = sql.split("?")
    return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], start=1)) + parts[-1]


_numbered_kept = lru_cache(maxsize=512)(_number)


async def _send(conn: AsyncConnection, sql: str, params: Any, *, many: bool) -> list[Sequence[Any]]:
    if conn.dialect.paramstyle == "numeric_dollar":
        sql = _numbered(sql)
    raw = await conn.get_raw_connection()
    adapted: Any = raw.dbapi_connection
    sqlite = isinstance(adapted, OneTripConnection)
    asyncpg = conn.dialect.driver == "asyncpg" and all(hasattr(adapted, n) for n in _ASYNCPG_PARTS)
    if not (sqlite or asyncpg):  # another driver or SQLAlchemy release: the general path
        if many:
            await conn.exec_driver_sql(sql, params)
            return []
        return list(await conn.exec_driver_sql(sql, params))
    _announce(conn, sql, params, many=many)
    try:
        if sqlite:
            rows: list[Sequence[Any]] = await adapted.one_trip(sql, params, many=many)
        else:
            rows = await _on_asyncpg(adapted, sql, params, many=many)
    except DBAPIError:
        raise
    except Exception as error:
        translated = _translated(conn, adapted, sql, params, error)
        if _lost(adapted, error, translated):
            # What SQLAlchemy does on a disconnect: this connection is never handed out again.
            await conn.invalidate(translated)
        raise translated from error
    return rows


class ConnectionLost(ConnectionError):
    """A transaction's connection went away under it (a restarted or failed-over database, a terminated
    backend) while the database may well be up again: nothing of the transaction was committed, and the
    same work may simply be run again on another connection."""


def connection_lost(conn: AsyncConnection, error: BaseException) -> bool:
    """Whether `error`, raised inside a transaction on `conn` (before its rollback), came from losing the
    connection rather than from the statements: SQLAlchemy saw a disconnect, or the driver reports its
    connection closed whatever class of error it raised (asyncpg raises InternalClientError, not an
    InterfaceError, for a statement racing the termination notice)."""
    if isinstance(error, ConnectionLost) or (isinstance(error, DBAPIError) and error.connection_invalidated):
        return True
    sync = conn.sync_connection
    if sync is None or sync.invalidated:
        return sync is not None
    try:
        adapted = sync.connection.dbapi_connection
    except Exception:  # SQLAlchemy refuses to hand out a closed or invalidated connection
        return True
    return _driver_closed(adapted)


def _driver_closed(adapted: Any) -> bool:
    closed = getattr(getattr(adapted, "_connection", None), "is_closed", None)
    return callable(closed) and bool(closed())


def _lost(adapted: Any, error: Exception, translated: Exception) -> bool:
    """Whether the connection is gone: SQLAlchemy's disconnect check said so, the socket failed, or
    asyncpg reports its connection closed (whatever the error's class)."""
    if isinstance(translated, DBAPIError) and translated.connection_invalidated:
        return True
    return isinstance(error, OSError) or _driver_closed(adapted)


_ASYNCPG_PARTS = ("_connection", "_transaction", "_start_transaction", "_execute_mutex")


async def _on_asyncpg(adapted: Any, sql: str, params: Any, *, many: bool) -> list[Sequence[Any]]:
    async with adapted._execute_mutex:  # as the adapter's cursor does: one statement at a time
        if adapted._transaction is None:
            await adapted._start_transaction()  # a no-op on an autocommit connection
        driver = adapted._connection
        if many:
            await driver.executemany(sql, params)
            return []
        rows: list[Sequence[Any]] = await driver.fetch(sql, *params)
        return rows


def _translated(conn: AsyncConnection, adapted: Any, sql: str, params: Any, error: Exception) -> Exception:
    """What SQLAlchemy makes of a driver's error: the adapter maps it to its DBAPI class, which
    `DBAPIError.instance` wraps in the matching sqlalchemy.exc class."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        adapted._handle_exception(error)
    except dbapi.Error as mapped:
        return DBAPIError.instance(
            sql,
            params,
            mapped,
            dbapi.Error,
            hide_parameters=True,
            connection_invalidated=conn.dialect.is_disconnect(mapped, adapted, None),
            dialect=conn.dialect,
        )
    except Exception as other:  # not the driver's: returned as it is
        return other
    return error


def _announce(conn: AsyncConnection, sql: str, params: Any, *, many: bool) -> None:
    sync = conn.sync_connection
    if sync is None:
        return
    for listener in sync.dispatch.before_cursor_execute:
        listener(sync, None, sql, params, None, many)
