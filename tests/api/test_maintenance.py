"""PostgreSQL statistics are refreshed by the gateway itself (autovacuum may be off)."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import text

from gateway.fhir.extract import IndexRows
from gateway.service.gateway import Gateway
from gateway.store import maintenance
from gateway.store.maintenance import StatisticsKeeper
from gateway.store.resources import PendingVersion, write


async def test_stale_tables_are_analyzed_on_postgresql(gateway: Gateway) -> None:
    keeper = StatisticsKeeper(gateway.db)
    if gateway.db.dialect != "postgresql":
        assert await keeper.refresh() == []
        keeper.note_commit()  # a no-op on SQLite: its planner needs no statistics here
        assert keeper.commits == 0
        return
    rows = maintenance.CHANGED_FLOOR + 500
    async with gateway.db.write() as conn:
        await write(
            conn,
            [
                PendingVersion(
                    "Patient", str(uuid.uuid4()), 1, 1, "POST", b'{"resourceType":"Patient"}', IndexRows()
                )
                for _ in range(rows)
            ],
        )
        # Backends publish table activity lazily (up to ten seconds); ask this one to do it at once.
        await conn.execute(text("SELECT pg_stat_force_next_flush()"))
    analyzed_tables: list[str] = []
    for _ in range(50):  # PostgreSQL publishes table activity with a delay of up to a second
        analyzed_tables = await keeper.refresh()
        if "resource" in analyzed_tables:
            break
        await asyncio.sleep(0.1)
    assert "resource" in analyzed_tables
    async with gateway.db.read() as conn:
        analyzed = (
            await conn.execute(
                text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'resource'")
            )
        ).scalar()
    assert analyzed is not None
