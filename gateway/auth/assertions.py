"""`private_key_jwt` client authentication as in SMART Backend Services (RFC 7523 client assertions).

The client signs a short-lived JWT with a private key whose public half it registered as a JWKS. We check the
signature against that JWKS (RS384 and ES384, the two algorithms SMART requires servers to support), that
`iss` and `sub` are the client id, `aud` is our token URL, `exp` is at most five minutes away, and that a
`jti` is present. Remembering seen `jti` values until `expires_at`, to refuse replays, is the caller's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

# Algorithm -> (JWK kty, JWK crv); a key is only ever used with the algorithm its type fits.
SUPPORTED_ALGORITHMS: dict[str, tuple[str, str | None]] = {"RS384": ("RSA", None), "ES384": ("EC", "P-384")}

MAX_LIFETIME_SECONDS = 300  # SMART: exp no more than five minutes in the future.
# Allowed on top of MAX_LIFETIME_SECONDS only: a client whose clock runs a few seconds ahead and that sets
# exp = its now + 300 should not fail intermittently. Expiry itself gets no leeway.
CLOCK_SKEW_SECONDS = 30
MAX_JTI_LENGTH = 256  # the caller stores jti values; bound what a client can make it store.

# Members a public JWK may carry; private members ("d", "p", ...) a careless client registered are ignored.
_PUBLIC_MEMBERS = ("kty", "kid", "alg", "use", "n", "e", "crv", "x", "y")

_jws = jwt.PyJWS(options={"verify_signature": True, "enforce_minimum_key_length": True})


class InvalidClientAssertion(Exception):
    """A client assertion does not authenticate the client; `str(error)` is a short reason."""


@dataclass(frozen=True, slots=True)
class AssertionClaims:
    """A verified assertion: who signed it, its `jti`, and until when that `jti` must be remembered."""

    client_id: str
    jti: str
    expires_at: int


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidClientAssertion("malformed assertion") from None
    if not isinstance(claims, dict):
        raise InvalidClientAssertion("malformed assertion")
    return claims


def _unverified_payload(assertion: str) -> dict[str, Any]:
    try:
        payload: bytes = _jws.decode_complete(assertion, options={"verify_signature": False})["payload"]
    except (jwt.PyJWTError, TypeError):
        raise InvalidClientAssertion("malformed assertion") from None
    return _claims(payload)


def assertion_client_id(assertion: str) -> str:
    """The `iss` of an assertion, read WITHOUT checking the signature: only to look up whose keys to use."""
    issuer = _unverified_payload(assertion).get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise InvalidClientAssertion("assertion has no issuer")
    return issuer


def _header(assertion: str) -> tuple[str, str | None]:
    """(alg, kid) from the protected header."""
    try:
        header = _jws.get_unverified_header(assertion)
    except (jwt.PyJWTError, TypeError):
        raise InvalidClientAssertion("malformed assertion") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
        raise InvalidClientAssertion("unsupported algorithm")
    kid = header.get("kid")  # PyJWT has already refused a non-string kid
    return alg, kid


def _fits(jwk: dict[str, Any], alg: str) -> bool:
    """Whether a registered JWK may verify an `alg` signature, judged by its declared type and uses."""
    kty, crv = SUPPORTED_ALGORITHMS[alg]
    key_ops = jwk.get("key_ops")
    return (
        jwk.get("kty") == kty
        and (crv is None or jwk.get("crv") == crv)
        and jwk.get("alg", alg) == alg
        and jwk.get("use", "sig") == "sig"
        and (key_ops is None or (isinstance(key_ops, list) and "verify" in key_ops))
    )


def _verifier(jwk: dict[str, Any], alg: str) -> jwt.PyJWK | None:
    public = {name: jwk[name] for name in _PUBLIC_MEMBERS if name in jwk}
    try:
        return jwt.PyJWK(public, alg)
    except jwt.PyJWTError:
        return None  # a broken registered key is unusable, not a reason to refuse the others


def _candidate_keys(jwks: dict[str, Any], alg: str, kid: str | None) -> list[jwt.PyJWK]:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    entries = [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []
    if kid is not None:
        entries = [k for k in entries if k.get("kid") == kid]
        if not entries:
            raise InvalidClientAssertion("unknown kid")
    verifiers = [v for k in entries if _fits(k, alg) and (v := _verifier(k, alg)) is not None]
    if not verifiers:
        raise InvalidClientAssertion("no registered key for this algorithm")
    return verifiers


def _verified_payload(assertion: str, keys: list[jwt.PyJWK], alg: str) -> bytes:
    """The payload once one of `keys` verifies the signature; without a kid several keys may be tried."""
    reason = "bad signature"
    for key in keys:
        try:
            payload: bytes = _jws.decode_complete(assertion, key=key, algorithms=[alg])["payload"]
            return payload
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidKeyError:
            reason = "registered key too weak"  # e.g. RSA under 2048 bits; try the client's other keys
        except jwt.PyJWTError:
            raise InvalidClientAssertion("malformed assertion") from None
    raise InvalidClientAssertion(reason)


def _check_claims(claims: dict[str, Any], client_id: str, token_url: str, now: int) -> AssertionClaims:
    if claims.get("iss") != client_id:
        raise InvalidClientAssertion("iss is not the client id")
    if claims.get("sub") != client_id:
        raise InvalidClientAssertion("sub is not the client id")
    aud = claims.get("aud")
    # RFC 7519 allows aud to be a single string or an array of them.
    if aud != token_url and not (isinstance(aud, list) and token_url in aud):
        raise InvalidClientAssertion("aud is not the token endpoint")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise InvalidClientAssertion("missing exp")
    if now >= exp:
        raise InvalidClientAssertion("expired")
    if exp > now + MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS:
        raise InvalidClientAssertion("exp more than 5 minutes in the future")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int | float) or nbf > now + CLOCK_SKEW_SECONDS):
        raise InvalidClientAssertion("not yet valid")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise InvalidClientAssertion("missing or oversized jti")
    # Rounded up: the caller must remember the jti for as long as the assertion could still be accepted.
    return AssertionClaims(client_id=client_id, jti=jti, expires_at=math.ceil(exp))


def verify_client_assertion(
    assertion: str, *, jwks: dict[str, Any], client_id: str, token_url: str, now: int
) -> AssertionClaims:
    """Authenticate `client_id` by `assertion` against its registered `jwks`, else InvalidClientAssertion."""
    alg, kid = _header(assertion)
    payload = _verified_payload(assertion, _candidate_keys(jwks, alg, kid), alg)
    return _check_claims(_claims(payload), client_id, token_url, now)


def sign_client_assertion(
    *, client_id: str, token_url: str, private_key_pem: bytes, alg: str, kid: str | None, now: int, jti: str
) -> str:
    """Our own assertion, as a SMART Backend Services client of another server (an upstream EHR): the
    claims `verify_client_assertion` checks, valid for MAX_LIFETIME_SECONDS less a minute of clock skew."""
    if alg not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"unsupported algorithm {alg}")
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "jti": jti,
        "iat": now,
        "exp": now + MAX_LIFETIME_SECONDS - 60,
    }
    headers = {"typ": "JWT", **({"kid": kid} if kid else {})}
    return jwt.encode(claims, private_key_pem, algorithm=alg, headers=headers)
