"""Subscription operations: `$status`, `$events`, `$get-ws-binding-token`, the delivery log, and topics."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

import orjson

from gateway.auth.scopes import Grants
from gateway.exceptions import BadRequest, Forbidden, NotFound
from gateway.fhir import dates, jsonio
from gateway.fhir.bundles import Entry, bundle_bytes
from gateway.routing.notifications import EventRecord, StatusHeader, notification_bundle, status_parameters
from gateway.routing.topics import GATEWAY_FHIR
from gateway.service.access.context import READ, SEARCH, RequestContext
from gateway.service.fhirapi.interactions import Outcome
from gateway.service.subscriptions.delivery import Deliverer
from gateway.service.subscriptions.manager import SubscriptionManager
from gateway.store import search as store_search
from gateway.store import subscriptions as sub_store
from gateway.store.database import Database
from gateway.store.subscriptions import DeliveryState
from gateway.types import JSON

DELIVERY_EXTENSION = f"{GATEWAY_FHIR}/StructureDefinition/subscription-delivery"
WS_TOKEN_TTL_S = 300
CONTENT_LEVELS = ("empty", "id-only", "full-resource")  # each shows more than the one before
MAX_EVENTS_PER_QUERY = 1000


def _json(body: JSON, status: int = 200) -> Outcome:
    # `$events` with full-resource content embeds stored resources, decimal literals and all.
    return Outcome(status, body=jsonio.dumps(body))


@dataclass
class SubscriptionOps:
    manager: SubscriptionManager
    deliverer: Deliverer

    @property
    def db(self) -> Database:
        return self.manager.db

    def _status_resource(self, ctx: RequestContext, resource: JSON, state: DeliveryState) -> JSON:
        spec = self.manager.spec_of(resource)
        header = StatusHeader(
            ctx.base_url, spec.id, spec.topic.url, state.status, state.last_event, state.last_error
        )
        parameters = status_parameters(header, "query-status")
        parameters["extension"] = [
            {
                "url": DELIVERY_EXTENSION,
                "extension": [
                    {"url": "delivered", "valueString": str(state.delivered)},
                    {"url": "pending", "valueString": str(max(0, state.last_event - state.delivered))},
                    {"url": "consecutiveFailures", "valueUnsignedInt": state.failures},
                    *(
                        [
                            {
                                "url": "failingSince",
                                "valueInstant": dates.format_instant(state.failing_since_us),
                            }
                        ]
                        if state.failing_since_us
                        else []
                    ),
                    *(
                        [{"url": "nextAttempt", "valueInstant": dates.format_instant(state.next_attempt_us)}]
                        if state.failures
                        else []
                    ),
                ],
            }
        ]
        return parameters

    async def status(self, ctx: RequestContext, ids: list[str]) -> Outcome:
        """`$status` for the given subscriptions (all the caller may read when none are named)."""
        ctx.require("Subscription", READ)
        async with self.db.read() as conn:
            if not ids:
                ctx.require("Subscription", SEARCH)
                ids = [s.id for s in await store_search.all_current(conn, "Subscription")]
                visible = await self.manager.visible_ids(conn, ctx)
                if visible is not None:
                    ids = [i for i in ids if i in set(visible)]
            entries: list[Entry] = []
            for sub_id in ids:
                resource, state = await self.manager.status_of(conn, ctx, sub_id)
                parameters = self._status_resource(ctx, resource, state)
                entries.append(
                    Entry(
                        full_url=f"urn:uuid:{uuid.uuid4()}",
                        resource=orjson.dumps(parameters),
                        search_mode="match",
                    )
                )
        return Outcome(200, body=bundle_bytes("searchset", entries, total=len(entries)))

    async def events(
        self, ctx: RequestContext, sub_id: str, since: str | None, until: str | None, content: str | None
    ) -> Outcome:
        """`$events`: replay a range of past events from the outbox as a notification Bundle."""
        first = _number(since, "eventsSinceNumber", 1) or 1
        last = _number(until, "eventsUntilNumber", None)
        async with self.db.read() as conn:
            resource, state = await self.manager.status_of(conn, ctx, sub_id)
            spec = self.manager.spec_of(resource)
            level = content or spec.content
            if level not in CONTENT_LEVELS:
                raise BadRequest(f"content {level!r} is not one of empty, id-only, full-resource")
            if CONTENT_LEVELS.index(level) > CONTENT_LEVELS.index(spec.content):
                raise Forbidden(
                    f"content {level!r} asks for more than the subscription's own {spec.content!r}"
                )
            events = await sub_store.events_between(conn, sub_id, first - 1, last, limit=MAX_EVENTS_PER_QUERY)
            # Built with what both the owner and the caller may read (an administrator replaying another
            # client's events gets no more than either).
            reader = Grants.from_string(ctx.grants.scope_string()) if ctx.grants is not None else None
            resources = await self.deliverer.payload_resources(conn, spec, state, events, level, reader)
        records = [
            EventRecord(e.number, e.topic, e.focus_type, e.focus_id, e.focus_version, e.created_us, e.details)
            for e in events
        ]
        header = StatusHeader(
            ctx.base_url, sub_id, spec.topic.url, state.status, state.last_event, state.last_error
        )
        return _json(
            notification_bundle(header, "query-event", records, level, resources, now_us=dates.now_us())
        )

    async def delivery_log(self, ctx: RequestContext, sub_id: str, count: int = 50) -> Outcome:
        """Every recorded attempt (newest first) as a Parameters resource: kind, events, outcome, timing."""
        async with self.db.read() as conn:
            await self.manager.status_of(conn, ctx, sub_id)
            attempts = await sub_store.attempts(conn, sub_id, limit=min(max(count, 1), 1000))
        parameters = []
        for a in attempts:
            parts: list[JSON] = [
                {"name": "kind", "valueCode": a.kind},
                {"name": "outcome", "valueCode": a.outcome},
                {"name": "started", "valueInstant": dates.format_instant(a.started_us)},
                {"name": "durationMs", "valueDecimal": round(a.duration_us / 1000, 3)},
                {"name": "worker", "valueString": a.worker},
            ]
            if a.first_event is not None:
                parts.append({"name": "events", "valueString": f"{a.first_event}-{a.last_event}"})
            if a.http_status is not None:
                parts.append({"name": "httpStatus", "valueInteger": a.http_status})
            if a.error:
                parts.append({"name": "error", "valueString": a.error})
            parameters.append({"name": "attempt", "part": parts})
        return _json({"resourceType": "Parameters", "parameter": parameters})

    async def binding_token(self, ctx: RequestContext, ids: list[str], websocket_url: str) -> Outcome:
        """`$get-ws-binding-token`: a single-use token binding a websocket to websocket subscriptions."""
        if not ids:
            raise BadRequest("Name the subscription: Subscription/{id}/$get-ws-binding-token or id=...")
        async with self.db.read() as conn:
            for sub_id in ids:
                resource, _ = await self.manager.status_of(conn, ctx, sub_id)
                if self.manager.spec_of(resource).channel != "websocket":
                    raise BadRequest(f"Subscription/{sub_id} does not use the websocket channel")
        token = secrets.token_urlsafe(24)
        expires = dates.now_us() + WS_TOKEN_TTL_S * 1_000_000
        async with self.db.write() as conn:
            await sub_store.add_binding_token(conn, token, ids, expires)
        return _json(
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "token", "valueString": token},
                    {"name": "expiration", "valueDateTime": dates.format_instant(expires)},
                    *({"name": "subscription", "valueString": i} for i in ids),
                    {"name": "websocket-url", "valueUrl": websocket_url},
                ],
            }
        )

    async def bind(self, token: str) -> list[str]:
        async with self.db.write() as conn:
            ids = await sub_store.take_binding_token(conn, token, dates.now_us())
        if ids is None:
            raise Forbidden("The binding token is unknown, used or expired")
        return ids

    # -- topics ----------------------------------------------------------------------------------

    def topic(self, topic_id: str) -> Outcome:
        topic = self.manager.topics.by_id(topic_id)
        if topic is None:
            raise NotFound(f"SubscriptionTopic/{topic_id} does not exist")
        return _json(topic.resource)

    def topics(self, url: str | None) -> Outcome:
        found = [t for t in self.manager.topics.topics if url is None or t.url == url]
        entries = [
            Entry(
                full_url=f"SubscriptionTopic/{t.id}", resource=orjson.dumps(t.resource), search_mode="match"
            )
            for t in found
        ]
        return Outcome(200, body=bundle_bytes("searchset", entries, total=len(entries)))


def _number(text: str | None, name: str, default: int | None) -> int | None:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {text!r}") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value
