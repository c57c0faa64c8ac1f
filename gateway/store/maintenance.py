"""Keeping PostgreSQL's planner statistics fresh while the gateway writes.

Search and write paths rely on the planner picking the (type, id) and index-table indexes; with stale
statistics (a freshly loaded database, or a server whose autovacuum is off, as on some managed and CI
installations) it falls back to scanning every row of a type, and a write that took 2 ms takes 200.
So every few hundred write transactions the gateway asks PostgreSQL which of its tables changed a lot
since they were last analyzed, and analyzes those, in the background, outside any transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy import text

from gateway.store.database import Database
from gateway.store.tables import metadata

log = logging.getLogger("gateway.store")

# A check (one catalog query) after at least this many write transactions and this many seconds.
CHECK_EVERY = 20
CHECK_INTERVAL_S = 2.0
# A table is analyzed when this share of its rows (plus a floor) changed since its last ANALYZE.
CHANGED_SHARE = 0.2
CHANGED_FLOOR = 1000


class StatisticsKeeper:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.commits = 0
        self.last_check = 0.0
        self._task: asyncio.Task[None] | None = None

    def note_commit(self, _conn: object = None) -> None:
        """Called after each write transaction; starts a background check now and then."""
        if self.db.dialect != "postgresql":
            return
        self.commits += 1
        if self.commits < CHECK_EVERY or (self._task is not None and not self._task.done()):
            return
        now = time.monotonic()
        if now - self.last_check < CHECK_INTERVAL_S:
            return
        self.commits, self.last_check = 0, now
        self._task = asyncio.get_running_loop().create_task(self._refresh_quietly(), name="analyze")

    async def stop(self) -> None:
        """Cancel a check under way (its connection is about to go with the pool)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception:
            log.exception("refreshing planner statistics failed")

    async def refresh(self) -> list[str]:
        """ANALYZE the gateway's tables whose statistics are stale; returns their names."""
        if self.db.dialect != "postgresql":
            return []
        names = sorted(metadata.tables)
        async with self.db.reader.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT relname, n_live_tup, n_mod_since_analyze FROM pg_stat_user_tables"
                    " WHERE relname = ANY(:names)"
                ),
                {"names": names},
            )
            stale = [
                row.relname
                for row in rows
                if row.n_mod_since_analyze > CHANGED_FLOOR + CHANGED_SHARE * row.n_live_tup
            ]
            for name in stale:
                await conn.exec_driver_sql(f'ANALYZE "{name}"')  # names come from our own metadata
        if stale:
            log.info("analyzed tables=%s", ",".join(stale))
        return stale
