"""People log in to the console (both backends): cookie flags, the session id stored only as a hash, CSRF
refusals, lockout with growing delays, one answer for every refusal, disabled users, logout, idle and
absolute timeouts on a simulated clock, whoami, and an AuditEvent for every attempt."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest_asyncio
from sqlalchemy import select

from gateway.auth import passwords
from gateway.auth.throttle import FailureThrottle, ThrottlePolicy
from gateway.service.access import users as user_service
from gateway.service.gateway import Gateway
from gateway.store import users as user_store
from gateway.store.tables import app_user, user_session
from gateway.transports.http.app import create_app
from tests.conftest import TEST_PASSWORD_HASH_COST, ClientFactory

PASSWORD = "clozapine-anc-1500"
MINUTE_US = 60_000_000
DCM = "http://dicom.nema.org/resources/ontology/DCM"


class Clock:
    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, minutes: float) -> None:
        self.now_us += int(minutes * MINUTE_US)


@pytest_asyncio.fixture
async def clock(gateway: Gateway) -> AsyncIterator[Clock]:
    previous = gateway.logins.clock
    fake = Clock(previous())
    gateway.logins.clock = fake
    yield fake
    gateway.logins.clock = previous


@pytest_asyncio.fixture
async def browser(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(gateway.settings, gateway)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as client:
        yield client


async def add_user(gateway: Gateway, role: str = "pharmacist", practitioner: str | None = None) -> str:
    name = f"user-{uuid.uuid4().hex[:8]}"
    if role == "pharmacist" and practitioner is None:
        practitioner = f"Practitioner/{name}"
    await user_service.add_user(gateway.db, name, role, practitioner, PASSWORD, cost=TEST_PASSWORD_HASH_COST)
    return name


def set_cookies(answer: httpx.Response) -> dict[str, SimpleCookie]:
    found: dict[str, SimpleCookie] = {}
    for header in answer.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        for key in cookie:
            found[key] = cookie
    return found


async def form_token(client: httpx.AsyncClient) -> str:
    page = await client.get("/console/login")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


async def login(client: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    token = await form_token(client)
    return await client.post(
        "/console/login", data={"username": name, "password": password, "csrf_token": token}
    )


async def user_row(gateway: Gateway, name: str) -> user_store.UserRecord:
    async with gateway.db.read() as conn:
        found = await user_store.get_user(conn, name)
    assert found is not None
    return found


async def session_count(gateway: Gateway, name: str) -> int:
    user = await user_row(gateway, name)
    async with gateway.db.read() as conn:
        return len((await conn.execute(select(user_session).where(user_session.c.user_id == user.id))).all())


async def test_login_sets_a_session_cookie_stored_only_as_a_hash(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    name = await add_user(gateway, practitioner="Practitioner/ph-login")
    assert (await browser.get("/console/whoami")).status_code == 401
    answer = await login(browser, name)
    assert answer.status_code == 303 and answer.headers["location"] == "/console"
    cookie = set_cookies(answer)["gateway_session"]["gateway_session"]
    assert cookie["httponly"] is True and cookie["samesite"] == "lax" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain http
    session_id = cookie.value
    assert len(session_id) >= 43  # token_urlsafe(32)
    async with gateway.db.read() as conn:
        stored = [r.id_hash for r in await conn.execute(select(user_session))]
    assert hashlib.sha256(session_id.encode()).hexdigest() in stored
    assert session_id not in stored

    who = await browser.get("/console/whoami")
    assert who.status_code == 200
    body = who.json()
    assert (body["name"], body["role"], body["practitioner"]) == (name, "pharmacist", "Practitioner/ph-login")
    assert (await browser.get("/console")).status_code == 200


async def test_cookie_is_secure_over_https(gateway: Gateway) -> None:
    name = await add_user(gateway)
    app = create_app(gateway.settings, gateway)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://gateway.test"
    ) as client:
        answer = await login(client, name)
        assert answer.status_code == 303
        cookie = set_cookies(answer)["gateway_session"]["gateway_session"]
        assert cookie["secure"] is True and cookie["httponly"] is True and cookie["samesite"] == "lax"


async def test_csrf_missing_or_wrong_is_refused_and_changes_nothing(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    name = await add_user(gateway)
    await form_token(browser)  # the pre-session cookie is set
    for data in (
        {"username": name, "password": PASSWORD},
        {"username": name, "password": PASSWORD, "csrf_token": "forged"},
    ):
        answer = await browser.post("/console/login", data=data)
        assert answer.status_code == 403
        assert "gateway_session" not in set_cookies(answer)
    # Without the cookie, even the right token from the page is refused.
    token = await form_token(browser)
    browser.cookies.clear()
    answer = await browser.post(
        "/console/login", data={"username": name, "password": "x", "csrf_token": token}
    )
    assert answer.status_code == 403
    assert (await user_row(gateway, name)).failed_logins == 0
    assert await session_count(gateway, name) == 0

    assert (await login(browser, name)).status_code == 303
    for data in ({}, {"csrf_token": "forged"}):
        assert (await browser.post("/console/logout", data=data)).status_code == 403
    assert (await browser.get("/console/whoami")).status_code == 200  # still logged in
    assert await session_count(gateway, name) == 1


async def test_logout_ends_the_session(gateway: Gateway, browser: httpx.AsyncClient) -> None:
    name = await add_user(gateway)
    await login(browser, name)
    session_id = browser.cookies["gateway_session"]
    token = (await browser.get("/console/whoami")).json()["csrf_token"]
    answer = await browser.post("/console/logout", data={"csrf_token": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
    assert (await browser.get("/console/whoami")).status_code == 401
    assert await session_count(gateway, name) == 0
    # The old cookie, replayed, opens nothing.
    browser.cookies.set("gateway_session", session_id)
    assert (await browser.get("/console/whoami")).status_code == 401


async def test_lockout_after_failures_grows_and_a_success_resets(
    gateway: Gateway, browser: httpx.AsyncClient, clock: Clock
) -> None:
    name = await add_user(gateway)
    limit = gateway.settings.login_max_failures
    for _ in range(limit):
        assert (await login(browser, name, "wrong-password-1")).status_code == 401
    row = await user_row(gateway, name)
    assert row.failed_logins == limit and row.locked_until_us == clock.now_us + MINUTE_US
    # Locked: the right password is refused too, with the same answer.
    refused = await login(browser, name, PASSWORD)
    assert refused.status_code == 401 and "locked or disabled" in refused.text
    clock.advance(1.01)
    assert (await login(browser, name, "wrong-password-2")).status_code == 401  # one more: 2 minutes
    assert (await user_row(gateway, name)).locked_until_us == clock.now_us + 2 * MINUTE_US
    clock.advance(1.5)
    assert (await login(browser, name)).status_code == 401  # still locked
    clock.advance(0.6)
    assert (await login(browser, name, "wrong-password-3")).status_code == 401  # 4 minutes
    assert (await user_row(gateway, name)).locked_until_us == clock.now_us + 4 * MINUTE_US
    clock.advance(4.1)
    assert (await login(browser, name)).status_code == 303
    row = await user_row(gateway, name)
    assert row.failed_logins == 0 and row.locked_until_us is None


async def test_refusals_look_the_same_and_disabled_users_cannot_log_in(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    name = await add_user(gateway)
    disabled = await add_user(gateway, "auditor")
    await user_service.set_disabled(gateway.db, disabled, True)
    wrong = await login(browser, name, "wrong-password-1")
    unknown = await login(browser, f"nobody-{uuid.uuid4().hex[:6]}", PASSWORD)
    off = await login(browser, disabled, PASSWORD)
    assert wrong.status_code == unknown.status_code == off.status_code == 401
    assert wrong.text == unknown.text == off.text
    assert await session_count(gateway, disabled) == 0


async def test_disabling_ends_live_sessions(gateway: Gateway, browser: httpx.AsyncClient) -> None:
    name = await add_user(gateway, "admin")
    await login(browser, name)
    assert (await browser.get("/console/whoami")).status_code == 200
    await user_service.set_disabled(gateway.db, name, True)
    assert (await browser.get("/console/whoami")).status_code == 401


async def test_idle_and_absolute_timeouts(gateway: Gateway, browser: httpx.AsyncClient, clock: Clock) -> None:
    name = await add_user(gateway)
    idle = gateway.settings.session_idle_minutes
    await login(browser, name)
    clock.advance(idle - 1)
    assert (await browser.get("/console/whoami")).status_code == 200  # seen: the idle time starts again
    clock.advance(idle - 1)
    assert (await browser.get("/console/whoami")).status_code == 200
    clock.advance(idle + 1)
    assert (await browser.get("/console/whoami")).status_code == 401
    assert await session_count(gateway, name) == 0

    await login(browser, name)
    limit = gateway.settings.session_max_hours * 60
    elapsed = 0.0
    while elapsed + idle / 2 < limit:  # never idle...
        clock.advance(idle / 2)
        elapsed += idle / 2
        assert (await browser.get("/console/whoami")).status_code == 200
    clock.advance(limit - elapsed + 0.5)  # ...yet ended at the absolute limit
    assert (await browser.get("/console/whoami")).status_code == 401


async def test_success_rehashes_an_outdated_password_hash(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    name = await add_user(gateway)
    older = passwords.hash_password(PASSWORD, TEST_PASSWORD_HASH_COST + 1)
    async with gateway.db.write() as conn:
        await user_store.set_password(conn, name, older, 1)
    assert (await login(browser, name)).status_code == 303
    stored = (await user_row(gateway, name)).password_hash
    assert stored != older and not passwords.needs_rehash(stored, TEST_PASSWORD_HASH_COST)
    assert passwords.verify_password(PASSWORD, stored)


async def test_every_attempt_is_an_audit_event(
    gateway: Gateway, browser: httpx.AsyncClient, client_factory: ClientFactory, clock: Clock
) -> None:
    pharmacist = await add_user(gateway, practitioner=f"Practitioner/ph-{uuid.uuid4().hex[:6]}")
    auditor = await add_user(gateway, "auditor")
    locked = await add_user(gateway, "analyst")
    disabled = await add_user(gateway, "coordinator")
    unknown = f"nobody-{uuid.uuid4().hex[:6]}"
    await user_service.set_disabled(gateway.db, disabled, True)
    async with gateway.db.write() as conn:
        row = await user_store.get_user(conn, locked)
        assert row is not None
        await user_store.lock_until(conn, row.id, clock.now_us + MINUTE_US)

    await login(browser, pharmacist)  # success, as the Practitioner
    token = (await browser.get("/console/whoami")).json()["csrf_token"]
    assert (await browser.post("/console/logout", data={"csrf_token": token})).status_code == 303
    await login(browser, auditor, "wrong-password-1")
    await login(browser, unknown, "wrong-password-2")
    await login(browser, locked, PASSWORD)
    await login(browser, disabled, PASSWORD)

    reader = await client_factory("audit/events.read")
    await gateway.audit.flush()
    answer = await reader.get("/fhir/AuditEvent", params={"type": "110114", "_count": "200"})
    assert answer.status_code == 200
    events: list[dict[str, Any]] = [e["resource"] for e in answer.json().get("entry", [])]

    def who(event: dict[str, Any]) -> str:
        agent = event["agent"][0]["who"]
        return str(agent.get("reference") or agent.get("identifier", {}).get("value"))

    ours = {(who(e), e["subtype"][0]["code"], e["outcome"], e.get("outcomeDesc")) for e in events}
    practitioner = (await user_row(gateway, pharmacist)).practitioner
    assert {
        (practitioner, "110122", "0", "login"),
        (practitioner, "110123", "0", "logout"),
        (auditor, "110122", "4", "wrong password"),
        (unknown, "110122", "4", "unknown user"),
        (locked, "110122", "4", "account locked"),
        (disabled, "110122", "4", "account disabled"),
    } <= ours
    login_event = next(e for e in events if who(e) == practitioner and e["subtype"][0]["code"] == "110122")
    assert login_event["agent"][0]["altId"] == pharmacist
    assert login_event["subtype"][0]["system"] == DCM and login_event["type"]["code"] == "110114"
    for event in events:
        assert PASSWORD not in str(event) and "wrong-password" not in str(event)
    # The Practitioner finds its logins by agent.
    by_agent = await reader.get("/fhir/AuditEvent", params={"agent": practitioner or ""})
    assert by_agent.status_code == 200 and by_agent.json().get("total", len(by_agent.json()["entry"])) >= 2
    async with gateway.db.read() as conn:
        assert (
            await conn.execute(select(app_user.c.failed_logins).where(app_user.c.name == auditor))
        ).scalar() == 1


async def test_an_address_spraying_many_accounts_is_slowed_before_any_password_is_checked(
    gateway: Gateway, browser: httpx.AsyncClient
) -> None:
    """Per-account lockout does not stop one guess at each of many accounts: the address is throttled."""
    gateway.logins.address_failures = FailureThrottle(ThrottlePolicy(free_failures=3, base_delay_s=60.0))
    names = [await add_user(gateway) for _ in range(4)]
    for name in names[:3]:
        assert (await login(browser, name, "spring-2026-guess")).status_code == 401
    assert (await login(browser, f"nobody-{uuid.uuid4().hex[:6]}", "spring-2026-guess")).status_code == 401
    # now even the right password of an untouched account waits, and no account was locked by it
    refused = await login(browser, names[3], PASSWORD)
    assert refused.status_code == 429 and 0 < int(refused.headers["retry-after"]) <= 60
    for name in names:
        assert (await user_row(gateway, name)).locked_until_us is None
    assert await session_count(gateway, names[3]) == 0
