"""`gateway apps add|list|disable` on both backends (public and confidential apps, the secret shown once and
stored as a scrypt hash, exact redirect URIs checked, refused scopes, duplicate names), and the SMART
discovery document at /fhir/.well-known/smart-configuration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest
import pytest_asyncio
from click.testing import CliRunner, Result

from gateway.auth.secrets import verify_secret
from gateway.cli import main
from gateway.service.gateway import Gateway
from gateway.store.database import Database
from gateway.store.smart_apps import AppRecord, find_app
from gateway.transports.http.app import create_app
from tests.conftest import TEST_SECRET_HASH_COST

ENV = {"GATEWAY_SECRET_HASH_COST": str(TEST_SECRET_HASH_COST)}
WEB = "https://app.example.org/smart/callback"


@pytest_asyncio.fixture
async def url(database_url_factory: Callable[[str], Awaitable[str]], backend: str) -> str:
    return await database_url_factory(backend)


async def gateway_cmd(url: str, *args: str) -> Result:
    """Run the command in a thread (it runs its own event loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, [*args, "--database-url", url], env=ENV)


async def stored(url: str, name: str) -> AppRecord | None:
    db = Database(url)
    try:
        async with db.read() as conn:
            return await find_app(conn, name)
    finally:
        await db.dispose()


async def listed(url: str) -> list[dict[str, object]]:
    result = await gateway_cmd(url, "apps", "list", "--json")
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output))


async def test_confidential_and_public_apps_are_added_listed_and_disabled(url: str) -> None:
    confidential = await gateway_cmd(
        url, "apps", "add", "pharmacy-web", "--redirect-uri", WEB,
        "--redirect-uri", "https://app.example.org/other?x=1", "--confidential",
        "--scope", "openid fhirUser", "--scope", "launch/patient patient/*.read user/Observation.rs",
        "--json",
    )  # fmt: skip
    assert confidential.exit_code == 0, confidential.output
    answer = json.loads(confidential.output)
    assert answer["type"] == "confidential" and answer["name"] == "pharmacy-web"
    assert answer["redirect_uris"] == [WEB, "https://app.example.org/other?x=1"]
    # v1 'read' is written in its v2 form
    assert answer["scope"] == "openid fhirUser launch/patient patient/*.rs user/Observation.rs"
    client_id, secret = answer["client_id"], answer["client_secret"]
    assert not client_id.startswith("-") and len(secret) >= 40

    public = await gateway_cmd(url, "apps", "add", "pocket", "--redirect-uri", "http://127.0.0.1:8765/cb")
    assert public.exit_code == 0, public.output
    assert "client_id:" in public.output and "public app pocket" in public.output
    assert "client_secret" not in public.output and "secret" not in public.output
    public_json = await gateway_cmd(
        url, "apps", "add", "pocket2", "--redirect-uri", "http://localhost/cb", "--json"
    )
    assert "client_secret" not in json.loads(public_json.output)

    record = await stored(url, "pharmacy-web")
    assert record is not None and record.client_id == client_id and record.confidential
    assert record.secret_hash is not None and secret not in record.secret_hash
    assert record.secret_hash.startswith("scrypt$") and verify_secret(secret, record.secret_hash)
    pocket = await stored(url, "pocket")
    assert pocket is not None and not pocket.confidential and pocket.secret_hash is None
    # The default scopes: the standalone patient launch with OpenID Connect, read-only
    assert pocket.scope == "openid fhirUser launch/patient offline_access patient/*.rs user/*.rs"

    rows = await listed(url)
    assert [(r["name"], r["type"], r["disabled"]) for r in rows] == [
        ("pharmacy-web", "confidential", False),
        ("pocket", "public", False),
        ("pocket2", "public", False),
    ]
    text = await gateway_cmd(url, "apps", "list")
    assert f"{client_id}  pharmacy-web  [confidential, enabled]" in text.output
    for result in (text, await gateway_cmd(url, "apps", "list", "--json")):
        assert secret not in result.output and "scrypt" not in result.output

    disabled = await gateway_cmd(url, "apps", "disable", "pocket")
    assert disabled.exit_code == 0 and "disabled pocket" in disabled.output
    again = await gateway_cmd(url, "apps", "disable", "pocket")
    assert again.exit_code == 0
    assert [r["disabled"] for r in await listed(url)] == [False, True, False]
    unknown = await gateway_cmd(url, "apps", "disable", "nobody")
    assert unknown.exit_code == 1 and "no app named 'nobody'" in unknown.output


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("http://app.example.org/cb", "plain http only for localhost, 127.0.0.1"),
        ("https://app.example.org/cb#top", "fragment"),
        ("https://app.example.org/cb#", "fragment"),
        ("/relative/cb", "absolute https:// URL"),
        ("app.example.org/cb", "absolute https:// URL"),
        ("ftp://app.example.org/cb", "absolute https:// URL"),
        ("https:///cb", "absolute https:// URL"),
        ("https://user:pw@app.example.org/cb", "user name or password"),
        ("https://app.example.org/a b", "spaces"),
        ("https://app.example.org:99999/cb", "not a valid URL"),
    ],
)
async def test_unusable_redirect_uris_are_refused(url: str, uri: str, says: str) -> None:
    result = await gateway_cmd(url, "apps", "add", "app", "--redirect-uri", WEB, "--redirect-uri", uri)
    assert result.exit_code == 1
    assert says in result.output and len(result.output.strip().splitlines()) == 1
    assert await listed(url) == []


@pytest.mark.parametrize(
    ("scope", "says"),
    [
        ("system/*.rs", "system/ scopes belong to backend clients"),
        ("openid system/Observation.cruds", "system/ scopes belong to backend clients"),
        ("hl7v2/messages.read", "not supported for apps"),
        ("launch", "not supported for apps"),
        ("patient/*.sr", "malformed scope"),
        ("patient/Observation.rs?category=laboratory", "granular scopes"),
        ("nonsense", "malformed scope"),
    ],
)
async def test_scopes_an_app_may_not_have_are_refused(url: str, scope: str, says: str) -> None:
    result = await gateway_cmd(url, "apps", "add", "app", "--redirect-uri", WEB, "--scope", scope)
    assert result.exit_code == 1
    assert says in result.output and len(result.output.strip().splitlines()) == 1
    assert await listed(url) == []


async def test_duplicate_names_bad_names_and_missing_options_are_refused(url: str) -> None:
    first = await gateway_cmd(url, "apps", "add", "web", "--redirect-uri", WEB, "--confidential")
    assert first.exit_code == 0
    duplicate = await gateway_cmd(url, "apps", "add", "web", "--redirect-uri", WEB, "--confidential")
    assert duplicate.exit_code == 1 and "an app named 'web' already exists" in duplicate.output
    assert "client_secret" not in duplicate.output
    spaced = await gateway_cmd(url, "apps", "add", "my app", "--redirect-uri", WEB)
    assert spaced.exit_code == 1 and "invalid app name" in spaced.output
    no_uri = await gateway_cmd(url, "apps", "add", "other")
    assert no_uri.exit_code == 2 and "--redirect-uri" in no_uri.output
    assert [r["name"] for r in await listed(url)] == ["web"]


# -- discovery ---------------------------------------------------------------------------------


def http_client(gateway: Gateway) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(gateway.settings, gateway))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


async def test_smart_configuration_is_open_and_names_the_endpoints(gateway: Gateway) -> None:
    async with http_client(gateway) as http:
        response = await http.get("/fhir/.well-known/smart-configuration")  # no token
        at_root = await http.get("/.well-known/smart-configuration")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert at_root.json() == doc
    assert doc["authorization_endpoint"] == "http://gateway.test/auth/authorize"
    assert doc["token_endpoint"] == "http://gateway.test/auth/token"
    assert doc["code_challenge_methods_supported"] == ["S256"]  # never plain
    assert doc["response_types_supported"] == ["code"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "client_credentials", "refresh_token"}
    assert {"client_secret_basic", "client_secret_post", "private_key_jwt"} == set(
        doc["token_endpoint_auth_methods_supported"]
    )
    assert {"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.rs", "user/*.rs"} <= set(
        doc["scopes_supported"]
    )
    assert {
        "launch-standalone", "client-public", "client-confidential-symmetric", "context-standalone-patient",
        "permission-v2", "permission-offline", "permission-patient", "permission-user",
    } <= set(doc["capabilities"])  # fmt: skip
    # The spec requires issuer and jwks_uri with sso-openid-connect; none of the three until ID tokens exist
    assert "sso-openid-connect" not in doc["capabilities"]
    assert "issuer" not in doc and "jwks_uri" not in doc


async def test_smart_configuration_endpoints_follow_the_configured_base_url(gateway: Gateway) -> None:
    settings = gateway.settings.model_copy(update={"base_url": "https://gw.example.org/pharmacy/fhir/"})
    app = create_app(settings, gateway)
    saved = gateway.settings
    gateway.settings = settings
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://10.0.0.5:8080") as http:
            doc = (await http.get("/fhir/.well-known/smart-configuration")).json()
    finally:
        gateway.settings = saved
    assert doc["authorization_endpoint"] == "https://gw.example.org/pharmacy/auth/authorize"
    assert doc["token_endpoint"] == "https://gw.example.org/pharmacy/auth/token"
