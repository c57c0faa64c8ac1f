"""API clients, the token signing keys (sealed) and seen client-assertion ids."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from gateway.auth.keyring import CURRENT, PREVIOUS, RETIRED, KeyInfo
from gateway.store.tables import api_client, signing_key, used_assertion


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    name: str
    secret_hash: str | None
    scope: str
    jwks: str | None
    created_us: int
    disabled: bool
    disabled_us: int | None
    token_generation: int


class DuplicateClient(Exception):
    """A client with that name already exists."""


class DuplicateKey(Exception):
    """Another process created a signing key with that kid first."""


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
                    token_generation=0,
                )
            )
    except IntegrityError as exc:
        raise DuplicateClient(f"a client named {name!r} already exists") from exc


def _record(row: object) -> ClientRecord:
    return ClientRecord(**{k: getattr(row, k) for k in ClientRecord.__slots__})


async def get_client(conn: AsyncConnection, client_id: str) -> ClientRecord | None:
    row = (await conn.execute(select(api_client).where(api_client.c.client_id == client_id))).first()
    return _record(row) if row is not None else None


def _named(name_or_id: str) -> ColumnElement[bool]:
    return (api_client.c.name == name_or_id) | (api_client.c.client_id == name_or_id)


async def find_client(conn: AsyncConnection, name_or_id: str) -> ClientRecord | None:
    """The client with that name, or else that client id."""
    rows = [_record(r) for r in await conn.execute(select(api_client).where(_named(name_or_id)))]
    return next((r for r in rows if r.name == name_or_id), rows[0] if rows else None)


async def list_clients(conn: AsyncConnection) -> list[ClientRecord]:
    return [_record(row) for row in await conn.execute(select(api_client).order_by(api_client.c.created_us))]


async def remove_client(conn: AsyncConnection, name_or_id: str) -> ClientRecord | None:
    """Delete the client; returns what it was (None when there was none)."""
    found = await find_client(conn, name_or_id)
    if found is not None:
        await conn.execute(delete(api_client).where(api_client.c.client_id == found.client_id))
    return found


async def set_disabled(
    conn: AsyncConnection, name_or_id: str, disabled: bool, now_us: int
) -> ClientRecord | None:
    """Disable (moving its token generation on: every token issued so far is dead for good) or enable a
    client; returns the updated record, None when there is no such client."""
    found = await find_client(conn, name_or_id)
    if found is None:
        return None
    c = api_client.c
    values: dict[str, object] = (
        {"disabled": True, "disabled_us": now_us, "token_generation": c.token_generation + 1}
        if disabled
        else {"disabled": False, "disabled_us": None}
    )
    if disabled and found.disabled:
        values = {}  # disabling twice changes nothing
    if values:
        await conn.execute(update(api_client).where(c.client_id == found.client_id).values(values))
    return await get_client(conn, found.client_id)


# -- signing keys ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredKey:
    info: KeyInfo
    wrapped: str | None  # sealed material; None once retired


async def signing_keys(conn: AsyncConnection) -> list[StoredKey]:
    k = signing_key.c
    rows = await conn.execute(select(signing_key).order_by(k.created_us, k.kid))
    return [
        StoredKey(KeyInfo(r.kid, r.state, r.created_us, r.retire_after_us, r.retired_us), r.wrapped)
        for r in rows
    ]


async def add_signing_key(conn: AsyncConnection, *, kid: str, wrapped: str, now_us: int) -> None:
    """Insert a new current key; DuplicateKey when that kid exists (another process got there first)."""
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(signing_key).values(kid=kid, state=CURRENT, wrapped=wrapped, created_us=now_us)
            )
    except IntegrityError as exc:
        raise DuplicateKey(kid) from exc


async def demote_current(conn: AsyncConnection, kid: str, retire_after_us: int) -> bool:
    """Make the current key `kid` previous; False when it is no longer current (a concurrent rotation)."""
    k = signing_key.c
    result = await conn.execute(
        update(signing_key)
        .where(k.kid == kid, k.state == CURRENT)
        .values(state=PREVIOUS, retire_after_us=retire_after_us)
    )
    return bool(result.rowcount)


async def retire_keys(conn: AsyncConnection, kids: list[str], now_us: int) -> None:
    """Retire previous keys whose overlap has ended, erasing their material."""
    if not kids:
        return
    k = signing_key.c
    await conn.execute(
        update(signing_key)
        .where(k.kid.in_(kids), k.state == PREVIOUS)
        .values(state=RETIRED, wrapped=None, retired_us=now_us)
    )


async def reseal(conn: AsyncConnection, kid: str, wrapped: str) -> None:
    """Store a key sealed again (under a new key-encryption key)."""
    await conn.execute(update(signing_key).where(signing_key.c.kid == kid).values(wrapped=wrapped))


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


async def any_named(conn: AsyncConnection, names: list[str]) -> bool:
    """Whether a client is registered under one of these names (enabled or not)."""
    found = await conn.execute(select(api_client.c.client_id).where(api_client.c.name.in_(names)).limit(1))
    return found.first() is not None
