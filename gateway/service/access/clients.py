"""API clients and OAuth 2.0 client-credentials tokens (SMART Backend Services).

Clients authenticate with a secret (client_secret_basic or client_secret_post) or a signed JWT
(private_key_jwt against the JWKS registered for them). Tokens are short-lived HS256 JWTs.

- **Revocation.** Every request's token is checked against its client's record as read at most
  `cache_seconds` ago (default 2 s): a removed client, a disabled one, or a token from before the client's
  last disable (its `client_gen` is older) is refused, in the process that made the change at once and
  in every other process on the database within `cache_seconds`. Removing or disabling a client also
  turns its subscriptions off (hooks in `on_client_revoked`, in the same transaction).
- **Keys.** Signing keys live in the database sealed under the key-encryption key
  (gateway/auth/key_encryption.py), each with a `kid` (gateway/auth/keyring.py). Each process keeps the
  opened key ring for `cache_seconds`, and reloads at once for a token naming a key it does not know.
  `rotate_keys` makes a new current key; the previous one verifies until every token it signed has
  expired (token TTL + a grace), then is retired and its material erased.
- **Token endpoint.** scrypt runs in a small thread pool, never on the event loop; an unknown client id
  (or a disabled client, or one without a secret) is checked against a dummy hash of the same cost, so it
  takes as long as a wrong secret; failures are throttled per client id and per source address (429 with
  Retry-After, before any hashing); and every authentication failure gets one and the same answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.auth import key_encryption
from gateway.auth.assertions import InvalidClientAssertion, assertion_client_id, verify_client_assertion
from gateway.auth.key_encryption import KeyEncryptionError, KeyEncryptionKey
from gateway.auth.keyring import CURRENT, KeyInfo, KeyRing, effective_state, next_kid, overlap_end_us
from gateway.auth.scopes import Grants, InvalidScope, grant, parse_scopes
from gateway.auth.secrets import (
    DEFAULT_COST,
    hash_secret,
    new_client_id,
    new_secret,
    prepare_dummy,
    verify_secret_or_dummy,
)
from gateway.auth.throttle import FailureThrottle, ThrottlePolicy
from gateway.auth.tokens import (
    AccessClaims,
    InvalidToken,
    KeyHint,
    issue_access_token,
    key_hint,
    verify_access_token,
)
from gateway.exceptions import OAuthError, Unauthorized
from gateway.fhir import dates
from gateway.settings import Settings, get_settings
from gateway.store import clients as client_store
from gateway.store.clients import ClientRecord, DuplicateKey
from gateway.store.database import Database

log = logging.getLogger("gateway.auth")

ISSUER = "specialty-gateway"
VERIFIED_CACHE_SIZE = 10_000
CLIENT_CACHE_SIZE = 10_000
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# A demoted key verifies for the token lifetime plus this: processes that had not yet reloaded the ring
# (cache_seconds) may have signed with it just after the rotation.
ROTATION_GRACE_S = 60.0
# Tokens naming a kid this process does not know reload the key ring at most this often (they wait).
UNKNOWN_KID_RELOAD_S = 0.1
# Clock difference tolerated between processes when telling whether a ring was read after a token's iat.
CLOCK_SKEW_S = 2
# Niceness added to the hashing threads (0 = the event loop's; 19 = the least).
HASH_THREAD_NICENESS = 10
# Hash requests waiting per worker thread beyond which the token endpoint answers 503 at once.
MAX_WAITING_PER_WORKER = 16
# The one answer to every failed client authentication (RFC 6749 5.2: invalid_client, 401).
AUTHENTICATION_FAILED = "client authentication failed"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NewClient:
    client_id: str
    name: str
    scope: str
    client_secret: str | None


@dataclass(frozen=True, slots=True)
class Rotation:
    current: str
    previous: str | None


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """How long trust lasts, and how hard the token endpoint pushes back (settings.py explains each)."""

    token_ttl_seconds: int = 300
    cache_seconds: float = 2.0
    failures_per_client: int = 5
    failures_per_address: int = 20
    backoff_max_seconds: float = 300.0
    hash_workers: int = 2
    hash_cost: int = DEFAULT_COST

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthPolicy:
        return cls(
            token_ttl_seconds=settings.token_ttl_seconds,
            cache_seconds=settings.auth_cache_seconds,
            failures_per_client=settings.auth_failures_per_client,
            failures_per_address=settings.auth_failures_per_address,
            backoff_max_seconds=settings.auth_backoff_max_seconds,
            hash_workers=max(1, settings.auth_hash_workers),
            hash_cost=settings.secret_hash_cost,
        )

    def throttle(self, free_failures: int) -> ThrottlePolicy:
        return ThrottlePolicy(
            free_failures=free_failures,
            max_delay_s=self.backoff_max_seconds,
            forget_after_s=max(900.0, 3 * self.backoff_max_seconds),
        )


class RetryLater(OAuthError):
    """429 (too many failures under a client id or address) or 503 (hashing saturated), with Retry-After."""

    def __init__(self, status: int, retry_after_s: float, description: str) -> None:
        super().__init__("temporarily_unavailable", description, status)
        self.retry_after = max(1, math.ceil(retry_after_s))


# Called in the transaction that removes or disables a client: (connection, client id, reason).
RevocationHook = Callable[[AsyncConnection, str, str], Awaitable[object]]


@lru_cache(maxsize=1024)
def grants_for(scope: str) -> Grants:
    """Parsed grants per scope string; tokens of one client share one scope string."""
    return Grants.from_string(scope)


class AuthService:
    def __init__(
        self,
        db: Database,
        *,
        token_ttl_seconds: int = 300,
        key_encryption: KeyEncryptionKey | None = None,
        policy: AuthPolicy | None = None,
    ) -> None:
        self.db = db
        self.policy = policy or AuthPolicy(token_ttl_seconds=token_ttl_seconds)
        self.token_ttl_seconds = self.policy.token_ttl_seconds
        self._key_encryption = key_encryption
        self._ring: KeyRing | None = None
        self._ring_at = -math.inf  # monotonic, for the cache
        self._ring_read_at = 0.0  # wall clock when it was read, to compare with tokens' iat
        self._ring_lock = asyncio.Lock()
        # A client sends the same token on every request for its lifetime: verify the signature once.
        self._verified: dict[str, tuple[AccessClaims, str | None]] = {}
        self._clients: dict[str, tuple[float, ClientRecord | None]] = {}
        self.client_failures = FailureThrottle(self.policy.throttle(self.policy.failures_per_client))
        self.address_failures = FailureThrottle(self.policy.throttle(self.policy.failures_per_address))
        self._pool: ThreadPoolExecutor | None = None
        self._waiting = 0
        self.on_client_revoked: list[RevocationHook] = []
        # After the revocation committed, with the client id (e.g. wait for deliveries in flight).
        self.after_client_revoked: list[Callable[[str], Awaitable[object]]] = []

    @classmethod
    def from_settings(
        cls, db: Database, settings: Settings, *, key_encryption: KeyEncryptionKey | None = None
    ) -> AuthService:
        kek = key_encryption or key_encryption_from(settings)
        return cls(db, key_encryption=kek, policy=AuthPolicy.from_settings(settings))

    @property
    def key_encryption(self) -> KeyEncryptionKey:
        if self._key_encryption is None:
            self._key_encryption = key_encryption_from(get_settings())
        return self._key_encryption

    async def start(self) -> None:
        """At start: the signing keys must open (a wrong or missing key-encryption key stops the start with
        its reason), keys sealed under an older KEK are re-sealed, finished overlaps retired; the dummy
        hash is computed now rather than during the first unknown client's request."""
        await self._load_ring(strict=True)
        await self.in_pool(prepare_dummy, self.policy.hash_cost)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy `fn` (scrypt) on the hashing threads; the event loop stays free meanwhile."""
        if self._waiting >= self.policy.hash_workers * MAX_WAITING_PER_WORKER:
            raise RetryLater(503, 1, "the token endpoint is busy; retry later")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.policy.hash_workers, thread_name_prefix="secret-hash", initializer=_yield_cpu
            )
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._waiting -= 1

    # -- registration ----------------------------------------------------------------------------

    async def add_client(self, name: str, scope: str, *, jwks: dict[str, Any] | None = None) -> NewClient:
        """Register a client. With `jwks` it authenticates by private_key_jwt and gets no secret."""
        parse_scopes(scope)  # refuse malformed scopes at registration, not at first use
        if jwks is not None and not isinstance(jwks.get("keys"), list):
            raise ValueError("a JWKS must be a JSON object with a 'keys' list")
        client_id = new_client_id()
        secret = None if jwks is not None else new_secret()
        secret_hash = await self.in_pool(hash_secret, secret, self.policy.hash_cost) if secret else None
        async with self.db.write() as conn:
            await client_store.add_client(
                conn,
                client_id=client_id,
                name=name,
                scope=scope,
                secret_hash=secret_hash,
                jwks=orjson.dumps(jwks).decode() if jwks is not None else None,
                created_us=dates.now_us(),
            )
        return NewClient(client_id, name, scope, secret)

    async def list_clients(self) -> list[ClientRecord]:
        async with self.db.read() as conn:
            return await client_store.list_clients(conn)

    async def remove_client(self, name_or_id: str) -> bool:
        """Delete a client: its tokens stop working and its subscriptions are turned off."""
        async with self.db.write() as conn:
            removed = await client_store.remove_client(conn, name_or_id)
            if removed is not None:
                await self._revoked(conn, removed.client_id, "removed")
        if removed is not None:
            self._clients.pop(removed.client_id, None)
            await self._settle(removed.client_id)
            log.info("client %s (%s) removed", removed.client_id, removed.name)
        return removed is not None

    async def disable_client(self, name_or_id: str) -> bool:
        """Disable a client: its tokens (all issued so far, for good) stop working, it gets no new ones,
        and its subscriptions are turned off. `enable_client` lets it get tokens again."""
        async with self.db.write() as conn:
            record = await client_store.set_disabled(conn, name_or_id, True, dates.now_us())
            if record is not None:
                await self._revoked(conn, record.client_id, "disabled")
        if record is not None:
            self._clients.pop(record.client_id, None)
            await self._settle(record.client_id)
            log.info("client %s (%s) disabled", record.client_id, record.name)
        return record is not None

    async def enable_client(self, name_or_id: str) -> bool:
        """Let a disabled client get tokens again. Tokens from before the disable stay refused, and its
        subscriptions stay off until it re-requests them."""
        async with self.db.write() as conn:
            record = await client_store.set_disabled(conn, name_or_id, False, dates.now_us())
        if record is not None:
            self._clients.pop(record.client_id, None)
            log.info("client %s (%s) enabled", record.client_id, record.name)
        return record is not None

    async def _settle(self, client_id: str) -> None:
        for hook in self.after_client_revoked:
            await hook(client_id)

    async def _revoked(self, conn: AsyncConnection, client_id: str, how: str) -> None:
        for hook in self.on_client_revoked:
            await hook(conn, client_id, f"the client that owns it was {how}")

    # -- signing keys ----------------------------------------------------------------------------

    async def _load_ring(self, *, strict: bool) -> KeyRing:
        """Read and open the signing keys; retire finished overlaps and re-seal under the current KEK.

        `strict`: a key that does not open is an error (at start, in `keys rotate`); otherwise it is
        logged and skipped, so a process keeps verifying with the keys it can open.
        """
        kek = self.key_encryption
        read_at, read_at_monotonic = time.time(), time.monotonic()
        async with self.db.read() as conn:
            stored = await client_store.signing_keys(conn)
        infos: dict[str, KeyInfo] = {}
        opened: dict[str, bytes] = {}
        reseal: dict[str, str] = {}
        for key in stored:
            infos[key.info.kid] = key.info
            if key.wrapped is None:
                continue
            try:
                secret, by_primary = kek.open(key.info.kid, key.wrapped)
            except KeyEncryptionError:
                if strict:
                    raise
                log.error("signing key %s cannot be opened; tokens it signed are refused", key.info.kid)
                continue
            opened[key.info.kid] = secret
            if not by_primary:
                reseal[key.info.kid] = kek.seal(key.info.kid, secret)
        ring = KeyRing(infos, opened)
        now = dates.now_us()
        due = ring.due_for_retirement(now)
        if due or reseal:
            async with self.db.write() as conn:
                await client_store.retire_keys(conn, due, now)
                for kid, wrapped in reseal.items():
                    await client_store.reseal(conn, kid, wrapped)
            if due:
                log.info("signing key(s) %s retired: their overlap has ended", ", ".join(due))
        self._ring, self._ring_at, self._ring_read_at = ring, read_at_monotonic, read_at
        return ring

    async def _keyring(self, *, reload: bool = False) -> KeyRing:
        if (
            not reload
            and self._ring is not None
            and time.monotonic() - self._ring_at < self.policy.cache_seconds
        ):
            return self._ring
        async with self._ring_lock:
            if (
                not reload
                and self._ring is not None
                and time.monotonic() - self._ring_at < self.policy.cache_seconds
            ):
                return self._ring  # another request reloaded it while this one waited
            return await self._load_ring(strict=False)

    def forget_cached_keys(self) -> None:
        """Read the keys again on next use (after a change made behind this process's back)."""
        self._ring_at = -math.inf

    async def signing_key(self) -> tuple[str, bytes]:
        ring = await self._keyring()
        current = ring.current
        if current is not None:
            return current
        if any(i.state == CURRENT for i in ring.infos.values()):
            raise KeyEncryptionError("the current signing key cannot be opened with the configured KEK")
        with contextlib.suppress(DuplicateKey):  # another process made it first: use theirs
            await self._add_key(ring)  # the very first key
        current = (await self._keyring(reload=True)).current
        if current is None:
            raise KeyEncryptionError("no usable signing key")
        return current

    async def _add_key(self, ring: KeyRing) -> str:
        kid = next_kid(ring.infos)
        wrapped = self.key_encryption.seal(kid, secrets.token_bytes(32))
        async with self.db.write() as conn:
            await client_store.add_signing_key(conn, kid=kid, wrapped=wrapped, now_us=dates.now_us())
        return kid

    async def rotate_keys(self, *, overlap_seconds: float | None = None) -> Rotation:
        """Make a new signing key current. The previous one verifies for `overlap_seconds` (default: the
        token lifetime plus a grace, so every token it signed stays valid until it expires; 0 retires it
        at once, for a key thought compromised: its tokens are refused within `cache_seconds`)."""
        await self._load_ring(strict=True)  # every key must open; old seals are renewed
        kek = self.key_encryption
        now = dates.now_us()
        retire_after = (
            overlap_end_us(now, self.policy.token_ttl_seconds, ROTATION_GRACE_S)
            if overlap_seconds is None
            else now + int(overlap_seconds * 1_000_000)
        )
        async with self.db.write() as conn:
            stored = await client_store.signing_keys(conn)
            current = [k.info.kid for k in stored if k.info.state == CURRENT]
            kid = next_kid(k.info.kid for k in stored)
            for old in current:
                if not await client_store.demote_current(conn, old, retire_after):
                    raise DuplicateKey(f"{old} was rotated by another process at the same time; try again")
            await client_store.add_signing_key(
                conn, kid=kid, wrapped=kek.seal(kid, secrets.token_bytes(32)), now_us=now
            )
        self.forget_cached_keys()
        await self._keyring()
        previous = current[-1] if current else None
        log.info("signing key %s is current; %s verifies until its tokens expire", kid, previous or "none")
        return Rotation(kid, previous)

    async def list_keys(self) -> list[KeyInfo]:
        """Every key's kid, state (finished overlaps retired first), times; never its material."""
        await self._load_ring(strict=False)
        now = dates.now_us()
        async with self.db.read() as conn:
            stored = await client_store.signing_keys(conn)
        return [
            KeyInfo(
                k.info.kid,
                effective_state(k.info, now),
                k.info.created_us,
                k.info.retire_after_us,
                k.info.retired_us,
            )
            for k in stored
        ]

    # -- token endpoint --------------------------------------------------------------------------

    async def token(
        self, form: dict[str, str], authorization: str | None, token_url: str, *, address: str = ""
    ) -> dict[str, Any]:
        """The token response for a client-credentials request from `address`, or OAuthError."""
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only grant_type=client_credentials is supported")
        client = await self._authenticate(form, authorization, token_url, address)
        try:
            scope = grant(client.scope, form.get("scope"))
        except InvalidScope as exc:
            raise OAuthError("invalid_scope", str(exc)) from exc
        kid, key = await self.signing_key()
        token = issue_access_token(
            key=key,
            kid=kid,
            issuer=ISSUER,
            client_id=client.client_id,
            scope=scope,
            ttl_seconds=self.token_ttl_seconds,
            now=int(time.time()),
            generation=client.token_generation,
        )
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_ttl_seconds,
            "scope": scope,
        }

    def check_throttle(self, client_id: str | None, address: str) -> None:
        wait = self.address_failures.retry_after(address)
        if client_id:
            wait = max(wait, self.client_failures.retry_after(client_id))
        if wait > 0:
            raise RetryLater(429, wait, "too many failed attempts; retry later")

    def failed(self, client_id: str | None, address: str, reason: str) -> OAuthError:
        """Count a failure and give the one answer every failure gets (the reason only goes to the log)."""
        if client_id:
            self.client_failures.failed(client_id)
        self.address_failures.failed(address)
        log.info("token request refused: client=%r address=%s (%s)", (client_id or "")[:80], address, reason)
        return OAuthError("invalid_client", AUTHENTICATION_FAILED, 401)

    async def _authenticate(
        self, form: dict[str, str], authorization: str | None, token_url: str, address: str
    ) -> ClientRecord:
        if form.get("client_assertion_type") == JWT_BEARER or "client_assertion" in form:
            return await self._authenticate_assertion(form, token_url, address)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            credentials = basic_credentials(authorization)
            if credentials is None:
                self.check_throttle(None, address)
                raise self.failed(None, address, "malformed Basic credentials")
            client_id, secret = credentials
        self.check_throttle(client_id, address)
        if not client_id or not secret:
            raise self.failed(client_id, address, "no client credentials")
        async with self.db.read() as conn:
            client = await client_store.get_client(conn, client_id)
        usable = client is not None and not client.disabled and client.secret_hash
        # Unknown, disabled or secret-less: the same scrypt against a dummy hash, so it takes as long.
        stored = client.secret_hash if usable and client is not None else None
        if (
            not await self.in_pool(verify_secret_or_dummy, secret, stored, self.policy.hash_cost)
            or client is None
        ):
            raise self.failed(client_id, address, "unknown client, disabled, no secret, or wrong secret")
        self.client_failures.succeeded(client_id)
        return client

    async def _authenticate_assertion(
        self, form: dict[str, str], token_url: str, address: str
    ) -> ClientRecord:
        if form.get("client_assertion_type") != JWT_BEARER:
            self.check_throttle(None, address)
            raise self.failed(None, address, "wrong client_assertion_type")
        assertion = form.get("client_assertion", "")
        try:
            client_id = assertion_client_id(assertion)
        except InvalidClientAssertion as exc:
            self.check_throttle(None, address)
            raise self.failed(None, address, str(exc)) from exc
        self.check_throttle(client_id, address)
        async with self.db.read() as conn:
            client = await client_store.get_client(conn, client_id)
        if client is None or client.disabled or not client.jwks:
            raise self.failed(client_id, address, "unknown client, disabled, or no registered keys")
        now = int(time.time())
        try:
            claims = verify_client_assertion(
                assertion, jwks=orjson.loads(client.jwks), client_id=client_id, token_url=token_url, now=now
            )
        except InvalidClientAssertion as exc:
            raise self.failed(client_id, address, str(exc)) from exc
        async with self.db.write() as conn:
            fresh = await client_store.remember_assertion(
                conn,
                jti=claims.jti,
                client_id=client_id,
                expires_us=claims.expires_at * 1_000_000,
                now_us=now * 1_000_000,
            )
        if not fresh:
            raise self.failed(client_id, address, "this client assertion (jti) was already used")
        self.client_failures.succeeded(client_id)
        return client

    # -- resource requests -----------------------------------------------------------------------

    async def verify_bearer(self, authorization: str | None) -> AccessClaims:
        """The claims of a valid token whose client exists, is enabled and has not been disabled since."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("A bearer access token is required (get one from POST /auth/token)")
        token = authorization[7:].strip()
        now_us = dates.now_us()
        ring = await self._keyring()
        cached = self._verified.get(token)
        if (
            cached is not None
            and cached[0].expires_at > now_us // 1_000_000
            and ring.verifying_key(cached[1], now_us) is not None
        ):
            claims = cached[0]
        else:
            claims = await self._verify_signature(token, ring, now_us)
        if claims.user_id is not None:
            return claims  # a person's token: its app and its user are checked with their reach (people.py)
        client = await self._client(claims)
        if not _admits(client, claims):
            raise Unauthorized("The access token is not valid: its client was removed or disabled")
        return claims

    async def _verify_signature(self, token: str, ring: KeyRing, now_us: int) -> AccessClaims:
        try:
            hint = key_hint(token)
            key = ring.verifying_key(hint.kid, now_us)
            if key is None and hint.kid is not None and hint.kid not in ring.infos:
                ring = await self._reload_for(hint)
                key = ring.verifying_key(hint.kid, now_us)
            if key is None:
                raise InvalidToken("unknown or retired signing key")
            claims = verify_access_token(token, key=key, issuer=ISSUER, now=now_us // 1_000_000)
        except InvalidToken as exc:
            raise Unauthorized(f"The access token is not valid: {exc}") from exc
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()  # crude but bounded; tokens live minutes, clients reuse them
        self._verified[token] = (claims, hint.kid)
        return claims

    async def _reload_for(self, hint: KeyHint) -> KeyRing:
        """The key ring, read again if the token may be signed by a key made since it was last read.

        A ring read after the token was issued knew every key that could have signed it: no read then.
        Otherwise reads are coalesced and at most every UNKNOWN_KID_RELOAD_S (a request waits for its
        turn), so tokens with made-up kids and times cost the database little.
        """
        async with self._ring_lock:
            ring = self._ring
            if ring is not None and (
                hint.kid in ring.infos or self._ring_read_at > hint.issued_at + CLOCK_SKEW_S
            ):
                return ring
            wait = UNKNOWN_KID_RELOAD_S - (time.monotonic() - self._ring_at)
            if wait > 0:
                await asyncio.sleep(wait)
            return await self._load_ring(strict=False)

    async def _client(self, claims: AccessClaims) -> ClientRecord | None:
        """The token's client as read at most `cache_seconds` ago (None: there is no such client).

        A cached record that refuses the token is read again when the token proves it stale: a token of
        a newer generation, or of the current one while the record says disabled, was issued after the
        client was enabled again (disabling moves the generation on), so the cache predates that.
        """
        now = time.monotonic()
        cached = self._clients.get(claims.client_id)
        if cached is not None and now - cached[0] < self.policy.cache_seconds:
            record = cached[1]
            if record is None or _admits(record, claims) or claims.generation < record.token_generation:
                return record
        async with self.db.read() as conn:
            record = await client_store.get_client(conn, claims.client_id)
        if len(self._clients) >= CLIENT_CACHE_SIZE:
            self._clients.clear()
        self._clients[claims.client_id] = (now, record)  # stamped before the read: never trusted too long
        return record


def _admits(client: ClientRecord | None, claims: AccessClaims) -> bool:
    return client is not None and not client.disabled and client.token_generation == claims.generation


def _yield_cpu() -> None:
    """Hashing threads run at a lower priority (Linux sets it per thread): when cores are scarce, the
    event loop (MLLP ACKs, API requests) and the database go first, and guessers wait."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)


def key_encryption_from(settings: Settings) -> KeyEncryptionKey:
    return key_encryption.from_settings(settings.key_encryption_key, settings.key_encryption_key_file)


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(client_id, secret) from a Basic header; None when it is malformed."""
    from urllib.parse import unquote

    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    # RFC 6749 2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(client_id), unquote(secret)
