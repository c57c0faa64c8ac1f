"""Subscribing to an upstream EHR instead of polling it (gateway/service/ehrpull/subscriber.py), in process on
both backends: the upstream is respx, the receiver is `POST /ehr/notifications/{upstream}` on the app."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
import respx

from gateway.ehr import notifications as notes
from gateway.ehr.pulled import local_id
from gateway.ehr.upstreams import UpstreamConfig, parse_upstreams
from gateway.fhir import jsonio
from gateway.service.ehrpull.poller import EhrPuller
from gateway.service.ehrpull.subscriber import EhrSubscriber
from gateway.service.gateway import Gateway
from gateway.store import resources as store
from gateway.store import upstreams as checkpoints
from gateway.transports.http.app import create_app
from tests import factories as f
from tests.notifications import BASE, TOPIC, notification


@dataclass
class Wired:
    gateway: Gateway
    upstream: UpstreamConfig
    subscriber: EhrSubscriber
    mock: respx.MockRouter
    http: httpx.AsyncClient  # the app, without a token

    @property
    def name(self) -> str:
        return self.upstream.name

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.subscriber.secret(self.name)}"}

    async def post(self, body: Any, secret: str | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else jsonio.dumps(body)
        return await self.http.post(
            f"/ehr/notifications/{self.name}", content=content, headers=self.auth(secret)
        )

    async def stored(self, rtype: str, remote_id: str) -> dict[str, Any] | None:
        async with self.gateway.db.read() as conn:
            row = await store.current(conn, rtype, local_id(self.name, rtype, remote_id))
        return None if row is None or row.content is None else dict(jsonio.loads(row.content))

    async def versions(self, rtype: str, remote_id: str) -> int:
        async with self.gateway.db.read() as conn:
            row = await store.current(conn, rtype, local_id(self.name, rtype, remote_id))
        return 0 if row is None else row.version


@pytest_asyncio.fixture
async def wired(gateway: Gateway) -> AsyncIterator[Wired]:
    name = f"up{uuid.uuid4().hex[:8]}"  # checkpoint rows outlive a test: a name of its own
    (upstream,) = parse_upstreams(
        {
            "upstreams": [
                {
                    "name": name,
                    "base_url": BASE,
                    "resources": ["Patient", "Observation"],
                    "interval_seconds": 60,
                    "max_requests_per_second": 1000,
                    "subscribe": {
                        "topic": TOPIC,
                        "endpoint": f"https://gw.example/ehr/notifications/{name}",
                        "payload": "full-resource",
                        "heartbeat_seconds": 30,
                    },
                }
            ]
        }
    )
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        puller = EhrPuller(gateway.fhir, [upstream], http=httpx.AsyncClient())
        subscriber = EhrSubscriber(puller, b"k" * 32)
        async with gateway.db.write() as conn:
            await checkpoints.ensure(conn, name, upstream.resources)
        previous = gateway.subscriber
        gateway.subscriber = subscriber
        mock.route(host="gateway.test").pass_through()
        app = create_app(gateway.settings, gateway)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
        ) as http:
            try:
                yield Wired(gateway, upstream, subscriber, mock, http)
            finally:
                await subscriber.settle()
                gateway.subscriber = previous
                await puller.stop()


def remote_patient(rid: str = "p1") -> dict[str, Any]:
    return f.patient(id=rid, meta={"versionId": "3", "lastUpdated": "2026-12-01T10:00:00Z"})


def remote_observation(rid: str = "o1", patient: str = "p1", value: float = 13.5) -> dict[str, Any]:
    return {
        **f.lab_observation(patient, value=value),
        "id": rid,
        "meta": {"lastUpdated": "2026-12-01T10:00:01Z"},
    }


async def test_a_wrong_or_missing_secret_is_401_and_nothing_is_stored(wired: Wired) -> None:
    body = notification("event-notification", 1, [(1, f"{BASE}/Patient/p1")], [remote_patient()])
    assert (await wired.post(body, secret="not-the-secret")).status_code == 401
    missing = await wired.http.post(f"/ehr/notifications/{wired.name}", content=jsonio.dumps(body))
    assert missing.status_code == 401 and missing.json()["resourceType"] == "OperationOutcome"
    other = await wired.http.post("/ehr/notifications/nobody", content=b"{}", headers=wired.auth())
    assert other.status_code == 404
    assert await wired.stored("Patient", "p1") is None
    assert wired.subscriber.counts[wired.name].rejected == 2


async def test_a_full_resource_event_is_stored_with_provenance_and_a_repeat_writes_nothing(
    wired: Wired, api: httpx.AsyncClient
) -> None:
    body = notification(
        "event-notification",
        2,
        [(1, f"{BASE}/Patient/p1"), (2, f"{BASE}/Observation/o1")],
        [remote_patient(), remote_observation()],
    )
    answer = await wired.post(body)
    assert answer.status_code == 200, answer.text
    observation = await wired.stored("Observation", "o1")
    assert observation is not None
    assert observation["subject"] == {"reference": f"Patient/{local_id(wired.name, 'Patient', 'p1')}"}
    assert observation["meta"]["source"] == f"{BASE}/Observation/o1"
    assert await wired.stored("Patient", "p1") is not None
    lid = local_id(wired.name, "Observation", "o1")
    provenance = (await api.get("/fhir/Provenance", params={"target": f"Observation/{lid}"})).json()
    (entry,) = provenance["entry"]
    assert entry["resource"]["agent"][0]["who"]["display"] == f"EHR {wired.name}"
    assert wired.subscriber.counts[wired.name].stored == 2
    assert len(wired.mock.calls) == 0  # all it needed was in the notification

    again = await wired.post(body)  # delivered twice (at least once): nothing new
    assert again.status_code == 200
    assert await wired.versions("Observation", "o1") == 1
    assert wired.subscriber.counts[wired.name].stored == 2


async def test_an_id_only_event_is_fetched_from_the_upstream_and_stored(wired: Wired) -> None:
    read = wired.mock.get("/Observation/o1").respond(200, json=remote_observation(value=7.5))
    body = notification(
        "event-notification",
        2,
        [(1, f"{BASE}/Observation/o1"), (2, "https://elsewhere.example/fhir/Observation/o9")],
    )
    answer = await wired.post(body)
    assert answer.status_code == 200, answer.text
    assert read.call_count == 1
    stored = await wired.stored("Observation", "o1")
    assert stored is not None and stored["valueQuantity"]["value"] == 7.5
    # a focus on another server is refused, never fetched with our token
    assert [str(c.request.url) for c in wired.mock.calls] == [f"{BASE}/Observation/o1"]
    assert wired.subscriber.counts[wired.name].rejected == 1


async def test_a_gap_in_event_numbers_starts_a_catch_up_poll(wired: Wired) -> None:
    search = wired.mock.get("/Observation").respond(
        200,
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": remote_observation("o2", value=5.0), "search": {"mode": "match"}}],
        },
    )
    wired.mock.get("/Patient").respond(200, json={"resourceType": "Bundle", "type": "searchset"})
    assert (await wired.post(notification("handshake", 0))).status_code == 200
    first = notification("event-notification", 1, [(1, f"{BASE}/Patient/p1")], [remote_patient()])
    assert (await wired.post(first)).status_code == 200
    await wired.subscriber.settle()
    assert search.call_count == 0  # no gap so far: no poll
    # event 2 (o2) never arrived; event 3 does
    third = notification("event-notification", 3, [(3, f"{BASE}/Observation/o3")], [remote_observation("o3")])
    assert (await wired.post(third)).status_code == 200
    await wired.subscriber.settle()
    assert search.call_count == 1
    assert search.calls[0].request.url.params["_sort"] == "_lastUpdated"  # the poller's own poll
    assert await wired.stored("Observation", "o2") is not None  # the missed one, by the poll
    assert await wired.stored("Observation", "o3") is not None
    assert wired.subscriber.counts[wired.name].catch_ups == 1


async def test_malformed_is_400_and_oversized_is_413(wired: Wired) -> None:
    for body in (b"not json", {"resourceType": "Bundle", "type": "collection"}, notification("gossip", 1)):
        answer = await wired.post(body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["resourceType"] == "OperationOutcome"
    wired.subscriber.max_body_bytes = 2000
    big = notification(
        "event-notification", 1, [(1, f"{BASE}/Patient/p1")], [remote_patient(), remote_patient()]
    )
    big["entry"][1]["resource"]["text"] = {"status": "generated", "div": "<div>" + "x" * 3000 + "</div>"}
    assert (await wired.post(big)).status_code == 413
    assert await wired.stored("Patient", "p1") is None
    assert wired.subscriber.counts[wired.name].rejected == 4


def capability(*topics: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": "Subscription",
                        "extension": [{"url": notes.TOPIC_CANONICAL, "valueCanonical": t} for t in topics],
                    }
                ],
            }
        ],
    }


async def test_an_upstream_without_the_topic_stays_polled(wired: Wired) -> None:
    wired.mock.get("/metadata").respond(200, json=capability(f"{BASE}/SubscriptionTopic/other"))
    created = wired.mock.post("/Subscription").respond(201, json={"id": "s1"})
    await wired.subscriber.run_once()
    assert wired.subscriber.links[wired.name].state == "unsupported"
    assert created.call_count == 0
    assert wired.subscriber.interval_factor(wired.name) == 1.0


async def test_an_upstream_with_the_topic_gets_one_subscription_and_polling_slows_while_heartbeats_come(
    wired: Wired,
) -> None:
    wired.mock.get("/metadata").respond(200, json=capability(TOPIC))
    kept: list[dict[str, Any]] = []

    def create(request: httpx.Request) -> httpx.Response:
        kept.append({**jsonio.loads(request.content), "id": "s1"})
        return httpx.Response(201, json=kept[-1])

    wired.mock.post("/Subscription").mock(side_effect=create)
    wired.mock.get("/Subscription").mock(
        side_effect=lambda _: httpx.Response(
            200, json={"resourceType": "Bundle", "entry": [{"resource": r} for r in kept]}
        )
    )
    subscriber, name = wired.subscriber, wired.name
    await subscriber.run_once()
    (sub,) = kept
    assert sub["criteria"] == TOPIC and sub["channel"]["endpoint"] == wired.upstream.subscribe.endpoint  # type: ignore[union-attr]
    assert sub["channel"]["header"] == [f"Authorization: Bearer {subscriber.secret(name)}"]
    assert subscriber.links[name].state == "requested"
    assert subscriber.interval_factor(name) == 1.0  # nothing heard yet

    # a restart (a new subscriber, same key): the Subscription is found again, not made twice
    restarted = EhrPuller(wired.gateway.fhir, [wired.upstream], http=httpx.AsyncClient())
    again = EhrSubscriber(restarted, b"k" * 32)
    await again.run_once()
    await restarted.stop()
    assert len(kept) == 1 and again.links[name].remote_id == "s1"

    assert (await wired.post(notification("handshake", 0))).status_code == 200
    assert subscriber.links[name].state == "active"
    assert subscriber.interval_factor(name) == 10.0  # polling is now a safety net
    assert wired.subscriber.puller.interval_factor(name) == 10.0

    subscriber.links[name].heard = 0.0  # long ago: heartbeats stopped
    async with wired.gateway.db.write() as conn:
        await checkpoints.finish(conn, name, "Observation", "nobody", now=0, next_poll_us=10**18, error=None)
    await subscriber.run_once()
    assert subscriber.links[name].state in ("requested", "lost")
    assert subscriber.interval_factor(name) == 1.0
    async with wired.gateway.db.write() as conn:  # polled at once again: due now
        assert await checkpoints.claim(conn, name, "Observation", "test", 2 * 10**15, 1) is not None


async def test_this_gateway_offers_the_resource_changed_topic_to_other_gateways(
    api: httpx.AsyncClient,
) -> None:
    metadata = (await api.get("/fhir/metadata")).json()
    assert notes.offers_topic(
        metadata, "https://specialty-gateway.org/fhir/SubscriptionTopic/resource-changed"
    )
    topic = (await api.get("/fhir/SubscriptionTopic/resource-changed")).json()
    assert {t["resource"].rsplit("/", 1)[1] for t in topic["resourceTrigger"]} >= {"Patient", "Observation"}
