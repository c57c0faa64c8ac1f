"""Per-request metrics and access logs.

Access logs carry method, path (never the query string: search parameters can hold names and birth
dates), status, duration and the client id; nothing from bodies.

Metric labels come from bounded sets only, so /metrics cannot be grown by what clients send: the method
is one of the standard ones or `other`, the route is the matched route's template (`/fhir/{rtype}/{rid}`)
or `unmatched`, and the status is a three-digit code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.fhir import dates
from gateway.service.ehrpull.forwarding import Forwarding
from gateway.service.ehrpull.poller import EhrPuller
from gateway.service.ehrpull.subscriber import STATES, EhrSubscriber
from gateway.service.priorauth.worker import PayerTurnaround
from gateway.transports.http import audit_routes as audit

log = logging.getLogger("gateway.http")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    """The method as a metric label: any method name is allowed on the wire, so unknown ones share one."""
    return method if method in KNOWN_METHODS else "other"


def route_label(scope: Scope) -> str:
    """The template of the route that took the request (never the path itself, which holds ids)."""
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else "unmatched"


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        # The labelled children, kept: prometheus_client validates the labels and takes a lock to find one
        # on every call. The label sets are bounded (see the module notes), so this is too.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def record(self, method: str, route: str, status: str, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, route, status), self.latency.labels(method, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class Observability:
    """ASGI middleware recording each request once it has been answered."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        audit.begin(scope)

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            elapsed = time.perf_counter() - started
            template = route_label(scope)
            method = method_label(scope["method"])
            self.metrics.record(method, template, str(status), elapsed)
            client = (scope.get("state") or {}).get("client_id", "-")
            log.info(
                "%s %s %s %.1fms client=%s",
                scope["method"],
                scope.get("path", ""),
                status,
                elapsed * 1000,
                client,
            )
            audit.finish(scope, status)


class PipelineCollector:
    """Exposes the HL7 v2 pipeline's counts at scrape time (no patient data: counts by ACK code only)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "gateway_hl7v2_messages",
            "HL7 v2 messages answered, by ACK code (duplicates separately)",
            labels=["ack"],
        )
        for code, count in sorted(self.counts.items()):
            family.add_metric([code], count)
        yield family


class PriorAuthCollector:
    """Prior-authorization turnaround per payer, as the PA worker last computed it (each round)."""

    def __init__(self, source: Callable[[], Sequence[PayerTurnaround]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        rows = list(self.source())
        decided = CounterMetricFamily(
            "gateway_pa_decisions", "Prior authorizations decided by the payer", labels=["payer"]
        )
        pending = GaugeMetricFamily(
            "gateway_pa_pending", "Prior authorizations waiting on the payer", labels=["payer"]
        )
        overdue = GaugeMetricFamily(
            "gateway_pa_overdue", "Prior authorizations past their decision due date", labels=["payer"]
        )
        turnaround = GaugeMetricFamily(
            "gateway_pa_turnaround_hours",
            "Hours from first submission to the payer's decision",
            labels=["payer", "statistic"],
        )
        for row in rows:
            decided.add_metric([row.payer], row.decided)
            pending.add_metric([row.payer], row.pending)
            overdue.add_metric([row.payer], row.overdue)
            for statistic, value in (
                ("median", row.median_hours),
                ("p90", row.p90_hours),
                ("mean", row.mean_hours),
            ):
                if value is not None:
                    turnaround.add_metric([row.payer, statistic], value)
        yield from (decided, pending, overdue, turnaround)


class EhrPullCollector:
    """The EHR pull per upstream and type: polls, resources fetched and written, failures, and the lag
    (seconds since the last completed poll, by any process). Labels come from the upstreams file only."""

    def __init__(self, source: Callable[[], EhrPuller]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        puller = self.source()
        labels = ["upstream", "type"]
        families = {
            name: CounterMetricFamily(f"gateway_ehr_pull_{name}", text, labels=labels)
            for name, text in (
                ("polls", "Polls of an upstream EHR for one resource type"),
                ("fetched", "Resources received from an upstream EHR"),
                ("written", "New resource versions stored from an upstream EHR"),
                ("rejected", "Resources from an upstream EHR that failed validation"),
                ("failures", "Polls of an upstream EHR that failed"),
                ("exports", "First loads by Bulk Data $export completed (type $export)"),
                ("export_failures", "First loads by Bulk Data $export given up for the incremental pull"),
            )
        }
        for (upstream, res_type), counts in sorted(puller.counts.items()):
            for name, family in families.items():
                family.add_metric([upstream, res_type], getattr(counts, name))
        lag = GaugeMetricFamily(
            "gateway_ehr_pull_lag_seconds",
            "Seconds since the last completed poll of an upstream EHR",
            labels=labels,
        )
        now = dates.now_us()
        for checkpoint in puller.checkpoints:
            if checkpoint.polled_us is not None:
                lag.add_metric([checkpoint.upstream, checkpoint.res_type], (now - checkpoint.polled_us) / 1e6)
        yield from families.values()
        yield lag


class EhrForwardCollector:
    """Forwarding to upstreams per upstream: resources accepted, refused for good (skipped), failed
    attempts (retried), and resources not sent back where they came from. Per-event detail is the
    forwarding Subscription's (`Subscription/forward-{name}/$status`, `$delivery-log`)."""

    def __init__(self, source: Callable[[], object]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        forwarding = self.source()  # the deliverer's channel: a Forwarding when the gateway configured one
        families = {
            name: CounterMetricFamily(f"gateway_ehr_forward_{name}", text, labels=["upstream"])
            for name, text in (
                ("sent", "Resources an upstream accepted"),
                ("rejected", "Resources an upstream refused for good (4xx): recorded and skipped"),
                ("failures", "Forward attempts that failed and are retried (no answer, 5xx, 408, 429)"),
                ("skipped", "Resources not forwarded because they were pulled from that upstream"),
            )
        }
        if isinstance(forwarding, Forwarding):
            for upstream in sorted(u.name for u in forwarding.upstreams.values()):
                counts = forwarding.counts[upstream]
                for name, family in families.items():
                    family.add_metric([upstream], getattr(counts, name))
        yield from families.values()


class EhrSubscribeCollector:
    """Subscriptions on upstream EHRs, per upstream: notifications received, resource versions stored from
    them, refusals, ignored foci, catch-up polls, and the subscription's state in this process (one series
    per state, 1 for the current one). Labels come from the upstreams file only."""

    def __init__(self, source: Callable[[], EhrSubscriber]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        subscriber = self.source()
        families = {
            name: CounterMetricFamily(f"gateway_ehr_notifications_{name}", text, labels=["upstream"])
            for name, text in (
                ("received", "Subscription notifications accepted from an upstream EHR"),
                ("stored", "New resource versions stored from an upstream EHR's notifications"),
                ("rejected", "Notifications refused (secret, malformed, too large) and foci refused"),
                ("ignored", "Notified foci of types not pulled or patients not configured"),
                ("catch_ups", "Catch-up polls after a missed notification or a focus not read"),
            )
        }
        state = GaugeMetricFamily(
            "gateway_ehr_subscription_state",
            "The state of this gateway's Subscription on an upstream EHR (1 for the current state)",
            labels=["upstream", "state"],
        )
        for name in sorted(subscriber.upstreams):
            counts = subscriber.counts[name]
            for key, family in families.items():
                family.add_metric([name], getattr(counts, key))
            current = subscriber.links[name].state
            if current == "active" and not subscriber.live(name):
                current = "lost"  # active but silent past 2 x heartbeat (the next round says so too)
            for each in STATES:
                state.add_metric([name, each], 1.0 if each == current else 0.0)
        yield from families.values()
        yield state
