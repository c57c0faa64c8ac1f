"""Subscribing to an upstream EHR, the pure part (gateway/ehr/notifications.py): topic support from the
CapabilityStatement, the Subscription we keep there, reading notifications, and noticing a missed one."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.ehr import notifications as notes
from gateway.ehr.upstreams import parse_upstreams
from tests.notifications import BASE, TOPIC, notification

ENDPOINT = "https://gw.example/ehr/notifications/ehr"


def capability(*topics: str, on_rest: bool = False) -> dict[str, Any]:
    ext = [{"url": notes.TOPIC_CANONICAL, "valueCanonical": t} for t in topics]
    rest: dict[str, Any] = {"mode": "server", "resource": [{"type": "Subscription"}]}
    if on_rest:
        rest["extension"] = ext
    else:
        rest["resource"][0]["extension"] = ext
    return {"resourceType": "CapabilityStatement", "rest": [rest]}


def test_the_topic_is_offered_when_the_capability_statement_lists_it() -> None:
    assert notes.offers_topic(capability(TOPIC), TOPIC)
    assert notes.offers_topic(capability(f"{TOPIC}|1.0.0", on_rest=True), TOPIC)
    assert not notes.offers_topic(capability(f"{BASE}/SubscriptionTopic/other"), TOPIC)
    assert not notes.offers_topic(
        {"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]}, TOPIC
    )
    assert not notes.offers_topic({"resourceType": "OperationOutcome"}, TOPIC)


def test_the_subscription_we_keep_is_a_tagged_rest_hook_with_our_secret() -> None:
    sub = notes.subscription(
        upstream="ehr", topic=TOPIC, endpoint=ENDPOINT, payload="id-only", heartbeat_s=30, secret="s3cret"
    )
    assert sub["criteria"] == TOPIC and sub["status"] == "requested"
    assert sub["channel"]["type"] == "rest-hook" and sub["channel"]["endpoint"] == ENDPOINT
    assert sub["channel"]["header"] == ["Authorization: Bearer s3cret"]
    assert sub["channel"]["_payload"]["extension"][0]["valueCode"] == "id-only"
    assert notes.is_ours(
        {**sub, "id": "x", "status": "active"}, upstream="ehr", topic=TOPIC, endpoint=ENDPOINT
    )
    # another gateway's (another receiver), or ours on another topic: not ours
    assert not notes.is_ours(sub, upstream="ehr", topic=TOPIC, endpoint=ENDPOINT + "x")
    assert not notes.is_ours({**sub, "criteria": TOPIC + "2"}, upstream="ehr", topic=TOPIC, endpoint=ENDPOINT)
    assert not notes.needs_update({**sub, "status": "active"}, sub)
    assert notes.needs_update({**sub, "status": "error"}, sub)  # re-requested
    rotated = notes.subscription(
        upstream="ehr", topic=TOPIC, endpoint=ENDPOINT, payload="id-only", heartbeat_s=30, secret="other"
    )
    assert notes.needs_update({**sub, "status": "active"}, rotated)


def test_an_event_notification_is_read_with_its_numbers_foci_and_resources() -> None:
    bundle = notification(
        "event-notification",
        7,
        [(7, f"{BASE}/Observation/o2"), (6, f"{BASE}/Observation/o1")],
        more=[{"fullUrl": f"{BASE}/Observation/o1", "resource": {"resourceType": "Observation", "id": "o1"}}],
    )
    note = notes.parse(bundle)
    assert note.kind == "event-notification" and note.events_since_start == 7
    assert [e.number for e in note.events] == [6, 7]  # in number order
    assert note.events[0].focus == f"{BASE}/Observation/o1"
    assert list(note.resources) == [f"{BASE}/Observation/o1"]
    assert note.subscription == f"{BASE}/Subscription/s1"


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        ([], "not a Bundle"),
        ({"resourceType": "Bundle", "type": "collection", "entry": []}, "history"),
        ({"resourceType": "Bundle", "type": "history", "entry": []}, "entry\\[0\\]"),
        (
            {
                "resourceType": "Bundle",
                "type": "history",
                "entry": [{"resource": {"resourceType": "Patient"}}],
            },
            "Parameters",
        ),
        (notification("gossip", 1), "'type'"),
        (notification("heartbeat", -1), "negative"),
        (
            notification("heartbeat", 1, more=[{"resource": {"resourceType": "Patient", "id": "p"}}]),
            "fullUrl",
        ),
    ],
)
def test_what_is_not_a_notification_is_refused_naming_why(bundle: Any, message: str) -> None:
    with pytest.raises(notes.NotificationError, match=message):
        notes.parse(bundle)


def test_too_many_events_in_one_notification_are_refused() -> None:
    events = [(i, f"{BASE}/Patient/p{i}") for i in range(1, notes.MAX_EVENTS + 2)]
    with pytest.raises(notes.NotificationError, match="more than"):
        notes.parse(notification("event-notification", len(events), events))


def test_a_gap_in_event_numbers_is_noticed() -> None:
    def missed(last: int | None, kind: str, since: int, numbers: list[int]) -> bool:
        note = notes.parse(notification(kind, since, [(n, f"{BASE}/Patient/p") for n in numbers]))
        return notes.missed(last, note)

    assert not missed(4, "event-notification", 5, [5])  # the next one
    assert missed(4, "event-notification", 7, [6, 7])  # 5 never came
    assert not missed(4, "event-notification", 4, [3, 4])  # a repeat (at least once)
    assert not missed(None, "event-notification", 9, [9])  # nothing seen yet: the start-up poll covers it
    assert not missed(5, "heartbeat", 5, [])
    assert missed(5, "heartbeat", 6, [])  # the heartbeat knows of an event we never got
    note = notes.parse(notification("heartbeat", 6))
    assert notes.last_number(5, note) == 6
    note = notes.parse(
        notification("event-notification", 9, [(8, f"{BASE}/Patient/p"), (9, f"{BASE}/Patient/p")])
    )
    assert notes.last_number(5, note) == 9


def test_references_and_the_patient_a_resource_is_about() -> None:
    assert notes.split_reference(f"{BASE}/Observation/o1/_history/2") == (BASE, "Observation", "o1")
    assert notes.split_reference("Patient/p1") == (None, "Patient", "p1")
    assert notes.split_reference("nonsense") is None
    assert notes.patient_of({"resourceType": "Patient", "id": "p1"}) == "p1"
    assert (
        notes.patient_of({"resourceType": "Observation", "subject": {"reference": f"{BASE}/Patient/p2"}})
        == "p2"
    )
    assert notes.patient_of({"resourceType": "Observation"}) is None


def upstream_entry(**subscribe: Any) -> dict[str, Any]:
    return {
        "upstreams": [
            {
                "name": "ehr",
                "base_url": BASE,
                "resources": ["Patient", "Observation"],
                "subscribe": {"topic": TOPIC, "endpoint": ENDPOINT, **subscribe},
            }
        ]
    }


def test_the_subscribe_setting_is_read_and_checked() -> None:
    (upstream,) = parse_upstreams(upstream_entry(payload="full-resource", heartbeat_seconds=30))
    assert upstream.subscribe is not None
    assert (upstream.subscribe.payload, upstream.subscribe.heartbeat_seconds) == ("full-resource", 30)
    (default,) = parse_upstreams(upstream_entry())
    assert default.subscribe is not None and default.subscribe.payload == "id-only"


@pytest.mark.parametrize(
    ("subscribe", "message"),
    [
        ({"payload": "empty"}, "subscribe.payload"),
        ({"heartbeat_seconds": 0}, "heartbeat_seconds"),
        ({"endpoint": "https://gw.example/ehr/notifications/other"}, "must end with /ehr/notifications/ehr"),
        ({"topic": "resource-changed"}, "subscribe.topic"),
        ({"polling": True}, "polling"),
    ],
)
def test_a_wrong_subscribe_setting_stops_the_start_naming_it(subscribe: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_upstreams(upstream_entry(**subscribe))
