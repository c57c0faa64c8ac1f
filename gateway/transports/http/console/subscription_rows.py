"""What the console's subscriptions page shows of one Subscription: pure shaping, no I/O.

Never the signing secret or the `channel.header` values (credentials for the subscriber's endpoint): only
the endpoint's URL, with any user and password in it dropped, is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from gateway.fhir import dates
from gateway.routing.requests import SubscriptionSpec
from gateway.store.subscriptions import Attempt, DeliveryState

REACTIVATABLE = frozenset({"error", "off"})  # a client re-requests these; active/requested need nothing


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    id: str
    status: str
    topic: str
    channel: str
    endpoint: str
    owner: str
    last_delivery: str  # "" when nothing was ever attempted
    last_outcome: str
    failures: int  # consecutive failed attempts (0 once one succeeds)
    last_error: str
    backlog: int  # events committed and not yet delivered
    reactivatable: bool


def endpoint_shown(endpoint: str | None) -> str:
    """The endpoint without user info (a URL may carry a password) or query (may carry a token)."""
    if not endpoint:
        return ""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def subscription_row(spec: SubscriptionSpec, state: DeliveryState, last: Attempt | None) -> SubscriptionRow:
    outcome = ""
    if last is not None:
        outcome = f"{last.outcome} (HTTP {last.http_status})" if last.http_status else last.outcome
    return SubscriptionRow(
        id=spec.id,
        status=state.status,
        topic=spec.topic.url.rsplit("/", 1)[-1],
        channel=spec.channel,
        endpoint=endpoint_shown(spec.endpoint),
        owner=state.owner or "",
        last_delivery=dates.format_instant(last.started_us) if last is not None else "",
        last_outcome=outcome,
        failures=state.failures,
        last_error=state.last_error or "",
        backlog=max(0, state.last_event - state.delivered),
        reactivatable=state.status in REACTIVATABLE,
    )
