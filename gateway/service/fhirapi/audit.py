"""The audit log: AuditRecords queued in memory and written in batches by a background task.

    transports / pipeline / deliverer --record()--> bounded queue --every 0.5 s or BATCH--> one transaction
                                                    (never waits)     (background task)     (executemany)

Recording never blocks or slows the request that is audited: `record` appends to a list, or, when the
queue is full (the database is down or far behind), drops the event, counts it (`/metrics`) and says so in
the log with the count. The writer finds the Patients of resources that were only named (deliveries),
builds the AuditEvent JSON and inserts the batch in its own transaction; it also deletes events older than
the retention period, once an hour, in small batches. `stop` writes whatever is queued.

What a crash can lose: events are in memory until their batch is written, so a `kill -9` (or a power
loss) loses those recorded in the last interval (0.5 s by default), and those of a batch being written
when the database is unreachable. A normal stop (SIGTERM, Ctrl-C) loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from gateway.exceptions import BadRequest, NotFound
from gateway.fhir import dates
from gateway.fhir.audit import (
    AuditQueryError,
    AuditRecord,
    BuiltEvent,
    build,
    outcome_of_ack,
    parse_audit_query,
    patients_in,
    patients_of,
)
from gateway.fhir.bundles import Entry, bundle_bytes
from gateway.routing.endpoints import endpoint_host
from gateway.service.access.context import RequestContext
from gateway.service.fhirapi.interactions import Outcome
from gateway.store import audit as audit_store
from gateway.store import resources as store
from gateway.store.database import Database
from gateway.types import JSON

if TYPE_CHECKING:
    from gateway.routing.requests import SubscriptionSpec
    from gateway.service.hl7.pipeline import Job, Result

log = logging.getLogger("gateway.audit")

DEFAULT_CAPACITY = 100_000  # events held while the database is slow or away (a few hundred bytes each)
DEFAULT_BATCH = 1000  # events per transaction; a full batch is written without waiting for the interval
DEFAULT_INTERVAL_S = 0.5
DEFAULT_RETENTION_DAYS = 2190  # six years: HIPAA's retention period for security documentation
PURGE_EVERY_S = 3600.0
STOP_WAIT_S = 10.0  # how long a stop waits for a batch being written before cancelling it
PURGE_BATCH = 500  # rows per delete transaction: never a long hold on SQLite's write lock
DAY_US = 86_400_000_000
# Reading the trail needs this operation scope, granted by name (no resource scope implies it).
AUDIT_READ = "audit/events.read"


class AuditLog:
    """Where every part of the gateway sends its AuditRecords."""

    def __init__(
        self,
        db: Database,
        *,
        observer: str,
        capacity: int = DEFAULT_CAPACITY,
        batch: int = DEFAULT_BATCH,
        interval_s: float = DEFAULT_INTERVAL_S,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        purge_every_s: float = PURGE_EVERY_S,
    ) -> None:
        self.db = db
        self.observer = observer
        self.capacity = capacity
        self.batch = batch
        self.interval_s = interval_s
        self.retention_days = retention_days
        self.purge_every_s = purge_every_s
        self.dropped = 0  # since start: events refused because the queue was full
        self.written = 0
        self._warned_dropped = 0
        self._queue: list[AuditRecord] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer at a time (the task, a flush, stop): order is kept
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # The first purge a minute after start (not on the way up), then every `purge_every_s`.
        self._last_purge = time.monotonic() - max(0.0, purge_every_s - 60.0)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- recording (any task, never waits) -------------------------------------------------------

    def record(self, record: AuditRecord) -> None:
        """Queue a record for writing; a full queue drops it (counted, and logged by the writer)."""
        if not record.finished:
            record.finish(record.outcome)
        if len(self._queue) >= self.capacity:
            self.dropped += 1  # the writer logs the count (once per round, not once per event)
            return
        self._queue.append(record)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write_forever(), name="audit-writer")
        if len(self._queue) >= self.batch:
            self._wake.set()

    def message(self, job: Job, result: Result) -> None:
        """An HL7 v2 message was answered: an Import, by its sender (or in the HTTP request's record)."""
        source = job.source
        into = source.audit
        record = into or AuditRecord(recorded_us=job.received_us)
        record.kind = "import"
        message = job.message
        message_type = ""
        if job.translation is not None:
            message_type = job.translation.event
        elif message is not None:
            message_type = f"{message.message_code}^{message.trigger}".strip("^")
        record.subtype = message_type.split("^")[1] if "^" in message_type else None
        record.subtype_display = message_type or None
        control_id = job.key[1] if message is not None else ""
        record.message = (result.log_id or "", control_id, message_type)
        # What: the message (its log entry lists what it wrote, and so does its Provenance); which
        # patients: the Patients it wrote. The other resources are not listed: an event per message
        # stays small on the ingest hot path.
        for reference in result.resources:
            if reference.startswith("Patient/"):
                record.touch("Patient", reference.split("/", 2)[1])
        outcome = outcome_of_ack(result.code)
        description = f"ACK {result.code}" + (" (duplicate)" if result.duplicate else "")
        if into is not None:  # the HTTP request's record: its transport completes and queues it
            record.outcome, record.outcome_desc = outcome, description
            return
        if source.kind == "mllp":
            record.agent, record.agent_kind = source.detail, "mllp"
            record.address = source.detail.rsplit(":", 1)[0]
        elif source.kind == "reprocess":
            record.agent, record.agent_kind = "reprocess", "internal"
        else:
            record.agent, record.agent_kind = source.kind, "file"  # the source name (`ingest --source`)
            if source.detail:
                record.operation = f"file {source.detail}"
        record.finish(outcome, description)
        self.record(record)

    def payer_file(self, source: str, file_name: str, task_ids: list[str] | None) -> None:
        """A payer's file given to `gateway ingest`: an Import of the answers in it (None: refused)."""
        record = AuditRecord(recorded_us=dates.now_us(), kind="import", agent=source, agent_kind="file")
        record.operation = f"payer file {file_name}"
        for task_id in task_ids or []:
            record.touch("Task", task_id)  # its Patient is looked up by the writer
        record.finish(0 if task_ids is not None else 4, "applied" if task_ids is not None else "refused")
        self.record(record)

    def delivery(
        self,
        spec: SubscriptionSpec,
        owner: str | None,
        kind: str,
        bundle: JSON,
        http_status: int | None,
        error: str | None,
        started_us: int,
    ) -> None:
        """A delivery attempt: an Export to the subscription's owner, with the resources it carried."""
        record = AuditRecord(recorded_us=started_us, kind="export", subtype=kind, requestor=False)
        record.agent = owner
        if spec.endpoint:
            with contextlib.suppress(ValueError):
                record.address = endpoint_host(spec.endpoint)[1]
        record.touch("Subscription", spec.id, resolve=False)
        for entry in bundle.get("entry", [])[1:]:
            parts = str(entry.get("fullUrl", "")).rsplit("/", 2)
            if len(parts) == 3:
                resource = entry.get("resource")
                record.touch(parts[1], parts[2], resolve=not isinstance(resource, dict))
                if isinstance(resource, dict):
                    record.patients |= patients_of(resource)
        if error is None:
            record.finish(0, f"HTTP {http_status}" if http_status else spec.channel)
        else:
            record.finish(4, f"HTTP {http_status}" if http_status else error[:200])
        self.record(record)

    # -- writing (the background task) -----------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._write_forever(), name="audit-writer")

    async def stop(self) -> None:
        """Stop the writer and write everything still queued.

        The writer is asked to stop, not cancelled: a cancellation landing after a batch's commit (while its
        connection goes back to the pool) would put the batch back in the queue, to be written twice. Only a
        writer still busy after STOP_WAIT_S (a database that does not answer) is cancelled."""
        if self._task is not None:
            task = self._task
            self._stopping.set()
            self._wake.set()
            try:
                done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
                if not done:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finally:
                self._task = None
                self._stopping.clear()
        try:
            await self.flush()
        except Exception:
            log.exception("writing the last %d audit events failed", len(self._queue))

    async def flush(self) -> None:
        """Write everything queued so far."""
        async with self._lock:
            self._warn_dropped()
            while self._queue:
                records = self._queue[: self.batch]
                del self._queue[: len(records)]
                try:
                    await self._write(records)
                except BaseException:
                    self._queue[:0] = records  # kept (the queue may overflow its capacity by one batch)
                    raise

    async def _write_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return  # `stop` writes what is left
            try:
                await self.flush()
                if time.monotonic() - self._last_purge >= self.purge_every_s:
                    self._last_purge = time.monotonic()
                    await self.purge()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("writing audit events failed (%d queued); retrying", len(self._queue))
                with contextlib.suppress(TimeoutError):  # a stop ends the pause
                    await asyncio.wait_for(self._stopping.wait(), min(5.0, self.interval_s * 4))

    async def _write(self, records: list[AuditRecord]) -> None:
        await self._resolve([r for r in records if r.unresolved])
        built: list[BuiltEvent] = [build(r, str(uuid.uuid4()), self.observer) for r in records]
        async with self.db.write() as conn:
            await audit_store.insert_events(conn, built)
        self.written += len(built)

    async def _resolve(self, records: list[AuditRecord]) -> None:
        """The Patients of resources that were named without their content (one read for the batch)."""
        keys = {key for r in records for key in r.unresolved}
        if not keys:
            return
        async with self.db.read() as conn:
            found = await store.current_many(conn, keys)
        for record in records:
            for key in record.unresolved:
                stored = found.get(key)
                if stored is not None and stored.content is not None:
                    record.patients |= patients_in(stored.content)
            record.unresolved = set()

    def _warn_dropped(self) -> None:
        new = self.dropped - self._warned_dropped
        if new <= 0:
            return
        self._warned_dropped = self.dropped
        log.warning(
            "audit queue full (%d events): %d audit events dropped (%d since start)",
            self.capacity,
            new,
            self.dropped,
        )

    # -- reading the trail ------------------------------------------------------------------------

    async def search(
        self, ctx: RequestContext, params: list[tuple[str, str]], *, default_count: int, max_count: int
    ) -> Outcome:
        """GET /fhir/AuditEvent: events matching `params`, newest first, paged with next links."""
        ctx.require_operation(AUDIT_READ)
        try:
            query = parse_audit_query(params, default_count=default_count, max_count=max_count)
        except AuditQueryError as exc:
            raise BadRequest(str(exc)) from exc
        async with self.db.read() as conn:
            rows = await audit_store.search(conn, query, limit=query.count + 1) if query.count else []
        more, rows = len(rows) > query.count, rows[: query.count]
        base = f"{ctx.base_url}/AuditEvent"

        def page(offset: int) -> str:
            return (
                f"{base}?{urlencode([*query.used, ('_count', str(query.count)), ('_offset', str(offset))])}"
            )

        links = [("self", page(query.offset))]
        if more:
            links.append(("next", page(query.offset + query.count)))
        if query.offset and query.count:
            links.append(("previous", page(max(0, query.offset - query.count))))
        entries = [Entry(f"{base}/{event_id}", content.encode(), "match") for event_id, content in rows]
        return Outcome(200, body=bundle_bytes("searchset", entries, links=links))

    async def read(self, ctx: RequestContext, event_id: str) -> Outcome:
        """GET /fhir/AuditEvent/{id}."""
        ctx.require_operation(AUDIT_READ)
        async with self.db.read() as conn:
            content = await audit_store.get(conn, event_id)
        if content is None:
            raise NotFound(f"AuditEvent/{event_id} is not known")
        return Outcome(200, body=content.encode())

    # -- retention -------------------------------------------------------------------------------

    async def purge(self, *, now_us: int | None = None, batch: int = PURGE_BATCH) -> int:
        """Delete events older than the retention period, `batch` at a time; returns how many (a period of
        0 days or less keeps everything)."""
        if self.retention_days <= 0:
            return 0
        cutoff = (now_us if now_us is not None else dates.now_us()) - self.retention_days * DAY_US
        total = 0
        while True:
            async with self.db.write() as conn:
                deleted = await audit_store.delete_older(conn, cutoff, batch)
            total += deleted
            if deleted < batch or self._stopping.is_set():
                break
            await asyncio.sleep(0)  # let others' writes in between batches
        if total:
            log.info("deleted %d audit events older than %d days", total, self.retention_days)
        return total
