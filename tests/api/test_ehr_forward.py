"""Forwarding in process, on both backends (upstreams stood in for by respx): deletions reach the upstream
as conditional deletes in the lane's order, an upstream's Retry-After holds its lane (only), the gateway's
own Subscription is valid R4, and gateways starting together on one PostgreSQL create it once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import respx

from gateway.fhir import jsonio
from gateway.service.access.context import RequestContext
from gateway.service.gateway import Gateway
from gateway.store import resources as store
from gateway.store import subscriptions as sub_store
from tests.conftest import settings_for

EHR = "http://ehr.test/fhir"
EHR2 = "http://ehr2.test/fhir"


def upstreams_file(tmp_path: Path) -> Path:
    path = tmp_path / "upstreams.json"
    entries = [
        {"name": name, "base_url": base, "forward": {"resources": ["Observation"]}}
        for name, base in (("ehr", EHR), ("ehr2", EHR2))
    ]
    path.write_text(json.dumps({"upstreams": entries}))
    return path


@pytest_asyncio.fixture
async def forwarder(
    database_url_factory: Callable[[str], Awaitable[str]], backend: str, tmp_path: Path
) -> AsyncIterator[Gateway]:
    settings = settings_for(await database_url_factory(backend), upstreams_file=upstreams_file(tmp_path))
    gateway = await Gateway.start(settings)
    gateway.deliverer.poll_s = 0.05
    await gateway.deliverer.start()
    yield gateway
    await gateway.deliverer.stop()
    await gateway.close()


class Upstream:
    """Records the transaction Bundles POSTed to a base and answers with `answer(bundle)`."""

    def __init__(self, mock: respx.MockRouter, base: str, answer: Callable[[Any], httpx.Response]) -> None:
        self.received: list[Any] = []
        self.answer = answer
        mock.post(base).mock(side_effect=self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        bundle = orjson.loads(request.content)
        self.received.append(bundle)
        return self.answer(bundle)

    def requests(self) -> list[tuple[str, str]]:
        return [(e["request"]["method"], e["request"]["url"]) for b in self.received for e in b["entry"]]


def deleting(bundle: Any) -> bool:
    return bool(bundle["entry"][0]["request"]["method"] == "DELETE")


def ok(_: Any) -> httpx.Response:
    return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response"})


async def until(predicate: Callable[[], bool], bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def observation(value: str) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "identifier": [{"system": "urn:lab", "value": value}],
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
            "valueQuantity": {"value": 1.2, "unit": "10*3/uL"},
        }
    )


async def test_a_deletion_follows_the_write_as_a_conditional_delete_and_not_found_is_delivered(
    forwarder: Gateway,
) -> None:
    ctx = RequestContext(base_url="http://gateway.test/fhir")
    with respx.mock(assert_all_called=False) as mock:
        # the upstream no longer has it: 404 for the delete still moves the lane on
        ehr = Upstream(mock, EHR, lambda b: httpx.Response(404) if deleting(b) else ok(b))
        Upstream(mock, EHR2, ok)
        created = await forwarder.fhir.create(ctx, "Observation", observation("A-1"), None)
        assert created.stored is not None
        await forwarder.fhir.delete(ctx, "Observation", created.stored.id, None)
        await forwarder.fhir.create(ctx, "Observation", observation("A-2"), None)
        await until(lambda: len(ehr.received) == 3)
        assert ehr.requests() == [
            ("PUT", "Observation?identifier=urn:lab%7CA-1"),
            ("DELETE", "Observation?identifier=urn:lab%7CA-1"),  # from the version before the deletion
            ("PUT", "Observation?identifier=urn:lab%7CA-2"),
        ]
        deadline = time.monotonic() + 5  # the lane journals progress after the answer
        while True:
            async with forwarder.db.read() as conn:
                state = await sub_store.state(conn, "forward-ehr")
            assert state is not None
            if state.delivered == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert (state.delivered, state.last_event, state.failures) == (3, 3, 0)
        assert forwarder.deliverer.forwarding is not None
        assert forwarder.deliverer.forwarding.counts["ehr"].sent == 3  # type: ignore[attr-defined]


async def test_retry_after_holds_that_upstreams_lane_only(forwarder: Gateway) -> None:
    ctx = RequestContext(base_url="http://gateway.test/fhir")
    with respx.mock(assert_all_called=False) as mock:
        busy = Upstream(mock, EHR, lambda _: httpx.Response(429, headers={"Retry-After": "120"}))
        other = Upstream(mock, EHR2, ok)
        started_us = time.time_ns() // 1000
        await forwarder.fhir.create(ctx, "Observation", observation("B-1"), None)
        await forwarder.fhir.create(ctx, "Observation", observation("B-2"), None)
        # the second event wakes the failed lane at once: it must still wait
        await until(lambda: len(other.received) == 2 and len(busy.received) == 1)

        async def next_attempt() -> int:
            async with forwarder.db.read() as conn:
                state = await sub_store.state(conn, "forward-ehr")
            assert state is not None
            return state.next_attempt_us

        deadline = time.monotonic() + 5
        while await next_attempt() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # not the lane's own first backoff (at most 1 s): the upstream's two minutes
        assert await next_attempt() >= started_us + 119_000_000
        await asyncio.sleep(1.5)  # what a 1 s backoff would have retried in
        assert len(busy.received) == 1


async def test_the_forward_subscription_is_valid_and_clients_cannot_make_one(forwarder: Gateway) -> None:
    async with forwarder.db.read() as conn:
        stored = await store.current(conn, "Subscription", "forward-ehr")
    assert stored is not None and stored.content is not None
    subscription = jsonio.loads(stored.content)
    assert "type" not in subscription["channel"]
    assert [i for i in forwarder.fhir.validator.validate(subscription) if i.is_error] == []


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_gateways_starting_together_create_the_forward_subscription_once(
    database_url_factory: Callable[[str], Awaitable[str]], backend: str, tmp_path: Path
) -> None:
    url = await database_url_factory(backend)
    await (await Gateway.start(settings_for(url))).close()  # migrated once, as `gateway serve` would
    settings = settings_for(url, upstreams_file=upstreams_file(tmp_path))
    started = await asyncio.gather(*(Gateway.start(settings, run_migrations=False) for _ in range(3)))
    try:
        async with started[0].db.read() as conn:
            for sub_id in ("forward-ehr", "forward-ehr2"):
                _, total = await store.history(
                    conn,
                    resource_type="Subscription",
                    resource_id=sub_id,
                    since_us=None,
                    at_most_us=None,
                    count=10,
                    offset=0,
                )
                assert total == 1, sub_id  # created once; the others found it there
    finally:
        for gateway in started:
            await gateway.close()
