"""SMART standalone launch on both backends, over HTTP with redirects followed by hand: authorize → login →
consent → code → token (PKCE S256) → refresh with rotation; confidential apps; and the refusals."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import orjson
import pytest_asyncio
from sqlalchemy import select

from gateway.service.access import apps as app_service
from gateway.service.access import users as user_service
from gateway.service.access.clients import ISSUER
from gateway.service.access.context import RequestContext
from gateway.service.gateway import Gateway
from gateway.store.tables import audit_event
from gateway.transports.http.app import create_app
from tests import factories as f
from tests.conftest import TEST_PASSWORD_HASH_COST, TEST_SECRET_HASH_COST

PASSWORD = "clozapine-anc-1500"
CALLBACK = "http://127.0.0.1:8765/callback"
BASE = "http://gateway.test"
AUD = f"{BASE}/fhir"


@pytest_asyncio.fixture
async def browser(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(gateway.settings, gateway)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        yield client


async def pharmacist(gateway: Gateway, role: str = "pharmacist") -> tuple[str, str | None]:
    name = f"user-{uuid.uuid4().hex[:8]}"
    practitioner = f"Practitioner/{name}" if role == "pharmacist" else None
    await user_service.add_user(gateway.db, name, role, practitioner, PASSWORD, cost=TEST_PASSWORD_HASH_COST)
    return name, practitioner


async def register(
    gateway: Gateway, scope: str = "openid fhirUser offline_access user/*.rs", *, confidential: bool = False
) -> tuple[str, str | None]:
    new = await app_service.add_app(
        gateway.db, f"app-{uuid.uuid4().hex[:8]}", [CALLBACK], scope,
        confidential=confidential, cost=TEST_SECRET_HASH_COST,
    )  # fmt: skip
    return new.record.client_id, new.client_secret


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(client_id: str, challenge: str, **over: str) -> dict[str, str]:
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK,
        "scope": "openid fhirUser offline_access user/*.rs", "state": "st-42",
        "code_challenge": challenge, "code_challenge_method": "S256", "aud": AUD,
    }  # fmt: skip
    params.update(over)
    return params


def callback_query(answer: httpx.Response) -> dict[str, str]:
    assert answer.status_code in (302, 303, 307), answer.text
    location = answer.headers["location"]
    assert location.startswith(CALLBACK)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def consent_page(client: httpx.AsyncClient, params: dict[str, str], user: str) -> httpx.Response:
    """authorize → (login, back) → the consent page."""
    first = await client.get("/auth/authorize", params=params)
    if first.status_code == 303 and first.headers["location"].startswith("/console/login"):
        login_page = await client.get(first.headers["location"])
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login_page.text)
        nxt = re.search(r'name="next" value="([^"]+)"', login_page.text)
        assert csrf is not None and nxt is not None
        logged = await client.post(
            "/console/login",
            data={"username": user, "password": PASSWORD, "csrf_token": csrf.group(1),
                  "next": nxt.group(1).replace("&amp;", "&")},
        )  # fmt: skip
        assert logged.status_code == 303 and logged.headers["location"].startswith("/auth/authorize?")
        first = await client.get(logged.headers["location"])
    assert first.status_code == 200, first.text
    return first


async def decide(client: httpx.AsyncClient, page: httpx.Response, decision: str) -> httpx.Response:
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    fields = {k: v.replace("&amp;", "&") for k, v in fields.items()}
    return await client.post("/auth/authorize", data={**fields, "decision": decision})


async def get_code(client: httpx.AsyncClient, client_id: str, user: str, challenge: str, **over: str) -> str:
    page = await consent_page(client, authorize_params(client_id, challenge, **over), user)
    query = callback_query(await decide(client, page, "approve"))
    assert query["state"] == "st-42"
    return query["code"]


async def exchange(client: httpx.AsyncClient, **fields: str) -> httpx.Response:
    return await client.post(
        "/auth/token", data={"grant_type": "authorization_code", "redirect_uri": CALLBACK, **fields}
    )


async def patients_of(gateway: Gateway, practitioner: str) -> tuple[str, str]:
    """Two Patients: the first on a CareTeam with the practitioner, the second on none."""
    ctx = RequestContext(base_url=AUD)
    made = []
    for _ in range(2):
        outcome = await gateway.fhir.create(ctx, "Patient", orjson.dumps(f.patient()), None)
        assert outcome.stored is not None
        made.append(outcome.stored.id)
    team = {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": f"Patient/{made[0]}"},
        "participant": [{"member": {"reference": practitioner}}],
    }
    await gateway.fhir.create(ctx, "CareTeam", orjson.dumps(team), None)
    return made[0], made[1]


async def signing_key(gateway: Gateway) -> bytes:
    return (await gateway.auth.signing_key())[1]


async def test_public_app_completes_the_launch_and_refresh_rotates(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    user, practitioner = await pharmacist(gateway)
    assert practitioner is not None
    mine, other = await patients_of(gateway, practitioner)
    client_id, _ = await register(gateway)
    verifier, challenge = pkce()
    page = await consent_page(browser, authorize_params(client_id, challenge), user)
    assert "user/*.rs" in page.text and "offline_access" in page.text
    assert "127.0.0.1:8765" in page.headers["content-security-policy"]
    code = await get_code(browser, client_id, user, challenge)
    answer = await exchange(browser, code=code, code_verifier=verifier, client_id=client_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert set(body["scope"].split()) == {"openid", "fhirUser", "offline_access", "user/*.rs"}
    key = await signing_key(gateway)
    access = jwt.decode(body["access_token"], key, algorithms=["HS256"], audience=ISSUER)
    assert access["client_id"] == client_id and access["sub"] != client_id
    assert access["fhirUser"] == f"{AUD}/{practitioner}"
    id_token = jwt.decode(body["id_token"], key, algorithms=["HS256"], audience=client_id)
    assert id_token["iss"] == ISSUER and id_token["sub"] == access["sub"]
    assert id_token["fhirUser"] == f"{AUD}/{practitioner}" and id_token["exp"] > id_token["iat"]
    # With the pharmacist's token the app reads that pharmacist's patients, and only those.
    fhir = await browser.get("/fhir/Patient", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert fhir.status_code == 200, fhir.text
    assert {e["resource"]["id"] for e in fhir.json().get("entry", [])} == {mine}
    theirs = await browser.get(
        f"/fhir/Patient/{other}", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert theirs.status_code == 404

    first = body["refresh_token"]
    renewed = await browser.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": first, "client_id": client_id}
    )
    assert renewed.status_code == 200, renewed.text
    second = renewed.json()["refresh_token"]
    assert second != first and renewed.json()["access_token"]
    replay = await browser.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": first, "client_id": client_id}
    )
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # the replay revoked the family: the newest token is dead too
    after = await browser.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": second, "client_id": client_id}
    )
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"


async def test_confidential_app_authenticates_at_the_token_endpoint(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    user, _ = await pharmacist(gateway)
    client_id, secret = await register(gateway, confidential=True)
    assert secret is not None
    verifier, challenge = pkce()
    code = await get_code(browser, client_id, user, challenge)
    no_secret = await exchange(browser, code=code, code_verifier=verifier, client_id=client_id)
    assert no_secret.status_code == 401 and no_secret.json()["error"] == "invalid_client"
    code = await get_code(browser, client_id, user, challenge)
    basic = httpx.BasicAuth(client_id, secret)
    answer = await browser.post(
        "/auth/token", auth=basic,
        data={"grant_type": "authorization_code", "redirect_uri": CALLBACK, "code": code,
              "code_verifier": verifier},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    refreshed = await browser.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": answer.json()["refresh_token"],
              "client_id": client_id, "client_secret": secret},
    )  # fmt: skip
    assert refreshed.status_code == 200, refreshed.text


async def test_wrong_redirect_uri_gets_an_error_page_never_a_redirect(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    client_id, _ = await register(gateway)
    _, challenge = pkce()
    for uri in ("http://127.0.0.1:8765/callback/other", "https://evil.example/cb"):
        answer = await browser.get(
            "/auth/authorize", params=authorize_params(client_id, challenge, redirect_uri=uri)
        )
        assert answer.status_code == 400 and "location" not in answer.headers
        assert "redirect URI" in answer.text
    unknown = await browser.get("/auth/authorize", params=authorize_params("nope", challenge))
    assert unknown.status_code == 400 and "location" not in unknown.headers


async def test_plain_challenge_and_wrong_audience_are_refused(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    client_id, _ = await register(gateway)
    verifier, challenge = pkce()
    plain = await browser.get(
        "/auth/authorize", params=authorize_params(client_id, verifier, code_challenge_method="plain")
    )
    assert callback_query(plain)["error"] == "invalid_request"
    aud = await browser.get(
        "/auth/authorize", params=authorize_params(client_id, challenge, aud="https://x/fhir")
    )
    assert callback_query(aud)["error"] == "invalid_request"


async def test_missing_or_wrong_verifier_and_reused_code_are_refused(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    user, _ = await pharmacist(gateway)
    client_id, _ = await register(gateway)
    verifier, challenge = pkce()
    code = await get_code(browser, client_id, user, challenge)
    missing = await exchange(browser, code=code, client_id=client_id)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant"
    code = await get_code(browser, client_id, user, challenge)
    wrong = await exchange(browser, code=code, client_id=client_id, code_verifier=pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    code = await get_code(browser, client_id, user, challenge)
    good = await exchange(browser, code=code, client_id=client_id, code_verifier=verifier)
    assert good.status_code == 200, good.text
    bearer = {"Authorization": f"Bearer {good.json()['access_token']}"}
    assert (await browser.get("/fhir/Patient", headers=bearer)).status_code == 200
    again = await exchange(browser, code=code, client_id=client_id, code_verifier=verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # the replay killed the access token issued from the code (RFC 9700 4.5) ...
    assert (await browser.get("/fhir/Patient", headers=bearer)).status_code == 401
    # the replay revoked the refresh token issued from the code
    refresh = await browser.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": good.json()["refresh_token"],
            "client_id": client_id,
        },
    )
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"


async def test_expired_code_is_refused(gateway: Gateway, browser: httpx.AsyncClient) -> None:
    user, _ = await pharmacist(gateway)
    client_id, _ = await register(gateway)
    verifier, challenge = pkce()
    code = await get_code(browser, client_id, user, challenge)
    previous = gateway.launch.clock
    gateway.launch.clock = lambda: previous() + 61_000_000
    try:
        late = await exchange(browser, code=code, client_id=client_id, code_verifier=verifier)
    finally:
        gateway.launch.clock = previous
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant"


async def test_scopes_beyond_the_registration_or_the_role_are_not_granted(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    user, _ = await pharmacist(gateway)
    client_id, _ = await register(gateway, "openid fhirUser user/Observation.rs")
    verifier, challenge = pkce()
    asked = "openid fhirUser offline_access user/*.cruds patient/*.rs"
    code = await get_code(browser, client_id, user, challenge, scope=asked)
    answer = await exchange(browser, code=code, client_id=client_id, code_verifier=verifier)
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == "user/Observation.rs openid fhirUser"
    assert "refresh_token" not in answer.json()

    auditor, _ = await pharmacist(gateway, "auditor")  # reaches no patient records
    browser.cookies.clear()  # the auditor logs in afresh
    wide_id, _ = await register(gateway, "openid offline_access user/*.cruds")
    code = await get_code(browser, wide_id, auditor, challenge, scope="openid offline_access user/*.cruds")
    answer = await exchange(browser, code=code, client_id=wide_id, code_verifier=verifier)
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == "openid offline_access"


async def test_denial_gives_access_denied_and_consent_needs_csrf(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    user, _ = await pharmacist(gateway)
    client_id, _ = await register(gateway)
    _, challenge = pkce()
    page = await consent_page(browser, authorize_params(client_id, challenge), user)
    query = callback_query(await decide(browser, page, "deny"))
    assert query == {"error": "access_denied", "state": "st-42"}
    # The decision is in the audit trail: who, which app, what it asked for.
    await gateway.audit.flush()
    async with gateway.db.read() as conn:
        found = await conn.execute(select(audit_event.c.content))
        described = [row.content for row in found if f"SMART consent denied: app {client_id}" in row.content]
    assert len(described) == 1
    forged = await browser.post(
        "/auth/authorize", data={**authorize_params(client_id, challenge), "decision": "approve"}
    )
    assert forged.status_code == 403 and "location" not in forged.headers


async def test_login_next_is_followed_only_on_this_site(gateway: Gateway, browser: httpx.AsyncClient) -> None:
    user, _ = await pharmacist(gateway)
    targets = (
        ("https://evil.example/x", "/console"),
        ("//evil.example/x", "/console"),
        ("/\\evil.example", "/console"),
        ("/console/whoami", "/console/whoami"),
    )
    for target, expected in targets:
        page = await browser.get("/console/login", params={"next": target})
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        answer = await browser.post(
            "/console/login",
            data={"username": user, "password": PASSWORD, "csrf_token": csrf.group(1), "next": target},
        )
        assert answer.status_code == 303 and answer.headers["location"] == expected


async def test_launch_patient_offers_only_the_users_patients_and_narrows_the_token(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    user, practitioner = await pharmacist(gateway)
    assert practitioner is not None
    mine, other = await patients_of(gateway, practitioner)
    scope = "openid fhirUser launch/patient patient/*.rs offline_access"
    client_id, _ = await register(gateway, scope)
    verifier, challenge = pkce()
    page = await consent_page(browser, authorize_params(client_id, challenge, scope=scope), user)
    offered = re.findall(r'name="patient" value="([^"]+)"', page.text)
    assert offered == [mine]
    # a patient the user does not reach is refused, though the form was changed to send it
    refused = callback_query(await decide_with(browser, page, "approve", patient=other))
    assert refused["error"] == "invalid_request" and "code" not in refused
    page = await consent_page(browser, authorize_params(client_id, challenge, scope=scope), user)
    query = callback_query(await decide_with(browser, page, "approve", patient=mine))
    answer = await exchange(browser, code=query["code"], code_verifier=verifier, client_id=client_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["patient"] == mine
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    seen = (await browser.get("/fhir/Patient", headers=bearer)).json()
    assert [e["resource"]["id"] for e in seen.get("entry", [])] == [mine]
    renewed = await browser.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": client_id},
    )
    assert renewed.status_code == 200 and renewed.json()["patient"] == mine


async def decide_with(
    client: httpx.AsyncClient, page: httpx.Response, decision: str, **extra: str
) -> httpx.Response:
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    fields = {k: v.replace("&amp;", "&") for k, v in fields.items()}
    return await client.post("/auth/authorize", data={**fields, "decision": decision, **extra})
