"""The token endpoint cannot be abused: secret hashing stays off the event loop, unknown client ids cost
what known ones cost, every failure reads the same, and repeated failures are slowed down (429)."""

from __future__ import annotations

import base64
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.auth import secrets as secrets_module
from gateway.service.gateway import Gateway
from gateway.transports.http.app import create_app
from tests.conftest import settings_for


def http_client(gateway: Gateway, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(gateway.settings, gateway), client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


class HashCalls:
    """Records each scrypt computation: its cost parameters and whether it ran on the event loop's thread."""

    def __init__(self, real: Callable[..., bytes]) -> None:
        self.real = real
        self.calls: list[tuple[int, int, int]] = []
        self.on_main_thread: list[bool] = []
        self.niceness: list[int] = []

    def __call__(self, secret: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
        self.calls.append((n, r, p))
        self.on_main_thread.append(threading.current_thread() is threading.main_thread())
        self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return self.real(secret, salt, n, r, p, length)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> HashCalls:
    recorder = HashCalls(secrets_module._scrypt)
    monkeypatch.setattr(secrets_module, "_scrypt", recorder)
    return recorder


@pytest_asyncio.fixture
async def fresh(gateway: Gateway) -> AsyncIterator[Gateway]:
    """A gateway of its own on the backend's database, so no other test's failures count against it."""
    started = await Gateway.start(settings_for(gateway.settings.database_url))
    yield started
    await started.close()


async def ask(http: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    return await http.post("/auth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))


async def test_an_unknown_client_id_costs_the_same_hash_as_a_wrong_secret(
    fresh: Gateway, hashes: HashCalls
) -> None:
    client = await fresh.auth.add_client(f"known-{uuid.uuid4().hex[:8]}", "system/*.rs")
    async with http_client(fresh) as http:
        hashes.calls.clear()
        assert (await ask(http, client.client_id, "wrong")).status_code == 401
        known = list(hashes.calls)
        hashes.calls.clear()
        assert (await ask(http, f"unknown-{uuid.uuid4().hex}", "wrong")).status_code == 401
        unknown = list(hashes.calls)
    assert len(known) == 1
    assert unknown == known  # one scrypt with the same cost: the two cannot be told apart by time


async def test_secret_hashing_runs_off_the_event_loop(fresh: Gateway, hashes: HashCalls) -> None:
    client = await fresh.auth.add_client(f"pool-{uuid.uuid4().hex[:8]}", "system/*.rs")
    async with http_client(fresh) as http:
        hashes.on_main_thread.clear()
        assert (await ask(http, client.client_id, client.client_secret or "")).status_code == 200
        assert (await ask(http, client.client_id, "wrong")).status_code == 401
    assert hashes.on_main_thread == [False, False]
    # ...and at a lower priority than the event loop's thread, which goes first when cores are scarce.
    assert min(hashes.niceness) > os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _basic(text: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode()}


async def test_every_authentication_failure_answers_the_same(fresh: Gateway) -> None:
    client = await fresh.auth.add_client(f"same-{uuid.uuid4().hex[:8]}", "system/*.rs")
    form = {"grant_type": "client_credentials"}
    async with http_client(fresh) as http:
        answers = [
            await ask(http, client.client_id, "wrong"),
            await ask(http, f"unknown-{uuid.uuid4().hex}", "wrong"),
            await http.post("/auth/token", data=form),  # no credentials at all
            await http.post("/auth/token", data=form, headers={"Authorization": "Basic !!!"}),
            await http.post("/auth/token", data=form, headers=_basic("no-colon")),
            await http.post(
                "/auth/token",
                data={
                    **form,
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": "not.a.jwt",
                },
            ),
        ]
    seen: set[tuple[int, str]] = {(a.status_code, a.text) for a in answers}
    assert len(seen) == 1, seen
    status, body = seen.pop()
    assert status == 401 and '"error":"invalid_client"' in body.replace(" ", "")


async def _settings_gateway(gateway: Gateway, **overrides: Any) -> Gateway:
    return await Gateway.start(settings_for(gateway.settings.database_url, **overrides))


async def test_repeated_failures_for_one_client_id_get_429_with_retry_after(gateway: Gateway) -> None:
    limited = await _settings_gateway(
        gateway, auth_failures_per_client=3, auth_failures_per_address=100, auth_backoff_max_seconds=60
    )
    try:
        client = await limited.auth.add_client(f"target-{uuid.uuid4().hex[:8]}", "system/*.rs")
        async with http_client(limited) as http:
            for _ in range(3):
                assert (await ask(http, client.client_id, "guess")).status_code == 401
            assert (await ask(http, client.client_id, "guess")).status_code == 401  # starts the back-off
            blocked = await ask(http, client.client_id, client.client_secret or "")
            assert blocked.status_code == 429
            assert 1 <= int(blocked.headers["retry-after"]) <= 60
            assert blocked.json()["error"]
            # An unknown id is treated exactly alike (a 429 must not tell which ids exist).
            ghost = f"ghost-{uuid.uuid4().hex}"
            codes = [(await ask(http, ghost, "guess")).status_code for _ in range(5)]
            assert codes == [401, 401, 401, 401, 429]
            # Another client from the same address is not held up by someone else's failures.
            other = await limited.auth.add_client(f"bystander-{uuid.uuid4().hex[:8]}", "system/*.rs")
            assert (await ask(http, other.client_id, other.client_secret or "")).status_code == 200
    finally:
        await limited.close()


async def test_repeated_failures_from_one_address_get_429(gateway: Gateway) -> None:
    limited = await _settings_gateway(
        gateway, auth_failures_per_client=100, auth_failures_per_address=3, auth_backoff_max_seconds=60
    )
    try:
        client = await limited.auth.add_client(f"sprayed-{uuid.uuid4().hex[:8]}", "system/*.rs")
        async with (
            http_client(limited, "203.0.113.7") as attacker,
            http_client(limited, "198.51.100.2") as ok,
        ):
            codes = [
                (await ask(attacker, f"spray-{i}-{uuid.uuid4().hex}", "x")).status_code for i in range(5)
            ]
            assert codes == [401, 401, 401, 401, 429]
            blocked = await ask(attacker, client.client_id, client.client_secret or "")
            assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
            assert (await ask(ok, client.client_id, client.client_secret or "")).status_code == 200
    finally:
        await limited.close()
