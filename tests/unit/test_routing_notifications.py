"""Notification Bundles as the R4 Subscriptions Backport IG shapes them, and their HMAC signatures."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.bundle import Bundle

from gateway.fhir.dates import format_instant
from gateway.routing.notifications import (
    ALERT_EXTENSION,
    NOTIFICATION_PROFILE,
    STATUS_PROFILE,
    EventRecord,
    ResourceKey,
    StatusHeader,
    notification_bundle,
    sign,
    status_parameters,
    verify,
)
from gateway.types import JSON
from tests.factories import SECRET, lab_observation, patient

BASE = "https://gw.example.org/fhir"
TOPIC = "https://specialty-gateway.org/fhir/SubscriptionTopic/abnormal-lab-result"
NOW = 1_717_243_200_000_000  # 2024-06-01T12:00:00Z
HEADER = StatusHeader(BASE + "/", "sub-1", TOPIC, "active", 42)


def _event(number: int, focus_id: str = "o1", details: JSON | None = None, version: int = 1) -> EventRecord:
    return EventRecord(number, TOPIC, "Observation", focus_id, version, NOW - number * 1_000_000, details)


def _observation(focus_id: str) -> JSON:
    return {"id": focus_id, **lab_observation("p1")}


def _params(resource: JSON) -> dict[str, list[JSON]]:
    found: dict[str, list[JSON]] = {}
    for parameter in resource["parameter"]:
        found.setdefault(parameter["name"], []).append(parameter)
    return found


def _parts(event_part: JSON) -> dict[str, list[JSON]]:
    found: dict[str, list[JSON]] = {}
    for part in event_part["part"]:
        found.setdefault(part["name"], []).append(part)
    return found


def _valid_fhir(bundle: JSON) -> None:
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "history"
    assert len(parsed.entry or []) == len(bundle["entry"])


def _bundle(
    content: str,
    events: list[EventRecord],
    resources: dict[ResourceKey, JSON | None],
    kind: str = "event-notification",
) -> JSON:
    bundle = notification_bundle(HEADER, kind, events, content, resources, now_us=NOW)
    _valid_fhir(bundle)
    return bundle


def _check_status_entry(bundle: JSON, kind: str, events: int) -> dict[str, list[JSON]]:
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    assert bundle["meta"]["profile"] == [NOTIFICATION_PROFILE]
    assert bundle["timestamp"] == format_instant(NOW) == "2024-06-01T12:00:00.000000Z"
    first = bundle["entry"][0]
    assert first["fullUrl"].startswith("urn:uuid:")
    assert first["request"] == {"method": "GET", "url": f"{BASE}/Subscription/sub-1/$status"}
    assert first["request"]["url"].endswith("/Subscription/sub-1/$status")
    assert first["response"] == {"status": "200"}
    status = first["resource"]
    assert status["resourceType"] == "Parameters"
    assert status["meta"]["profile"] == [STATUS_PROFILE]
    params = _params(status)
    assert params["subscription"] == [
        {"name": "subscription", "valueReference": {"reference": f"{BASE}/Subscription/sub-1"}}
    ]
    assert params["topic"][0]["valueCanonical"] == TOPIC
    assert params["status"][0]["valueCode"] == "active"
    assert params["type"][0]["valueCode"] == kind
    assert params["events-since-subscription-start"] == [
        {"name": "events-since-subscription-start", "valueString": "42"}
    ]
    assert len(params.get("notification-event", [])) == events
    return params


# --- content levels -----------------------------------------------------------------------------------


def test_id_only() -> None:
    events = [_event(41, "o1"), _event(42, "o2", version=3)]
    resources: dict[ResourceKey, JSON | None] = {
        ("Observation", "o1", 1): _observation("o1"),
        ("Observation", "o2", 3): _observation("o2"),
    }
    bundle = _bundle("id-only", events, resources)
    params = _check_status_entry(bundle, "event-notification", 2)
    first, second = params["notification-event"]
    parts = _parts(first)
    assert parts["event-number"] == [{"name": "event-number", "valueString": "41"}]
    assert parts["timestamp"] == [{"name": "timestamp", "valueInstant": format_instant(NOW - 41_000_000)}]
    assert parts["focus"] == [{"name": "focus", "valueReference": {"reference": f"{BASE}/Observation/o1"}}]
    assert "extension" not in first  # no details
    assert _parts(second)["event-number"][0]["valueString"] == "42"
    assert _parts(second)["focus"][0]["valueReference"]["reference"] == f"{BASE}/Observation/o2"

    entries = bundle["entry"][1:]
    assert entries == [
        {
            "fullUrl": f"{BASE}/Observation/o1",
            "request": {"method": "PUT", "url": "Observation/o1"},
            "response": {
                "status": "201",
                "etag": 'W/"1"',
                "location": "Observation/o1/_history/1",
            },  # created
        },
        {
            "fullUrl": f"{BASE}/Observation/o2",
            "request": {"method": "PUT", "url": "Observation/o2"},
            "response": {
                "status": "200",
                "etag": 'W/"3"',
                "location": "Observation/o2/_history/3",
            },  # updated
        },
    ]
    assert all("resource" not in e for e in entries)


def test_full_resource() -> None:
    observation, subject = _observation("o1"), {"id": "p1", **patient()}
    resources: dict[ResourceKey, JSON | None] = {
        ("Observation", "o1", 1): observation,
        ("Patient", "p1", 2): subject,
    }
    bundle = _bundle("full-resource", [_event(42)], resources)
    _check_status_entry(bundle, "event-notification", 1)
    assert [e["fullUrl"] for e in bundle["entry"][1:]] == [f"{BASE}/Observation/o1", f"{BASE}/Patient/p1"]
    assert bundle["entry"][1]["resource"] == observation
    assert bundle["entry"][2]["resource"] == subject
    assert bundle["entry"][2]["request"] == {"method": "PUT", "url": "Patient/p1"}


def test_full_resource_the_subscriber_may_not_see_stays_id_only() -> None:
    resources: dict[ResourceKey, JSON | None] = {
        ("Observation", "o1", 1): _observation("o1"),
        ("Patient", "p1", 1): None,
    }
    bundle = _bundle("full-resource", [_event(42)], resources)
    observation_entry, patient_entry = bundle["entry"][1:]
    assert "resource" in observation_entry
    assert "resource" not in patient_entry
    assert patient_entry["fullUrl"] == f"{BASE}/Patient/p1"
    assert patient_entry["request"] == {"method": "PUT", "url": "Patient/p1"}


def _versioned_observation(focus_id: str, version: int, status: str) -> JSON:
    return {**_observation(focus_id), "status": status, "meta": {"versionId": str(version)}}


def test_each_event_of_one_resource_carries_its_own_version() -> None:
    """Two events of one resource in one notification (preliminary, then final): each version is there,
    in event order, so the later event never comes with the earlier state."""
    first, second = _versioned_observation("o1", 1, "preliminary"), _versioned_observation("o1", 2, "final")
    resources: dict[ResourceKey, JSON | None] = {
        ("Observation", "o1", 1): first,
        ("Observation", "o1", 2): second,
    }
    bundle = _bundle("full-resource", [_event(41), _event(42, version=2)], resources)
    entries = bundle["entry"][1:]
    assert [e["resource"] for e in entries] == [first, second]
    # fullUrl stays version-independent (R4 Bundle.entry.fullUrl; a history Bundle may repeat it); the
    # version is in the response, as a FHIR server answers a create or update.
    assert [e["fullUrl"] for e in entries] == [f"{BASE}/Observation/o1"] * 2
    assert [e["response"] for e in entries] == [
        {"status": "201", "etag": 'W/"1"', "location": "Observation/o1/_history/1"},
        {"status": "200", "etag": 'W/"2"', "location": "Observation/o1/_history/2"},
    ]
    id_only = _bundle("id-only", [_event(41), _event(42, version=2)], resources)
    assert [e["response"]["etag"] for e in id_only["entry"][1:]] == ['W/"1"', 'W/"2"']
    assert all("resource" not in e for e in id_only["entry"][1:])


def test_events_of_one_version_share_its_entry() -> None:
    resources: dict[ResourceKey, JSON | None] = {("Observation", "o1", 3): _observation("o1")}
    bundle = _bundle("id-only", [_event(41, version=3), _event(42, version=3)], resources)
    assert [e["response"]["location"] for e in bundle["entry"][1:]] == ["Observation/o1/_history/3"]


def test_empty() -> None:
    bundle = _bundle("empty", [_event(42)], {("Observation", "o1", 1): _observation("o1")})
    params = _check_status_entry(bundle, "event-notification", 1)
    assert len(bundle["entry"]) == 1  # the status only
    parts = _parts(params["notification-event"][0])
    assert set(parts) == {"event-number", "timestamp"}  # no focus


def test_empty_has_no_additional_context() -> None:
    event = _event(42, details={"context": ["MedicationRequest/mr1"], "rule": "clozapine-anc"})
    bundle = _bundle("empty", [event], {})
    (event_part,) = _params(bundle["entry"][0]["resource"])["notification-event"]
    assert set(_parts(event_part)) == {"event-number", "timestamp"}


# --- details ------------------------------------------------------------------------------------------


def test_details_become_an_extension_and_context_additional_context() -> None:
    details: JSON = {
        "rule": "clozapine-anc",
        "drug": "clozapine",
        "value": 900.0,
        "previousStatus": None,  # dropped
        "nested": {"a": 1},  # not a simple value: dropped
        "context": ["MedicationRequest/mr1", "MedicationRequest/mr2"],
    }
    bundle = _bundle("id-only", [_event(42, details=details)], {("Observation", "o1", 1): None})
    (event_part,) = _params(bundle["entry"][0]["resource"])["notification-event"]
    assert event_part["extension"] == [
        {
            "url": ALERT_EXTENSION,
            "extension": [
                {"url": "rule", "valueString": "clozapine-anc"},
                {"url": "drug", "valueString": "clozapine"},
                {"url": "value", "valueString": "900.0"},
            ],
        }
    ]
    parts = _parts(event_part)
    assert [p["valueReference"]["reference"] for p in parts["additional-context"]] == [
        f"{BASE}/MedicationRequest/mr1",
        f"{BASE}/MedicationRequest/mr2",
    ]
    names = [p["name"] for p in event_part["part"]]
    assert names == ["event-number", "timestamp", "focus", "additional-context", "additional-context"]


def test_details_with_nothing_to_show_add_no_empty_extension() -> None:
    event = _event(42, details={"context": ["MedicationRequest/mr1"], "previousStatus": None})
    bundle = _bundle("id-only", [event], {})
    (event_part,) = _params(bundle["entry"][0]["resource"])["notification-event"]
    for extension in event_part.get("extension", []):
        assert extension.get("extension"), "an extension without a value needs sub-extensions"


# --- handshake, heartbeat, $status --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["handshake", "heartbeat"])
def test_handshake_and_heartbeat_have_no_events(kind: str) -> None:
    bundle = _bundle("full-resource", [], {}, kind=kind)
    params = _check_status_entry(bundle, kind, 0)
    assert "notification-event" not in params
    assert len(bundle["entry"]) == 1


def test_error_is_reported_in_the_status() -> None:
    header = StatusHeader(BASE, "sub-9", TOPIC, "error", 0, error="endpoint returned 500")
    parameters = status_parameters(header, "query-status")
    params = _params(parameters)
    assert params["error"] == [{"name": "error", "valueCodeableConcept": {"text": "endpoint returned 500"}}]
    assert params["status"][0]["valueCode"] == "error"
    assert params["subscription"][0]["valueReference"]["reference"] == f"{BASE}/Subscription/sub-9"
    assert "error" not in _params(status_parameters(HEADER, "query-status"))


def test_ids_are_fresh() -> None:
    first = notification_bundle(HEADER, "heartbeat", [], "id-only", {}, now_us=NOW)
    second = notification_bundle(HEADER, "heartbeat", [], "id-only", {}, now_us=NOW)
    assert first["id"] != second["id"]
    assert first["entry"][0]["fullUrl"] != second["entry"][0]["fullUrl"]
    assert first["entry"][0]["resource"]["id"] != second["entry"][0]["resource"]["id"]


# --- signatures ---------------------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    body = b'{"resourceType":"Bundle","type":"history"}'
    signature = sign(body, SECRET)
    assert len(signature) == 64 and int(signature, 16) >= 0  # hex SHA-256
    assert sign(body, SECRET) == signature  # deterministic
    assert verify(body, SECRET, signature)
    assert not verify(body + b" ", SECRET, signature)  # tampered body
    assert not verify(body.replace(b"history", b"batch"), SECRET, signature)
    assert not verify(body, SECRET + "x", signature)  # wrong key
    assert not verify(body, SECRET, "0" * 64)


def test_known_hmac_vector() -> None:
    # RFC 4231 test case 2
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign(b"what do ya want for nothing?", "Jefe") == expected
