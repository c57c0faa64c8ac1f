"""Applying Alembic migrations on start (and from `gateway migrate`).

Concurrent starts are safe: on PostgreSQL the upgrade holds an advisory lock; on SQLite it runs inside a
BEGIN IMMEDIATE transaction, which excludes other writers.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from gateway.store.database import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Arbitrary constant naming the gateway's migration lock among PostgreSQL advisory locks.
_PG_LOCK_KEY = 7_305_221_404


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest)."""
    async with database.write() as conn:
        await conn.run_sync(_upgrade, revision)
