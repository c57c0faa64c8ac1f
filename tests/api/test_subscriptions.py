"""Topic-based subscriptions through the API, delivered to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.ehr import forward
from gateway.fhir import dates
from gateway.service.access.context import RequestContext
from gateway.service.gateway import Gateway
from tests import factories as f
from tests.conftest import ClientFactory
from tests.receiver import Receiver

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def subscribe(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post("/fhir/Subscription", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def status_of(api: httpx.AsyncClient, sub_id: str) -> dict[str, Any]:
    answer = await api.get(f"/fhir/Subscription/{sub_id}/$status")
    assert answer.status_code == 200, answer.text
    parameters = answer.json()["entry"][0]["resource"]["parameter"]
    return {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in parameters
        if "part" not in p
    }


async def wait_active(api: httpx.AsyncClient, sub_id: str) -> None:
    for _ in range(500):
        if (await status_of(api, sub_id))["status"] == "active":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"Subscription/{sub_id} never became active")


async def make_patient(api: httpx.AsyncClient) -> str:
    answer = await api.post("/fhir/Patient", json=f.patient())
    return str(answer.json()["id"])


def abnormal(patient_id: str, **extra: Any) -> dict[str, Any]:
    return f.lab_observation(
        patient_id,
        code="2823-3",
        value=5.9,
        unit="mmol/L",
        referenceRange=[{"low": {"value": 3.5, "unit": "mmol/L"}, "high": {"value": 5.1, "unit": "mmol/L"}}],
        interpretation=[
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "H",
                    }
                ]
            }
        ],
        **extra,
    )


def normal(patient_id: str) -> dict[str, Any]:
    return f.lab_observation(
        patient_id,
        code="2823-3",
        value=4.2,
        unit="mmol/L",
        referenceRange=[{"low": {"value": 3.5, "unit": "mmol/L"}, "high": {"value": 5.1, "unit": "mmol/L"}}],
    )


async def test_handshake_then_signed_notification_for_an_abnormal_result(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub_id = await subscribe(api, f.subscription("abnormal-lab-result", receiver.url("/a")))
    await receiver.until(lambda: receiver.on("/a"))
    handshake = receiver.on("/a")[0]
    assert handshake.kind == "handshake" and handshake.signed_with(f.SECRET)
    await wait_active(api, sub_id)
    stored = (await api.get(f"/fhir/Subscription/{sub_id}")).json()
    assert stored["status"] == "active"

    patient_id = await make_patient(api)
    created = await api.post("/fhir/Observation", json=abnormal(patient_id))
    obs_id = created.json()["id"]
    await receiver.until(lambda: receiver.events("/a"))
    note = receiver.events("/a")[0]
    assert note.signed_with(f.SECRET)
    assert not note.signed_with("another-secret-0123456789")
    assert note.headers["x-subscription-id"] == sub_id
    bundle = note.json
    assert bundle["type"] == "history"
    status = bundle["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters"
    assert bundle["entry"][0]["request"]["url"].endswith(f"Subscription/{sub_id}/$status")
    assert note.parameters["events-since-subscription-start"]["valueString"] == "1"
    assert note.parameters["topic"]["valueCanonical"] == f.topic_url("abnormal-lab-result")
    assert note.event_numbers == [1]
    event = next(p for p in status["parameter"] if p["name"] == "notification-event")
    focus = next(p for p in event["part"] if p["name"] == "focus")
    assert focus["valueReference"]["reference"].endswith(f"Observation/{obs_id}")
    resources = {e["fullUrl"].rsplit("/", 2)[-2]: e.get("resource") for e in bundle["entry"][1:]}
    assert resources["Observation"]["id"] == obs_id
    assert resources["Patient"]["id"] == patient_id  # the topic's notificationShape include


async def test_normal_result_and_unchanged_resend_do_not_fire(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub_id = await subscribe(api, f.subscription("abnormal-lab-result", receiver.url("/n")))
    await wait_active(api, sub_id)
    patient_id = await make_patient(api)
    await api.post("/fhir/Observation", json=normal(patient_id))
    first = (await api.post("/fhir/Observation", json=abnormal(patient_id))).json()
    # The same content again (a re-send) makes no new version and no event.
    again = await api.put(
        f"/fhir/Observation/{first['id']}", json={**abnormal(patient_id), "id": first["id"]}
    )
    assert again.status_code == 200 and again.json()["meta"]["versionId"] == "1"
    # Still abnormal after a correction: it did not *become* abnormal, so no event either.
    corrected = {**abnormal(patient_id), "id": first["id"], "status": "corrected"}
    assert (await api.put(f"/fhir/Observation/{first['id']}", json=corrected)).json()["meta"][
        "versionId"
    ] == "2"
    assert (await status_of(api, sub_id))["events-since-subscription-start"] == "1"
    # A normal result turning abnormal fires.
    turned = (await api.post("/fhir/Observation", json=normal(patient_id))).json()
    await api.put(f"/fhir/Observation/{turned['id']}", json={**abnormal(patient_id), "id": turned["id"]})
    assert (await status_of(api, sub_id))["events-since-subscription-start"] == "2"
    await receiver.until(lambda: len(receiver.events("/n")) == 2)
    assert [n for r in receiver.events("/n") for n in r.event_numbers] == [1, 2]


async def test_filters_route_only_matching_events(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    mine, other = await make_patient(api), await make_patient(api)
    by_patient = await subscribe(
        api, f.subscription("abnormal-lab-result", receiver.url("/p"), filters=(f"patient=Patient/{mine}",))
    )
    by_code = await subscribe(
        api,
        f.subscription(
            "abnormal-lab-result", receiver.url("/c"), filters=("Observation.code=http://loinc.org|718-7",)
        ),
    )
    await api.post("/fhir/Observation", json=abnormal(mine))
    await api.post("/fhir/Observation", json=abnormal(other))
    assert (await status_of(api, by_patient))["events-since-subscription-start"] == "1"
    assert (await status_of(api, by_code))["events-since-subscription-start"] == "0"


@pytest.mark.parametrize(
    ("change", "expression", "text"),
    [
        ({"criteria": "https://nowhere.example/topic"}, "Subscription.criteria", "Unknown topic"),
        (
            {"channel": {"type": "email", "endpoint": "mailto:x@example.org"}},
            "Subscription.channel.type",
            "email",
        ),
        (
            {
                "_criteria": {
                    "extension": [{"url": f.BACKPORT + "/backport-filter-criteria", "valueString": "x=1"}]
                }
            },
            "Subscription.criteria.extension",
            "no filter 'x'",
        ),
        (
            {
                "channel": {
                    "type": "rest-hook",
                    "endpoint": "http://127.0.0.1:9/x",
                    "_payload": {
                        "extension": [{"url": f.BACKPORT + "/backport-payload-content", "valueCode": "all"}]
                    },
                }
            },
            "Subscription.channel.payload.extension",
            "content 'all'",
        ),
        (
            {"channel": {"type": "rest-hook", "endpoint": "https://192.168.7.7/hook"}},
            "Subscription.channel.endpoint",
            "private",
        ),
        (
            {"channel": {"type": "rest-hook", "endpoint": "http://8.8.8.8/hook"}},
            "Subscription.channel.endpoint",
            "https",
        ),
        ({"extension": None}, "Subscription.extension", "signed with"),  # None: no extension at all
        (  # the gateway's own forwarding channel: not R4's, and the upstreams file's to set up
            {"channel": {"type": "fhir-forward", "endpoint": "https://ehr.example/fhir"}},
            "Subscription.channel.type",
            "'fhir-forward'",
        ),
        (  # ... nor in the Backport IG's form for a custom channel, which the gateway's own uses
            {"channel": forward.forward_subscription("x", "https://ehr.example/fhir")["channel"]},
            "Subscription.channel.type",
            "come from the upstreams file",
        ),
        (  # a custom channel type of someone else's
            {
                "channel": {
                    "_type": {
                        "extension": [
                            {
                                "url": forward.CHANNEL_TYPE_EXTENSION,
                                "valueCoding": {"system": "urn:example", "code": "zulip"},
                            }
                        ]
                    },
                    "endpoint": "https://chat.example/hook",
                }
            },
            "Subscription.channel.type",
            "'urn:example|zulip' is not supported",
        ),
    ],
)
async def test_bad_subscriptions_are_refused_with_an_operation_outcome(
    api: httpx.AsyncClient, change: dict[str, Any], expression: str, text: str
) -> None:
    merged = {**f.subscription("abnormal-lab-result", "http://127.0.0.1:9/x"), **change}
    resource = {key: value for key, value in merged.items() if value is not None}
    answer = await api.post("/fhir/Subscription", json=resource)
    assert answer.status_code in (400, 422), answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = next(i for i in outcome["issue"] if text in i["diagnostics"])
    assert issue["expression"] == [expression]
    assert (await api.get("/fhir/Subscription")).json().get("total") == 0


async def test_a_client_subscribes_only_to_what_it_may_read(client_factory: ClientFactory) -> None:
    tasks_only = await client_factory("system/Subscription.cruds system/Task.rs")
    refused = await tasks_only.post(
        "/fhir/Subscription", json=f.subscription("abnormal-lab-result", "http://127.0.0.1:9/x")
    )
    assert refused.status_code == 403
    allowed = await tasks_only.post(
        "/fhir/Subscription", json=f.subscription("pa-status-changed", "http://127.0.0.1:9/x")
    )
    assert allowed.status_code == 201, allowed.text


async def test_full_resource_is_withheld_when_the_owner_may_not_read_an_included_type(
    delivering: Gateway, client_factory: ClientFactory, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    observer = await client_factory("system/Subscription.cruds system/Observation.rs")
    sub_id = await subscribe(observer, f.subscription("abnormal-lab-result", receiver.url("/s")))
    await wait_active(observer, sub_id)
    patient_id = await make_patient(api)
    await api.post("/fhir/Observation", json=abnormal(patient_id))
    await receiver.until(lambda: receiver.events("/s"))
    entries = receiver.events("/s")[0].json["entry"][1:]
    types = {e["fullUrl"].rsplit("/", 2)[-2] for e in entries if "resource" in e}
    assert types == {"Observation"}  # the Patient is not in its scopes


async def test_events_replays_any_range_and_status_counts(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub_id = await subscribe(
        api, f.subscription("abnormal-lab-result", receiver.url("/e"), content="id-only")
    )
    await wait_active(api, sub_id)
    patient_id = await make_patient(api)
    ids = [(await api.post("/fhir/Observation", json=abnormal(patient_id))).json()["id"] for _ in range(5)]
    replay = await api.get(f"/fhir/Subscription/{sub_id}/$events?eventsSinceNumber=2&eventsUntilNumber=4")
    assert replay.status_code == 200
    status = replay.json()["entry"][0]["resource"]
    assert next(p for p in status["parameter"] if p["name"] == "type")["valueCode"] == "query-event"
    events = [p for p in status["parameter"] if p["name"] == "notification-event"]
    numbers = [int(next(x["valueString"] for x in e["part"] if x["name"] == "event-number")) for e in events]
    assert numbers == [2, 3, 4]
    focuses = [
        next(x for x in e["part"] if x["name"] == "focus")["valueReference"]["reference"] for e in events
    ]
    assert [r.rsplit("/", 1)[-1] for r in focuses] == ids[1:4]
    # An id-only subscription cannot be replayed with more than its own content.
    upgraded = await api.post(
        f"/fhir/Subscription/{sub_id}/$events",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "eventsSinceNumber", "valueString": "5"},
                {"name": "content", "valueCode": "full-resource"},
            ],
        },
    )
    assert upgraded.status_code == 403
    same = await api.get(f"/fhir/Subscription/{sub_id}/$events?eventsSinceNumber=5&content=id-only")
    (entry,) = same.json()["entry"][1:]
    assert entry["fullUrl"].endswith(f"Observation/{ids[4]}") and "resource" not in entry
    bad = await api.get(f"/fhir/Subscription/{sub_id}/$events?eventsSinceNumber=abc")
    assert bad.status_code == 400
    await receiver.until(lambda: sum(len(r.event_numbers) for r in receiver.events("/e")) == 5)
    log = (await api.get(f"/fhir/Subscription/{sub_id}/$delivery-log")).json()
    kinds = [next(p["valueCode"] for p in a["part"] if p["name"] == "kind") for a in log["parameter"]]
    assert "handshake" in kinds and "event-notification" in kinds


async def test_a_dead_endpoint_is_retried_in_order_while_a_healthy_one_is_not_delayed(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    down = Receiver()
    try:
        slow_id = await subscribe(api, f.subscription("abnormal-lab-result", down.url("/down"), max_count=2))
        fast_id = await subscribe(api, f.subscription("abnormal-lab-result", receiver.url("/up")))
        await wait_active(api, slow_id)
        await wait_active(api, fast_id)
        down.stop()  # connections refused from now on
        patient_id = await make_patient(api)
        for _ in range(6):
            await api.post("/fhir/Observation", json=abnormal(patient_id))
        await receiver.until(lambda: sum(len(r.event_numbers) for r in receiver.events("/up")) == 6)
        assert [n for r in receiver.events("/up") for n in r.event_numbers] == [1, 2, 3, 4, 5, 6]
        slow = await status_of(api, slow_id)
        assert slow["status"] == "active" and slow["events-since-subscription-start"] == "6"
        log = (await api.get(f"/fhir/Subscription/{slow_id}/$delivery-log")).json()["parameter"]
        assert any(next(p["valueCode"] for p in a["part"] if p["name"] == "outcome") == "failed" for a in log)
        down.start()  # back on the same port
        delivering.deliverer._memory[slow_id].failures = 0
        await _expire_backoff(delivering, slow_id)
        await down.until(lambda: sum(len(r.event_numbers) for r in down.events("/down")) >= 6, timeout=20)
        numbers = [n for r in down.events("/down") for n in r.event_numbers]
        assert sorted(set(numbers)) == [1, 2, 3, 4, 5, 6]
        assert numbers == sorted(numbers)  # in order, whatever was retried
    finally:
        down.stop()


async def _expire_backoff(gateway: Gateway, sub_id: str) -> None:
    """Make the pending retry due now (the backoff itself is unit-tested)."""
    from sqlalchemy import update

    from gateway.store.tables import subscription_delivery

    # Journalled progress not yet written would otherwise land after this and bring the old retry time back.
    await gateway.deliverer._flush_journal()
    async with gateway.db.write() as conn:
        await conn.execute(
            update(subscription_delivery)
            .where(subscription_delivery.c.sub_id == sub_id)
            .values(next_attempt_us=0)
        )


async def test_failed_handshake_puts_the_subscription_in_error_until_the_client_reactivates(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.status = 500
    sub_id = await subscribe(api, f.subscription("abnormal-lab-result", receiver.url("/h")))
    for _ in range(500):
        if (await status_of(api, sub_id))["status"] == "error":
            break
        await asyncio.sleep(0.01)
    status = await status_of(api, sub_id)
    assert status["status"] == "error" and "handshake" in status["error"]["text"]
    assert (await api.get(f"/fhir/Subscription/{sub_id}")).json()["status"] == "error"
    # Events keep counting in error.
    patient_id = await make_patient(api)
    await api.post("/fhir/Observation", json=abnormal(patient_id))
    assert (await status_of(api, sub_id))["events-since-subscription-start"] == "1"
    receiver.status = 200
    resource = (await api.get(f"/fhir/Subscription/{sub_id}")).json()
    resource["status"] = "requested"
    assert (await api.put(f"/fhir/Subscription/{sub_id}", json=resource)).status_code == 200
    await wait_active(api, sub_id)
    await receiver.until(lambda: receiver.events("/h"))
    assert receiver.events("/h")[0].event_numbers == [1]


async def test_topics_are_readable_and_listed_in_the_capability_statement(api: httpx.AsyncClient) -> None:
    listed = (await api.get("/fhir/SubscriptionTopic")).json()
    ids = {e["resource"]["id"] for e in listed["entry"]}
    assert {
        "abnormal-lab-result",
        "critical-lab-result",
        "medication-monitoring",
        "medication-order",
        "pa-status-changed",
        "pa-expiring",
    } <= ids
    one = (await api.get("/fhir/SubscriptionTopic/pa-status-changed")).json()
    assert one["url"] == f.topic_url("pa-status-changed")
    assert (await api.get("/fhir/SubscriptionTopic/nope")).status_code == 404
    by_url = (await api.get("/fhir/SubscriptionTopic", params={"url": f.topic_url("pa-expiring")})).json()
    assert by_url["total"] == 1
    statement = (await api.get("/fhir/metadata")).json()
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    assert f.topic_url("abnormal-lab-result") in {e["valueCanonical"] for e in entry["extension"]}


async def test_idle_subscriptions_get_heartbeats_with_the_current_count_and_custom_headers(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    resource = f.subscription(
        "abnormal-lab-result",
        receiver.url("/hb"),
        heartbeat=1,
        headers=("Authorization: Bearer for-the-hook",),
    )
    sub_id = await subscribe(api, resource)
    await wait_active(api, sub_id)
    patient_id = await make_patient(api)
    await api.post("/fhir/Observation", json=abnormal(patient_id))
    await receiver.until(lambda: [r for r in receiver.on("/hb") if r.kind == "heartbeat"], timeout=5)
    beat = next(r for r in receiver.on("/hb") if r.kind == "heartbeat")
    assert beat.event_numbers == []
    assert beat.parameters["events-since-subscription-start"]["valueString"] == "1"
    assert beat.headers["authorization"] == "Bearer for-the-hook"
    assert beat.signed_with(f.SECRET)


class _Rollback(Exception):
    pass


@pytest.mark.parametrize("backend", ["postgresql"])  # only PostgreSQL runs write transactions at once
async def test_concurrent_transactions_settle_only_their_own_subscription_state(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    """A transaction's commit wakes only its own subscriptions and applies only its own Subscription
    changes; one still open (or rolled back) meanwhile leaves the registry as it was."""
    manager = gateway.subscriptions
    woken: list[set[str]] = []
    manager.on_events.append(lambda ids: woken.append(set(ids)))
    try:
        p1, p2 = await make_patient(api), await make_patient(api)
        s1 = await subscribe(
            api,
            f.subscription("abnormal-lab-result", "http://127.0.0.1:9/a", filters=(f"patient=Patient/{p1}",)),
        )
        s2 = await subscribe(
            api,
            f.subscription("abnormal-lab-result", "http://127.0.0.1:9/b", filters=(f"patient=Patient/{p2}",)),
        )
        await manager.reload()
        ctx = RequestContext(base_url="http://gateway.test/fhir")  # an internal writer
        woken.clear()

        def plan(resource: dict[str, Any], resource_id: str) -> Any:
            return gateway.fhir.plan_new(ctx, resource, resource_id, "POST", dates.now_us())

        with pytest.raises(_Rollback):
            async with gateway.db.write() as conn:
                await gateway.fhir.write_versions(
                    conn,
                    ctx,
                    [
                        plan(abnormal(p2), "obs-in-open-transaction"),
                        plan(
                            f.subscription("abnormal-lab-result", "http://127.0.0.1:9/c"), "sub-rolled-back"
                        ),
                    ],
                )
                # Meanwhile another transaction commits an event for s1.
                assert (await api.post("/fhir/Observation", json=abnormal(p1))).status_code == 201
                assert woken == [{s1}]  # not s2: its event is not committed
                assert "sub-rolled-back" not in manager.index.specs
                raise _Rollback
        assert woken == [{s1}]  # the rolled-back event woke nobody
        assert "sub-rolled-back" not in manager.index.specs

        async with gateway.db.write() as conn:
            await gateway.fhir.write_versions(
                conn,
                ctx,
                [
                    plan(abnormal(p2), "obs-committed"),
                    plan(f.subscription("abnormal-lab-result", "http://127.0.0.1:9/d"), "sub-committed"),
                ],
            )
        assert woken == [{s1}, {s2, "sub-committed"}]  # the new one for its handshake
        assert "sub-committed" in manager.index.specs
        assert (await status_of(api, s2))["events-since-subscription-start"] == "1"
    finally:
        manager.on_events.pop()
