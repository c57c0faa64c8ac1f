"""The `fhir-forward` channel (delivery.ForwardChannel): the Bundle for an event, and sending it upstream.

The Subscriptions themselves (one per forwarding upstream, `forward-{name}`) are ensured at start by
`ensure_subscriptions`; the outbox and the lanes are the subscriptions' own (delivery.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.ehr import forward
from gateway.ehr.upstreams import UpstreamConfig
from gateway.fhir import dates, jsonio
from gateway.routing.topics import Topic
from gateway.service.access.context import RequestContext
from gateway.service.ehrpull.client import UpstreamClient, UpstreamError
from gateway.service.fhirapi.interactions import FhirService
from gateway.service.subscriptions.delivery import ChannelAnswer
from gateway.store import resources as store
from gateway.store.resources import VersionConflict
from gateway.store.subscriptions import StoredEvent
from gateway.types import JSON

log = logging.getLogger("gateway.forward")
ENSURE_ATTEMPTS = 3  # a lost creation race is retried (and then finds the winner's Subscription)


@dataclass
class ForwardCounts:
    sent: int = 0  # resources the upstream accepted
    rejected: int = 0  # refused for good (4xx other than 408/429): recorded, skipped
    failures: int = 0  # attempts that will be retried (no answer, 5xx, 408, 429)
    skipped: int = 0  # came from that upstream (pulled): not sent back


def forward_topic(upstream: str, resources: list[str]) -> Topic:
    """The internal topic of one upstream: every create, update or delete of the forwarded types."""
    resource: JSON = {
        "resourceType": "SubscriptionTopic",
        "id": f"forward-{upstream}",
        "url": forward.topic_url(upstream),
        "title": f"Forwarding to upstream {upstream}",
        "status": "active",
        "extension": [
            {
                "url": f"{forward.GATEWAY_FHIR}/StructureDefinition/topic-evaluator",
                "valueCode": forward.EVALUATOR,
            }
        ],
        "resourceTrigger": [
            {"resource": t, "supportedInteraction": ["create", "update", "delete"]} for t in resources
        ],
    }
    return Topic(
        url=forward.topic_url(upstream),
        id=f"forward-{upstream}",
        title=resource["title"],
        evaluator=forward.EVALUATOR,
        resource_types=tuple(resources),
        interactions=frozenset({"create", "update", "delete"}),
        filters=(),
        includes=(),
        resource=resource,
    )


class Forwarding:
    def __init__(self, upstreams: list[UpstreamConfig], base_url: str, http: httpx.AsyncClient | None = None):
        self.upstreams = {forward.subscription_id(u.name): u for u in upstreams if u.forward is not None}
        self.base_url = base_url.rstrip("/")
        self._http = http or httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self.clients = {sub_id: UpstreamClient(u, self._http) for sub_id, u in self.upstreams.items()}
        self.counts: dict[str, ForwardCounts] = defaultdict(ForwardCounts)  # by upstream name

    def topics(self) -> list[Topic]:
        return [forward_topic(u.name, u.forward.resources) for u in self.upstreams.values() if u.forward]

    async def bundle_for(self, conn: AsyncConnection, sub_id: str, event: StoredEvent) -> JSON | None:
        """The transaction for one event; None when there is nothing to send (gone, or pulled from there).
        A deletion's is a conditional delete on the identifier of the version before it."""
        upstream = self.upstreams[sub_id]
        stored = await store.version(conn, event.focus_type, event.focus_id, event.focus_version)
        deleted = stored is not None and stored.deleted
        if deleted and event.focus_version > 1:
            stored = await store.version(conn, event.focus_type, event.focus_id, event.focus_version - 1)
        if stored is None or stored.content is None:
            return None
        resource = jsonio.loads(stored.content)  # sent on: decimal literals kept
        if forward.came_from(resource, upstream.fhir_base):
            self.counts[upstream.name].skipped += 1
            return None
        if deleted:
            return forward.delete_bundle(resource)
        patient = None
        reference = forward.patient_reference(resource) if event.focus_type != "Patient" else None
        if reference is not None:
            current = await store.current(conn, "Patient", reference.split("/", 1)[1])
            if current is not None and not current.deleted and current.content is not None:
                patient = jsonio.loads(current.content)
        return forward.forward_bundle(resource, patient, self.base_url)

    async def send(self, sub_id: str, body: bytes, deletion: bool = False) -> ChannelAnswer:
        """Delivered on a 2xx (and, for a deletion, on 404/410: not there is what was wanted); a 429/503's
        Retry-After becomes the lane's "not before". Never content in the error: it may hold PHI."""
        upstream = self.upstreams.get(sub_id)
        if upstream is None:
            return ChannelAnswer(None, "upstream not configured")
        try:
            status, retry_after = await self.clients[sub_id].post_transaction(body)
        except UpstreamError as exc:
            log.info("forward to upstream %s: no answer (%s)", upstream.name, exc)
            self.counts[upstream.name].failures += 1
            return ChannelAnswer(None, "connection failed")
        if forward.delivered(status, deletion):
            self.counts[upstream.name].sent += 1
            return ChannelAnswer(status, None)
        if forward.permanent(status):
            self.counts[upstream.name].rejected += 1
        else:
            self.counts[upstream.name].failures += 1
        wait = retry_after if status in (429, 503) else None
        return ChannelAnswer(status, f"HTTP {status}", wait)

    async def ensure_subscriptions(self, fhir: FhirService) -> None:
        """One Subscription per forwarding upstream, written by the gateway itself (no owner) and validated
        like any other. An unchanged one is left alone (its status too). One whose upstream left the file no
        longer parses (its topic is gone), so it collects nothing more.

        Several processes starting together on one database each do this: each Subscription is its own
        transaction, and one that lost the race (VersionConflict: another process created or updated it
        first) looks again, finds it there and leaves it."""
        ctx = RequestContext(base_url=self.base_url)
        for sub_id, upstream in self.upstreams.items():
            wanted = forward.forward_subscription(upstream.name, upstream.fhir_base)
            fhir.validate(wanted)  # the gateway's own Subscription passes what a client's must
            for attempt in range(ENSURE_ATTEMPTS):
                try:
                    await self._ensure_one(fhir, ctx, sub_id, wanted)
                    break
                except VersionConflict:
                    if attempt == ENSURE_ATTEMPTS - 1:
                        raise
                    log.info("Subscription/%s written by another process meanwhile; looking again", sub_id)

    @staticmethod
    async def _ensure_one(fhir: FhirService, ctx: RequestContext, sub_id: str, wanted: JSON) -> None:
        async with fhir.db.write() as conn:
            current = await store.current(conn, "Subscription", sub_id)
            if current is not None and not current.deleted and current.content is not None:
                stored = jsonio.loads(current.content)
                if (
                    stored.get("criteria") == wanted["criteria"]
                    and stored.get("channel") == wanted["channel"]
                ):
                    return
            plan = fhir.plan_update(ctx, wanted, sub_id, current, None, dates.now_us())
            if not isinstance(plan, store.Stored):
                await fhir.write_versions(conn, ctx, [plan])

    async def close(self) -> None:
        await self._http.aclose()
