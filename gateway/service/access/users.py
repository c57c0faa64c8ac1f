"""People who log in: adding them, listing, disabling, and setting their passwords.

The rules (names, roles, Practitioner references, the password policy) are gateway/auth/roles.py and
gateway/auth/passwords.py; argon2id runs in a thread, off the event loop. Login, sessions and the
enforcement of roles come later (issue 11).
"""

from __future__ import annotations

import asyncio
import uuid

from gateway.auth import passwords
from gateway.auth.roles import check_name, check_practitioner, parse_role
from gateway.fhir import dates
from gateway.store import users as user_store
from gateway.store.database import Database
from gateway.store.users import UserRecord


class UnknownUser(LookupError):
    """No user has that name."""


def check_new_user(name: str, role: str, practitioner: str | None) -> tuple[str, str, str | None]:
    """(name, role, practitioner) when they make a valid account; InvalidAccount otherwise. Checked before
    a password is asked for."""
    parsed = parse_role(role)
    return check_name(name), parsed.value, check_practitioner(parsed, practitioner)


async def add_user(
    db: Database, name: str, role: str, practitioner: str | None, password: str, *, cost: int
) -> UserRecord:
    """Add a user; InvalidAccount, WeakPassword or DuplicateUser when it cannot be."""
    name, role, practitioner = check_new_user(name, role, practitioner)
    passwords.check_policy(password, name)
    async with db.read() as conn:
        if await user_store.get_user(conn, name) is not None:  # refused before spending the hash
            raise user_store.DuplicateUser(f"a user named {name!r} already exists")
    hashed = await asyncio.to_thread(passwords.hash_password, password, cost)
    async with db.write() as conn:
        return await user_store.add_user(
            conn,
            user_id=uuid.uuid4().hex,
            name=name,
            role=role,
            practitioner=practitioner,
            password_hash=hashed,
            now_us=dates.now_us(),
        )


async def find_user(db: Database, name: str) -> UserRecord | None:
    async with db.read() as conn:
        return await user_store.get_user(conn, name)


async def list_users(db: Database) -> list[UserRecord]:
    async with db.read() as conn:
        return await user_store.list_users(conn)


async def set_disabled(db: Database, name: str, disabled: bool) -> UserRecord:
    async with db.write() as conn:
        record = await user_store.set_disabled(conn, name, disabled, dates.now_us())
    if record is None:
        raise UnknownUser(f"no user named {name!r}")
    return record


async def reset_password(db: Database, name: str, password: str, *, cost: int) -> UserRecord:
    """Give the user a new password (clearing failed logins and any lockout); UnknownUser or WeakPassword."""
    async with db.read() as conn:
        found = await user_store.get_user(conn, name)
    if found is None:
        raise UnknownUser(f"no user named {name!r}")
    passwords.check_policy(password, found.name)
    hashed = await asyncio.to_thread(passwords.hash_password, password, cost)
    async with db.write() as conn:
        record = await user_store.set_password(conn, found.name, hashed, dates.now_us())
    if record is None:
        raise UnknownUser(f"no user named {name!r}")
    return record
