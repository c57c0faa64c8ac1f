"""The SQLite driver adapter: one trip to aiosqlite's thread per statement, with the answers SQLAlchemy
reads from a cursor (rows, rowcount, RETURNING) unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text

from gateway.store.database import _sqlite_engine


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the functions run on aiosqlite's thread."""
    seen: list[str] = []
    original = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return seen


async def test_each_statement_is_one_trip_with_its_rows_and_counts(tmp_path: Path, trips: list[str]) -> None:
    engine = _sqlite_engine(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}", begin="BEGIN IMMEDIATE")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": "a"}, {"v": "b"}, {"v": "c"}])
            trips.clear()
            rows = (await conn.execute(text("SELECT id, v FROM t ORDER BY id"))).all()
            assert [tuple(r) for r in rows] == [(1, "a"), (2, "b"), (3, "c")]
            assert len(trips) == 1  # the driver's own cursor took four: cursor, execute, fetchall, close
            updated = await conn.execute(text("UPDATE t SET v = 'z' WHERE id >= 2"))
            assert updated.rowcount == 2
            returned = (await conn.execute(text("INSERT INTO t (v) VALUES ('d') RETURNING id, v"))).all()
            assert [tuple(r) for r in returned] == [(4, "d")]
            assert len(trips) == 3
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t WHERE v = 'z'"))).scalar_one() == 2
    finally:
        await engine.dispose()


async def test_errors_still_reach_sqlalchemy_as_its_own(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine = _sqlite_engine(f"sqlite+aiosqlite:///{tmp_path / 'two.db'}", begin="BEGIN IMMEDIATE")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE u (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO u (id) VALUES (1)"))
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO u (id) VALUES (1)"))
        with pytest.raises(OperationalError):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT nope FROM u"))
    finally:
        await engine.dispose()
