"""Access tokens: JWTs (RFC 7519) signed HS256 with a server key, typed `at+jwt` as in RFC 9068.

PyJWT does the signing and checking; HS256 is the only algorithm accepted, so a forged header naming
`none` or an asymmetric algorithm is refused. Verification costs about 0.1 ms, small beside a request.

Claims: iss, sub (= client_id), aud (= iss: this gateway is both the authorization and the resource
server), client_id, scope, iat, exp, jti, and `client_gen`: the client's token generation when the token
was issued (disabling a client moves it on, so tokens from before stay dead after it is enabled again).
The header names the signing key (`kid`, see keyring.py); the caller picks the key by it (`token_kid`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
TOKEN_TYPE = "at+jwt"
MIN_KEY_BYTES = 32  # RFC 7518 section 3.2: an HS256 key at least as long as the SHA-256 output.
MAX_TOKEN_LENGTH = 8192  # far above any token we issue; refuses oversized junk before decoding it.
_REQUIRED = ["iss", "aud", "exp", "iat", "sub", "jti"]


class InvalidToken(Exception):
    """A bearer token is not one this server issued, or no longer valid; `str(error)` is a short reason."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The claims of a verified access token that the API needs."""

    client_id: str
    scope: str
    expires_at: int
    jti: str
    generation: int = 0
    user_id: str | None = None  # a person's token (a SMART app acting for them): their user id
    patient: str | None = None  # the patient chosen at launch (`launch/patient`), for a person's token
    family: str | None = None  # a person's token: the code it descends from (revoked together)


def issue_access_token(
    *,
    key: bytes,
    issuer: str,
    client_id: str,
    scope: str,
    ttl_seconds: int,
    now: int,
    kid: str | None = None,
    generation: int = 0,
) -> str:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the signing key must be at least {MIN_KEY_BYTES} bytes")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    claims = {
        "iss": issuer,
        "sub": client_id,
        "aud": issuer,
        "client_id": client_id,
        "scope": scope,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": secrets.token_urlsafe(16),
        "client_gen": generation,
    }
    headers = {"typ": TOKEN_TYPE} if kid is None else {"typ": TOKEN_TYPE, "kid": kid}
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers=headers)


@dataclass(frozen=True, slots=True)
class KeyHint:
    """What a token says, before its signature is checked, about the key that signed it: the `kid`
    (None for tokens from before key ids) and when it was issued (`iat`)."""

    kid: str | None
    issued_at: int


def key_hint(token: str) -> KeyHint:
    """Read unverified, only to choose the key that checks the token (and whether to look for a key made
    since the key ring was read)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        issued_at = jwt.decode(token, options={"verify_signature": False}).get("iat")
    except jwt.PyJWTError as exc:
        raise InvalidToken("malformed token") from exc
    if (kid is not None and not isinstance(kid, str)) or not isinstance(issued_at, int):
        raise InvalidToken("malformed token")
    return KeyHint(kid, issued_at)


def _reason(error: jwt.PyJWTError) -> str:
    reasons: list[tuple[type[jwt.PyJWTError], str]] = [
        (jwt.ExpiredSignatureError, "expired"),
        (jwt.InvalidSignatureError, "bad signature"),
        (jwt.InvalidIssuerError, "wrong issuer"),
        (jwt.InvalidAudienceError, "wrong audience"),
        (jwt.InvalidAlgorithmError, "unsupported algorithm"),
    ]
    for kind, reason in reasons:
        if isinstance(error, kind):
            return reason
    return "malformed token"


def verify_access_token(token: str, *, key: bytes, issuer: str, now: int | None = None) -> AccessClaims:
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("unsupported algorithm")
        if header.get("typ") != TOKEN_TYPE:
            raise InvalidToken("not an access token")
        if "crit" in header:
            raise InvalidToken("unsupported critical header")
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=issuer,
            audience=issuer,
            options={"require": _REQUIRED, "verify_exp": now is None},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(_reason(exc)) from exc
    if now is not None and claims["exp"] <= now:
        raise InvalidToken("expired")
    client_id, scope = claims.get("client_id"), claims.get("scope")
    generation = claims.get("client_gen", 0)  # tokens from before generations: 0, the first one
    if not isinstance(client_id, str) or not isinstance(scope, str) or not isinstance(claims["sub"], str):
        raise InvalidToken("malformed token")
    if not isinstance(generation, int) or isinstance(generation, bool):
        raise InvalidToken("malformed token")
    if claims["sub"] != client_id:  # a person's token: `sub` is the user, `client_id` the app
        patient, family = claims.get("patient"), claims.get("fam")
        if claims.get("token_use") != USER_TOKEN or not all(
            v is None or isinstance(v, str) for v in (patient, family)
        ):
            raise InvalidToken("malformed token")
        return AccessClaims(
            client_id, scope, int(claims["exp"]), str(claims["jti"]),
            user_id=claims["sub"], patient=patient, family=family,
        )  # fmt: skip
    return AccessClaims(client_id, scope, int(claims["exp"]), str(claims["jti"]), generation)


ID_TOKEN_TYPE = "JWT"
USER_TOKEN = "user"


def issue_user_access_token(
    *,
    key: bytes,
    kid: str,
    issuer: str,
    client_id: str,
    user_id: str,
    scope: str,
    fhir_user: str | None,
    ttl_seconds: int,
    now: int,
    patient: str | None = None,
    family: str | None = None,
) -> str:
    """An access token a SMART app gets for a person: `sub` is the user id, `client_id` the app, and
    `token_use` says so (a token whose `sub` differs from its client without it is refused); `patient`
    is the patient chosen at launch, which narrows the token to that patient's record."""
    claims: dict[str, object] = {
        "token_use": USER_TOKEN,
        "iss": issuer,
        "sub": user_id,
        "aud": issuer,
        "client_id": client_id,
        "scope": scope,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": secrets.token_urlsafe(16),
    }
    if fhir_user:
        claims["fhirUser"] = fhir_user
    if patient:
        claims["patient"] = patient
    if family:
        claims["fam"] = family
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE, "kid": kid})


def issue_id_token(
    *,
    key: bytes,
    kid: str,
    issuer: str,
    client_id: str,
    user_id: str,
    fhir_user: str | None,
    ttl_seconds: int,
    now: int,
) -> str:
    """An OpenID Connect ID token for the app (aud = its client id), signed like the access tokens."""
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": user_id,
        "aud": client_id,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if fhir_user:
        claims["fhirUser"] = fhir_user
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"typ": ID_TOKEN_TYPE, "kid": kid})
