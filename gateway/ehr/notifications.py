"""Subscribing to an upstream EHR (R4 Subscriptions Backport IG), pure logic: does it offer the topic, the
Subscription we keep there, reading its notifications, and noticing a missed one.

- Support: the upstream's CapabilityStatement lists the topic in the
  `capabilitystatement-subscriptiontopic-canonical` extension (on the Subscription resource entry, or on
  `rest`).
- The Subscription: rest-hook to our receiver (`/ehr/notifications/{upstream}`), the per-upstream secret in
  `channel.header` as `Authorization: Bearer ...`, tagged so a restart finds it again by its endpoint
  (`Subscription?url=`) and its tag rather than creating a second one.
- A notification is a `history` Bundle whose entry[0] is the subscription-status Parameters; event numbers
  count from the subscription's start, and handshakes and heartbeats do not increment them. So a heartbeat
  saying "12 since start" when we last saw 10, or an event numbered 13 after 10, means notifications were
  missed: the caller catches up by polling.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from gateway.types import JSON

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
TOPIC_CANONICAL = f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}/backport-heartbeat-period"
SUBSCRIPTION_PROFILE = f"{BACKPORT}/backport-subscription"
# A gateway as the upstream signs its notifications with this secret too (README "Signature").
SECRET_EXTENSION = "https://specialty-gateway.org/fhir/StructureDefinition/subscription-secret"
TAG_SYSTEM = "https://specialty-gateway.org/fhir/CodeSystem/upstream-subscription"
KINDS = frozenset({"handshake", "heartbeat", "event-notification", "query-status", "query-event"})
MAX_EVENTS = 100  # per notification: more is refused (400), the sender splits (backport-max-count)


class NotificationError(ValueError):
    """A notification that cannot be read; the message names what is wrong (never content)."""


@dataclass(frozen=True, slots=True)
class Event:
    number: int
    focus: str | None  # the focus reference as sent (absolute on the upstream, or relative)


@dataclass(frozen=True, slots=True)
class Notification:
    kind: str  # handshake | heartbeat | event-notification | query-status | query-event
    subscription: str | None
    topic: str | None
    status: str | None
    events_since_start: int | None
    events: tuple[Event, ...]
    resources: dict[str, JSON] = field(default_factory=dict)  # by fullUrl: what full-resource carried


def offers_topic(capability: Any, topic: str) -> bool:
    """Whether the CapabilityStatement lists the topic's canonical URL (a `|version` suffix ignored)."""
    if not isinstance(capability, dict) or capability.get("resourceType") != "CapabilityStatement":
        return False
    wanted = topic.split("|")[0]
    places: list[Any] = []
    for rest in capability.get("rest") or []:
        if not isinstance(rest, dict):
            continue
        places.append(rest)
        places += [r for r in rest.get("resource") or [] if isinstance(r, dict)]
    for place in places:
        for ext in place.get("extension") or []:
            if not isinstance(ext, dict) or ext.get("url") != TOPIC_CANONICAL:
                continue
            value = ext.get("valueCanonical") or ext.get("valueUri")
            if isinstance(value, str) and value.split("|")[0] == wanted:
                return True
    return False


def tag_code(upstream: str, endpoint: str) -> str:
    """Stable per (upstream, our receiver): two gateways subscribing to one EHR keep apart."""
    return f"{upstream}-{hashlib.sha256(endpoint.encode()).hexdigest()[:16]}"


def subscription(
    *, upstream: str, topic: str, endpoint: str, payload: str, heartbeat_s: int, secret: str
) -> JSON:
    """The rest-hook Subscription this gateway keeps on the upstream (status `requested`: it handshakes)."""
    return {
        "resourceType": "Subscription",
        "meta": {
            "profile": [SUBSCRIPTION_PROFILE],
            "tag": [{"system": TAG_SYSTEM, "code": tag_code(upstream, endpoint)}],
        },
        "status": "requested",
        "reason": f"Specialty gateway pull from {upstream}: notified instead of polling",
        "criteria": topic,
        "extension": [{"url": SECRET_EXTENSION, "valueString": secret}],
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "header": [f"Authorization: Bearer {secret}"],
            "extension": [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": heartbeat_s}],
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": payload}]},
        },
    }


def is_ours(found: Any, *, upstream: str, topic: str, endpoint: str) -> bool:
    """A Subscription on the upstream that we made for this receiver and topic (a search hit)."""
    if not isinstance(found, dict) or found.get("resourceType") != "Subscription":
        return False
    tags = (found.get("meta") or {}).get("tag") or []
    code = tag_code(upstream, endpoint)
    tagged = any(
        isinstance(t, dict) and t.get("system") == TAG_SYSTEM and t.get("code") == code for t in tags
    )
    channel = found.get("channel") or {}
    return tagged and found.get("criteria") == topic and channel.get("endpoint") == endpoint


def needs_update(found: JSON, wanted: JSON) -> bool:
    """Whether the found Subscription must be written again: off or in error, or another secret/payload."""
    if found.get("status") not in ("requested", "active"):
        return True
    have, want = found.get("channel") or {}, wanted["channel"]
    return any(have.get(k) != want.get(k) for k in ("header", "_payload", "extension", "type"))


def _int(value: Any, what: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise NotificationError(f"{what} is not a number") from None
    if number < 0:
        raise NotificationError(f"{what} is negative")
    return number


def _param_value(param: JSON) -> Any:
    for key, value in param.items():
        if key.startswith("value"):
            return value
    return None


def parse(bundle: Any) -> Notification:
    """A notification Bundle read; NotificationError when it is not one."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise NotificationError("not a Bundle")
    if bundle.get("type") != "history":
        raise NotificationError("Bundle.type must be history")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise NotificationError("Bundle.entry[0] must be the subscription-status Parameters")
    status = entries[0].get("resource")
    if not isinstance(status, dict) or status.get("resourceType") != "Parameters":
        raise NotificationError("Bundle.entry[0] must be the subscription-status Parameters")
    values: dict[str, Any] = {}
    events: list[Event] = []
    for param in status.get("parameter") or []:
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise NotificationError("a status parameter without a name")
        if param["name"] == "notification-event":
            if len(events) >= MAX_EVENTS:
                raise NotificationError(f"more than {MAX_EVENTS} events in one notification")
            events.append(_event(param))
        else:
            values.setdefault(param["name"], _param_value(param))
    kind = values.get("type")
    if kind not in KINDS:
        raise NotificationError("status parameter 'type' missing or unknown")
    since = values.get("events-since-subscription-start")
    subscription_ref = values.get("subscription")
    resources: dict[str, JSON] = {}
    for entry in entries[1:]:
        if not isinstance(entry, dict):
            raise NotificationError("a Bundle entry that is not an object")
        resource = entry.get("resource")
        if resource is None:
            continue  # id-only: fullUrl and request, no resource
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise NotificationError("an entry's resource has no resourceType")
        url = entry.get("fullUrl")
        if not isinstance(url, str):
            raise NotificationError("an entry with a resource has no fullUrl")
        resources[url] = resource  # a history Bundle may repeat one: its last version wins
    return Notification(
        kind=kind,
        subscription=(subscription_ref or {}).get("reference")
        if isinstance(subscription_ref, dict)
        else None,
        topic=values.get("topic") if isinstance(values.get("topic"), str) else None,
        status=values.get("status") if isinstance(values.get("status"), str) else None,
        events_since_start=None if since is None else _int(since, "events-since-subscription-start"),
        events=tuple(sorted(events, key=lambda e: e.number)),
        resources=resources,
    )


def _event(param: JSON) -> Event:
    number: int | None = None
    focus: str | None = None
    for part in param.get("part") or []:
        if not isinstance(part, dict):
            raise NotificationError("a notification-event part that is not an object")
        if part.get("name") == "event-number":
            number = _int(_param_value(part), "event-number")
        elif part.get("name") == "focus":
            ref = part.get("valueReference")
            if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
                raise NotificationError("a focus without a reference")
            focus = ref["reference"]
    if number is None:
        raise NotificationError("a notification-event without event-number")
    return Event(number, focus)


def missed(last_seen: int | None, note: Notification) -> bool:
    """Whether notifications were missed between the last event number we saw and this one.

    With no number seen yet (a new subscription, or this process restarted) nothing is assumed missing: the
    start-up poll covers what came before. Numbers at or below `last_seen` are repeats (at-least-once).
    """
    if last_seen is None:
        return False
    if note.events:
        return note.events[0].number > last_seen + 1
    return note.events_since_start is not None and note.events_since_start > last_seen


def last_number(last_seen: int | None, note: Notification) -> int | None:
    """The greatest event number known after this notification."""
    numbers = [e.number for e in note.events]
    if note.kind in ("heartbeat", "handshake") and note.events_since_start is not None:
        numbers.append(note.events_since_start)
    if last_seen is not None:
        numbers.append(last_seen)
    return max(numbers) if numbers else None


def split_reference(reference: str) -> tuple[str | None, str, str] | None:
    """(base or None, type, id) of `[base/]Type/id[/_history/v]`; None when it is not such a reference."""
    path = reference.split("/_history/")[0]
    parts = path.rsplit("/", 2)
    if len(parts) < 2:
        return None
    if len(parts) == 2:
        base, rtype, rid = None, parts[0], parts[1]
    else:
        base, rtype, rid = parts
    if not rtype[:1].isupper() or not rtype.isalpha() or not rid:
        return None
    return base, rtype, rid


def patient_of(resource: JSON) -> str | None:
    """The remote id of the patient a resource is about (for an upstream pulled for some patients only)."""
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id"))
    for element in ("subject", "patient", "for", "beneficiary"):
        ref = resource.get(element)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            parts = split_reference(ref["reference"])
            if parts is not None and parts[1] == "Patient":
                return parts[2]
    return None
