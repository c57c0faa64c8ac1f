"""Notification Bundles and `$status` Parameters, shaped as the R4 Subscriptions Backport IG defines them.

A notification is a `history` Bundle: entry[0] is the subscription-status Parameters (with
`events-since-subscription-start` and one `notification-event` part per event), then one entry per
resource version the payload content allows: each event's own version of its focus (never an older
one), so one resource may appear once per version, each entry naming its version in `response`.
Signatures are HMAC-SHA256 of the exact body bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.fhir.dates import format_instant
from gateway.routing.requests import BACKPORT
from gateway.routing.requests import SIGNATURE_HEADER as SIGNATURE_HEADER  # where it was defined first
from gateway.routing.topics import GATEWAY_FHIR
from gateway.types import JSON

NOTIFICATION_PROFILE = f"{BACKPORT}/backport-subscription-notification-r4"
STATUS_PROFILE = f"{BACKPORT}/backport-subscription-status-r4"
ALERT_EXTENSION = f"{GATEWAY_FHIR}/StructureDefinition/notification-event-detail"

ResourceKey = tuple[str, str, int]  # (type, id, version)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One numbered event of one subscription, as the outbox keeps it."""

    number: int
    topic: str
    focus_type: str
    focus_id: str
    focus_version: int
    created_us: int
    details: JSON | None = None


@dataclass(frozen=True, slots=True)
class StatusHeader:
    """What entry[0] of every notification (and `$status`) says about the subscription."""

    base_url: str
    subscription_id: str
    topic_url: str
    status: str
    events_since_start: int
    error: str | None = None


def sign(body: bytes, secret: str) -> str:
    """Hex HMAC-SHA256 of the body: what the X-Signature header carries."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    return hmac.compare_digest(sign(body, secret), signature)


def _detail_extension(details: JSON) -> JSON:
    return {
        "url": ALERT_EXTENSION,
        "extension": [
            {"url": key, "valueString": str(value)}
            for key, value in details.items()
            if value is not None and not isinstance(value, (list, dict))
        ],
    }


def _event_part(base: str, event: EventRecord, content: str) -> JSON:
    parts: list[JSON] = [
        {"name": "event-number", "valueString": str(event.number)},
        {"name": "timestamp", "valueInstant": format_instant(event.created_us)},
    ]
    if content != "empty":
        parts.append(
            {"name": "focus", "valueReference": {"reference": f"{base}/{event.focus_type}/{event.focus_id}"}}
        )
        for context in (event.details or {}).get("context", []):
            parts.append({"name": "additional-context", "valueReference": {"reference": f"{base}/{context}"}})
    part: JSON = {"name": "notification-event", "part": parts}
    if event.details and content != "empty":  # empty content carries nothing about the resource
        detail = _detail_extension({k: v for k, v in event.details.items() if k != "context"})
        if detail["extension"]:
            part["extension"] = [detail]
    return part


def status_parameters(
    header: StatusHeader, kind: str, events: Sequence[EventRecord] = (), content: str = "id-only"
) -> JSON:
    base = header.base_url.rstrip("/")
    parameters: list[JSON] = [
        {
            "name": "subscription",
            "valueReference": {"reference": f"{base}/Subscription/{header.subscription_id}"},
        },
        {"name": "topic", "valueCanonical": header.topic_url},
        {"name": "status", "valueCode": header.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(header.events_since_start)},
    ]
    parameters += [_event_part(base, e, content) for e in events]
    if header.error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": header.error}})
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }


def notification_bundle(
    header: StatusHeader,
    kind: str,
    events: Sequence[EventRecord],
    content: str,
    resources: Mapping[ResourceKey, JSON | None],
    *,
    now_us: int,
) -> JSON:
    """The notification for `events` (none for handshakes and heartbeats).

    `resources` holds, in event order, the version of its focus each event was about and whatever the
    topic's shape includes; a None value means the subscriber may not see that resource (its token's
    scopes), so it goes id-only.
    """
    base = header.base_url.rstrip("/")
    entries: list[JSON] = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": status_parameters(header, kind, events, content),
            "request": {"method": "GET", "url": f"{base}/Subscription/{header.subscription_id}/$status"},
            "response": {"status": "200"},
        }
    ]
    if content != "empty":
        # One entry per resource version, in the order given (each event's focus, then what the topic
        # includes): two events of one resource in one notification bring both versions, so an event
        # never arrives with an older state than its own. fullUrl stays version-independent as R4
        # requires (a history Bundle may repeat it); the response names the version, as a server's
        # answer to that create or update would.
        for (rtype, rid, version), resource in resources.items():
            entry: JSON = {
                "fullUrl": f"{base}/{rtype}/{rid}",
                "request": {"method": "PUT", "url": f"{rtype}/{rid}"},
                "response": {
                    "status": "201" if version == 1 else "200",
                    "etag": f'W/"{version}"',
                    "location": f"{rtype}/{rid}/_history/{version}",
                },
            }
            if content == "full-resource" and resource is not None:
                entry["resource"] = resource
            entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": format_instant(now_us),
        "entry": entries,
    }
