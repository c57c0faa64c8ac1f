"""Engines and transactions for SQLite (embedded default) and PostgreSQL.

SQLite allows one writer at a time. Rather than let concurrent writers collide on the file lock, this
process serialises its write transactions with an asyncio lock and starts them with BEGIN IMMEDIATE
(so a second process, such as `gateway clients add`, waits on busy_timeout instead of failing mid-way).
Readers use their own connections and, in WAL mode, never block the writer.
PostgreSQL needs none of that: writers run concurrently and optimistic version checks settle races.

Every engine is built with `hide_parameters`: SQLAlchemy's error text otherwise ends with the statement's
bound values (patient names, MRNs, whole resources), and error text ends up in logs.

Reads run in autocommit mode on both backends: no BEGIN/COMMIT round trips (on aiosqlite each one is a
thread hop, measured at about 0.2 ms). The cost is that the statements of one search (page, total,
includes) may see different committed states if a write lands between them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.store import sqlite_driver

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",  # durable across process crashes in WAL mode; fsync at checkpoints
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA cache_size=-65536",  # 64 MiB page cache per connection
    "PRAGMA temp_store=MEMORY",
)


def _quiet_driver_logs() -> None:
    """aiosqlite logs every operation with its parameters at DEBUG, so GATEWAY_LOG_LEVEL=DEBUG would put
    patients' data in the logs. Like SQLAlchemy does for its own loggers (WARNING unless configured), its
    level is raised unless someone set one on purpose."""
    driver_log = logging.getLogger("aiosqlite")
    if driver_log.level == logging.NOTSET:
        driver_log.setLevel(logging.INFO)


def _sqlite_engine(url: str, *, begin: str | None) -> AsyncEngine:
    _quiet_driver_logs()
    if begin is None:
        engine = create_async_engine(
            url,
            pool_size=4,
            max_overflow=4,
            isolation_level="AUTOCOMMIT",
            pool_reset_on_return=None,
            hide_parameters=True,
            module=sqlite_driver.dbapi(),
        )
    else:
        engine = create_async_engine(
            url, pool_size=1, max_overflow=4, hide_parameters=True, module=sqlite_driver.dbapi()
        )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start (see the pysqlite notes in the
        # SQLAlchemy docs): the driver's own implicit BEGIN would be DEFERRED.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    if begin is not None:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

    return engine


class Database:
    """One database: a writer engine (transactions) and a reader engine (autocommit)."""

    def __init__(self, url: str, *, pool_size: int = 16, statement_timeout_s: float = 30.0) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            path = parsed.database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.writer = _sqlite_engine(url, begin="BEGIN IMMEDIATE")
            self.reader = _sqlite_engine(url, begin=None)
        elif self.dialect == "postgresql":
            # Fixed-size pools (no overflow): an overflow connection is closed as soon as it is handed back
            # while the pool is full, so a load just above the pool's size opened and closed a connection
            # (a PostgreSQL backend process, and a TLS offer first) every few requests. Past the size, a
            # request waits for a connection instead.
            self.writer = create_async_engine(
                url, pool_size=pool_size, max_overflow=0, pool_recycle=3600, hide_parameters=True
            )
            # Reads (searches) stop at the statement timeout: PostgreSQL keeps running a query after its
            # client has gone, so a costly search must not run for minutes. Writes are not bounded here
            # (migrations and large transactions may take long; they hold their own locks).
            timeout_ms = str(int(statement_timeout_s * 1000)) if statement_timeout_s > 0 else "0"
            self.reader = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=0,
                pool_recycle=3600,  # no pre-ping: it costs a round trip per request
                isolation_level="AUTOCOMMIT",
                pool_reset_on_return=None,
                hide_parameters=True,
                connect_args={"server_settings": {"statement_timeout": timeout_ms}},
            )
        else:
            raise ValueError(
                f"Unsupported database {self.dialect!r}: use sqlite+aiosqlite or postgresql+asyncpg"
            )
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        # Last statements of every write transaction, inside it (e.g. numbering the timeline's changes).
        self.before_commit: list[Callable[[AsyncConnection], Awaitable[None]]] = []
        self.after_commit: list[Callable[[AsyncConnection], None]] = []  # e.g. the statistics keeper
        self.after_rollback: list[Callable[[AsyncConnection | None], None]] = []
        self.before_dispose: list[Callable[[], Awaitable[None]]] = []  # background work on the pools

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed when the block exits normally, rolled back on an exception.

        Hooks get the transaction's connection, so that state kept per transaction (several run at once
        on PostgreSQL) is settled for that one alone; a rollback before a connection was had passes None.
        `before_commit` hooks run inside the transaction once the block is done (a failing one rolls it back).
        """
        current: AsyncConnection | None = None
        try:
            if self._write_lock is None:
                async with self.writer.begin() as conn:
                    current = conn
                    yield conn
                    await self._before_commit(conn)
            else:
                async with self._write_lock, self.writer.begin() as conn:
                    current = conn
                    yield conn
                    await self._before_commit(conn)
        except BaseException:
            for rollback_hook in self.after_rollback:
                rollback_hook(current)
            raise
        assert current is not None
        for hook in self.after_commit:
            hook(current)

    async def _before_commit(self, conn: AsyncConnection) -> None:
        for hook in self.before_commit:
            await hook(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads, in autocommit mode (see the module notes)."""
        async with self.reader.connect() as conn:
            yield conn

    async def answers(self, timeout_s: float = 2.0) -> bool:
        """Whether the database runs a trivial query now (to tell "down" from "refused this statement")."""
        try:
            async with asyncio.timeout(timeout_s), self.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def dispose(self) -> None:
        for hook in self.before_dispose:
            await hook()
        await self.writer.dispose()
        await self.reader.dispose()

    def redacted_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)
