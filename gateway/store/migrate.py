"""Applying Alembic migrations on start (and from `gateway migrate`).

Concurrent starts are safe: on PostgreSQL the upgrade holds an advisory lock; on SQLite it runs inside a
BEGIN IMMEDIATE transaction, which excludes other writers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from gateway.auth.key_encryption import KeyEncryptionKey
from gateway.store.database import Database

log = logging.getLogger("gateway.store")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Arbitrary constant naming the gateway's migration lock among PostgreSQL advisory locks.
_PG_LOCK_KEY = 7_305_221_404


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(connection: Connection, revision: str, key_encryption: KeyEncryptionKey | None) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    config = alembic_config()
    config.attributes["connection"] = connection
    # Migrations that seal keys (0006) use it; without it they read the KEK from the environment.
    config.attributes["key_encryption"] = key_encryption
    before = MigrationContext.configure(connection).get_current_revision()
    command.upgrade(config, revision)
    after = MigrationContext.configure(connection).get_current_revision()
    # One line for what Alembic says in many (its own loggers are quiet below WARNING: gateway/logs.py).
    if before == after:
        log.info("database schema at %s, up to date", after)
    else:
        log.info("database schema migrated from %s to %s", before or "empty", after)


async def upgrade(
    database: Database, revision: str = "head", *, key_encryption: KeyEncryptionKey | None = None
) -> None:
    """Bring the schema to `revision` (default: the newest). `key_encryption` is the KeyEncryptionKey
    that seals signing keys (gateway/auth/key_encryption.py); None: the one the environment configures."""
    async with database.write() as conn:
        await conn.run_sync(_upgrade, revision, key_encryption)
