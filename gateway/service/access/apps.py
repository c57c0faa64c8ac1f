"""Registered SMART apps: adding (checked, the secret hashed off the event loop), listing, disabling.

The authorization endpoint, consent and the authorization-code grant that use them come later (issue 11).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.auth.secrets import hash_secret, new_client_id, new_secret
from gateway.auth.smart_apps import check_app_name, check_app_scope, check_redirect_uris
from gateway.fhir import dates
from gateway.store import smart_apps as app_store
from gateway.store.database import Database
from gateway.store.smart_apps import AppRecord


class UnknownApp(LookupError):
    """No app has that name."""


@dataclass(frozen=True, slots=True)
class NewApp:
    record: AppRecord
    client_secret: str | None  # shown once, for a confidential app; only its hash is stored


async def add_app(
    db: Database,
    name: str,
    redirect_uris: list[str] | tuple[str, ...],
    scope: str,
    *,
    confidential: bool,
    cost: int,
) -> NewApp:
    """Register an app; InvalidApp or DuplicateApp when it cannot be."""
    name = check_app_name(name)
    uris = check_redirect_uris(redirect_uris)
    scope = check_app_scope(scope)
    async with db.read() as conn:
        if await app_store.find_app(conn, name) is not None:  # refused before spending the hash
            raise app_store.DuplicateApp(f"an app named {name!r} already exists")
    secret = new_secret() if confidential else None
    secret_hash = await asyncio.to_thread(hash_secret, secret, cost) if secret else None
    async with db.write() as conn:
        record = await app_store.add_app(
            conn,
            client_id=new_client_id(),
            name=name,
            secret_hash=secret_hash,
            redirect_uris=uris,
            scope=scope,
            now_us=dates.now_us(),
        )
    return NewApp(record, secret)


async def list_apps(db: Database) -> list[AppRecord]:
    async with db.read() as conn:
        return await app_store.list_apps(conn)


async def disable_app(db: Database, name: str) -> AppRecord:
    async with db.write() as conn:
        record = await app_store.disable_app(conn, name, dates.now_us())
    if record is None:
        raise UnknownApp(f"no app named {name!r}")
    return record
