"""The migrations create exactly the schema the code describes, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.service.gateway import Gateway
from gateway.store.tables import metadata


async def test_migrated_schema_matches_the_table_definitions(gateway: Gateway) -> None:
    def diff(sync_conn: object) -> list[object]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})  # type: ignore[arg-type]
        return list(compare_metadata(context, metadata))

    async with gateway.db.write() as conn:
        assert await conn.run_sync(diff) == []
