"""Revocation that revokes: a removed or disabled client's tokens stop working within seconds on every
gateway process sharing the database, and its subscriptions stop delivering at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import update

from gateway.service.gateway import Gateway
from gateway.store.tables import api_client
from gateway.transports.http.app import create_app
from tests import factories as f
from tests.api.test_subscriptions import abnormal, make_patient, status_of, subscribe, wait_active
from tests.conftest import ClientFactory, settings_for
from tests.receiver import Receiver

# The acceptance bound: a removed or disabled client's token is refused within this many seconds.
REVOCATION_BOUND_S = 5.0


def http_client(gateway: Gateway) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(gateway.settings, gateway))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


@pytest_asyncio.fixture
async def second(gateway: Gateway) -> AsyncIterator[Gateway]:
    """Another gateway process on the same database (its own caches, key ring and registry)."""
    other = await Gateway.start(
        settings_for(gateway.settings.database_url, subscription_allowlist="127.0.0.0/8")
    )
    yield other
    await other.close()


async def token_for(http: httpx.AsyncClient, client_id: str, secret: str) -> str:
    answer = await http.post(
        "/auth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def status_with(http: httpx.AsyncClient, token: str) -> int:
    return (await http.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})).status_code


async def seconds_until_refused(http: httpx.AsyncClient, token: str, bound: float) -> float:
    """How long after now the token is first refused (401); fails if it is still accepted after `bound`."""
    started = time.monotonic()
    while True:
        status = await status_with(http, token)
        elapsed = time.monotonic() - started
        if status == 401:
            return elapsed
        assert status == 200, status
        assert elapsed <= bound, f"the token was still accepted {elapsed:.1f} s after revocation"
        await asyncio.sleep(0.1)


async def test_a_removed_clients_token_is_refused_by_every_gateway_on_the_database(
    gateway: Gateway, second: Gateway
) -> None:
    name = f"gone-{uuid.uuid4().hex[:8]}"
    client = await gateway.auth.add_client(name, "system/*.cruds")
    async with http_client(gateway) as here, http_client(second) as there:
        token = await token_for(here, client.client_id, client.client_secret or "")
        assert await status_with(here, token) == 200
        assert await status_with(there, token) == 200  # the second process has seen (and cached) it
        assert await gateway.auth.remove_client(name)
        assert await status_with(here, token) == 401  # at once where it was removed
        await seconds_until_refused(there, token, REVOCATION_BOUND_S)
        refused = await there.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
        assert refused.json()["resourceType"] == "OperationOutcome"


async def test_a_disabled_clients_token_is_refused_and_enabling_does_not_revive_it(
    gateway: Gateway, second: Gateway
) -> None:
    name = f"paused-{uuid.uuid4().hex[:8]}"
    client = await gateway.auth.add_client(name, "system/*.cruds")
    secret = client.client_secret or ""
    async with http_client(gateway) as here, http_client(second) as there:
        token = await token_for(here, client.client_id, secret)
        assert await status_with(there, token) == 200
        assert await gateway.auth.disable_client(name)
        assert await status_with(here, token) == 401
        await seconds_until_refused(there, token, REVOCATION_BOUND_S)
        # A disabled client gets no new token either.
        refused = await there.post(
            "/auth/token", data={"grant_type": "client_credentials"}, auth=(client.client_id, secret)
        )
        assert refused.status_code == 401
        assert await gateway.auth.enable_client(name)
        # Tokens issued before the disable stay dead; new ones work, on both processes.
        assert await status_with(here, token) == 401
        fresh = await token_for(here, client.client_id, secret)
        assert await status_with(here, fresh) == 200
        assert await status_with(there, fresh) == 200
        assert await status_with(there, token) == 401


async def test_a_token_naming_a_client_id_that_does_not_exist_is_refused(gateway: Gateway) -> None:
    client = await gateway.auth.add_client(f"renamed-{uuid.uuid4().hex[:8]}", "system/*.cruds")
    async with http_client(gateway) as http:
        token = await token_for(http, client.client_id, client.client_secret or "")
        # The token is validly signed, but no client has the id it names any more.
        async with gateway.db.write() as conn:
            await conn.execute(
                update(api_client)
                .where(api_client.c.client_id == client.client_id)
                .values(client_id=f"x-{uuid.uuid4().hex}")
            )
        assert await status_with(http, token) == 401


# -- subscriptions of a removed or disabled client ----------------------------------------------------


async def _owner(gateway: Gateway, http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    name = f"owner-{uuid.uuid4().hex[:8]}"
    client = await gateway.auth.add_client(name, "system/*.cruds")
    token = await token_for(http, client.client_id, client.client_secret or "")
    return name, {"Authorization": f"Bearer {token}"}


async def _subscribe_as(http: httpx.AsyncClient, headers: dict[str, str], resource: dict[str, Any]) -> str:
    answer = await http.post("/fhir/Subscription", json=resource, headers=headers)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_removing_a_client_turns_its_subscriptions_off_and_a_receiver_gets_nothing_more(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver, client_factory: ClientFactory
) -> None:
    # The removed client's Subscription is looked at by an operator: Subscriptions belong to their owner.
    admin = await client_factory("system/Subscription.rs subscriptions/admin")
    async with http_client(delivering) as http:
        name, owner = await _owner(delivering, http)
        mine = await _subscribe_as(http, owner, f.subscription("abnormal-lab-result", receiver.url("/mine")))
    others = await subscribe(api, f.subscription("abnormal-lab-result", receiver.url("/others")))
    await wait_active(admin, mine)
    await wait_active(api, others)
    patient_id = await make_patient(api)
    await api.post("/fhir/Observation", json=abnormal(patient_id))
    await receiver.until(lambda: receiver.events("/mine") and receiver.events("/others"))

    assert await delivering.auth.remove_client(name)
    stored = (await admin.get(f"/fhir/Subscription/{mine}")).json()
    assert stored["status"] == "off"
    assert (await status_of(admin, mine))["status"] == "off"

    await api.post("/fhir/Observation", json=abnormal(patient_id))
    await receiver.until(lambda: len(receiver.events("/others")) == 2)  # delivery as such goes on
    await asyncio.sleep(1.0)
    assert len(receiver.events("/mine")) == 1
    # No more events are even queued for it.
    assert (await status_of(admin, mine))["events-since-subscription-start"] == "1"


@pytest.mark.slow
async def test_events_waiting_for_a_retry_are_not_delivered_after_the_owner_is_disabled(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver, client_factory: ClientFactory
) -> None:
    admin = await client_factory("system/Subscription.rs subscriptions/admin")
    async with http_client(delivering) as http:
        name, owner = await _owner(delivering, http)
        sub_id = await _subscribe_as(http, owner, f.subscription("abnormal-lab-result", receiver.url("/w")))
    await wait_active(admin, sub_id)
    receiver.status = 500  # the subscriber is down: the event waits for a retry
    await api.post("/fhir/Observation", json=abnormal(await make_patient(api)))
    for _ in range(500):
        if delivering.deliverer.counts["failed"] and (await status_of(admin, sub_id))["status"] == "active":
            break
        await asyncio.sleep(0.01)
    assert delivering.deliverer.counts["failed"]

    assert await delivering.auth.disable_client(name)
    receiver.status = 200
    await asyncio.sleep(3.0)  # past the first retries (1 s, 2 s with jitter)
    assert receiver.events("/w") == []
    assert (await status_of(admin, sub_id))["status"] == "off"

    # Enabling the client again does not resume the subscription on its own.
    assert await delivering.auth.enable_client(name)
    await api.post("/fhir/Observation", json=abnormal(await make_patient(api)))
    await asyncio.sleep(1.0)
    assert receiver.events("/w") == []
    assert (await status_of(admin, sub_id))["status"] == "off"


async def test_a_delivery_already_on_the_wire_has_landed_when_disable_returns(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver, client_factory: ClientFactory
) -> None:
    admin = await client_factory("system/Subscription.rs subscriptions/admin")
    async with http_client(delivering) as http:
        name, owner = await _owner(delivering, http)
        sub_id = await _subscribe_as(http, owner, f.subscription("abnormal-lab-result", receiver.url("/w")))
    await wait_active(admin, sub_id)
    receiver.delay_s = 1.0  # a slow subscriber: the notification is on the wire for a second
    arrived = receiver.arriving
    await api.post("/fhir/Observation", json=abnormal(await make_patient(api)))
    for _ in range(300):
        if receiver.arriving > arrived:
            break
        await asyncio.sleep(0.01)
    assert receiver.arriving > arrived

    assert await delivering.auth.disable_client(name)
    landed = len(receiver.events("/w"))
    await asyncio.sleep(1.5)
    assert len(receiver.events("/w")) == landed  # nothing reached the endpoint after disable returned
