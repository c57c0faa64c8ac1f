"""Authorization codes and refresh tokens of the SMART standalone launch (tables auth_code, refresh_token),
by the SHA-256 of their values. Consuming one is a conditional UPDATE, so two requests racing with the same
code or refresh token cannot both win."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import auth_code, refresh_token


@dataclass(frozen=True, slots=True)
class CodeRecord:
    code_hash: str
    client_id: str
    user_id: str
    redirect_uri: str
    code_challenge: str
    scope: str
    created_us: int
    expires_us: int
    used_us: int | None
    patient: str | None = None


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    token_hash: str
    family: str
    client_id: str
    user_id: str
    scope: str
    created_us: int
    expires_us: int
    used_us: int | None
    revoked: bool
    patient: str | None = None


async def add_code(conn: AsyncConnection, record: CodeRecord) -> None:
    await conn.execute(insert(auth_code).values(**{k: getattr(record, k) for k in CodeRecord.__slots__}))


async def get_code(conn: AsyncConnection, code_hash: str) -> CodeRecord | None:
    row = (await conn.execute(select(auth_code).where(auth_code.c.code_hash == code_hash))).first()
    return CodeRecord(**{k: getattr(row, k) for k in CodeRecord.__slots__}) if row is not None else None


async def use_code(conn: AsyncConnection, code_hash: str, now_us: int) -> bool:
    """Mark the code used; False when it already was (it is then marked replayed) or there is none."""
    result = await conn.execute(
        update(auth_code)
        .where(auth_code.c.code_hash == code_hash, auth_code.c.used_us.is_(None))
        .values(used_us=now_us)
    )
    if result.rowcount == 1:
        return True
    await conn.execute(
        update(auth_code)
        .where(auth_code.c.code_hash == code_hash, auth_code.c.replayed_us.is_(None))
        .values(replayed_us=now_us)
    )
    return False


async def family_revoked(conn: AsyncConnection, family: str) -> bool:
    """Whether the tokens descending from a code are dead: the code was replayed, or a refresh token of
    the family was presented again (RFC 9700 4.5: tokens issued from a stolen code or token stop)."""
    replayed = select(auth_code.c.code_hash).where(
        auth_code.c.code_hash == family, auth_code.c.replayed_us.is_not(None)
    )
    revoked = select(refresh_token.c.token_hash).where(
        refresh_token.c.family == family, refresh_token.c.revoked.is_(True)
    )
    return bool((await conn.execute(select(or_(exists(replayed), exists(revoked))))).scalar())


async def delete_expired_codes(conn: AsyncConnection, before_us: int) -> None:
    await conn.execute(auth_code.delete().where(auth_code.c.expires_us < before_us))


async def add_refresh(conn: AsyncConnection, record: RefreshRecord) -> None:
    await conn.execute(
        insert(refresh_token).values(**{k: getattr(record, k) for k in RefreshRecord.__slots__})
    )


async def get_refresh(conn: AsyncConnection, token_hash: str) -> RefreshRecord | None:
    row = (await conn.execute(select(refresh_token).where(refresh_token.c.token_hash == token_hash))).first()
    return RefreshRecord(**{k: getattr(row, k) for k in RefreshRecord.__slots__}) if row is not None else None


async def use_refresh(conn: AsyncConnection, token_hash: str, now_us: int) -> bool:
    """Rotate the token out; False when it already was, or is revoked."""
    result = await conn.execute(
        update(refresh_token)
        .where(
            refresh_token.c.token_hash == token_hash,
            refresh_token.c.used_us.is_(None),
            refresh_token.c.revoked.is_(False),
        )
        .values(used_us=now_us)
    )
    return result.rowcount == 1


async def revoke_family(conn: AsyncConnection, family: str) -> int:
    result = await conn.execute(
        update(refresh_token).where(refresh_token.c.family == family).values(revoked=True)
    )
    return int(result.rowcount)
