"""People who log in (table app_user): their role, Practitioner, password hash and lockout state.

Names are unique ignoring case: every lookup goes through `name_key` (gateway/auth/roles.py `name_key`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.auth.roles import name_key
from gateway.store.tables import app_user


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    name: str
    role: str
    practitioner: str | None
    password_hash: str
    disabled: bool
    created_us: int
    updated_us: int
    password_changed_us: int
    failed_logins: int
    locked_until_us: int | None


class DuplicateUser(Exception):
    """A user with that name (ignoring case) already exists."""


def _record(row: object) -> UserRecord:
    return UserRecord(**{k: getattr(row, k) for k in UserRecord.__slots__})


async def add_user(
    conn: AsyncConnection,
    *,
    user_id: str,
    name: str,
    role: str,
    practitioner: str | None,
    password_hash: str,
    now_us: int,
) -> UserRecord:
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(app_user).values(
                    id=user_id,
                    name=name,
                    name_key=name_key(name),
                    role=role,
                    practitioner=practitioner,
                    password_hash=password_hash,
                    disabled=False,
                    created_us=now_us,
                    updated_us=now_us,
                    password_changed_us=now_us,
                    failed_logins=0,
                    locked_until_us=None,
                )
            )
    except IntegrityError as exc:
        raise DuplicateUser(f"a user named {name!r} already exists") from exc
    found = await get_user(conn, name)
    assert found is not None
    return found


async def get_user(conn: AsyncConnection, name: str) -> UserRecord | None:
    """The user with that name, ignoring case."""
    query = select(app_user).where(app_user.c.name_key == name_key(name))
    row = (await conn.execute(query)).first()
    return _record(row) if row is not None else None


async def get_user_by_id(conn: AsyncConnection, user_id: str) -> UserRecord | None:
    row = (await conn.execute(select(app_user).where(app_user.c.id == user_id))).first()
    return _record(row) if row is not None else None


async def list_users(conn: AsyncConnection) -> list[UserRecord]:
    rows = await conn.execute(select(app_user).order_by(app_user.c.name_key))
    return [_record(row) for row in rows]


async def set_disabled(conn: AsyncConnection, name: str, disabled: bool, now_us: int) -> UserRecord | None:
    """Disable or enable the user; the updated record, None when there is no such user."""
    await conn.execute(
        update(app_user)
        .where(app_user.c.name_key == name_key(name), app_user.c.disabled != disabled)
        .values(disabled=disabled, updated_us=now_us)
    )
    return await get_user(conn, name)


async def set_password(
    conn: AsyncConnection, name: str, password_hash: str, now_us: int
) -> UserRecord | None:
    """Store a new password hash, clearing the failed-login count and any lockout; the updated record,
    None when there is no such user. A disabled user stays disabled."""
    await conn.execute(
        update(app_user)
        .where(app_user.c.name_key == name_key(name))
        .values(
            password_hash=password_hash,
            password_changed_us=now_us,
            updated_us=now_us,
            failed_logins=0,
            locked_until_us=None,
        )
    )
    return await get_user(conn, name)


async def count_failed_login(conn: AsyncConnection, user_id: str) -> int:
    """Add one to the user's failed logins (in the database, so concurrent attempts all count); the new
    count."""
    await conn.execute(
        update(app_user).where(app_user.c.id == user_id).values(failed_logins=app_user.c.failed_logins + 1)
    )
    count = await conn.scalar(select(app_user.c.failed_logins).where(app_user.c.id == user_id))
    return int(count or 0)


async def lock_until(conn: AsyncConnection, user_id: str, until_us: int) -> None:
    await conn.execute(update(app_user).where(app_user.c.id == user_id).values(locked_until_us=until_us))


async def clear_failed_logins(
    conn: AsyncConnection, user_id: str, password_hash: str | None, now_us: int
) -> None:
    """A successful login: no failures, no lockout; and the password hashed again when `password_hash`
    is given (the configured cost changed)."""
    values: dict[str, object] = {"failed_logins": 0, "locked_until_us": None}
    if password_hash is not None:
        values.update(password_hash=password_hash, updated_us=now_us)
    await conn.execute(update(app_user).where(app_user.c.id == user_id).values(**values))
