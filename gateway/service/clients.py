"""API clients and OAuth 2.0 client-credentials tokens (SMART Backend Services).

Clients authenticate with a secret (client_secret_basic or client_secret_post) or a signed JWT
(private_key_jwt against the JWKS registered for them). Tokens are short-lived HS256 JWTs whose key is
kept in the database, so every gateway process on one database accepts them.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from gateway.auth.assertions import InvalidClientAssertion, assertion_client_id, verify_client_assertion
from gateway.auth.scopes import Grants, InvalidScope, grant, parse_scopes
from gateway.auth.secrets import hash_secret, new_client_id, new_secret, verify_secret
from gateway.auth.tokens import AccessClaims, InvalidToken, issue_access_token, verify_access_token
from gateway.exceptions import OAuthError, Unauthorized
from gateway.fhir import dates
from gateway.store import clients as client_store
from gateway.store.clients import ClientRecord
from gateway.store.database import Database

ISSUER = "specialty-gateway"
VERIFIED_CACHE_SIZE = 10_000
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True, slots=True)
class NewClient:
    client_id: str
    name: str
    scope: str
    client_secret: str | None


@lru_cache(maxsize=1024)
def grants_for(scope: str) -> Grants:
    """Parsed grants per scope string; tokens of one client share one scope string."""
    return Grants.from_string(scope)


class AuthService:
    def __init__(self, db: Database, *, token_ttl_seconds: int = 300) -> None:
        self.db = db
        self.token_ttl_seconds = token_ttl_seconds
        self._key: bytes | None = None
        # A client sends the same token on every request for its lifetime: verify the signature once.
        self._verified: dict[str, AccessClaims] = {}

    async def signing_key(self) -> bytes:
        if self._key is None:
            async with self.db.write() as conn:
                self._key = await client_store.token_signing_key(conn, now_us=dates.now_us())
        return self._key

    # -- registration ----------------------------------------------------------------------------

    async def add_client(self, name: str, scope: str, *, jwks: dict[str, Any] | None = None) -> NewClient:
        """Register a client. With `jwks` it authenticates by private_key_jwt and gets no secret."""
        parse_scopes(scope)  # refuse malformed scopes at registration, not at first use
        if jwks is not None and not isinstance(jwks.get("keys"), list):
            raise ValueError("a JWKS must be a JSON object with a 'keys' list")
        client_id = new_client_id()
        secret = None if jwks is not None else new_secret()
        async with self.db.write() as conn:
            await client_store.add_client(
                conn,
                client_id=client_id,
                name=name,
                scope=scope,
                secret_hash=hash_secret(secret) if secret else None,
                jwks=orjson.dumps(jwks).decode() if jwks is not None else None,
                created_us=dates.now_us(),
            )
        return NewClient(client_id, name, scope, secret)

    async def list_clients(self) -> list[ClientRecord]:
        async with self.db.read() as conn:
            return await client_store.list_clients(conn)

    async def remove_client(self, name_or_id: str) -> bool:
        async with self.db.write() as conn:
            return await client_store.remove_client(conn, name_or_id)

    # -- token endpoint --------------------------------------------------------------------------

    async def token(self, form: dict[str, str], authorization: str | None, token_url: str) -> dict[str, Any]:
        """The token response for a client-credentials request, or OAuthError."""
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only grant_type=client_credentials is supported")
        client = await self._authenticate(form, authorization, token_url)
        try:
            scope = grant(client.scope, form.get("scope"))
        except InvalidScope as exc:
            raise OAuthError("invalid_scope", str(exc)) from exc
        now = int(time.time())
        token = issue_access_token(
            key=await self.signing_key(),
            issuer=ISSUER,
            client_id=client.client_id,
            scope=scope,
            ttl_seconds=self.token_ttl_seconds,
            now=now,
        )
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_ttl_seconds,
            "scope": scope,
        }

    async def _authenticate(
        self, form: dict[str, str], authorization: str | None, token_url: str
    ) -> ClientRecord:
        if form.get("client_assertion_type") == JWT_BEARER or "client_assertion" in form:
            return await self._authenticate_assertion(form, token_url)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            client_id, secret = _basic_credentials(authorization)
        if not client_id or not secret:
            raise OAuthError("invalid_client", "client authentication is required", 401)
        async with self.db.read() as conn:
            client = await client_store.get_client(conn, client_id)
        if (
            client is None
            or client.disabled
            or not client.secret_hash
            or not verify_secret(secret, client.secret_hash)
        ):
            raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
        return client

    async def _authenticate_assertion(self, form: dict[str, str], token_url: str) -> ClientRecord:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise OAuthError("invalid_request", f"client_assertion_type must be {JWT_BEARER}")
        assertion = form.get("client_assertion", "")
        try:
            client_id = assertion_client_id(assertion)
        except InvalidClientAssertion as exc:
            raise OAuthError("invalid_client", str(exc), 401) from exc
        async with self.db.read() as conn:
            client = await client_store.get_client(conn, client_id)
        if client is None or client.disabled or not client.jwks:
            raise OAuthError("invalid_client", "unknown client or no registered keys", 401)
        now = int(time.time())
        try:
            claims = verify_client_assertion(
                assertion, jwks=orjson.loads(client.jwks), client_id=client_id, token_url=token_url, now=now
            )
        except InvalidClientAssertion as exc:
            raise OAuthError("invalid_client", str(exc), 401) from exc
        async with self.db.write() as conn:
            fresh = await client_store.remember_assertion(
                conn,
                jti=claims.jti,
                client_id=client_id,
                expires_us=claims.expires_at * 1_000_000,
                now_us=now * 1_000_000,
            )
        if not fresh:
            raise OAuthError("invalid_client", "this client assertion (jti) was already used", 401)
        return client

    # -- resource requests -----------------------------------------------------------------------

    async def verify_bearer(self, authorization: str | None) -> AccessClaims:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("A bearer access token is required (get one from POST /auth/token)")
        token = authorization[7:].strip()
        now = int(time.time())
        cached = self._verified.get(token)
        if cached is not None and cached.expires_at > now:
            return cached
        try:
            claims = verify_access_token(token, key=await self.signing_key(), issuer=ISSUER, now=now)
        except InvalidToken as exc:
            raise Unauthorized(f"The access token is not valid: {exc}") from exc
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()  # crude but bounded; tokens live minutes, clients reuse them
        self._verified[token] = claims
        return claims


def _basic_credentials(header: str) -> tuple[str, str]:
    from urllib.parse import unquote

    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise OAuthError("invalid_client", "malformed Basic credentials", 401) from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "malformed Basic credentials", 401)
    # RFC 6749 2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(client_id), unquote(secret)
