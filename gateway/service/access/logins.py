"""People logging in: checking a password (with lockout), and console sessions (idle and absolute
timeouts, a CSRF secret each).

The session id is `secrets.token_urlsafe(32)`, handed to the browser once and stored only as its SHA-256.
Every refusal takes about as long as a wrong password: an unknown user's password is checked against a
dummy hash of the same cost, a locked or disabled user's against their own. The clock is `self.clock`
(microseconds) so that tests can move it.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth import passwords
from gateway.auth.throttle import FailureThrottle, ThrottlePolicy
from gateway.fhir import dates
from gateway.store import sessions as session_store
from gateway.store import users as user_store
from gateway.store.database import Database
from gateway.store.users import UserRecord

MINUTE_US = 60_000_000


class LoginResult(enum.Enum):
    """How a login attempt went (the audit trail says which; the person is told only yes or no)."""

    SUCCESS = "login"
    WRONG_PASSWORD = "wrong password"
    UNKNOWN_USER = "unknown user"
    LOCKED = "account locked"
    DISABLED = "account disabled"
    THROTTLED = "too many failures from this address"  # before any password is looked at


# Per source address, on top of the per-account lockout: an address that guesses across many accounts
# (password spraying) waits, doubling from a second up to five minutes, after 20 failures in 15 minutes.
ADDRESS_THROTTLE = ThrottlePolicy(free_failures=20, base_delay_s=1.0, max_delay_s=300.0, forget_after_s=900.0)


@dataclass(frozen=True, slots=True)
class Attempt:
    result: LoginResult
    user: UserRecord | None  # None for an unknown user
    session_id: str | None = None  # the cookie's value, on success only


@dataclass(frozen=True, slots=True)
class Session:
    id_hash: str
    user: UserRecord
    csrf_token: str
    created_us: int


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def tokens_match(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison of two tokens; False when either is missing or empty."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@functools.cache
def _dummy_hash(cost: int) -> str:
    return passwords.hash_password(secrets.token_urlsafe(24), cost)


def lockout_minutes(failures: int, max_failures: int, cap_minutes: float) -> float:
    """How long an account stays locked after `failures` failed logins in a row: none below
    `max_failures`, then 1, 2, 4... minutes, at most `cap_minutes`."""
    if failures < max_failures:
        return 0.0
    return float(min(2.0 ** min(failures - max_failures, 30), cap_minutes))


class LoginService:
    def __init__(
        self,
        db: Database,
        *,
        cost: int,
        idle_minutes: float,
        max_hours: float,
        max_failures: int,
        lockout_max_minutes: float,
        clock: Callable[[], int] = dates.now_us,
    ) -> None:
        self.db = db
        self.cost = cost
        self.idle_us = int(idle_minutes * MINUTE_US)
        self.max_us = int(max_hours * 60 * MINUTE_US)
        self.max_failures = max_failures
        self.lockout_max_minutes = lockout_max_minutes
        self.clock = clock
        self.address_failures = FailureThrottle(ADDRESS_THROTTLE)

    async def login(
        self, name: str, password: str, *, replacing: str | None = None, address: str = ""
    ) -> Attempt:
        """Check `name` and `password`; on success a new session (ending the one `replacing` names, so a
        session id planted before the login is worth nothing after it). An address with too many recent
        failures is refused before anything is hashed."""
        if address and self.address_failures.retry_after(address) > 0:
            return Attempt(LoginResult.THROTTLED, None)
        attempt = await self._login(name, password, replacing)
        if address and attempt.result in (LoginResult.WRONG_PASSWORD, LoginResult.UNKNOWN_USER):
            self.address_failures.failed(address)
        return attempt

    def retry_after(self, address: str) -> int:
        """Whole seconds until `address` may try again (0: now)."""
        return int(-(-self.address_failures.retry_after(address) // 1))

    async def _login(self, name: str, password: str, replacing: str | None) -> Attempt:
        # Bounded before hashing: a form cannot make the server hash a megabyte.
        password = password[: passwords.MAX_LENGTH + 1]
        async with self.db.read() as conn:
            user = await user_store.get_user(conn, name) if name else None
        stored = user.password_hash if user is not None else await asyncio.to_thread(_dummy_hash, self.cost)
        matches = await asyncio.to_thread(passwords.verify_password, password, stored)
        if user is None:
            return Attempt(LoginResult.UNKNOWN_USER, None)
        if user.disabled:
            return Attempt(LoginResult.DISABLED, user)
        now = self.clock()
        if user.locked_until_us is not None and user.locked_until_us > now:
            return Attempt(LoginResult.LOCKED, user)  # not counted: waiting it out must work
        if not matches:
            async with self.db.write() as conn:
                failures = await user_store.count_failed_login(conn, user.id)
                minutes = lockout_minutes(failures, self.max_failures, self.lockout_max_minutes)
                if minutes:
                    await user_store.lock_until(conn, user.id, now + int(minutes * MINUTE_US))
            return Attempt(LoginResult.WRONG_PASSWORD, user)
        rehashed = None
        if passwords.needs_rehash(user.password_hash, self.cost):
            rehashed = await asyncio.to_thread(passwords.hash_password, password, self.cost)
        session_id = secrets.token_urlsafe(32)
        async with self.db.write() as conn:
            await user_store.clear_failed_logins(conn, user.id, rehashed, now)
            if replacing:
                await session_store.end_session(conn, hash_session_id(replacing))
            await session_store.end_expired(
                conn, idle_before_us=now - self.idle_us, created_before_us=now - self.max_us
            )
            await session_store.add_session(
                conn,
                id_hash=hash_session_id(session_id),
                user_id=user.id,
                csrf_secret=secrets.token_urlsafe(32),
                now_us=now,
            )
        return Attempt(LoginResult.SUCCESS, user, session_id)

    async def session(self, session_id: str | None) -> Session | None:
        """The live session that id opens (its last-seen time moved to now); None when there is none, it
        has been idle too long, is older than the absolute limit, or its user is disabled (such a session
        is ended)."""
        if not session_id:
            return None
        id_hash = hash_session_id(session_id)
        async with self.db.read() as conn:
            found = await session_store.get_session(conn, id_hash)
        if found is None:
            return None
        record, user = found
        now = self.clock()
        expired = now - record.last_seen_us > self.idle_us or now - record.created_us > self.max_us
        async with self.db.write() as conn:
            if expired or user.disabled:
                await session_store.end_session(conn, id_hash)
                return None
            await session_store.touch_session(conn, id_hash, now)
        return Session(id_hash, user, record.csrf_secret, record.created_us)

    async def logout(self, session: Session) -> None:
        async with self.db.write() as conn:
            await session_store.end_session(conn, session.id_hash)
