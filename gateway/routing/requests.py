"""Reading a Subscription resource (R4 Subscriptions Backport profile) into what delivery needs.

Everything a client may get wrong is reported as an OperationOutcome issue with its expression:
unknown topic, filter, channel type or payload content, a bad heartbeat/timeout/maxCount, a header
that is not `Name: value` or that `channel.header` may not set (RESERVED_HEADERS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.ehr.forward import CHANNEL_TYPE_EXTENSION, CHANNEL_TYPE_SYSTEM
from gateway.routing.filters import Filter, FilterError, parse_filters
from gateway.routing.topics import GATEWAY_FHIR, Topic, TopicSet
from gateway.types import JSON, Issue

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}/backport-heartbeat-period"
TIMEOUT = f"{BACKPORT}/backport-timeout"
MAX_COUNT = f"{BACKPORT}/backport-max-count"
SUBSCRIPTION_PROFILE = f"{BACKPORT}/backport-subscription"
# The client's HMAC key for notification signatures (optional; the gateway makes one when absent).
SECRET_EXTENSION = f"{GATEWAY_FHIR}/StructureDefinition/subscription-secret"

# Headers the gateway sets on every rest-hook POST (what subscribers verify and order by).
SIGNATURE_HEADER = "X-Signature"
SUBSCRIPTION_ID_HEADER = "X-Subscription-Id"
EVENT_NUMBERS_HEADER = "X-Event-Numbers"
# What `channel.header` may not set, lower-cased: the gateway's own headers (a forged signature or
# event range), the message framing and connection handling (Host would send the request to another
# virtual host behind the checked address; Content-Length and Transfer-Encoding could smuggle a second
# request), and what proxies in front of an internal service trust about the caller.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        SIGNATURE_HEADER,
        SUBSCRIPTION_ID_HEADER,
        EVENT_NUMBERS_HEADER,
        "Content-Type",  # channel.payload says it
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
        "Expect",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Real-IP",
    )
)

# fhir-forward: the gateway's own subscriptions writing to an upstream FHIR server (gateway/ehr/forward.py);
# clients may not create one (service/subscriptions/manager.py). Not an R4 code: it is given by the
# backport-channel-type extension on `channel._type` (a Coding of CHANNEL_TYPE_SYSTEM), see channel_type_of.
CHANNEL_TYPES = ("rest-hook", "websocket", "fhir-forward")
CONTENT_LEVELS = ("empty", "id-only", "full-resource")
PAYLOAD_TYPES = ("application/fhir+json", "application/json")
CLIENT_STATUSES = ("requested", "active", "off")
DEFAULT_TIMEOUT_S = 10
MAX_TIMEOUT_S = 60
DEFAULT_MAX_COUNT = 20
MAX_MAX_COUNT = 500


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    id: str
    status: str
    topic: Topic
    filters: tuple[Filter, ...]
    channel: str  # rest-hook | websocket | fhir-forward
    endpoint: str | None
    content: str  # empty | id-only | full-resource
    payload_type: str
    heartbeat_s: int | None
    timeout_s: int
    max_count: int
    headers: tuple[tuple[str, str], ...]
    secret: str | None
    end_us: int | None = None


def _extension(element: Any, url: str) -> list[Any]:
    if not isinstance(element, dict):
        return []
    return [e for e in element.get("extension", []) if isinstance(e, dict) and e.get("url") == url]


def _single_value(element: Any, url: str, key: str) -> Any:
    found = _extension(element, url)
    return found[0].get(key) if found else None


def channel_type_of(channel: JSON) -> Any:
    """`channel.type`, or the code of a backport-channel-type extension on it (the IG's way for a channel
    type R4 does not have): ours as the bare code, another system's as `system|code` (not supported)."""
    coding = _single_value(channel.get("_type"), CHANNEL_TYPE_EXTENSION, "valueCoding")
    if not isinstance(coding, dict):
        return channel.get("type")
    if coding.get("system") == CHANNEL_TYPE_SYSTEM:
        return coding.get("code")
    return f"{coding.get('system')}|{coding.get('code')}"


def parse_subscription(
    resource: JSON, topics: TopicSet, *, end_us: int | None = None
) -> tuple[SubscriptionSpec | None, list[Issue]]:
    """The spec, or None with the problems found (every one of them, not just the first)."""
    issues: list[Issue] = []

    def problem(expression: str, text: str, code: str = "value") -> None:
        issues.append(Issue("error", code, text, (expression,)))

    topic_url = resource.get("criteria")
    topic = topics.by_url(topic_url) if isinstance(topic_url, str) else None
    if topic is None:
        known = ", ".join(t.url for t in topics.topics)
        problem(
            "Subscription.criteria", f"Unknown topic {topic_url!r}; known topics: {known}", "not-supported"
        )
    criteria_element = resource.get("_criteria")
    texts = [e.get("valueString") for e in _extension(criteria_element, FILTER_CRITERIA)]
    filters: list[Filter] = []
    if any(not isinstance(t, str) for t in texts):
        problem("Subscription.criteria.extension", "backport-filter-criteria needs a valueString")
    elif topic is not None:
        try:
            filters = parse_filters([t for t in texts if isinstance(t, str)], topic)
        except FilterError as exc:
            problem("Subscription.criteria.extension", str(exc), "not-supported")

    status = resource.get("status")
    if status not in (*CLIENT_STATUSES, "error"):
        problem(
            "Subscription.status",
            f"Status {status!r} is not one a client may set ({', '.join(CLIENT_STATUSES)})",
        )

    channel: JSON = resource["channel"] if isinstance(resource.get("channel"), dict) else {}
    channel_type = channel_type_of(channel)
    if channel_type not in CHANNEL_TYPES:
        problem(
            "Subscription.channel.type",
            f"Channel type {channel_type!r} is not supported (supported: {', '.join(CHANNEL_TYPES)})",
            "not-supported",
        )
    endpoint = channel.get("endpoint")
    if channel_type == "rest-hook" and not isinstance(endpoint, str):
        problem(
            "Subscription.channel.endpoint", "A rest-hook subscription needs channel.endpoint", "required"
        )
    payload_type = channel.get("payload", "application/fhir+json")
    if payload_type not in PAYLOAD_TYPES:
        problem(
            "Subscription.channel.payload", f"Payload type {payload_type!r} is not supported", "not-supported"
        )
    content = _single_value(channel.get("_payload"), PAYLOAD_CONTENT, "valueCode") or "id-only"
    if content not in CONTENT_LEVELS:
        problem(
            "Subscription.channel.payload.extension",
            f"Payload content {content!r} is not supported (supported: {', '.join(CONTENT_LEVELS)})",
            "not-supported",
        )
    heartbeat = _single_value(channel, HEARTBEAT_PERIOD, "valueUnsignedInt")
    if heartbeat is not None and (type(heartbeat) is not int or heartbeat < 1):
        problem(
            "Subscription.channel.extension", "backport-heartbeat-period must be a positive number of seconds"
        )
        heartbeat = None
    timeout = _single_value(channel, TIMEOUT, "valueUnsignedInt")
    if timeout is not None and (type(timeout) is not int or not 1 <= timeout <= MAX_TIMEOUT_S):
        problem("Subscription.channel.extension", f"backport-timeout must be 1..{MAX_TIMEOUT_S} seconds")
        timeout = None
    max_count = _single_value(channel, MAX_COUNT, "valuePositiveInt")
    if max_count is not None and (type(max_count) is not int or not 1 <= max_count <= MAX_MAX_COUNT):
        problem("Subscription.channel.extension", f"backport-max-count must be 1..{MAX_MAX_COUNT}")
        max_count = None
    headers: list[tuple[str, str]] = []
    for i, header in enumerate(channel.get("header", [])):
        name, sep, value = header.partition(":") if isinstance(header, str) else ("", "", "")
        if not sep or not name.strip() or any(c in name for c in " \r\n") or any(c in value for c in "\r\n"):
            problem(f"Subscription.channel.header[{i}]", "A header must be 'Name: value' on one line")
        elif name.strip().lower() in RESERVED_HEADERS:
            problem(
                f"Subscription.channel.header[{i}]",
                f"channel.header may not set {name.strip()}: the gateway or the connection sets it",
                "business-rule",
            )
        else:
            headers.append((name.strip(), value.strip()))
    secret = _single_value(resource, SECRET_EXTENSION, "valueString")
    if secret is None and channel_type == "rest-hook":
        problem(
            "Subscription.extension",
            f"A rest-hook subscription needs the {SECRET_EXTENSION} extension: the key (16+ characters)"
            " its notifications are signed with",
            "required",
        )
    elif secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        problem("Subscription.extension", "subscription-secret must be a string of at least 16 characters")

    if issues or topic is None:
        return None, issues
    return (
        SubscriptionSpec(
            id=str(resource.get("id", "")),
            status=str(status),
            topic=topic,
            filters=tuple(filters),
            channel=str(channel_type),
            endpoint=endpoint if isinstance(endpoint, str) else None,
            content=str(content),
            payload_type=str(payload_type),
            heartbeat_s=heartbeat,
            timeout_s=timeout or DEFAULT_TIMEOUT_S,
            max_count=max_count or DEFAULT_MAX_COUNT,
            headers=tuple(headers),
            secret=secret,
            end_us=end_us,
        ),
        [],
    )
