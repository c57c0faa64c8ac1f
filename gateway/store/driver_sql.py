"""Plain SQL run on the driver's own connection, past SQLAlchemy's execution layer, for the statements every
write sends: the index rows, the versions, the new resources (PostgreSQL).

Why: through `AsyncConnection.exec_driver_sql`, a statement on asyncpg costs about 50 us of CPU before and
after the driver's own 10 us (a greenlet switch, an execution context, a result proxy, the adapter's
cursor), measured in this process with `python -m bench server-cpu`'s database. A six-OBX ORU sends a
dozen such statements. Here they go to asyncpg directly, inside the same transaction:

- the transaction SQLAlchemy begins lazily (on its first statement) is begun first, as its adapter would;
- the adapter's lock on the connection is held, as its cursor does;
- an error from the driver becomes the SQLAlchemy exception `exec_driver_sql` would raise (an
  IntegrityError for a unique clash, an OperationalError or InterfaceError for a lost connection), so
  callers and the transaction's rollback see what they always saw;
- `before_cursor_execute` listeners still hear of each statement (tests and `bench sql` count them).

SQLite, and any driver or adapter these assumptions do not hold for, takes `exec_driver_sql`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

Params = Sequence[Any]


async def execute_many(conn: AsyncConnection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """INSERT (or any statement without rows back) once per parameter tuple."""
    if not rows:
        return
    adapted = await _asyncpg_adapter(conn)
    if adapted is None:
        await conn.exec_driver_sql(sql, rows)
        return
    _announce(conn, sql, rows, many=True)
    await _run(conn, adapted, sql, rows, lambda driver: driver.executemany(sql, rows))


async def fetch(conn: AsyncConnection, sql: str, params: tuple[Any, ...]) -> list[Sequence[Any]]:
    """The rows of one statement (e.g. INSERT ... RETURNING), each indexable by column position."""
    adapted = await _asyncpg_adapter(conn)
    if adapted is None:
        return list(await conn.exec_driver_sql(sql, params))
    _announce(conn, sql, params, many=False)
    rows: list[Sequence[Any]] = await _run(
        conn, adapted, sql, params, lambda driver: driver.fetch(sql, *params)
    )
    return rows


async def _asyncpg_adapter(conn: AsyncConnection) -> Any | None:
    """SQLAlchemy's adapter around the asyncpg connection, when its parts are as this module expects."""
    if conn.dialect.driver != "asyncpg":
        return None
    raw = await conn.get_raw_connection()
    adapted = raw.dbapi_connection
    if not all(hasattr(adapted, name) for name in ("_connection", "_transaction", "_start_transaction")):
        return None  # another SQLAlchemy release: the general path
    return adapted


async def _run(conn: AsyncConnection, adapted: Any, sql: str, params: Any, call: Any) -> Any:
    lock = getattr(adapted, "_execute_mutex", None)
    try:
        if lock is None:
            return await _begun_then(adapted, call)
        async with lock:
            return await _begun_then(adapted, call)
    except DBAPIError:
        raise
    except Exception as error:
        raise _translated(conn, adapted, sql, params, error) from error


async def _begun_then(adapted: Any, call: Any) -> Any:
    if adapted._transaction is None:
        await adapted._start_transaction()  # a no-op on an autocommit connection
    return await call(adapted._connection)


def _translated(conn: AsyncConnection, adapted: Any, sql: str, params: Any, error: Exception) -> Exception:
    """What SQLAlchemy makes of a driver's error: the adapter maps it to its DBAPI class, which
    `DBAPIError.instance` wraps in the matching sqlalchemy.exc class."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        adapted._handle_exception(error)
    except dbapi.Error as mapped:
        return DBAPIError.instance(
            sql, params, mapped, dbapi.Error, hide_parameters=True, dialect=conn.dialect
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
