"""Subscription notifications as an upstream EHR sends them (R4 Backport: a history Bundle whose first
entry is the subscription-status Parameters), for the tests of subscribing to an upstream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BASE = "https://ehr.example/fhir"
TOPIC = f"{BASE}/SubscriptionTopic/resource-changed"


def notification(
    kind: str,
    since: int,
    events: Sequence[tuple[int, str]] = (),
    resources: Sequence[dict[str, Any]] = (),
    more: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """`kind` (handshake, heartbeat, event-notification) with `since` events so far, one
    notification-event per (number, focus), then an entry per resource (full-resource payloads) and
    `more` entries as given."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{BASE}/Subscription/s1"}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since)},
    ]
    parameters += [
        {
            "name": "notification-event",
            "part": [
                {"name": "event-number", "valueString": str(number)},
                {"name": "focus", "valueReference": {"reference": focus}},
            ],
        }
        for number, focus in events
    ]
    entries: list[dict[str, Any]] = [{"resource": {"resourceType": "Parameters", "parameter": parameters}}]
    entries += [{"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources]
    return {"resourceType": "Bundle", "type": "history", "entry": [*entries, *more]}
