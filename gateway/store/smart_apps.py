"""Registered SMART apps (table smart_app). What may be registered is gateway/auth/smart_apps.py."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import smart_app


@dataclass(frozen=True, slots=True)
class AppRecord:
    client_id: str
    name: str
    confidential: bool
    secret_hash: str | None
    redirect_uris: tuple[str, ...]
    scope: str
    disabled: bool
    created_us: int
    disabled_us: int | None


class DuplicateApp(Exception):
    """An app with that name already exists."""


def _record(row: object) -> AppRecord:
    values = {k: getattr(row, k) for k in AppRecord.__slots__}
    values["redirect_uris"] = tuple(orjson.loads(values["redirect_uris"]))
    return AppRecord(**values)


async def add_app(
    conn: AsyncConnection,
    *,
    client_id: str,
    name: str,
    secret_hash: str | None,
    redirect_uris: list[str],
    scope: str,
    now_us: int,
) -> AppRecord:
    """Register an app: confidential exactly when it has a secret hash; DuplicateApp when the name is
    taken."""
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(smart_app).values(
                    client_id=client_id,
                    name=name,
                    confidential=secret_hash is not None,
                    secret_hash=secret_hash,
                    redirect_uris=orjson.dumps(list(redirect_uris)).decode(),
                    scope=scope,
                    disabled=False,
                    created_us=now_us,
                    disabled_us=None,
                )
            )
    except IntegrityError as exc:
        raise DuplicateApp(f"an app named {name!r} already exists") from exc
    found = await get_app(conn, client_id)
    assert found is not None
    return found


async def get_app(conn: AsyncConnection, client_id: str) -> AppRecord | None:
    row = (await conn.execute(select(smart_app).where(smart_app.c.client_id == client_id))).first()
    return _record(row) if row is not None else None


async def find_app(conn: AsyncConnection, name: str) -> AppRecord | None:
    row = (await conn.execute(select(smart_app).where(smart_app.c.name == name))).first()
    return _record(row) if row is not None else None


async def list_apps(conn: AsyncConnection) -> list[AppRecord]:
    rows = await conn.execute(select(smart_app).order_by(smart_app.c.created_us, smart_app.c.name))
    return [_record(row) for row in rows]


async def disable_app(conn: AsyncConnection, name: str, now_us: int) -> AppRecord | None:
    """Disable the app named `name` (a second time changes nothing); the record, None when there is none."""
    await conn.execute(
        update(smart_app)
        .where(smart_app.c.name == name, smart_app.c.disabled.is_(False))
        .values(disabled=True, disabled_us=now_us)
    )
    return await find_app(conn, name)
