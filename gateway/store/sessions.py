"""Console sessions (table user_session), found by the SHA-256 of their id: the id itself is never stored."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import app_user, user_session
from gateway.store.users import UserRecord, _record


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id_hash: str
    user_id: str
    csrf_secret: str
    created_us: int
    last_seen_us: int


async def add_session(
    conn: AsyncConnection, *, id_hash: str, user_id: str, csrf_secret: str, now_us: int
) -> None:
    await conn.execute(
        insert(user_session).values(
            id_hash=id_hash, user_id=user_id, csrf_secret=csrf_secret, created_us=now_us, last_seen_us=now_us
        )
    )


async def get_session(conn: AsyncConnection, id_hash: str) -> tuple[SessionRecord, UserRecord] | None:
    """The session with that id hash and its user; None when either is gone."""
    row = (await conn.execute(select(user_session).where(user_session.c.id_hash == id_hash))).first()
    if row is None:
        return None
    user = (await conn.execute(select(app_user).where(app_user.c.id == row.user_id))).first()
    if user is None:
        return None
    session = SessionRecord(
        id_hash=row.id_hash,
        user_id=row.user_id,
        csrf_secret=row.csrf_secret,
        created_us=row.created_us,
        last_seen_us=row.last_seen_us,
    )
    return session, _record(user)


async def touch_session(conn: AsyncConnection, id_hash: str, now_us: int) -> None:
    await conn.execute(
        update(user_session).where(user_session.c.id_hash == id_hash).values(last_seen_us=now_us)
    )


async def end_session(conn: AsyncConnection, id_hash: str) -> bool:
    """Delete the session; whether there was one."""
    result = await conn.execute(delete(user_session).where(user_session.c.id_hash == id_hash))
    return bool(result.rowcount)


async def end_expired(conn: AsyncConnection, *, idle_before_us: int, created_before_us: int) -> int:
    """Delete sessions idle since before `idle_before_us` or created before `created_before_us`."""
    result = await conn.execute(
        delete(user_session).where(
            (user_session.c.last_seen_us < idle_before_us) | (user_session.c.created_us < created_before_us)
        )
    )
    return int(result.rowcount or 0)
