"""A logged-in console browser (cookies kept) for a new user of a given role, in-process."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest_asyncio

from gateway.service.access import users as user_service
from gateway.service.gateway import Gateway
from gateway.transports.http.app import create_app
from tests.conftest import TEST_PASSWORD_HASH_COST

PASSWORD = "specialty-console-2026"
Login = Callable[[str, str | None], Awaitable[httpx.AsyncClient]]


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


@pytest_asyncio.fixture
async def login(gateway: Gateway) -> AsyncIterator[Login]:
    """Makes a browser logged in as a new user with `role`, acting as `practitioner` (or nobody)."""
    app = create_app(gateway.settings, gateway)
    opened: list[httpx.AsyncClient] = []

    async def make(role: str, practitioner: str | None) -> httpx.AsyncClient:
        name = f"{role[:5]}-{uuid.uuid4().hex[:8]}"
        await user_service.add_user(
            gateway.db, name, role, practitioner, PASSWORD, cost=TEST_PASSWORD_HASH_COST
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
        opened.append(client)
        form = await client.get("/console/login")
        answer = await client.post(
            "/console/login",
            data={"username": name, "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        )
        assert answer.status_code == 303, answer.text
        return client

    yield make
    for client in opened:
        await client.aclose()
