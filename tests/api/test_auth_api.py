"""Tokens, scopes and what a client may do with them."""

from __future__ import annotations

import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.service.gateway import Gateway
from tests.conftest import ClientFactory
from tests.factories import lab_observation, patient


async def test_metadata_and_healthz_are_open(client_factory: ClientFactory) -> None:
    api = await client_factory("system/*.cruds")
    del api.headers["Authorization"]
    meta = await api.get("/fhir/metadata")
    assert meta.status_code == 200
    assert meta.json()["fhirVersion"] == "4.0.1"
    assert (await api.get("/healthz")).json()["status"] == "ok"


async def test_no_or_bad_token_is_401_with_operation_outcome(client_factory: ClientFactory) -> None:
    api = await client_factory("system/*.cruds")
    token = api.headers.pop("Authorization")
    answer = await api.get("/fhir/Patient")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["resourceType"] == "OperationOutcome"
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (await api.get("/fhir/Patient", headers={"Authorization": forged})).status_code == 401


async def test_read_only_observation_client_cannot_write(client_factory: ClientFactory) -> None:
    admin = await client_factory("system/*.cruds")
    reader = await client_factory("system/Observation.rs")
    pat = (await admin.post("/fhir/Patient", json=patient())).json()
    obs = (await admin.post("/fhir/Observation", json=lab_observation(pat["id"]))).json()
    assert (await reader.get(f"/fhir/Observation/{obs['id']}")).status_code == 200
    assert (await reader.get("/fhir/Observation", params={"patient": pat["id"]})).status_code == 200
    for answer in (
        await reader.post("/fhir/Observation", json=lab_observation(pat["id"])),
        await reader.put(f"/fhir/Observation/{obs['id']}", json=obs),
        await reader.delete(f"/fhir/Observation/{obs['id']}"),
        await reader.get(f"/fhir/Patient/{pat['id']}"),
    ):
        assert answer.status_code == 403
        assert answer.json()["issue"][0]["code"] == "forbidden"
    assert (await admin.get(f"/fhir/Observation/{obs['id']}")).json()["meta"]["versionId"] == "1"


async def test_transaction_with_a_forbidden_entry_is_refused_whole(client_factory: ClientFactory) -> None:
    writer = await client_factory("system/Observation.cruds")
    admin = await client_factory("system/*.cruds")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": lab_observation("p1"), "request": {"method": "POST", "url": "Observation"}},
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    answer = await writer.post("/fhir", json=bundle)
    assert answer.status_code == 403
    assert (await admin.get("/fhir/Observation", params={"_summary": "count"})).json()["total"] == 0


async def test_included_resources_the_token_cannot_read_are_left_out(client_factory: ClientFactory) -> None:
    admin = await client_factory("system/*.cruds")
    reader = await client_factory("system/Observation.rs")
    pat = (await admin.post("/fhir/Patient", json=patient())).json()
    await admin.post("/fhir/Observation", json=lab_observation(pat["id"]))
    bundle = (await reader.get("/fhir/Observation", params={"_include": "Observation:patient"})).json()
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Observation"]


async def test_token_endpoint_client_secret_post_and_scope_narrowing(
    gateway: Gateway, client_factory: ClientFactory
) -> None:
    api = await client_factory("system/*.cruds")
    client = await gateway.auth.add_client(f"narrow-{uuid.uuid4().hex[:6]}", "system/*.cruds")
    answer = await api.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "scope": "system/Observation.rs",
        },
    )
    assert answer.status_code == 200
    assert answer.json()["scope"] == "system/Observation.rs"
    assert answer.json()["token_type"] == "bearer"
    token = answer.json()["access_token"]
    narrowed = await api.post("/fhir/Patient", json=patient(), headers={"Authorization": f"Bearer {token}"})
    assert narrowed.status_code == 403


async def test_token_endpoint_errors_follow_oauth(gateway: Gateway, client_factory: ClientFactory) -> None:
    api = await client_factory("system/*.cruds")
    client = await gateway.auth.add_client(f"errs-{uuid.uuid4().hex[:6]}", "system/Observation.rs")
    wrong = await api.post(
        "/auth/token", data={"grant_type": "client_credentials"}, auth=(client.client_id, "nope")
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    grant = await api.post(
        "/auth/token", data={"grant_type": "password"}, auth=(client.client_id, client.client_secret or "")
    )
    assert grant.json()["error"] == "unsupported_grant_type"
    scope = await api.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": "system/Patient.cruds"},
        auth=(client.client_id, client.client_secret or ""),
    )
    assert scope.status_code == 400
    assert scope.json()["error"] == "invalid_scope"


async def test_private_key_jwt_client_gets_a_token_once_per_assertion(
    gateway: Gateway, client_factory: ClientFactory
) -> None:
    api = await client_factory("system/*.cruds")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    public.update({"kid": "k1", "alg": "RS384", "use": "sig"})
    client = await gateway.auth.add_client(
        f"jwt-{uuid.uuid4().hex[:6]}", "system/*.rs", jwks={"keys": [public]}
    )
    assert client.client_secret is None
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": client.client_id,
            "sub": client.client_id,
            "aud": "http://gateway.test/auth/token",
            "exp": now + 240,
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithm="RS384",
        headers={"kid": "k1"},
    )
    form = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    first = await api.post("/auth/token", data=form)
    assert first.status_code == 200, first.text
    assert first.json()["scope"] == "system/Patient.rs"
    replay = await api.post("/auth/token", data=form)
    assert replay.status_code == 401
