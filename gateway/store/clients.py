"""API clients, the token signing key and seen client-assertion ids."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import api_client, server_key, used_assertion

TOKEN_KEY_NAME = "access-token-hs256"


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    name: str
    secret_hash: str | None
    scope: str
    jwks: str | None
    created_us: int
    disabled: bool


class DuplicateClient(Exception):
    """A client with that name already exists."""


async def add_client(
    conn: AsyncConnection,
    *,
    client_id: str,
    name: str,
    scope: str,
    secret_hash: str | None,
    jwks: str | None,
    created_us: int,
) -> None:
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(api_client).values(
                    client_id=client_id,
                    name=name,
                    scope=scope,
                    secret_hash=secret_hash,
                    jwks=jwks,
                    created_us=created_us,
                    disabled=False,
                )
            )
    except IntegrityError as exc:
        raise DuplicateClient(f"a client named {name!r} already exists") from exc


def _record(row: object) -> ClientRecord:
    return ClientRecord(**{k: getattr(row, k) for k in ClientRecord.__slots__})


async def get_client(conn: AsyncConnection, client_id: str) -> ClientRecord | None:
    row = (await conn.execute(select(api_client).where(api_client.c.client_id == client_id))).first()
    return _record(row) if row is not None else None


async def list_clients(conn: AsyncConnection) -> list[ClientRecord]:
    return [_record(row) for row in await conn.execute(select(api_client).order_by(api_client.c.created_us))]


async def remove_client(conn: AsyncConnection, name_or_id: str) -> bool:
    result = await conn.execute(
        delete(api_client).where((api_client.c.name == name_or_id) | (api_client.c.client_id == name_or_id))
    )
    return bool(result.rowcount)


async def token_signing_key(conn: AsyncConnection, *, now_us: int) -> bytes:
    """The HS256 key for access tokens, created on first use and shared by every gateway process."""
    row = (await conn.execute(select(server_key.c.value).where(server_key.c.name == TOKEN_KEY_NAME))).first()
    if row is not None:
        return base64.b64decode(row.value)
    fresh = base64.b64encode(secrets.token_bytes(32)).decode()
    try:
        async with conn.begin_nested():
            await conn.execute(insert(server_key).values(name=TOKEN_KEY_NAME, value=fresh, created_us=now_us))
    except IntegrityError:
        pass  # another process created it first; use theirs
    value = (
        await conn.execute(select(server_key.c.value).where(server_key.c.name == TOKEN_KEY_NAME))
    ).scalar_one()
    return base64.b64decode(value)


async def remember_assertion(
    conn: AsyncConnection, *, jti: str, client_id: str, expires_us: int, now_us: int
) -> bool:
    """Record a client assertion's jti; False if it was seen before (a replay)."""
    await conn.execute(delete(used_assertion).where(used_assertion.c.expires_us < now_us))
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(used_assertion).values(jti=jti, client_id=client_id, expires_us=expires_us)
            )
    except IntegrityError:
        return False
    return True
