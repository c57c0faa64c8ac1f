"""Unit tests for gateway.auth: SMART scopes, client secrets, access tokens and private_key_jwt assertions."""

from __future__ import annotations

import base64
import functools
import json
import re
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from gateway.auth.assertions import (
    AssertionClaims,
    InvalidClientAssertion,
    assertion_client_id,
    verify_client_assertion,
)
from gateway.auth.scopes import Grants, InvalidScope, Scope, grant, parse_scopes
from gateway.auth.secrets import hash_secret, new_client_id, new_secret, verify_secret
from gateway.auth.tokens import AccessClaims, InvalidToken, issue_access_token, verify_access_token
from gateway.settings import Settings

# --- scopes -------------------------------------------------------------------------------------------------


def test_parse_v2_scope() -> None:
    [scope] = parse_scopes("system/Observation.rs")
    assert scope == Scope("system", "Observation", frozenset("rs"))
    assert str(scope) == "system/Observation.rs"


def test_parse_several_scopes_keeps_order_and_contexts() -> None:
    scopes = parse_scopes("system/*.cruds  user/Patient.r patient/Observation.s")
    assert [str(s) for s in scopes] == ["system/*.cruds", "user/Patient.r", "patient/Observation.s"]
    assert [s.context for s in scopes] == ["system", "user", "patient"]


@pytest.mark.parametrize(
    ("v1", "v2"),
    [
        ("system/Patient.read", "system/Patient.rs"),
        ("system/Patient.write", "system/Patient.cud"),
        ("system/Patient.*", "system/Patient.cruds"),
        ("system/*.*", "system/*.cruds"),
        ("system/*.read", "system/*.rs"),
    ],
)
def test_v1_scopes_map_to_v2(v1: str, v2: str) -> None:
    assert [str(s) for s in parse_scopes(v1)] == [v2]


@pytest.mark.parametrize(
    "bad",
    [
        "system/Observation.sr",
        "system/Observation.rr",
        "system/Observation.",
        "system/Observation",
        "system/Observation.rx",
        "system/Observation.reads",
        "system/observation.rs",
        "system/Obs-ervation.rs",
        "admin/Patient.rs",
        "Patient.rs",
        "system/.rs",
        "nonsense",
    ],
)
def test_malformed_scope_is_refused_by_name(bad: str) -> None:
    with pytest.raises(InvalidScope) as err:
        parse_scopes(f"system/Patient.r {bad}")
    assert bad in str(err.value)


def test_scope_built_by_hand_is_validated() -> None:
    with pytest.raises(InvalidScope):
        Scope("system", "Patient", frozenset())
    with pytest.raises(InvalidScope):
        Scope("system", "Patient", frozenset("rx"))
    with pytest.raises(InvalidScope):
        Scope("admin", "Patient", frozenset("r"))
    assert str(Scope("system", "Patient", frozenset("sr"))) == "system/Patient.rs"


def test_granular_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="granular scopes are not supported yet"):
        parse_scopes("system/Observation.rs?category=laboratory")


def test_non_resource_scopes_are_accepted_and_grant_nothing() -> None:
    scopes = parse_scopes("openid fhirUser launch offline_access online_access system/Patient.r")
    assert [str(s) for s in scopes] == ["system/Patient.r"]
    assert not Grants.from_string("openid fhirUser launch").allows("Patient", "r")


def test_empty_scope_string() -> None:
    assert parse_scopes("") == []
    assert parse_scopes("   ") == []


# --- Grants -------------------------------------------------------------------------------------------------


def test_wildcard_grants_every_type_and_interaction() -> None:
    grants = Grants(parse_scopes("system/*.cruds"))
    for permission in "cruds":
        assert grants.allows("Patient", permission)
        assert grants.allows("MedicationRequest", permission)
    assert grants.allows_all("Task", "cruds")


def test_per_type_grant() -> None:
    grants = Grants(parse_scopes("system/Observation.rs"))
    assert grants.allows("Observation", "r")
    assert grants.allows("Observation", "s")
    assert not grants.allows("Observation", "c")
    assert not grants.allows("Patient", "r")


def test_per_interaction_grant() -> None:
    grants = Grants.from_string("system/Task.cu system/Patient.read")
    assert grants.allows_all("Task", "cu")
    assert not grants.allows_all("Task", "cud")
    assert grants.allows_all("Patient", "rs")
    assert not grants.allows("Patient", "d")


def test_wildcard_and_named_type_combine() -> None:
    grants = Grants.from_string("system/*.rs system/Patient.c")
    assert grants.allows_all("Patient", "crs")
    assert grants.allows_all("Observation", "rs")
    assert not grants.allows("Observation", "c")


def test_only_system_scopes_are_honoured() -> None:
    grants = Grants.from_string("user/*.cruds patient/Patient.rs")
    assert not grants.allows("Patient", "r")


def test_unknown_permission_letter_is_a_programming_error() -> None:
    grants = Grants.from_string("system/*.cruds")
    with pytest.raises(ValueError):
        grants.allows("Patient", "x")
    with pytest.raises(ValueError):
        grants.allows("Patient", "rs")
    with pytest.raises(ValueError):
        grants.allows_all("Patient", "")


# --- grant() ------------------------------------------------------------------------------------------------


def test_grant_narrows_request_to_registered_type() -> None:
    assert grant("system/Observation.rs", "system/*.cruds") == "system/Observation.rs"


def test_grant_keeps_narrower_request() -> None:
    assert grant("system/*.cruds", "system/Observation.rs") == "system/Observation.rs"


def test_grant_without_request_gives_all_registered_in_v2_form() -> None:
    registered = "system/Patient.read system/Observation.write"
    assert grant(registered, None) == "system/Patient.rs system/Observation.cud"
    assert grant(registered, "") == "system/Patient.rs system/Observation.cud"


def test_grant_drops_uncovered_parts() -> None:
    assert grant("system/Patient.r", "system/Patient.rs system/Observation.c") == "system/Patient.r"


def test_grant_wildcard_request_over_mixed_registration() -> None:
    registered = "system/*.rs system/Observation.cruds"
    assert grant(registered, "system/*.cruds") == "system/*.rs system/Observation.cruds"
    assert grant(registered, "system/Patient.cr") == "system/Patient.r"


def test_grant_merges_redundant_requests() -> None:
    assert grant("system/*.cruds", "system/Observation.rs system/*.rs") == "system/*.rs"


@pytest.mark.parametrize(
    ("registered", "requested"),
    [
        ("system/Observation.cruds", "system/Patient.rs"),
        ("system/Observation.rs", "system/Observation.c"),
        ("system/*.cruds", "patient/*.rs"),
        ("system/*.cruds", "openid"),
    ],
)
def test_grant_nothing_covered_is_invalid_scope(registered: str, requested: str) -> None:
    with pytest.raises(InvalidScope):
        grant(registered, requested)


def test_grant_refuses_malformed_request() -> None:
    with pytest.raises(InvalidScope, match=re.escape("system/Patient.sr")):
        grant("system/*.cruds", "system/Patient.sr")
    with pytest.raises(InvalidScope, match="granular"):
        grant("system/*.cruds", "system/Observation.rs?category=laboratory")


def test_grant_non_resource_scopes_only_when_registered() -> None:
    assert grant("system/*.rs", "openid system/Patient.r") == "system/Patient.r"
    assert grant("openid system/*.rs", "openid system/Patient.r") == "system/Patient.r openid"


def test_grant_output_parses() -> None:
    granted = grant("system/*.rs system/Task.cruds", "system/*.*")
    assert Grants.from_string(granted).allows("Task", "u")
    assert not Grants.from_string(granted).allows("Patient", "u")


# --- secrets ------------------------------------------------------------------------------------------------


def test_secret_hash_round_trip() -> None:
    secret = new_secret()
    stored = hash_secret(secret)
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_secret(secret, stored)
    assert not verify_secret(secret + "x", stored)
    assert not verify_secret("", stored)


def test_two_hashes_of_one_secret_differ() -> None:
    first, second = hash_secret("correct horse"), hash_secret("correct horse")
    assert first != second
    assert verify_secret("correct horse", first)
    assert verify_secret("correct horse", second)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext",
        "scrypt$",
        "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==",
        "bcrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$16384$8$1$!!notbase64!!$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$1099511627776$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$16384$-8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$16384$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ],
)
def test_malformed_stored_hash_is_false(stored: str) -> None:
    assert verify_secret("anything", stored) is False


def test_the_cost_is_configurable_and_older_hashes_keep_working() -> None:
    cheap = hash_secret("correct horse", 10)
    assert cheap.startswith("scrypt$1024$8$1$")
    assert verify_secret("correct horse", cheap)  # the stored string carries its own cost
    for out_of_range in (9, 19):
        with pytest.raises(ValueError):
            hash_secret("correct horse", out_of_range)
    with pytest.raises(ValidationError):
        Settings(secret_hash_cost=8)


def test_client_ids_never_look_like_command_line_options() -> None:
    # One in 64 random ids would start with "-": `gateway clients remove -e9r...` then failed (seen in CI).
    assert not any(new_client_id().startswith("-") for _ in range(5000))


def test_empty_secret_is_not_hashed() -> None:
    with pytest.raises(ValueError):
        hash_secret("")


def test_new_ids_and_secrets_are_random_and_url_safe() -> None:
    ids = {new_client_id() for _ in range(20)}
    secrets = {new_secret() for _ in range(20)}
    assert len(ids) == 20 and len(secrets) == 20
    for value in ids | secrets:
        assert value.replace("-", "").replace("_", "").isalnum()
    assert all(len(s) >= 43 for s in secrets)


# --- access tokens ------------------------------------------------------------------------------------------

KEY = b"0123456789abcdef0123456789abcdef"
ISSUER = "https://gateway.example.org"
NOW = 1_700_000_000


def _token(**overrides: Any) -> str:
    args: dict[str, Any] = {
        "key": KEY,
        "issuer": ISSUER,
        "client_id": "client-1",
        "scope": "system/*.rs",
        "ttl_seconds": 300,
        "now": NOW,
    }
    args.update(overrides)
    return issue_access_token(**args)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_token_round_trip() -> None:
    claims = verify_access_token(_token(), key=KEY, issuer=ISSUER, now=NOW + 10)
    assert isinstance(claims, AccessClaims)
    assert (claims.client_id, claims.scope, claims.expires_at) == ("client-1", "system/*.rs", NOW + 300)
    assert claims.jti


def test_token_ids_are_unique() -> None:
    first = verify_access_token(_token(), key=KEY, issuer=ISSUER, now=NOW)
    second = verify_access_token(_token(), key=KEY, issuer=ISSUER, now=NOW)
    assert first.jti != second.jti


def test_token_is_a_standard_jwt() -> None:
    now = int(time.time())
    token = _token(now=now)
    decoded = jwt.decode(token, KEY, algorithms=["HS256"], issuer=ISSUER, audience=ISSUER)
    assert decoded["sub"] == decoded["client_id"] == "client-1"
    assert decoded["iat"] == now and decoded["exp"] == now + 300
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "at+jwt"}
    # ...and a token another library signs with the same key and claims is accepted.
    other = jwt.encode(decoded, KEY, algorithm="HS256", headers={"typ": "at+jwt"})
    assert verify_access_token(other, key=KEY, issuer=ISSUER).client_id == "client-1"


def test_token_default_now_is_the_clock() -> None:
    assert verify_access_token(_token(now=int(time.time())), key=KEY, issuer=ISSUER).client_id == "client-1"
    with pytest.raises(InvalidToken, match="expired"):
        verify_access_token(_token(now=NOW), key=KEY, issuer=ISSUER)


def test_expired_token() -> None:
    token = _token()
    verify_access_token(token, key=KEY, issuer=ISSUER, now=NOW + 299)
    with pytest.raises(InvalidToken, match="expired"):
        verify_access_token(token, key=KEY, issuer=ISSUER, now=NOW + 300)


def test_tampered_token() -> None:
    header, payload, signature = _token(scope="system/Patient.r").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "system/*.cruds"
    forged = f"{header}.{_b64url(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_access_token(forged, key=KEY, issuer=ISSUER, now=NOW)


def test_token_signed_with_another_key() -> None:
    token = _token(key=b"another key that is long enough!!")
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_access_token(token, key=KEY, issuer=ISSUER, now=NOW)


def test_wrong_issuer() -> None:
    with pytest.raises(InvalidToken, match="wrong issuer"):
        verify_access_token(_token(issuer="https://evil.example"), key=KEY, issuer=ISSUER, now=NOW)


def _claims_for_forgery() -> dict[str, Any]:
    return jwt.decode(_token(), options={"verify_signature": False})


def test_wrong_audience() -> None:
    claims = {**_claims_for_forgery(), "aud": "https://elsewhere.example"}
    token = jwt.encode(claims, KEY, algorithm="HS256", headers={"typ": "at+jwt"})
    with pytest.raises(InvalidToken, match="wrong audience"):
        verify_access_token(token, key=KEY, issuer=ISSUER, now=NOW)


def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode(_claims_for_forgery(), "", algorithm="none", headers={"typ": "at+jwt"})
    with pytest.raises(InvalidToken, match="unsupported algorithm"):
        verify_access_token(unsigned, key=KEY, issuer=ISSUER, now=NOW)


def test_other_algorithms_are_refused() -> None:
    long_key = KEY * 2  # HS512 wants a 64-byte key
    hs512 = jwt.encode(_claims_for_forgery(), long_key, algorithm="HS512", headers={"typ": "at+jwt"})
    with pytest.raises(InvalidToken, match="unsupported algorithm"):
        verify_access_token(hs512, key=long_key, issuer=ISSUER, now=NOW)


def test_other_token_types_are_refused() -> None:
    plain = jwt.encode(_claims_for_forgery(), KEY, algorithm="HS256")  # typ "JWT"
    with pytest.raises(InvalidToken, match="not an access token"):
        verify_access_token(plain, key=KEY, issuer=ISSUER, now=NOW)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "a.b.c.d", "é.é.é", "eyJhbGciOiJIUzI1NiJ9..", "x" * 10_000],
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_access_token(token, key=KEY, issuer=ISSUER, now=NOW)


def test_signed_token_with_missing_claims_is_malformed() -> None:
    claims = _claims_for_forgery()
    del claims["jti"]
    token = jwt.encode(claims, KEY, algorithm="HS256", headers={"typ": "at+jwt"})
    with pytest.raises(InvalidToken, match="malformed"):
        verify_access_token(token, key=KEY, issuer=ISSUER, now=NOW)


def test_short_signing_key_is_refused() -> None:
    with pytest.raises(ValueError):
        _token(key=b"short")


# --- private_key_jwt client assertions ----------------------------------------------------------------------

CLIENT = "backend-client"
TOKEN_URL = "https://gateway.example.org/auth/token"


@functools.cache
def _rsa_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _ec_key(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        public = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**public, "kid": kid}


def _jwks() -> dict[str, Any]:
    return {"keys": [_jwk(_rsa_key("rsa-1"), "rsa-1"), _jwk(_ec_key("ec-1"), "ec-1")]}


def _assertion(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, alg: str, kid: str | None, **claims: Any
) -> str:
    body: dict[str, Any] = {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN_URL, "exp": NOW + 240, "jti": "j-1"}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def _verify(assertion: str, jwks: dict[str, Any] | None = None) -> AssertionClaims:
    return verify_client_assertion(
        assertion, jwks=_jwks() if jwks is None else jwks, client_id=CLIENT, token_url=TOKEN_URL, now=NOW
    )


def test_rs384_assertion_passes() -> None:
    claims = _verify(_assertion(_rsa_key("rsa-1"), "RS384", "rsa-1"))
    assert claims == AssertionClaims(client_id=CLIENT, jti="j-1", expires_at=NOW + 240)


def test_es384_assertion_passes() -> None:
    assert _verify(_assertion(_ec_key("ec-1"), "ES384", "ec-1")).client_id == CLIENT


def test_assertion_without_kid_tries_each_matching_key() -> None:
    jwks = {"keys": [_jwk(_rsa_key("rsa-2"), "rsa-2"), *_jwks()["keys"]]}
    assert _verify(_assertion(_rsa_key("rsa-1"), "RS384", None), jwks).jti == "j-1"
    assert _verify(_assertion(_ec_key("ec-1"), "ES384", None), jwks).jti == "j-1"


def test_assertion_exp_at_five_minutes_passes() -> None:
    assert _verify(_assertion(_rsa_key("rsa-1"), "RS384", "rsa-1", exp=NOW + 300)).expires_at == NOW + 300


def test_assertion_aud_may_be_a_list() -> None:
    assertion = _assertion(_rsa_key("rsa-1"), "RS384", "rsa-1", aud=["https://other", TOKEN_URL])
    assert _verify(assertion).client_id == CLIENT


def test_registered_private_members_are_ignored() -> None:
    key = _ec_key("ec-1")
    private = json.loads(ECAlgorithm.to_jwk(key))  # includes "d"
    assert "d" in private
    assert _verify(_assertion(key, "ES384", "ec-1"), {"keys": [{**private, "kid": "ec-1"}]}).jti == "j-1"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "https://gateway.example.org/other"}, "aud"),
        ({"exp": NOW}, "expired"),
        ({"exp": NOW - 60}, "expired"),
        ({"exp": NOW + 600}, "5 minutes"),
        ({"exp": None}, "exp"),
        ({"sub": "someone-else"}, "sub"),
        ({"iss": "someone-else"}, "iss"),
        ({"jti": None}, "jti"),
        ({"jti": ""}, "jti"),
        ({"nbf": NOW + 3600}, "not yet valid"),
    ],
)
def test_assertion_claim_failures(claims: dict[str, Any], reason: str) -> None:
    signers: list[tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, str, str]] = [
        (_rsa_key("rsa-1"), "RS384", "rsa-1"),
        (_ec_key("ec-1"), "ES384", "ec-1"),
    ]
    for key, alg, kid in signers:
        with pytest.raises(InvalidClientAssertion, match=reason):
            _verify(_assertion(key, alg, kid, **claims))


def test_assertion_with_unknown_kid() -> None:
    with pytest.raises(InvalidClientAssertion, match="unknown kid"):
        _verify(_assertion(_rsa_key("rsa-1"), "RS384", "rsa-9"))


def test_assertion_signed_by_another_key() -> None:
    with pytest.raises(InvalidClientAssertion, match="bad signature"):
        _verify(_assertion(_rsa_key("intruder"), "RS384", "rsa-1"))
    with pytest.raises(InvalidClientAssertion, match="bad signature"):
        _verify(_assertion(_ec_key("intruder"), "ES384", "ec-1"))
    with pytest.raises(InvalidClientAssertion, match="bad signature"):
        _verify(_assertion(_ec_key("intruder"), "ES384", None))


def test_assertion_kid_of_a_key_of_the_wrong_type() -> None:
    with pytest.raises(InvalidClientAssertion, match="no registered key"):
        _verify(_assertion(_ec_key("ec-1"), "ES384", "rsa-1"))


def test_assertion_unsupported_algorithms() -> None:
    with pytest.raises(InvalidClientAssertion, match="unsupported algorithm"):
        _verify(_assertion(_rsa_key("rsa-1"), "RS256", "rsa-1"))
    unsigned = jwt.encode(
        {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN_URL, "exp": NOW + 60, "jti": "x"}, "", algorithm="none"
    )
    with pytest.raises(InvalidClientAssertion, match="unsupported algorithm"):
        _verify(unsigned)


def test_assertion_with_no_registered_keys() -> None:
    with pytest.raises(InvalidClientAssertion):
        _verify(_assertion(_rsa_key("rsa-1"), "RS384", None), {"keys": []})
    with pytest.raises(InvalidClientAssertion):
        _verify(_assertion(_rsa_key("rsa-1"), "RS384", None), {})


def test_assertion_header_alg_of_the_wrong_type() -> None:
    header = _b64url(json.dumps({"alg": ["RS384"], "kid": "rsa-1"}).encode())
    good = _assertion(_rsa_key("rsa-1"), "RS384", "rsa-1")
    with pytest.raises(InvalidClientAssertion, match="unsupported algorithm"):
        _verify(header + good[good.index(".") :])


@pytest.mark.parametrize("assertion", ["", "not a jwt", "a.b.c", "a.b"])
def test_malformed_assertion(assertion: str) -> None:
    with pytest.raises(InvalidClientAssertion):
        _verify(assertion)
    with pytest.raises(InvalidClientAssertion):
        assertion_client_id(assertion)


def test_assertion_client_id_reads_iss_unverified() -> None:
    assert assertion_client_id(_assertion(_rsa_key("intruder"), "RS384", "x")) == CLIENT
    with pytest.raises(InvalidClientAssertion):
        assertion_client_id(_assertion(_rsa_key("rsa-1"), "RS384", "rsa-1", iss=None))
