"""Subscribing to upstream EHRs instead of polling them (R4 Subscriptions Backport IG, rest-hook).

For each upstream with `subscribe:` (gateway/ehr/upstreams.py), a round every second, while its
subscription is not live:
- reads the upstream's CapabilityStatement; without the topic in it the upstream stays polled as before
  (state `unsupported`, asked again every `retry_s`);
- finds the Subscription we made there before (`Subscription?url=<our receiver>`, our tag, the topic) or
  creates one; one that is off, in error, or holds another secret is written again as `requested`.

The receiver (`POST /ehr/notifications/{upstream}`, transports/http/ehr_routes.py) checks the bearer
secret (HMAC of the upstream's name under a key derived from the gateway's KEK: the same in every
process and after a restart, never stored), reads the notification (gateway/ehr/notifications.py) and
stores each event's focus the way the poller does (localized, validated, written through the FHIR
service with a Provenance; an unchanged resource writes nothing): the resource the notification carried
(`full-resource`), else fetched from the upstream (`id-only`; only URLs under its base). A gap in the
event numbers, or a focus that could not be fetched, starts a catch-up poll of the types concerned
(the poller's own poll, brought forward), so nothing is lost.

Live means a handshake, heartbeat or event was heard within 2 x heartbeat_seconds: meanwhile the poller
polls at 10 x its interval (a safety net). When they stop, the upstream is polled at once and then at
the normal interval, and the subscription is sought again.

State is per process (held in memory): with several processes behind one receiver address each
notification reaches one of them; the others keep polling at the normal interval, which is correct.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from gateway.ehr import notifications as notes
from gateway.ehr.upstreams import UpstreamConfig
from gateway.exceptions import BadRequest, NotFound, PayloadTooLarge, Unauthorized
from gateway.fhir import dates, jsonio
from gateway.service.ehrpull.client import UpstreamError
from gateway.service.ehrpull.poller import EhrPuller
from gateway.service.workers import Repeating
from gateway.store import upstreams as checkpoints
from gateway.types import JSON

log = logging.getLogger("gateway.ehrpull.subscribe")

SECRET_LABEL = "ehr-subscription-secret"
SLOWDOWN = 10.0  # polling interval factor while notifications arrive
MAX_BODY_BYTES = 4 * 1024 * 1024
STATES = ("unsupported", "requested", "active", "lost", "error")


@dataclass
class SubscribeCounts:
    received: int = 0  # notifications accepted (any kind)
    stored: int = 0  # new resource versions written from notifications
    rejected: int = 0  # notifications refused (bad secret, malformed, too large) and foci refused
    ignored: int = 0  # foci of types not pulled, or of patients not configured
    catch_ups: int = 0  # catch-up polls started (a gap, or a focus that could not be fetched)


@dataclass
class Link:
    """What this process knows of one upstream's subscription."""

    state: str = "unsupported"  # until the first check says otherwise
    remote_id: str | None = None
    last_number: int | None = None
    heard: float | None = None  # monotonic time of the last handshake, heartbeat or event
    next_check: float = 0.0


class EhrSubscriber:
    def __init__(self, puller: EhrPuller, secret_key: bytes) -> None:
        self.puller = puller
        self.fhir = puller.fhir
        self.upstreams = {u.name: u for u in puller.upstreams if u.subscribe is not None}
        self._key = secret_key
        self.links = {name: Link() for name in self.upstreams}
        self.counts: dict[str, SubscribeCounts] = defaultdict(SubscribeCounts)
        self.retry_s = 60.0  # how soon an unsupported or failed upstream is asked again
        self.max_body_bytes = MAX_BODY_BYTES
        self._tasks: set[asyncio.Task[None]] = set()
        self.timer = Repeating("ehr-subscribe", "EHR subscription round", self.run_once, 1.0, log)
        puller.interval_factor = self.interval_factor

    def secret(self, upstream: str) -> str:
        return hmac.new(self._key, upstream.encode(), hashlib.sha256).hexdigest()

    def live(self, name: str) -> bool:
        link, upstream = self.links.get(name), self.upstreams.get(name)
        if link is None or upstream is None or upstream.subscribe is None:
            return False
        return (
            link.state == "active"
            and link.heard is not None
            and time.monotonic() - link.heard <= 2 * upstream.subscribe.heartbeat_seconds
        )

    def interval_factor(self, name: str) -> float:
        return SLOWDOWN if self.live(name) else 1.0

    async def start(self) -> None:
        if self.upstreams:
            self.timer.start()

    async def stop(self) -> None:
        await self.timer.stop()
        await self.settle()

    async def settle(self) -> None:
        """Wait for the catch-up polls under way (tests, and stopping)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def run_once(self) -> None:
        await asyncio.gather(*(self._round(u) for u in self.upstreams.values()))

    async def _round(self, upstream: UpstreamConfig) -> None:
        link = self.links[upstream.name]
        if self.live(upstream.name):
            return
        if link.state == "active":  # heartbeats stopped: poll now and then normally, and subscribe again
            log.warning("EHR subscription upstream=%s: no heartbeat, polling again", upstream.name)
            link.state, link.next_check = "lost", 0.0
            await self._make_due(upstream, upstream.resources)
        if time.monotonic() < link.next_check:
            return
        link.next_check = time.monotonic() + self.retry_s
        try:
            await self.ensure(upstream)
        except UpstreamError as exc:
            link.state = "error"
            log.warning("EHR subscription upstream=%s: %s", upstream.name, exc)

    async def ensure(self, upstream: UpstreamConfig) -> None:
        """Find or create our Subscription on the upstream, if it offers the topic."""
        assert upstream.subscribe is not None
        sub, link = upstream.subscribe, self.links[upstream.name]
        client = self.puller.clients[upstream.name]
        capability = await client.get(f"{upstream.fhir_base}/metadata")
        if not notes.offers_topic(capability, sub.topic):
            link.state = "unsupported"
            log.info("EHR subscription upstream=%s: topic not offered, polling", upstream.name)
            return
        wanted = notes.subscription(
            upstream=upstream.name,
            topic=sub.topic,
            endpoint=sub.endpoint,
            payload=sub.payload,
            heartbeat_s=sub.heartbeat_seconds,
            secret=self.secret(upstream.name),
        )
        found = await client.get(f"{upstream.fhir_base}/Subscription", [("url", sub.endpoint)])
        ours = [
            entry["resource"]
            for entry in found.get("entry") or []
            if isinstance(entry, dict)
            and notes.is_ours(
                entry.get("resource"), upstream=upstream.name, topic=sub.topic, endpoint=sub.endpoint
            )
        ]
        if ours and isinstance(ours[0].get("id"), str):
            remote = ours[0]
            if notes.needs_update(remote, wanted):
                url = f"{upstream.fhir_base}/Subscription/{remote['id']}"
                status, _ = await client.write_resource("PUT", url, {**wanted, "id": remote["id"]})
                self._written(upstream, status, remote["id"], "updated")
            else:
                self._found(link, remote["id"])
            return
        status, body = await client.write_resource("POST", f"{upstream.fhir_base}/Subscription", wanted)
        self._written(upstream, status, (body or {}).get("id"), "created")

    def _found(self, link: Link, remote_id: str) -> None:
        if link.remote_id != remote_id:
            link.last_number = None
        link.remote_id = remote_id
        if link.state != "active":
            link.state = "requested"  # active once we hear from it (a heartbeat comes within its period)

    def _written(self, upstream: UpstreamConfig, status: int, remote_id: object, what: str) -> None:
        if status not in (200, 201) or not isinstance(remote_id, str):
            raise UpstreamError(f"Subscription not {what}: HTTP {status}")
        link = self.links[upstream.name]
        link.state = "active" if link.state == "active" else "requested"
        self._found(link, remote_id)
        log.info("EHR subscription upstream=%s %s Subscription/%s", upstream.name, what, remote_id)

    # --- the receiver ---------------------------------------------------------------------------------
    def check_secret(self, name: str, authorization: str | None) -> UpstreamConfig:
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise NotFound(f"No subscribing upstream {name!r}")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.secret(name).encode()
        ):
            self.counts[name].rejected += 1
            raise Unauthorized("Wrong or missing bearer secret for this upstream's notifications")
        return upstream

    async def receive(self, upstream: UpstreamConfig, body: bytes) -> JSON:
        """One notification handled; FhirError (400, 413) when it cannot be; an OperationOutcome otherwise."""
        counts, link = self.counts[upstream.name], self.links[upstream.name]
        if len(body) > self.max_body_bytes:
            counts.rejected += 1
            raise PayloadTooLarge(f"A notification may hold at most {self.max_body_bytes} bytes")
        try:
            note = notes.parse(jsonio.loads(body))
        except jsonio.JSONDecodeError:
            counts.rejected += 1
            raise BadRequest("The notification is not JSON") from None
        except notes.NotificationError as exc:
            counts.rejected += 1
            raise BadRequest(f"Not a subscription notification: {exc}") from None
        counts.received += 1
        remote_id = _last_segment(note.subscription)
        if remote_id is not None and remote_id != link.remote_id:
            link.remote_id, link.last_number = remote_id, None  # another subscription: numbers start anew
        if note.kind == "handshake":
            link.last_number = note.events_since_start
        elif notes.missed(link.last_number, note):
            log.warning("EHR subscription upstream=%s: notifications missed, catching up", upstream.name)
            self._catch_up(upstream, upstream.resources)
        link.last_number = notes.last_number(link.last_number, note)
        if note.status in ("error", "off"):
            link.state = "error"
        else:
            link.state, link.heard = "active", time.monotonic()
        stored = await self._store_events(upstream, note) if note.events else 0
        return {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"{note.kind}: {len(note.events)} events, {stored} new versions stored",
                }
            ],
        }

    async def _store_events(self, upstream: UpstreamConfig, note: notes.Notification) -> int:
        counts = self.counts[upstream.name]
        carried: dict[tuple[str, str], JSON] = {}
        for url, sent in note.resources.items():
            parts = notes.split_reference(url)
            if parts is not None and (parts[0] is None or parts[0].rstrip("/") == upstream.fhir_base):
                carried[(parts[1], parts[2])] = sent
        wanted: dict[tuple[str, str], JSON | None] = {}
        for event in note.events:
            parts = notes.split_reference(event.focus) if event.focus else None
            if parts is None or (parts[0] is not None and parts[0].rstrip("/") != upstream.fhir_base):
                counts.rejected += 1  # no focus, or another server's: never fetched with our token
                continue
            if parts[1] not in upstream.resources:
                counts.ignored += 1
                continue
            key = (parts[1], parts[2])
            carried_one = carried.get(key)
            wanted[key] = carried_one if _same(carried_one, key) else None
        fetched: list[JSON] = []
        missing: set[str] = set()
        client = self.puller.clients[upstream.name]
        for (rtype, rid), carried_resource in wanted.items():
            resource = carried_resource
            if resource is None:  # id-only (or the upstream left it out): read it there
                try:
                    resource = await client.get(f"{upstream.fhir_base}/{rtype}/{rid}")
                except UpstreamError as exc:
                    log.warning(
                        "EHR subscription upstream=%s: %s/%s not read (%s)", upstream.name, rtype, rid, exc
                    )
                    missing.add(rtype)
                    continue
                if not _same(resource, (rtype, rid)):
                    counts.rejected += 1
                    continue
            if upstream.patients and notes.patient_of(resource) not in upstream.patients:
                counts.ignored += 1
                continue
            fetched.append(resource)
        if missing:
            self._catch_up(upstream, sorted(missing))
        written = await self.store(upstream, fetched)
        counts.stored += written
        return written

    async def store(self, upstream: UpstreamConfig, found: list[JSON]) -> int:
        """As the poller stores a page, without a checkpoint to move: the safety-net poll fetches these
        again and, unchanged, writes nothing."""
        localized = self.puller.localized(upstream, found, self.counts[upstream.name], "subscription")
        if not localized:
            return 0
        async with self.fhir.db.write() as conn:
            return await self.puller.write_pulled(conn, upstream, localized, dates.now_us())

    def _catch_up(self, upstream: UpstreamConfig, res_types: list[str]) -> None:
        """The poller's own poll of each type, brought forward, in the background (the sender is waiting)."""
        self.counts[upstream.name].catch_ups += 1

        async def run() -> None:
            await self._make_due(upstream, res_types)
            for res_type in res_types:
                await self.puller.poll(upstream, res_type)

        task = asyncio.create_task(run(), name=f"ehr-catch-up-{upstream.name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("EHR catch-up poll failed", exc_info=task.exception())

    async def _make_due(self, upstream: UpstreamConfig, res_types: list[str]) -> None:
        async with self.fhir.db.write() as conn:
            await checkpoints.make_due(conn, upstream.name, res_types, dates.now_us())


def _last_segment(reference: str | None) -> str | None:
    if not reference:
        return None
    parts = notes.split_reference(reference)
    return parts[2] if parts is not None else None


def _same(resource: JSON | None, key: tuple[str, str]) -> bool:
    return (
        isinstance(resource, dict)
        and resource.get("resourceType") == key[0]
        and str(resource.get("id")) == key[1]
    )
