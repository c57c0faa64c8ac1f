"""Delivering outbox events to subscribers: at least once, in order, each subscription on its own lane.

    outbox (committed events) --wake/poll--> lane per subscription --> rest-hook POST | websocket send
                                              |  claim lease (PostgreSQL), handshake, batches in order
                                              v
                                           journal: progress + attempt rows, group-committed

- A lane is an asyncio task per subscription: a slow or dead endpoint only ever delays its own lane.
- Order: a lane sends events strictly by number and moves on only after a 2xx; a failure schedules a
  retry of the same events (exponential backoff with jitter) until the horizon passes, then `error`. A
  channel may say "not before" (the fhir-forward channel passes on an upstream's Retry-After): the retry
  then waits at least that long (at most MAX_NOT_BEFORE_S), on that lane only.
- Several processes on PostgreSQL: a lane first claims the subscription's lease (a conditional UPDATE),
  so two processes never deliver the same subscription at once; progress is written before the lease
  is released. On SQLite one process does it all and leases stay in memory.
- At least once: progress is journalled after the subscriber answered; a crash in between means the
  same events are sent again (same event numbers, so subscribers can drop repeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import tracing
from gateway.auth.scopes import Grants
from gateway.ehr.forward import only_deletes, permanent
from gateway.fhir import dates, jsonio
from gateway.fhir.extract import extract
from gateway.routing.notifications import (
    EventRecord,
    ResourceKey,
    StatusHeader,
    notification_bundle,
    sign,
)
from gateway.routing.requests import (
    EVENT_NUMBERS_HEADER,
    SIGNATURE_HEADER,
    SUBSCRIPTION_ID_HEADER,
    SubscriptionSpec,
)
from gateway.service.access.context import RequestContext
from gateway.service.fhirapi.audit import AuditLog
from gateway.service.fhirapi.interactions import FhirService
from gateway.service.subscriptions.endpoint_transport import CheckedTransport, EndpointRefused
from gateway.service.subscriptions.manager import SubscriptionManager
from gateway.store import resources as store
from gateway.store import subscriptions as sub_store
from gateway.store.subscriptions import Attempt, DeliveryState, Progress, StoredEvent
from gateway.types import JSON

log = logging.getLogger("gateway.delivery")

# Leases are short and a keeper task renews every lease this process holds (one UPDATE) while attempts
# run, however long the subscription's timeout: a process killed mid-delivery holds up its subscriptions
# for at most LEASE_US. A lane re-checks its lease before an attempt when the last check is older than
# RECHECK_AFTER_US, and stops if another process took it over.
LEASE_US = 6_000_000
KEEP_EVERY_S = 1.5
RECHECK_AFTER_US = 2_000_000
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
MAX_NOT_BEFORE_S = 3600.0  # a peer's Retry-After is honoured up to this; a longer one is taken as this
# What `$delivery-log`, `$status` and Subscription.error say when no HTTP answer came (refused, reset,
# timed out, not HTTP, TLS failed): one text, so subscriptions cannot be used to tell closed ports from
# listening services on networks the gateway reaches. The reason goes to the server log.
CONNECTION_FAILED = "connection failed"


def backoff_s(failures: int, rng: random.Random | None = None) -> float:
    """Delay before retry `failures` (1-based): doubling from 1 s, capped, jittered to [50%, 100%]."""
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(max(0, failures - 1), 30))  # no float overflow
    return float(delay * (0.5 + 0.5 * (rng or random).random()))


def retry_delay_s(failures: int, not_before_s: float | None, rng: random.Random | None = None) -> float:
    """The lane's own backoff, or the peer's "not before" when that is longer (bounded)."""
    delay = backoff_s(failures, rng)
    if not_before_s is None:
        return delay
    return max(delay, min(max(0.0, not_before_s), MAX_NOT_BEFORE_S))


@dataclass(frozen=True, slots=True)
class ChannelAnswer:
    """What a channel's send came to: error None when delivered; `not_before_s` the peer's Retry-After."""

    status: int | None
    error: str | None
    not_before_s: float | None = None


class ForwardChannel(Protocol):
    """The fhir-forward channel (service/ehrpull/forwarding.py): subscription ids it serves, the Bundle
    for an event (None: nothing to send), and sending it (`deletion`: a Bundle of deletes only, for which
    the upstream not having the resource is delivered too)."""

    @property
    def upstreams(self) -> Mapping[str, object]: ...

    async def bundle_for(self, conn: AsyncConnection, sub_id: str, event: StoredEvent) -> JSON | None: ...

    async def send(self, sub_id: str, body: bytes, deletion: bool = False) -> ChannelAnswer: ...

    async def close(self) -> None: ...


class WebSocketSink(Protocol):
    async def send_text(self, text: str) -> None: ...


@dataclass
class _LaneState:
    delivered: int
    failures: int
    failing_since_us: int | None
    last_sent_us: int | None
    # The retry time set by the last failure, before the journal has written it: a lane woken again at
    # once (a new event) must not retry early. Kept on SQLite only; on PostgreSQL the journal is flushed
    # before the lease is released, so the row says it.
    retry_at_us: int = 0


@dataclass
class _Journal:
    progress: dict[str, Progress] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)


class DeliveryFailed(Exception):
    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class Deliverer:
    def __init__(
        self,
        fhir: FhirService,
        manager: SubscriptionManager,
        *,
        base_url: str,
        horizon_s: float = 72 * 3600,
        poll_s: float = 1.0,
        http: httpx.AsyncClient | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.fhir = fhir
        self.audit = audit
        self.db = fhir.db
        self.manager = manager
        self.base_url = base_url.rstrip("/")
        self.horizon_us = int(horizon_s * 1_000_000)
        self.poll_s = poll_s
        self.worker = f"w-{uuid.uuid4().hex[:12]}"
        self._http = http  # given: it must connect only to checked addresses (see CheckedTransport)
        self._owns_http = http is None
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._claimed_at: dict[str, int] = {}
        self._rerun: set[str] = set()
        self._memory: dict[str, _LaneState] = {}
        self._journal = _Journal()
        self._journal_event = asyncio.Event()
        self._journal_done = asyncio.Condition()
        self._journal_seq = 0
        self._journal_flushed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = True  # until start(): a gateway that does not deliver (tests, tools) spawns no lanes
        self.ws: dict[str, set[WebSocketSink]] = {}
        # Attempts on the wire now, by subscription: (owner, timeout, done). A revocation waits for them.
        self._sending: dict[str, tuple[str | None, float, asyncio.Event]] = {}
        self._internal = RequestContext(base_url=self.base_url)
        manager.on_events.append(self.wake)
        self.counts = {"delivered": 0, "failed": 0, "heartbeats": 0, "handshakes": 0}
        self.forwarding: ForwardChannel | None = None  # the fhir-forward channel (upstreams file)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._memory.clear()  # another process (or a test) may have moved delivery on meanwhile
        if self._http is None:
            # Resolved once per request by the manager's resolver, checked, connected to what was checked;
            # no proxies from the environment (a proxy would resolve the name again) and no redirects.
            transport = CheckedTransport(
                lambda host: self.manager.addresses(host), lambda: self.manager.allowlist
            )
            self._http = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)
        self._tasks = [
            asyncio.create_task(self._poll_forever(), name="delivery-poll"),
            asyncio.create_task(self._journal_forever(), name="delivery-journal"),
        ]
        if not self.db.is_sqlite:
            self._tasks.append(asyncio.create_task(self._keep_leases_forever(), name="delivery-leases"))

    async def stop(self) -> None:
        self._stopping = True
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.cancel()
        for lane in lanes:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await lane
        await self._flush_journal()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.db.is_sqlite:
            with contextlib.suppress(Exception):
                async with self.db.write() as conn:
                    for sub_id in list(self._memory):
                        await sub_store.release(conn, sub_id, self.worker)
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None
        self._lanes.clear()

    # -- waking lanes ----------------------------------------------------------------------------

    def wake(self, sub_ids: Iterable[str]) -> None:
        if self._stopping:
            return
        for sub_id in sub_ids:
            lane = self._lanes.get(sub_id)
            if lane is not None and not lane.done():
                self._rerun.add(sub_id)  # the running lane looks again before it ends
                continue
            self._lanes[sub_id] = asyncio.create_task(self._lane(sub_id), name=f"lane-{sub_id}")

    async def _poll_forever(self) -> None:
        """Retries that came due, handshakes, heartbeats, and (PostgreSQL) events other processes left."""
        while True:
            try:
                await self._poll_once()
            except Exception:
                log.exception("delivery poll failed")
            await asyncio.sleep(self.poll_s)

    async def _poll_once(self) -> None:
        now = dates.now_us()
        async with self.db.read() as conn:
            due = await sub_store.pending_work(conn, now)
        heartbeats = [
            spec.id
            for spec in self.manager.index.specs.values()
            if spec.heartbeat_s and self._heartbeat_due(spec, now)
        ]
        self.wake([*due, *heartbeats])

    def _heartbeat_due(self, spec: SubscriptionSpec, now: int) -> bool:
        memory = self._memory.get(spec.id)
        last = memory.last_sent_us if memory else None
        return spec.heartbeat_s is not None and (last is None or now - last >= spec.heartbeat_s * 1_000_000)

    # -- one subscription's lane -----------------------------------------------------------------

    async def _lane(self, sub_id: str) -> None:
        try:
            while True:
                self._rerun.discard(sub_id)
                if not await self._claim(sub_id):
                    return
                try:
                    await self._run(sub_id)
                finally:
                    await self._release(sub_id)
                if (sub_id not in self._rerun or self._stopping) and (
                    self.db.is_sqlite or not await self._work_left(sub_id)
                ):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery lane for Subscription/%s failed", sub_id)

    async def _claim(self, sub_id: str) -> bool:
        if self.db.is_sqlite:
            return True
        now = dates.now_us()
        async with self.db.write() as conn:
            claimed = await sub_store.claim(conn, sub_id, self.worker, now, LEASE_US)
        if claimed:
            self._claimed_at[sub_id] = now
        return claimed

    async def _renew(self, spec: SubscriptionSpec) -> bool:
        """Still ours before the next attempt? False when it was lost (the lane must stop)."""
        if self.db.is_sqlite or dates.now_us() - self._claimed_at.get(spec.id, 0) < RECHECK_AFTER_US:
            return True
        return await self._claim(spec.id)

    async def _keep_leases_forever(self) -> None:
        while True:
            await asyncio.sleep(KEEP_EVERY_S)
            if not any(not lane.done() for lane in self._lanes.values()):
                continue
            try:
                async with self.db.write() as conn:
                    await sub_store.renew_leases(conn, self.worker, dates.now_us() + LEASE_US)
            except Exception:
                log.exception("renewing delivery leases failed")

    async def _release(self, sub_id: str) -> None:
        if self.db.is_sqlite:
            return
        await self._flush_journal()  # progress first: whoever claims next starts where we stopped
        async with self.db.write() as conn:
            await sub_store.release(conn, sub_id, self.worker)

    async def _work_left(self, sub_id: str) -> bool:
        """Events another process committed meanwhile, deliverable now (a pending retry is the poller's)."""
        async with self.db.read() as conn:
            state = await sub_store.state(conn, sub_id)
        return (
            state is not None
            and state.status == "active"
            and state.last_event > state.delivered
            and state.next_attempt_us <= dates.now_us()
        )

    async def _run(self, sub_id: str) -> None:
        async with self.db.read() as conn:
            state = await sub_store.state(conn, sub_id)
            stored = await store.current(conn, "Subscription", sub_id)
        if state is None or stored is None or stored.deleted or stored.content is None:
            return
        # Only read (channel, topic, filters): orjson is enough and faster here.
        spec = self.manager.spec(sub_id) or self.manager.spec_of(orjson.loads(stored.content))
        lane = self._lane_state(state)
        status = state.status
        now = dates.now_us()
        if max(state.next_attempt_us, lane.retry_at_us) > now:
            return  # a retry not yet due: the poller comes back
        if status == "requested":
            status = await self._handshake(spec, state, lane)
        if status != "active":
            return
        if spec.channel == "websocket" and not self.ws.get(sub_id):
            return  # nobody bound: events wait in the outbox and are replayed on the next bind
        while not self._stopping:
            async with self.db.read() as conn:
                events = await sub_store.events_between(conn, sub_id, lane.delivered, limit=spec.max_count)
            if not events:
                if spec.heartbeat_s and self._heartbeat_due(spec, dates.now_us()):
                    await self._send_heartbeat(spec, state, lane)
                return
            if not await self._renew(spec) or not await self._send_events(spec, state, lane, events):
                return
            if len(events) < spec.max_count and sub_id not in self._rerun:
                async with self.db.read() as conn:
                    counter = await sub_store.state(conn, sub_id)
                if counter is None or counter.last_event <= lane.delivered:
                    return

    def _lane_state(self, state: DeliveryState) -> _LaneState:
        memory = self._memory.get(state.sub_id)
        if memory is None or not self.db.is_sqlite:
            memory = _LaneState(
                max(state.delivered, memory.delivered if memory else 0),
                state.failures,
                state.failing_since_us,
                state.last_sent_us,
            )
            self._memory[state.sub_id] = memory
        return memory

    # -- sending ---------------------------------------------------------------------------------

    def _header(self, spec: SubscriptionSpec, status: str, count: int) -> StatusHeader:
        return StatusHeader(self.base_url, spec.id, spec.topic.url, status, count)

    async def _handshake(self, spec: SubscriptionSpec, state: DeliveryState, lane: _LaneState) -> str:
        if spec.channel != "rest-hook":
            await self._set_status(spec.id, "active")
            return "active"
        bundle = notification_bundle(
            self._header(spec, "requested", state.last_event),
            "handshake",
            [],
            spec.content,
            {},
            now_us=dates.now_us(),
        )
        ok = await self._attempt(spec, state, lane, "handshake", bundle, None, None)
        self.counts["handshakes"] += 1
        if ok:
            await self._set_status(spec.id, "active")
            return "active"
        await self._flush_journal()  # the attempt first, so the status row keeps the handshake's error
        await self._set_status(spec.id, "error", "handshake failed: " + (self._last_error or "no answer"))
        return "error"

    async def _send_heartbeat(self, spec: SubscriptionSpec, state: DeliveryState, lane: _LaneState) -> None:
        async with self.db.read() as conn:
            fresh = await sub_store.state(conn, spec.id)
        count = fresh.last_event if fresh else state.last_event
        bundle = notification_bundle(
            self._header(spec, "active", count), "heartbeat", [], spec.content, {}, now_us=dates.now_us()
        )
        await self._attempt(spec, state, lane, "heartbeat", bundle, None, None)
        self.counts["heartbeats"] += 1

    async def _send_events(
        self, spec: SubscriptionSpec, state: DeliveryState, lane: _LaneState, events: list[StoredEvent]
    ) -> bool:
        if spec.channel == "fhir-forward":
            return await self._forward_events(spec, state, lane, events)
        async with self.db.read() as conn:
            fresh = await sub_store.state(conn, spec.id)
            if fresh is None or fresh.status != "active":
                return False  # turned off meanwhile (e.g. its client was removed): not one more event
            resources = await self.payload_resources(conn, spec, state, events, spec.content)
        count = fresh.last_event if fresh else events[-1].number
        records = [
            EventRecord(e.number, e.topic, e.focus_type, e.focus_id, e.focus_version, e.created_us, e.details)
            for e in events
        ]
        bundle = notification_bundle(
            self._header(spec, "active", count),
            "event-notification",
            records,
            spec.content,
            resources,
            now_us=dates.now_us(),
        )
        ok = await self._attempt(
            spec, state, lane, "event-notification", bundle, events[0].number, events[-1].number
        )
        if ok:
            lane.delivered = events[-1].number
            self.counts["delivered"] += len(events)
            self._journal_progress(spec.id, lane, None)
        else:
            self.counts["failed"] += 1
        return ok

    async def _forward_events(
        self, spec: SubscriptionSpec, state: DeliveryState, lane: _LaneState, events: list[StoredEvent]
    ) -> bool:
        """One event at a time, in order: a transaction Bundle to the upstream. A permanent refusal (4xx but
        408/429) is recorded and skipped, so one bad resource cannot hold up the rest for ever."""
        forwarding = self.forwarding if self.forwarding and spec.id in self.forwarding.upstreams else None
        for event in events:
            async with self.db.read() as conn:
                fresh = await sub_store.state(conn, spec.id)
                if fresh is None or fresh.status != "active":
                    return False
                bundle = await forwarding.bundle_for(conn, spec.id, event) if forwarding else None
            if forwarding is None:
                # Its upstream is no longer configured: the attempt fails as such and is retried (the
                # upstreams file may come back), like any other undeliverable event.
                bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
            elif bundle is None:
                lane.delivered = event.number  # nothing to send (pulled from there, or gone)
                self._journal_progress(spec.id, lane, None)
                continue
            seen = {
                "entry": [
                    {},  # the audit skips the first entry (a notification's status)
                    {"fullUrl": f"{self.base_url}/{event.focus_type}/{event.focus_id}"},
                ]
            }
            ok = await self._attempt(
                spec, state, lane, "event-notification", bundle, event.number, event.number, audit_view=seen
            )
            if ok:
                lane.delivered = event.number
                self.counts["delivered"] += 1
                self._journal_progress(spec.id, lane, None)
                continue
            if not permanent(self._last_status):
                self.counts["failed"] += 1
                return False
            log.warning(
                "forward of event %d (%s/%s) by Subscription/%s refused: %s; skipped",
                event.number,
                event.focus_type,
                event.focus_id,
                spec.id,
                self._last_error,
            )
            lane.delivered = event.number
            lane.failures, lane.failing_since_us, lane.retry_at_us = 0, None, 0
            self._journal_progress(spec.id, lane, f"event {event.number} refused: {self._last_error}")
        return True

    async def payload_resources(
        self,
        conn: AsyncConnection,
        spec: SubscriptionSpec,
        state: DeliveryState,
        events: list[StoredEvent],
        content: str,
        reader: Grants | None = None,
    ) -> dict[ResourceKey, JSON | None]:
        """Focus versions (and the topic's includes) that the owner's scopes let it read (and, when someone
        else replays them, the reader's too); others as None."""
        resources: dict[ResourceKey, JSON | None] = {}
        if content == "empty":
            return resources
        grants = Grants.from_string(state.owner_scope)
        if reader is not None:
            grants = grants.intersect(reader)
        for event in events:
            key = (event.focus_type, event.focus_id, event.focus_version)
            if key in resources:
                continue
            if content != "full-resource" or not grants.allows(event.focus_type, "r"):
                resources[key] = None
                continue
            stored = await store.version(conn, event.focus_type, event.focus_id, event.focus_version)
            # Embedded in the notification: decimals keep their literals.
            focus = jsonio.loads(stored.content) if stored is not None and stored.content else None
            resources[key] = focus
            if focus is not None:
                await self._includes(conn, spec, grants, focus, resources)
        return resources

    async def _includes(
        self,
        conn: AsyncConnection,
        spec: SubscriptionSpec,
        grants: Grants,
        focus: JSON,
        into: dict[ResourceKey, JSON | None],
    ) -> None:
        wanted = {
            i.split(":", 1)[1] for i in spec.topic.includes if i.startswith(focus["resourceType"] + ":")
        }
        if not wanted:
            return
        index = extract(focus, (self.base_url,))
        keys = {(t, i) for param, t, i in index.references if param in wanted and grants.allows(t, "r")}
        for stored in await store.load_by_keys(conn, keys):
            if stored.content is not None:
                into[(stored.type, stored.id, stored.version)] = jsonio.loads(stored.content)

    _last_error: str | None = None
    _last_status: int | None = None

    async def _attempt(
        self,
        spec: SubscriptionSpec,
        state: DeliveryState,
        lane: _LaneState,
        kind: str,
        bundle: JSON,
        first: int | None,
        last: int | None,
        *,
        audit_view: JSON | None = None,
    ) -> bool:
        body = jsonio.dumps(bundle)  # full-resource payloads carry decimal literals
        started_us = dates.now_us()
        clock = time.perf_counter()
        http_status: int | None = None
        error: str | None = None
        not_before_s: float | None = None
        done = asyncio.Event()
        self._sending[spec.id] = (state.owner, spec.timeout_s, done)
        attributes: dict[str, str | int] = {
            "subscription.id": spec.id,
            "subscription.channel": spec.channel,
            "notification.type": kind,
        }
        if first is not None and last is not None:
            attributes["events.first"], attributes["events.last"] = first, last
        with tracing.span("subscriptions.deliver", attributes) as current:
            try:
                if spec.channel == "websocket":
                    await self._send_ws(spec.id, body)
                elif spec.channel == "fhir-forward":
                    answer = (
                        await self.forwarding.send(spec.id, body, only_deletes(bundle))
                        if self.forwarding is not None
                        else ChannelAnswer(None, "upstream not configured")
                    )
                    http_status, error, not_before_s = answer.status, answer.error, answer.not_before_s
                else:
                    http_status = await self._post(spec, state.secret, body, first, last)
            except DeliveryFailed as exc:
                error, http_status = str(exc), exc.http_status
            finally:
                self._sending.pop(spec.id, None)
                done.set()
            tracing.set_attributes(
                current, {"http.status_code": http_status or 0, "delivery.ok": error is None}
            )
        duration_us = int((time.perf_counter() - clock) * 1_000_000)
        ok = error is None
        now = dates.now_us()
        lane.last_sent_us = now
        self._last_error = error
        self._last_status = http_status
        self._journal.attempts.append(
            Attempt(
                spec.id,
                kind,
                first,
                last,
                started_us,
                duration_us,
                "delivered" if ok else "failed",
                http_status,
                error,
                self.worker,
            )
        )
        if self.audit is not None:
            self.audit.delivery(spec, state.owner, kind, audit_view or bundle, http_status, error, started_us)
        if ok:
            lane.failures, lane.failing_since_us, lane.retry_at_us = 0, None, 0
            self._journal_progress(spec.id, lane, None)
            return True
        lane.failures += 1
        lane.failing_since_us = lane.failing_since_us or now
        if kind != "handshake" and now - lane.failing_since_us > self.horizon_us:
            self._journal_progress(spec.id, lane, error)
            await self._flush_journal()
            await self._set_status(spec.id, "error", f"gave up after {lane.failures} attempts: {error}")
            return False
        retry_at = now + int(retry_delay_s(lane.failures, not_before_s) * 1_000_000)
        lane.retry_at_us = retry_at
        self._journal_progress(spec.id, lane, error, retry_at)
        log.info(
            "delivery to Subscription/%s failed (%s); retry %d in %.1f s",
            spec.id,
            error,
            lane.failures,
            (retry_at - now) / 1e6,
        )
        return False

    async def _post(
        self, spec: SubscriptionSpec, secret: str, body: bytes, first: int | None, last: int | None
    ) -> int:
        assert spec.endpoint is not None and self._http is not None
        # channel.header cannot name these (routing.requests.RESERVED_HEADERS); set last all the same.
        headers = {name: value for name, value in spec.headers}
        headers["Content-Type"] = spec.payload_type
        headers[SIGNATURE_HEADER] = sign(body, secret)
        headers[SUBSCRIPTION_ID_HEADER] = spec.id
        if first is not None:
            headers[EVENT_NUMBERS_HEADER] = f"{first}-{last}"
        try:
            response = await self._http.post(
                spec.endpoint, content=body, headers=headers, timeout=spec.timeout_s
            )
        except EndpointRefused as exc:  # the subscriber's own configuration: it may know why
            raise DeliveryFailed(str(exc)) from exc
        except httpx.HTTPError as exc:
            log.info(
                "delivery to Subscription/%s: no answer from its endpoint (%s: %s)",
                spec.id,
                type(exc).__name__,
                str(exc)[:300],
            )
            raise DeliveryFailed(CONNECTION_FAILED) from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"HTTP {response.status_code}", response.status_code)
        return response.status_code

    async def _send_ws(self, sub_id: str, body: bytes) -> None:
        sinks = list(self.ws.get(sub_id, ()))
        if not sinks:
            raise DeliveryFailed("no websocket bound")
        text = body.decode()
        sent = 0
        for sink in sinks:
            try:
                await sink.send_text(text)
                sent += 1
            except Exception:  # a closed socket: forget it
                self.ws.get(sub_id, set()).discard(sink)
        if not sent:
            raise DeliveryFailed("websocket closed")

    # -- status changes --------------------------------------------------------------------------

    async def _set_status(self, sub_id: str, status: str, error: str | None = None) -> None:
        """The Subscription resource and the delivery row say the same status (one transaction)."""
        async with self.db.write() as conn:
            current = await store.current(conn, "Subscription", sub_id)
            if current is None or current.deleted or current.content is None:
                return
            resource = jsonio.loads(current.content)  # written back: literals kept
            resource["status"] = status
            if error:
                resource["error"] = error[:1000]
            else:
                resource.pop("error", None)
            plan = self.fhir.plan_update(self._internal, resource, sub_id, current, None, dates.now_us())
            if not isinstance(plan, store.Stored):
                await self.fhir.write_versions(conn, self._internal, [plan])
            await sub_store.set_status(conn, sub_id, status, dates.now_us(), error)
        if status == "error":
            log.warning("Subscription/%s is now in error: %s", sub_id, error)

    async def turn_off_owned(self, conn: AsyncConnection, owner: str, reason: str) -> list[str]:
        """Turn off, in the caller's transaction, every subscription the client `owner` owns (it is being
        removed or disabled): the resource says `off` with `reason` in `error`, delivery stops before
        the next batch, and no more events are collected. Enabling the client again resumes nothing;
        its client re-requests each subscription (status `requested`) if it wants them back."""
        turned = await sub_store.owned_by(conn, owner)
        for sub_id in turned:
            current = await store.current(conn, "Subscription", sub_id)
            try:
                async with conn.begin_nested():
                    if current is not None and not current.deleted and current.content is not None:
                        resource = jsonio.loads(current.content)  # written back: literals kept
                        resource["status"] = "off"
                        resource["error"] = reason
                        plan = self.fhir.plan_update(
                            self._internal, resource, sub_id, current, None, dates.now_us()
                        )
                        if not isinstance(plan, store.Stored):
                            await self.fhir.write_versions(conn, self._internal, [plan])
            except Exception:
                # A Subscription that no longer validates (its topic gone, say) is still turned off:
                # the delivery row says so, and other processes are told to reload.
                log.warning(
                    "Subscription/%s: writing status off failed; delivery is off", sub_id, exc_info=True
                )
                await sub_store.bump_generation(conn)
            await sub_store.set_status(conn, sub_id, "off", dates.now_us(), reason)
        if turned:
            log.info("turned off %d subscription(s) of client %s: %s", len(turned), owner, reason)
        return turned

    async def settle_owner(self, owner: str) -> None:
        """Wait (bounded by their timeouts) for attempts to `owner`'s subscriptions that were already on
        the wire when it was revoked: once a removal or disable returns, nothing more reaches its
        endpoints from this process. Later attempts see the subscription off and do not start."""
        waits = [(timeout, done) for who, timeout, done in self._sending.values() if who == owner]
        for timeout, done in waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout + 1.0)

    # -- the journal -----------------------------------------------------------------------------

    def _journal_progress(
        self, sub_id: str, lane: _LaneState, error: str | None, retry_at: int | None = None
    ) -> None:
        self._journal.progress[sub_id] = Progress(
            sub_id,
            lane.delivered,
            lane.failures,
            lane.failing_since_us,
            retry_at or 0,
            error,
            lane.last_sent_us,
        )
        self._journal_seq += 1
        self._journal_event.set()

    async def _journal_forever(self) -> None:
        while True:
            await self._journal_event.wait()
            self._journal_event.clear()
            try:
                await self._flush_journal()
            except Exception:
                log.exception("writing delivery progress failed; retrying")
                await asyncio.sleep(0.5)
                self._journal_event.set()

    async def _flush_journal(self) -> None:
        """Write everything journalled so far (callers may wait for it: leases are released after)."""
        async with self._journal_done:
            if not self._journal.progress and not self._journal.attempts:
                return
            journal, self._journal = self._journal, _Journal()
            try:
                async with self.db.write() as conn:
                    await sub_store.record(
                        conn, list(journal.progress.values()), journal.attempts, self.worker, dates.now_us()
                    )
            except Exception:
                # Put it back (newer progress wins) so nothing is lost; the journal task retries.
                for sub_id, progress in journal.progress.items():
                    self._journal.progress.setdefault(sub_id, progress)
                self._journal.attempts[:0] = journal.attempts
                raise
