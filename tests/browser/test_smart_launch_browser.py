"""A SMART app's standalone launch in a real browser against a running gateway: the app is registered with
`gateway apps add --json` as an operator would; the pharmacist signs in on the gateway's pages, approves
the consent and picks her patient; the app (here: the test, over plain HTTP) exchanges the code with its
PKCE verifier, reads only that pharmacist's patients, refreshes with rotation, and a reused code or a
wrong verifier gets nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from playwright.async_api import Browser, Route, expect

from tests import factories as f
from tests.browser.conftest import Person, screenshot
from tests.browser.test_console_story import add_user
from tests.integration.conftest import GATEWAY_BIN, LiveServer

CALLBACK = "http://127.0.0.1:9/smart-callback"  # never reached: the browser's request is intercepted


def register_app(server: LiveServer) -> str:
    done = subprocess.run(
        [GATEWAY_BIN, "apps", "add", f"pocket-{uuid.uuid4().hex[:6]}", "--redirect-uri", CALLBACK,
         "--scope", "openid fhirUser launch/patient offline_access patient/*.rs user/*.rs", "--json"],
        env=server.env(), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    client_id: str = json.loads(done.stdout)["client_id"]
    return client_id


async def test_a_smart_app_launches_for_a_pharmacist_and_reads_only_her_patients(
    browser: Browser, console_server: LiveServer
) -> None:
    base = console_server.base_url
    admin = console_server.add_client("system/*.cruds")
    async with httpx.AsyncClient(base_url=f"{base}/fhir") as api:
        token = (
            await api.post(
                f"{base}/auth/token",
                data={"grant_type": "client_credentials"},
                auth=(admin["client_id"], admin["client_secret"]),
            )
        ).json()["access_token"]
        api.headers["Authorization"] = f"Bearer {token}"
        practitioner = (await api.post("/Practitioner", json={"resourceType": "Practitioner"})).json()["id"]
        mine = (await api.post("/Patient", json=f.patient(name=[{"family": "Okonkwo"}]))).json()["id"]
        other = (await api.post("/Patient", json=f.patient(name=[{"family": "Lindqvist"}]))).json()["id"]
        team = {
            "resourceType": "CareTeam",
            "status": "active",
            "subject": {"reference": f"Patient/{mine}"},
            "participant": [{"member": {"reference": f"Practitioner/{practitioner}"}}],
        }
        assert (await api.post("/CareTeam", json=team)).status_code == 201
    her = add_user(console_server, "pharmacist", f"Practitioner/{practitioner}")
    client_id = register_app(console_server)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode(
        {"response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK, "state": "s-1",
         "scope": "openid fhirUser launch/patient offline_access patient/*.rs", "aud": f"{base}/fhir",
         "code_challenge": challenge, "code_challenge_method": "S256"}
    )  # fmt: skip

    code = await authorize(browser, base, query, her, inspect=True)

    async with httpx.AsyncClient(base_url=base) as app:
        exchange = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
        no_verifier = await app.post("/auth/token", data={**exchange, "client_id": client_id})
        assert no_verifier.status_code == 400 and no_verifier.json()["error"] == "invalid_grant"
        # the refused exchange spent the code (single use): the app starts again, as a real one would
        code = await authorize(browser, base, query, her)
        exchange["code"] = code
        tokens = await app.post(
            "/auth/token", data={**exchange, "client_id": client_id, "code_verifier": verifier}
        )
        assert tokens.status_code == 200, tokens.text
        body = tokens.json()
        assert body["patient"] == mine and "id_token" in body
        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        seen = (await app.get("/fhir/Patient", headers=bearer)).json()
        assert [e["resource"]["id"] for e in seen.get("entry", [])] == [mine]
        assert (await app.get(f"/fhir/Patient/{other}", headers=bearer)).status_code == 404
        renewed = await app.post(
            "/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
                "client_id": client_id,
            },
        )
        assert renewed.status_code == 200 and renewed.json()["refresh_token"] != body["refresh_token"]
        reused = await app.post(
            "/auth/token", data={**exchange, "client_id": client_id, "code_verifier": verifier}
        )
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        # the reuse revoked everything issued from that code
        assert (await app.get("/fhir/Patient", headers=bearer)).status_code == 401


async def authorize(browser: Browser, base: str, query: str, person: Person, *, inspect: bool = False) -> str:
    """The person signs in on the gateway's pages, allows the app and picks her patient; the code the
    gateway sends back to the app (whose callback the browser never really reaches)."""
    context = await browser.new_context(base_url=base)
    landed: list[str] = []

    async def callback(route: Route) -> None:
        landed.append(route.request.url)
        await route.fulfill(status=200, content_type="text/plain", body="back in the app")

    await context.route("http://127.0.0.1:9/**", callback)
    page = await context.new_page()
    await page.goto(f"/auth/authorize?{query}")
    await page.get_by_label("User name").fill(person.name)
    await page.get_by_label("Password").fill(person.password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Allow")
    choices = page.get_by_role("radio")
    if inspect:
        await expect(choices).to_have_count(1)  # her one patient, not the other
        await expect(page.locator("main")).to_contain_text("Okonkwo")
        assert "Lindqvist" not in await page.content()
        await screenshot(page, "smart-consent-patient-picker")
    await choices.first.check()
    await page.get_by_role("button", name="Allow").click()
    await expect(page.locator("body")).to_have_text("back in the app")
    await context.close()
    (url,) = landed
    answer = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert answer["state"] == "s-1"
    return answer["code"]
