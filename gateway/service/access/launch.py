"""SMART App Launch 2.x, standalone launch: the authorization request, consent, authorization codes with
PKCE (S256 only), and the authorization_code and refresh_token grants of the token endpoint.

- The request is checked in two steps: first the app (registered, enabled) and its redirect URI (exactly
  one of those registered); until both hold, errors go on an error page, never to a redirect. After that,
  errors go back to the redirect URI (`error`, `state`).
- Scopes granted = requested, narrowed to the app's registration (gateway/auth/scopes.py `grant`), then to
  what the user's role may read (`role_ceiling`): never more than the person has.
- Codes: 32 random bytes, stored as SHA-256, single use, `CODE_TTL_S`, bound to app, redirect URI, PKCE
  challenge, user and scopes. A used code that comes back is refused and the refresh tokens issued from it
  are revoked (RFC 9700 section 4.5).
- Refresh tokens (with `offline_access`) rotate: each use returns a new one and retires the old; an old
  one that comes back is refused and revokes its whole family.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.auth.roles import ROLES, Patients, Role
from gateway.auth.scopes import InvalidScope, grant
from gateway.auth.secrets import verify_secret_or_dummy
from gateway.auth.tokens import issue_id_token, issue_user_access_token
from gateway.exceptions import OAuthError
from gateway.fhir import dates
from gateway.service.access.clients import ISSUER, AuthService, basic_credentials
from gateway.store import launch as launch_store
from gateway.store import smart_apps as app_store
from gateway.store import users as user_store
from gateway.store.database import Database
from gateway.store.smart_apps import AppRecord
from gateway.store.users import UserRecord

CODE_TTL_S = 60
REFRESH_TTL_S = 30 * 24 * 3600
ID_TOKEN_TTL_S = 3600
# A PKCE code_challenge is BASE64URL(SHA-256(verifier)): 43 characters; verifiers 43 to 128 (RFC 7636).
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_VERIFIER = _B64URL | frozenset(".~")
_OTHER_SCOPES = "openid fhirUser launch/patient offline_access"


class LaunchPageError(Exception):
    """An authorization request that must not be redirected (unknown app, unregistered redirect URI)."""


class LaunchRedirectError(Exception):
    """An authorization request refused with a redirect to the app (`error` as in RFC 6749 4.1.2.1)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    app: AppRecord
    redirect_uri: str
    state: str | None
    code_challenge: str
    requested_scope: str  # as asked for (the consent narrows it to the user's role)
    aud: str


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def role_ceiling(role: str) -> str:
    """The most a user of `role` may hold in an app's token: reading and searching (`.rs`) for a role that
    reaches patients' records, nothing of them for one that does not (analyst, auditor)."""
    rules = ROLES[Role(role)]
    if rules.patients is Patients.NONE:
        return _OTHER_SCOPES
    return f"user/*.rs patient/*.rs {_OTHER_SCOPES}"


def scopes_for(app_scope: str, requested: str, user: UserRecord) -> str:
    """Requested ∩ registered ∩ the role's ceiling; `fhirUser` only for a user with a Practitioner. Empty
    when nothing is left."""
    try:
        narrowed = grant(grant(app_scope, requested), None)
        narrowed = grant(role_ceiling(user.role), narrowed)
    except InvalidScope:
        return ""
    kept = narrowed.split()
    if user.practitioner is None:
        kept = [s for s in kept if s != "fhirUser"]
    return " ".join(kept)


class LaunchService:
    def __init__(self, db: Database, auth: AuthService, clock: Callable[[], int] = dates.now_us) -> None:
        self.db = db
        self.auth = auth
        self.clock = clock

    # -- the authorization endpoint --------------------------------------------------------------

    async def check_request(self, params: dict[str, str], fhir_base: str) -> AuthorizationRequest:
        client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
        app = None
        if client_id:
            async with self.db.read() as conn:
                app = await app_store.get_app(conn, client_id)
        if app is None or app.disabled:
            raise LaunchPageError("This app is not registered with the gateway, or it is disabled.")
        if redirect_uri not in app.redirect_uris:
            raise LaunchPageError("The redirect URI is not one registered for this app.")
        if params.get("response_type") != "code":
            raise LaunchRedirectError("unsupported_response_type", "only response_type=code is supported")
        if params.get("code_challenge_method") != "S256":
            raise LaunchRedirectError("invalid_request", "PKCE with code_challenge_method=S256 is required")
        challenge = params.get("code_challenge", "")
        if len(challenge) != 43 or not set(challenge) <= _B64URL:
            raise LaunchRedirectError(
                "invalid_request", "code_challenge must be BASE64URL(SHA-256(verifier))"
            )
        aud = params.get("aud", "")
        if aud.rstrip("/") != fhir_base.rstrip("/"):
            raise LaunchRedirectError("invalid_request", "aud must be this server's FHIR base URL")
        requested = params.get("scope", "")
        if not requested.strip():
            raise LaunchRedirectError("invalid_scope", "a scope is required")
        try:
            grant(app.scope, requested)
        except InvalidScope as exc:
            raise LaunchRedirectError("invalid_scope", str(exc)) from exc
        return AuthorizationRequest(app, redirect_uri, params.get("state"), challenge, requested, aud)

    async def issue_code(
        self, request: AuthorizationRequest, user: UserRecord, patient: str | None = None
    ) -> str:
        """A new code for what the user approved (and the patient they chose, for launch/patient; the
        caller checked that the user reaches it); LaunchRedirectError when the role leaves nothing."""
        scope = scopes_for(request.app.scope, request.requested_scope, user)
        if not scope:
            raise LaunchRedirectError(
                "invalid_scope", "none of the requested scopes is allowed for this user"
            )
        code = secrets.token_urlsafe(32)
        now = self.clock()
        async with self.db.write() as conn:
            await launch_store.delete_expired_codes(conn, now - 3600 * 1_000_000)
            await launch_store.add_code(
                conn,
                launch_store.CodeRecord(
                    code_hash=_hash(code),
                    client_id=request.app.client_id,
                    user_id=user.id,
                    redirect_uri=request.redirect_uri,
                    code_challenge=request.code_challenge,
                    scope=scope,
                    created_us=now,
                    expires_us=now + CODE_TTL_S * 1_000_000,
                    used_us=None,
                    patient=patient,
                ),
            )
        return code

    # -- the token endpoint ----------------------------------------------------------------------

    async def token(
        self, form: dict[str, str], authorization: str | None, fhir_base: str, *, address: str = ""
    ) -> dict[str, Any]:
        app = await self._authenticate(form, authorization, address)
        if form.get("grant_type") == "authorization_code":
            return await self._from_code(app, form, fhir_base)
        return await self._from_refresh(app, form, fhir_base)

    async def _authenticate(self, form: dict[str, str], authorization: str | None, address: str) -> AppRecord:
        """The app: a confidential one by its secret (Basic or post), a public one by its client_id."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            credentials = basic_credentials(authorization)
            if credentials is None:
                self.auth.check_throttle(None, address)
                raise self.auth.failed(None, address, "malformed Basic credentials")
            client_id, secret = credentials
        self.auth.check_throttle(client_id, address)
        if not client_id:
            raise self.auth.failed(None, address, "no client_id")
        async with self.db.read() as conn:
            app = await app_store.get_app(conn, client_id)
        if app is not None and not app.confidential and not app.disabled and not secret:
            return app
        stored = app.secret_hash if app is not None and app.confidential and not app.disabled else None
        cost = self.auth.policy.hash_cost
        ok = await self.auth.in_pool(verify_secret_or_dummy, secret or "", stored, cost)
        if not ok or app is None or not secret:
            raise self.auth.failed(client_id, address, "unknown app, disabled, or wrong secret")
        self.auth.client_failures.succeeded(client_id)
        return app

    async def _user(self, user_id: str) -> UserRecord:
        async with self.db.read() as conn:
            user = await user_store.get_user_by_id(conn, user_id)
        if user is None or user.disabled:
            raise OAuthError("invalid_grant", "the user who approved this app is disabled or gone")
        return user

    async def _from_code(self, app: AppRecord, form: dict[str, str], fhir_base: str) -> dict[str, Any]:
        code, verifier = form.get("code", ""), form.get("code_verifier", "")
        now = self.clock()
        code_hash = _hash(code)
        async with self.db.write() as conn:
            record = await launch_store.get_code(conn, code_hash) if code else None
            if record is None:
                raise OAuthError("invalid_grant", "unknown authorization code")
            first_use = await launch_store.use_code(conn, code_hash, now)
            if not first_use:  # a replayed code: what was issued from it is revoked too
                await launch_store.revoke_family(conn, code_hash)
        if not first_use:
            raise OAuthError("invalid_grant", "this authorization code was already used")
        if record.expires_us <= now:
            raise OAuthError("invalid_grant", "the authorization code has expired")
        if record.client_id != app.client_id or record.redirect_uri != form.get("redirect_uri"):
            raise OAuthError("invalid_grant", "the code was issued to another app or redirect URI")
        if not (43 <= len(verifier) <= 128 and set(verifier) <= _VERIFIER):
            raise OAuthError("invalid_grant", "a code_verifier (43 to 128 characters) is required")
        if not hmac.compare_digest(s256(verifier), record.code_challenge):
            raise OAuthError("invalid_grant", "the code_verifier does not match the code_challenge")
        user = await self._user(record.user_id)
        scope = scopes_for(record.scope, record.scope, user)  # the role may have changed since
        if not scope:
            raise OAuthError("invalid_grant", "the user's role no longer allows any of the scopes")
        return await self._tokens(app, user, scope, code_hash, fhir_base, record.patient)

    async def _from_refresh(self, app: AppRecord, form: dict[str, str], fhir_base: str) -> dict[str, Any]:
        presented = form.get("refresh_token", "")
        now = self.clock()
        token_hash = _hash(presented)
        async with self.db.write() as conn:
            record = await launch_store.get_refresh(conn, token_hash) if presented else None
            if record is None or record.client_id != app.client_id:
                raise OAuthError("invalid_grant", "unknown refresh token")
            rotated = await launch_store.use_refresh(conn, token_hash, now)
            if not rotated:
                await launch_store.revoke_family(conn, record.family)
        if not rotated:
            raise OAuthError("invalid_grant", "this refresh token was already used or is revoked")
        if record.expires_us <= now:
            raise OAuthError("invalid_grant", "the refresh token has expired")
        user = await self._user(record.user_id)
        requested = form.get("scope")
        try:
            scope = grant(record.scope, requested) if requested else record.scope
        except InvalidScope as exc:
            raise OAuthError("invalid_scope", str(exc)) from exc
        scope = scopes_for(scope, scope, user)
        if not scope:
            raise OAuthError("invalid_grant", "the user's role no longer allows any of the scopes")
        return await self._tokens(app, user, scope, record.family, fhir_base, record.patient)

    async def _tokens(
        self, app: AppRecord, user: UserRecord, scope: str, family: str, fhir_base: str, patient: str | None
    ) -> dict[str, Any]:
        """The token response; with a launch patient, the access token is narrowed to that patient
        (its `patient` claim) and the response names it, as SMART's launch context says."""
        kid, key = await self.auth.signing_key()
        now_us = self.clock()
        now = now_us // 1_000_000
        ttl = self.auth.token_ttl_seconds
        fhir_user = f"{fhir_base.rstrip('/')}/{user.practitioner}" if user.practitioner else None
        scopes = scope.split()
        answer: dict[str, Any] = {
            "access_token": issue_user_access_token(
                key=key, kid=kid, issuer=ISSUER, client_id=app.client_id, user_id=user.id, scope=scope,
                fhir_user=fhir_user if "fhirUser" in scopes else None, ttl_seconds=ttl, now=now,
                patient=patient, family=family,
            ),
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": scope,
        }  # fmt: skip
        if patient is not None:
            answer["patient"] = patient
        if "openid" in scopes and "fhirUser" in scopes:
            answer["id_token"] = issue_id_token(
                key=key, kid=kid, issuer=ISSUER, client_id=app.client_id, user_id=user.id,
                fhir_user=fhir_user, ttl_seconds=ID_TOKEN_TTL_S, now=now,
            )  # fmt: skip
        if "offline_access" in scopes:
            refresh = secrets.token_urlsafe(32)
            async with self.db.write() as conn:
                await launch_store.add_refresh(
                    conn,
                    launch_store.RefreshRecord(
                        token_hash=_hash(refresh),
                        family=family,
                        client_id=app.client_id,
                        user_id=user.id,
                        scope=scope,
                        created_us=now_us,
                        expires_us=now_us + REFRESH_TTL_S * 1_000_000,
                        used_us=None,
                        revoked=False,
                        patient=patient,
                    ),
                )
            answer["refresh_token"] = refresh
        return answer
