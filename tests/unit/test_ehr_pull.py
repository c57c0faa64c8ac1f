"""The pure parts of the EHR pull: our client assertion, the upstreams file, what a pulled resource becomes,
and the poller's page decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.assertions import MAX_LIFETIME_SECONDS, verify_client_assertion
from gateway.auth.assertions import sign_client_assertion as sign
from gateway.ehr.pulled import local_id, localize, rewrite_reference
from gateway.ehr.upstreams import UpstreamConfigError, parse_upstreams
from gateway.service.ehrpull.client import BackOff, UpstreamClient, UpstreamError, retry_after_seconds
from gateway.service.ehrpull.poller import first_page, matches, newest, next_link

TOKEN_URL = "https://ehr.example/auth/token"
BASE = "https://ehr.example/fhir"
NOW = 1_800_000_000


def pem_of(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.mark.parametrize(
    ("alg", "key_name", "to_jwk"),
    [
        ("RS384", "rsa_key", jwt.algorithms.RSAAlgorithm.to_jwk),
        ("ES384", "ec_key", jwt.algorithms.ECAlgorithm.to_jwk),
    ],
)
def test_our_assertion_passes_the_servers_own_check(
    alg: str, key_name: str, to_jwk: Any, request: pytest.FixtureRequest
) -> None:
    key = request.getfixturevalue(key_name)
    assertion = sign(
        client_id="gw", token_url=TOKEN_URL, private_key_pem=pem_of(key), alg=alg, kid="k1", now=NOW, jti="j1"
    )
    jwks = {"keys": [{**json.loads(to_jwk(key.public_key())), "kid": "k1"}]}
    claims = verify_client_assertion(assertion, jwks=jwks, client_id="gw", token_url=TOKEN_URL, now=NOW)
    assert (claims.client_id, claims.jti) == ("gw", "j1")
    header = jwt.get_unverified_header(assertion)
    assert (header["alg"], header["kid"], header["typ"]) == (alg, "k1", "JWT")
    body = jwt.decode(assertion, options={"verify_signature": False})
    assert body["iss"] == body["sub"] == "gw"
    assert body["aud"] == TOKEN_URL
    assert NOW < body["exp"] <= NOW + MAX_LIFETIME_SECONDS  # SMART: at most five minutes


def test_each_assertion_has_its_own_jti(rsa_key: rsa.RSAPrivateKey) -> None:
    def one(jti: str) -> dict[str, Any]:
        token = sign(
            client_id="gw",
            token_url=TOKEN_URL,
            private_key_pem=pem_of(rsa_key),
            alg="RS384",
            kid=None,
            now=NOW,
            jti=jti,
        )
        return dict(jwt.decode(token, options={"verify_signature": False}))

    assert one("a")["jti"] != one("b")["jti"]


def upstream(**overrides: Any) -> dict[str, Any]:
    return {"name": "riverside", "base_url": BASE, "resources": ["Patient", "Observation"], **overrides}


def backend_auth(key_file: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "type": "backend-services",
        "client_id": "gw",
        "token_url": TOKEN_URL,
        "private_key_file": str(key_file),
        "alg": "RS384",
        "kid": "k1",
        "scope": "system/*.rs",
        **overrides,
    }


def test_a_complete_upstreams_file_loads(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key_file = tmp_path / "k.pem"
    key_file.write_bytes(pem_of(rsa_key))
    (loaded,) = parse_upstreams({"upstreams": [upstream(auth=backend_auth(key_file), patients=["p1"])]})
    assert loaded.fhir_base == BASE
    assert loaded.auth.private_key_pem().startswith(b"-----BEGIN")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (upstream(name="Bad.Name"), "name"),  # dots would make local ids ambiguous
        (upstream(resources=[]), "resources"),
        (upstream(resources=["Patient", "Patient"]), "listed twice"),
        (upstream(resources=["patient"]), "not resource types"),
        (upstream(base_url="ehr.example"), "base_url"),
        (upstream(page_size=0), "page_size"),
        (upstream(interval_seconds=0), "interval_seconds"),
        (upstream(auth={"type": "backend-services", "client_id": "gw"}), "token_url"),
        (upstream(auth={"type": "password"}), "auth.type"),
        (upstream(color="blue"), "color"),  # a typo is an error, not ignored
    ],
)
def test_a_wrong_upstream_entry_is_refused_with_its_place(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(UpstreamConfigError, match=r"upstreams\[0\]") as error:
        parse_upstreams({"upstreams": [entry]}, "u.yaml")
    assert message in str(error.value)


def test_a_key_that_does_not_fit_the_algorithm_stops_the_start(tmp_path: Path, ec_key: Any) -> None:
    key_file = tmp_path / "k.pem"
    key_file.write_bytes(pem_of(ec_key))
    with pytest.raises(UpstreamConfigError, match="RS384 needs an RSA key"):
        parse_upstreams({"upstreams": [upstream(auth=backend_auth(key_file))]})
    with pytest.raises(UpstreamConfigError, match="cannot read private_key_file"):
        parse_upstreams({"upstreams": [upstream(auth=backend_auth(tmp_path / "missing.pem"))]})


def test_upstream_names_are_unique() -> None:
    with pytest.raises(UpstreamConfigError, match="unique"):
        parse_upstreams({"upstreams": [upstream(), upstream()]})


def test_local_ids_are_stable_distinct_and_valid() -> None:
    first = local_id("riverside", "Patient", "123")
    assert first == local_id("riverside", "Patient", "123")
    assert first != local_id("lakeside", "Patient", "123")
    assert first != local_id("riverside", "Patient", "1234")
    assert len(local_id("a" * 24, "Patient", "x" * 64)) <= 64
    assert first.startswith("riverside-")


PULLED = frozenset({"Patient", "Observation"})


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/123", f"Patient/{local_id('riverside', 'Patient', '123')}"),  # a pulled type: local id
        (f"{BASE}/Patient/123", f"Patient/{local_id('riverside', 'Patient', '123')}"),  # absolute on upstream
        (
            "Patient/123/_history/4",
            f"Patient/{local_id('riverside', 'Patient', '123')}",
        ),  # versions differ here
        ("Practitioner/9", f"{BASE}/Practitioner/9"),  # not pulled: points back to the upstream
        ("https://other.example/fhir/Patient/1", "https://other.example/fhir/Patient/1"),  # a third server's
        ("#contained-1", "#contained-1"),
        ("urn:uuid:5b1c6b6e-0000-4000-8000-000000000000", "urn:uuid:5b1c6b6e-0000-4000-8000-000000000000"),
    ],
)
def test_references_are_rewritten_consistently(reference: str, expected: str) -> None:
    assert rewrite_reference(reference, upstream="riverside", base=BASE, pulled=PULLED) == expected


def test_a_pulled_resource_gets_local_id_meta_and_nested_references() -> None:
    remote = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": "7", "lastUpdated": "2027-01-01T00:00:00Z", "profile": ["p"]},
        "subject": {"reference": "Patient/123"},
        "performer": [{"reference": "Practitioner/9"}],
        "hasMember": [{"reference": "Observation/o2", "display": "x"}],
    }
    mine = localize(remote, upstream="riverside", base=BASE, pulled=PULLED)
    assert mine["id"] == local_id("riverside", "Observation", "o1")
    assert mine["meta"] == {"profile": ["p"], "source": f"{BASE}/Observation/o1"}
    assert mine["subject"] == {"reference": f"Patient/{local_id('riverside', 'Patient', '123')}"}
    assert mine["performer"] == [{"reference": f"{BASE}/Practitioner/9"}]
    assert mine["hasMember"][0] == {
        "reference": f"Observation/{local_id('riverside', 'Observation', 'o2')}",
        "display": "x",
    }
    assert remote["subject"] == {"reference": "Patient/123"}  # the input is left as it was


def test_the_checkpoint_is_the_latest_instant_as_the_upstream_wrote_it() -> None:
    assert (
        newest(None, ["2027-01-01T00:00:00Z", "2027-01-01T00:00:01.5+00:00", ""])
        == "2027-01-01T00:00:01.5+00:00"
    )
    assert newest("2027-02-01T00:00:00Z", ["2027-01-01T00:00:00Z"]) == "2027-02-01T00:00:00Z"
    assert newest("2027-01-01T01:00:00+02:00", ["2027-01-01T00:00:00Z"]) == "2027-01-01T00:00:00Z"


def test_first_page_asks_since_the_checkpoint_for_the_configured_patients() -> None:
    (config,) = parse_upstreams({"upstreams": [upstream(patients=["p1", "p2"], page_size=50)]})
    assert first_page(config, "Observation", "2027-01-01T00:00:00Z") == [
        ("_lastUpdated", "gt2027-01-01T00:00:00Z"),
        ("_sort", "_lastUpdated"),
        ("_count", "50"),
        ("patient", "p1,p2"),
    ]
    assert ("_id", "p1,p2") in first_page(config, "Patient", None)
    assert not [p for p in first_page(config, "Patient", None) if p[0] == "_lastUpdated"]  # first load: all


def test_only_the_searchs_own_matches_are_stored() -> None:
    bundle = {
        "link": [{"relation": "self", "url": "a"}, {"relation": "next", "url": f"{BASE}/Observation?page=2"}],
        "entry": [
            {"resource": {"resourceType": "Observation", "id": "1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
            {"resource": {"resourceType": "Observation", "id": "2"}},
        ],
    }
    assert [r["id"] for r in matches(bundle, "Observation")] == ["1", "2"]
    assert next_link(bundle) == f"{BASE}/Observation?page=2"
    assert next_link({"link": []}) is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), (None, None), ("soon", None), ("Thu, 01 Jan 2027 00:00:30 GMT", 30.0)],
)
def test_retry_after_in_seconds_or_as_a_date(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, now=1_798_761_600.0) == seconds  # 2027-01-01T00:00:00Z


def client_with(
    tmp_path: Path, key: rsa.RSAPrivateKey, answers: list[httpx.Response]
) -> tuple[UpstreamClient, list[httpx.Request]]:
    key_file = tmp_path / "k.pem"
    key_file.write_bytes(pem_of(key))
    (config,) = parse_upstreams(
        {"upstreams": [upstream(auth=backend_auth(key_file), max_requests_per_second=1000)]}
    )
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/auth/token":
            return httpx.Response(200, json={"access_token": f"t{len(seen)}", "expires_in": 300})
        return answers.pop(0)

    return UpstreamClient(config, httpx.AsyncClient(transport=httpx.MockTransport(handle))), seen


async def test_the_token_is_fetched_once_and_renewed_after_a_401(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    ok = httpx.Response(200, json={"resourceType": "Bundle"})
    client, seen = client_with(tmp_path, rsa_key, [ok, ok, httpx.Response(401), ok])
    for _ in range(3):
        await client.get(f"{BASE}/Patient")
    tokens = [r for r in seen if r.url.path == "/auth/token"]
    assert len(tokens) == 2  # once, then again after the 401
    form = dict(httpx.QueryParams(tokens[0].content.decode()))
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert [r.headers["authorization"] for r in seen if r.url.path != "/auth/token"] == [
        "Bearer t1", "Bearer t1", "Bearer t1", "Bearer t5"
    ]  # fmt: skip


async def test_a_long_retry_after_ends_the_poll_with_its_delay(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    client, _ = client_with(tmp_path, rsa_key, [httpx.Response(429, headers={"Retry-After": "600"})])
    with pytest.raises(BackOff) as error:
        await client.get(f"{BASE}/Patient")
    assert error.value.retry_after_s == 600


async def test_a_short_retry_after_is_waited_out(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    answers = [httpx.Response(503, headers={"Retry-After": "0"}), httpx.Response(200, json={"total": 0})]
    client, _ = client_with(tmp_path, rsa_key, answers)
    assert await client.get(f"{BASE}/Patient") == {"total": 0}


async def test_links_off_the_upstream_are_not_followed_with_our_token(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    client, seen = client_with(tmp_path, rsa_key, [])
    with pytest.raises(UpstreamError, match="outside"):
        await client.get("https://ehr.example/fhirx/Patient?page=2")
    assert seen == []
