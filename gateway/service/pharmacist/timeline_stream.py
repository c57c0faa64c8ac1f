"""`GET /fhir/Patient/{id}/$timeline?_stream=true`: the patient's timeline as it grows (server-sent events).

Each event is one timeline entry, in the shape of the `$timeline` document's entries
(`gateway/service/pharmacist/timeline.py`), sent when the resource version behind it commits, whatever
wrote it (REST, a transaction Bundle, HL7 v2 over MLLP or `POST /hl7v2`, the payer feeds and the PA
worker: every write goes through `FhirService.write_versions`).

Where events come from. `TimelineFeed.observe` is a write observer: it notes every version of a timeline
type (`gateway.pharmacist.timeline.KINDS`) once per Patient whose compartment it is in; just before the
writer's transaction commits these become rows of the change log (`timeline_change`), numbered per
Patient in commit order (`gateway/store/timeline.py` says how). After the commit the
process's streams of those Patients are woken; every `poll_s` the feed also reads the counters of the
Patients it streams, so writes committed by another gateway process on the same database arrive too.

A stream's position is the last number it has read. Event ids are that number, encrypted together
with a tag of the Patient (AES on one block, under a key derived from the key-encryption key, so every
process with the same KEK agrees): ids are opaque, so the numbers taken by versions this caller may not
see (another type, a Task version that is no PA move) leave no visible gap, and an id from another
Patient's stream or a made-up one is refused (400). `Last-Event-ID` resumes strictly after that number.

Authorization is the document's, decided per version: a type is streamed only to a token that may read
it (what it cannot read is skipped before its content is loaded), the source only with `Provenance.r`.
The token is verified again whenever the stream wakes and at every heartbeat, and the stream ends when
it expires or its client is removed or disabled. Each stream is one AuditEvent (a read of the Patient,
`$timeline?_stream=true`, with the kinds sent), queued when it ends.

Bounds: open streams per process and per client (429 / 503 beyond), changes read per batch, one write
at a time to the client (the server's transport buffer is bounded; a write waiting longer than the send
timeout ends the stream), and `close` ends every stream at shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from sqlalchemy import Connection
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.exceptions import BadRequest, FhirError
from gateway.fhir import jsonio
from gateway.fhir.compartment import PATIENT_COMPARTMENT
from gateway.fhir.urls import check_id
from gateway.pharmacist import timeline as tl
from gateway.service.access.context import READ, RequestContext
from gateway.service.fhirapi.interactions import since_param
from gateway.service.pharmacist.timeline import OPERATION, PatientTimeline, TimelineEntry
from gateway.store import timeline as store
from gateway.store.database import Database
from gateway.store.resources import PendingVersion, Stored

log = logging.getLogger("gateway.timeline")

EVENT_ID_LABEL = "timeline stream event ids"
STREAM_PARAMS = frozenset({"_stream", "_since", "_format", "_pretty"})
BATCH = 100  # changes read per database round trip


class TooManyStreams(FhirError):
    """429: this client has as many streams open as it may."""

    status = 429
    issue_code = "throttled"


class StreamsUnavailable(FhirError):
    """503: the process has as many streams open as it serves, or is shutting down."""

    status = 503
    issue_code = "transient"


def stream_requested(params: Sequence[tuple[str, str]]) -> bool:
    """`_stream=true` asks for the stream, `_stream=false` (or none) for the document; else 400."""
    values = [v for k, v in params if k == "_stream"]
    if not values:
        return False
    if len(values) > 1 or values[0] not in ("true", "false"):
        raise BadRequest("_stream must be given once, as true or false")
    return values[0] == "true"


class EventIds:
    """Opaque, Patient-bound event ids for a Patient's change numbers (see the module notes)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("no key for event ids")
        # Per key: AES-128 for the block, the rest of the key for the Patient's tag.
        self._keys = [(Cipher(algorithms.AES(k[:16]), modes.ECB()), k[16:]) for k in keys]

    @staticmethod
    def _tag(key: bytes, patient_id: str) -> bytes:
        return hmac.new(key, patient_id.encode(), hashlib.sha256).digest()[:8]

    def encode(self, patient_id: str, seq: int) -> str:
        # One block, encrypted alone: a permutation of (tag, number) with nothing else to hide.
        cipher, tag_key = self._keys[0]
        encryptor = cipher.encryptor()
        block = (
            encryptor.update(self._tag(tag_key, patient_id) + seq.to_bytes(8, "big")) + encryptor.finalize()
        )
        return base64.urlsafe_b64encode(block).decode().rstrip("=")

    def decode(self, patient_id: str, text: str) -> int:
        """The number an id names; 400 when it is not an id of this Patient's stream."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) if len(text) == 22 else b""
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 16:
            for cipher, tag_key in self._keys:
                decryptor = cipher.decryptor()
                block = decryptor.update(raw) + decryptor.finalize()
                if hmac.compare_digest(block[:8], self._tag(tag_key, patient_id)):
                    return int.from_bytes(block[8:], "big")
        raise BadRequest(
            "Last-Event-ID is not an event id of this Patient's timeline stream: send the id of the last"
            " event received as it is, or none to start at the current end"
        )


@dataclass(eq=False)
class Listener:
    """One open stream as the feed sees it: whom to wake and how far it has read."""

    patient_id: str
    client_id: str
    position: int = 0
    woken: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    data: bytes  # the entry's JSON, one line


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str  # said to the client in a comment line; no patient data


StreamItem = Event | Heartbeat | Closed


def _key(conn: AsyncConnection) -> Connection:
    """A write transaction's connection as the savepoint events name it."""
    sync = conn.sync_connection
    assert sync is not None
    return sync


class TimelineFeed:
    """The change log's writer (a write observer and commit hooks) and the process's open streams."""

    def __init__(
        self,
        db: Database,
        timeline: PatientTimeline,
        ids: EventIds,
        *,
        poll_s: float = 0.5,
        heartbeat_s: float = 15.0,
        max_total: int = 100,
        max_per_client: int = 5,
    ) -> None:
        self.db = db
        self.timeline = timeline
        self.ids = ids
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.max_total = max_total
        self.max_per_client = max_per_client
        # Per write transaction not yet committed (by its connection): the versions noted, as (Patient,
        # rid, type, id, version) in write order, and the savepoints open with how many were noted before
        # each (a savepoint rolled back takes its versions along); then the Patients to wake.
        self._pending: dict[Connection, list[tuple[str, int, str, str, int]]] = {}
        self._savepoints: dict[Connection, list[int]] = {}
        self._numbered: dict[Connection, set[str]] = {}
        self._listeners: dict[str, set[Listener]] = {}
        self._per_client: dict[str, int] = {}
        self._open = 0
        self._poller: asyncio.Task[None] | None = None
        self.closing = False
        db.before_commit.append(self._before_commit)
        db.after_commit.append(self._after_commit)
        db.after_rollback.append(self._after_rollback)
        sa_event.listen(db.writer.sync_engine, "savepoint", self._savepoint)
        sa_event.listen(db.writer.sync_engine, "rollback_savepoint", self._rollback_savepoint)
        sa_event.listen(db.writer.sync_engine, "release_savepoint", self._release_savepoint)

    # -- the write side ------------------------------------------------------------------------------

    async def observe(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        pending: Sequence[PendingVersion],
        written: list[Stored],
    ) -> None:
        """Note this batch's versions of timeline types, once per Patient they are about (written to the
        change log, numbered, just before the commit)."""
        for p, s in zip(pending, written, strict=True):
            if p.type not in tl.KINDS or p.content is None or p.index is None:
                continue
            params = PATIENT_COMPARTMENT.get(p.type, ())
            patients = {i for (name, t, i) in p.index.references if t == "Patient" and name in params}
            if patients:
                noted = self._pending.setdefault(_key(conn), [])
                noted += [(patient, s.rid, s.type, s.id, s.version) for patient in sorted(patients)]

    # Savepoints nest (SQLAlchemy's nested transactions close innermost first), so the innermost open one
    # is the one rolled back or released; the event that opens one does not know its name yet.

    def _savepoint(self, conn: Connection, _name: str | None) -> None:
        self._savepoints.setdefault(conn, []).append(len(self._pending.get(conn, ())))

    def _rollback_savepoint(self, conn: Connection, _name: str, _context: object) -> None:
        opened = self._savepoints.get(conn)
        if opened:
            size = opened.pop()
            if conn in self._pending:
                del self._pending[conn][size:]

    def _release_savepoint(self, conn: Connection, _name: str, _context: object) -> None:
        opened = self._savepoints.get(conn)
        if opened:
            opened.pop()

    async def _before_commit(self, conn: AsyncConnection) -> None:
        noted = self._pending.pop(_key(conn), None)
        if noted:
            versions: dict[str, dict[tuple[int, str, str, int], None]] = {}
            for patient, rid, rtype, res_id, number in noted:  # once each, in write order
                versions.setdefault(patient, {})[(rid, rtype, res_id, number)] = None
            await store.record_changes(conn, {patient: list(found) for patient, found in versions.items()})
            self._numbered[_key(conn)] = set(versions)

    def _after_commit(self, conn: AsyncConnection) -> None:
        self._forget(_key(conn))
        patients = self._numbered.pop(_key(conn), None)
        if patients:
            self.wake(patients)

    def _after_rollback(self, conn: AsyncConnection | None) -> None:
        if conn is not None:
            self._forget(_key(conn))
            self._numbered.pop(_key(conn), None)

    def _forget(self, conn: Connection) -> None:
        self._pending.pop(conn, None)
        self._savepoints.pop(conn, None)

    # -- open streams ----------------------------------------------------------------------------------

    def wake(self, patients: set[str]) -> None:
        for patient in patients:
            for listener in self._listeners.get(patient, ()):
                listener.woken.set()

    async def client_revoked(self, client_id: str) -> None:
        """A client was removed or disabled in this process: its streams check their token now (and end)."""
        for listeners in self._listeners.values():
            for listener in listeners:
                if listener.client_id == client_id:
                    listener.woken.set()

    def join(self, patient_id: str, client_id: str) -> Listener:
        if self.closing:
            raise StreamsUnavailable("The server is shutting down: connect again in a moment")
        if self._per_client.get(client_id, 0) >= self.max_per_client:
            raise TooManyStreams(
                f"This client has {self.max_per_client} timeline streams open, as many as it may"
                " (GATEWAY_TIMELINE_STREAM_MAX_PER_CLIENT): close one first"
            )
        if self._open >= self.max_total:
            raise StreamsUnavailable(
                f"The server has {self.max_total} timeline streams open, as many as it serves"
                " (GATEWAY_TIMELINE_STREAM_MAX): try again later"
            )
        listener = Listener(patient_id, client_id)
        self._listeners.setdefault(patient_id, set()).add(listener)
        self._per_client[client_id] = self._per_client.get(client_id, 0) + 1
        self._open += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="timeline-stream-poll")
        return listener

    def leave(self, listener: Listener) -> None:
        listeners = self._listeners.get(listener.patient_id)
        if listeners is None or listener not in listeners:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[listener.patient_id]
        left = self._per_client[listener.client_id] - 1
        if left:
            self._per_client[listener.client_id] = left
        else:
            del self._per_client[listener.client_id]
        self._open -= 1

    @property
    def open_streams(self) -> int:
        return self._open

    async def _poll(self) -> None:
        """Wake the streams whose Patient's counter has moved past them: commits of other processes."""
        while not self.closing:
            await asyncio.sleep(self.poll_s)
            patients = sorted(self._listeners)
            if not patients:
                continue
            try:
                async with self.db.read() as conn:
                    lasts = await store.last_seqs(conn, patients)
            except Exception as exc:  # the database is away: streams wait, heartbeats go on
                log.warning("timeline stream poll failed: %s", type(exc).__name__)
                continue
            for patient, last in lasts.items():
                for listener in self._listeners.get(patient, ()):
                    if last > listener.position:
                        listener.woken.set()

    def close(self) -> None:
        """Shutting down: every open stream ends now, no new one opens."""
        self.closing = True
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.woken.set()
        if self._poller is not None:
            self._poller.cancel()

    async def stop(self) -> None:
        self.close()
        if self._poller is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    # -- opening one ---------------------------------------------------------------------------------

    async def open(
        self,
        ctx: RequestContext,
        patient_id: str,
        params: list[tuple[str, str]],
        *,
        last_event_id: str | None,
        expires_at: float,
        check_token: Callable[[], Awaitable[object]],
    ) -> TimelineStream:
        """Check everything a stream needs before its answer starts (403, 404, 410, 400, 429, 503), take a
        slot and fix where it starts; the caller must `close` what it gets."""
        ctx.require("Patient", READ)
        check_id(patient_id)
        self.timeline.fhir.check_reach(ctx, patient_id)
        since_us: int | None = None
        unknown: list[str] = []
        for key, value in params:
            if key == "_since":
                since_us = since_param(value)
            elif key not in STREAM_PARAMS:
                unknown.append(key)
        if unknown:
            raise BadRequest(
                f"Parameters not accepted by $timeline with _stream=true: {', '.join(sorted(set(unknown)))}"
            )
        resume = last_event_id.strip() if last_event_id else ""
        after = self.ids.decode(patient_id, resume) if resume else None
        async with self.db.read() as conn:
            await self.timeline.check_patient(conn, patient_id)
        listener = self.join(patient_id, ctx.client_id or "")
        try:
            # Registered before the position is read: a commit in between wakes the stream, never lost.
            async with self.db.read() as conn:
                last = await store.last_seq(conn, patient_id)
                if after is not None and after > last:
                    raise BadRequest(
                        "Last-Event-ID names a place this Patient's timeline has not reached (a restored"
                        " database?): connect without it to start at the current end"
                    )
                backlog: list[TimelineEntry] = []
                if after is None and since_us is not None:
                    backlog = [
                        e
                        for e in await self.timeline.collect(conn, ctx, patient_id)
                        if e.moment.us >= since_us
                    ]
        except BaseException:
            self.leave(listener)
            raise
        listener.position = last if after is None else after
        stream = TimelineStream(self, ctx, listener, backlog, expires_at, check_token)
        stream.describe(params)
        return stream


class TimelineStream:
    """One open stream: what it has sent, what it may see, and its next items."""

    def __init__(
        self,
        feed: TimelineFeed,
        ctx: RequestContext,
        listener: Listener,
        backlog: list[TimelineEntry],
        expires_at: float,
        check_token: Callable[[], Awaitable[object]],
    ) -> None:
        self.feed = feed
        self.ctx = ctx
        self.listener = listener
        self.backlog = backlog
        self.expires_at = expires_at
        self.check_token = check_token
        self.stopped = asyncio.Event()  # the client left, or a write to it took too long
        self.types = set(feed.timeline.types(ctx))
        self.kinds: set[str] = set()
        self.sent = 0
        self._shown_params = ""
        self._closed = False

    @property
    def patient_id(self) -> str:
        return self.listener.patient_id

    def stop(self) -> None:
        self.stopped.set()
        self.listener.woken.set()

    def close(self) -> None:
        """Give the slot back (once); the audit record is completed by the transport."""
        if not self._closed:
            self._closed = True
            self.feed.leave(self.listener)

    async def items(self) -> AsyncIterator[StreamItem]:
        """The backlog, then entries as they commit and heartbeats, until something ends the stream."""
        if self.backlog:
            start = self.feed.ids.encode(self.patient_id, self.listener.position)
            for entry in self.backlog:
                yield self._event(start, entry)
            self._audit(self.backlog)
            self.backlog = []
        heartbeat_at = time.monotonic() + self.feed.heartbeat_s
        while True:
            reason = await self._ended()
            if reason is not None:
                yield Closed(reason)
                return
            self.listener.woken.clear()  # before reading: a commit during the read wakes the next round
            changes, events = await self._read()
            for event in events:
                yield event
            if events:
                heartbeat_at = time.monotonic() + self.feed.heartbeat_s
            if len(changes) == BATCH:
                continue  # more are waiting
            now = time.monotonic()
            wait = min(heartbeat_at - now, self.expires_at - time.time())
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.listener.woken.wait()
            if time.monotonic() >= heartbeat_at and not self.listener.woken.is_set():
                if await self._ended() is None:
                    yield Heartbeat()
                heartbeat_at = time.monotonic() + self.feed.heartbeat_s

    async def _ended(self) -> str | None:
        if self.stopped.is_set():
            return "client gone"
        if self.feed.closing:
            return "server shutting down"
        if time.time() >= self.expires_at:
            return "access token expired"
        try:
            await self.check_token()
        except FhirError:
            return "access token no longer valid"
        return None

    async def _read(self) -> tuple[list[store.Change], list[Event]]:
        """The next batch of changes after the position, as the events this caller may get."""
        listener = self.listener
        async with self.feed.db.read() as conn:
            changes = await store.changes_after(conn, listener.patient_id, listener.position, BATCH)
            if not changes:
                return changes, []
            visible = [c for c in changes if c.type in self.types]
            keys = [(c.rid, c.version) for c in visible]
            keys += [
                (c.rid, c.version - 1) for c in visible if c.type in ("Task", "CarePlan") and c.version > 1
            ]
            versions = await store.versions_at(conn, keys) if keys else {}
            made: list[tuple[int, TimelineEntry]] = []
            for change in visible:
                version = versions.get((change.rid, change.version))
                if version is None or (version.type, version.id) != (change.type, change.id):
                    continue
                if not self.feed.timeline.fhir.person_sees(self.ctx, version):
                    continue  # also in the record of a patient this person does not reach
                entry = PatientTimeline.entry_of(version, versions.get((change.rid, change.version - 1)))
                if entry is not None:
                    made.append((change.seq, entry))
            await self.feed.timeline.with_sources(conn, self.ctx, [e for _, e in made])
        listener.position = changes[-1].seq
        events = [self._event(self.feed.ids.encode(listener.patient_id, seq), e) for seq, e in made]
        self._audit([e for _, e in made])
        return changes, events

    def _event(self, event_id: str, entry: TimelineEntry) -> Event:
        self.kinds.add(entry.kind)
        self.sent += 1
        return Event(event_id, jsonio.dumps(entry.as_json()))

    # -- the audit record ------------------------------------------------------------------------------

    def describe(self, params: list[tuple[str, str]]) -> None:
        self._shown_params = urlencode(params)
        self._audit([])

    def _audit(self, entries: list[TimelineEntry]) -> None:
        record = self.ctx.audit
        if record is None:
            return
        record.action_code = "R"
        kinds = ", ".join(sorted(self.kinds)) or "nothing"
        record.operation = f"{OPERATION}?{self._shown_params}; returned: {kinds}"
        record.saw(e.content for e in entries)
        record.resolve_contents()  # keep the Patients, let go of the content: a stream may run long
