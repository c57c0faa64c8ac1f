r"""The ingest pipeline every HL7 v2 message takes, whatever brought it (MLLP, HTTP, a file).

    submit(raw) -> decode -> tokenize -> translate (mappings) -> validate -> [queue]
    committer: one database transaction per batch of queued messages {
        duplicate check, plan resource versions, Provenance, message log rows } -> ACKs

Everything before the queue is CPU work: done by the submitting task for a short message, in a worker
process (service/workers.py) for one of `offload_bytes` or more, so the event loop keeps serving
others. Messages of one connection are handled one at a time, and those of one file keep their order
through a `Lane`. The committer then writes whatever has queued up in one transaction (group commit): an
ACK is only returned once its message and resources are committed, and a burst of messages costs one
commit, not one each.

Poison: nothing a message holds can take the handler down. A message over a cap (er7.Limits), holding
a NUL character, or making translation, validation or the commit raise is answered with an AR or AE
naming the reason and logged with status `failed` (its resources are not written). A re-send with the
same content gets the logged answer without being processed again; `$reprocess` runs it again on
purpose (after a fix). Only a database that cannot be reached leaves a message without an answer (the
sender retries later). The log stores NUL characters as the HL7 escape `\X00\` (text columns of
PostgreSQL refuse NUL), which the tokenizer refuses again on reprocessing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import exc as sql_errors
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import logs, tracing
from gateway.adapters.fhir.results import merged_marks
from gateway.adapters.hl7v2 import loss, structure
from gateway.adapters.hl7v2.ack import AckError, build_ack, build_nak, hl7_timestamp
from gateway.adapters.hl7v2.er7 import (
    DEFAULT_LIMITS,
    ER7Error,
    LimitExceeded,
    Limits,
    Message,
    Segment,
    limits_in_force,
    split_segments,
)
from gateway.adapters.hl7v2.identity import stable_id
from gateway.adapters.hl7v2.translate import (
    PROVENANCE_MESSAGE_SYSTEM,
    Translation,
    TranslationError,
    Translator,
)
from gateway.exceptions import FhirError
from gateway.fhir import dates, jsonio
from gateway.fhir.audit import AuditRecord
from gateway.fhir.validation import Validator
from gateway.service import workers
from gateway.service.access.context import CREATE, UPDATE, RequestContext
from gateway.service.fhirapi.audit import AuditLog
from gateway.service.fhirapi.interactions import FhirService
from gateway.service.hl7.patient_matching import IdentityOutcome, Matcher, rename, replace_patient
from gateway.service.hl7.patient_merge import merged_versions
from gateway.service.workers import WorkerFailed, WorkerPool
from gateway.store import messages as message_log
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.store.driver_sql import ConnectionLost, connection_lost
from gateway.store.messages import LoggedMessage
from gateway.store.resources import PendingVersion, Stored, VersionConflict
from gateway.types import JSON

log = logging.getLogger("gateway.pipeline")

AckCode = Literal["AA", "AE", "AR"]
# A result left out of a later version of its report: kept, tagged, and named in the message log.
RESULT_FLAGS = "https://specialty-gateway.org/fhir/CodeSystem/result-flag"
ABSENT_FROM_REPORT = {
    "system": RESULT_FLAGS,
    "code": "absent-from-report",
    "display": "Not in the latest version of its report",
}
# Messages written per transaction at most; larger bursts are split. Big enough to amortise the commit,
# small enough that one transaction never holds the SQLite write lock for long.
MAX_BATCH = 200
# Resources planned (stamped, indexed, serialized: ~40 us each) between two yields to the event loop.
PLAN_SLICE = 250
# Versions written per statement set (a batch of 200 ordinary messages is about 1,800 of them).
WRITE_SLICE = 1000
# A committed message whose batch lost a race with a concurrent REST update is retried this often.
CONFLICT_RETRIES = 3
# Content hashes of messages answered `failed` that this process remembers, so that their re-sends are
# answered from the log before being processed (the log itself is the backstop: see _Batch._dispatch).
REMEMBERED_FAILURES = 4096
# Widths of the message log's key and type columns (store/tables.py: hl7_message). Header values past them
# (an overlong MSH-3/4, MSH-10 or MSH-9) are cut to fit: PostgreSQL refuses what does not fit, and the
# message would get no answer at all. The ACK still echoes MSH-10 whole.
SENDER_WIDTH, CONTROL_ID_WIDTH, TYPE_WIDTH = 255, 255, 32


def _busy(exc: BaseException) -> bool:
    """SQLite's lock wait ran out: the database is up but busy, and the same message may pass later."""
    return "database is locked" in str(exc)


# Errors that say the database could not be reached, not that this message is wrong: no answer, so the
# sender tries again later.
_UNAVAILABLE = (
    sql_errors.OperationalError,
    sql_errors.InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class Source:
    kind: str  # mllp | http | file
    detail: str = ""  # peer address or file name: never content
    # The audit record of the HTTP request that brought the message (its transport queues it); None: the
    # pipeline audits the message itself.
    audit: AuditRecord | None = field(default=None, compare=False)


@dataclass
class Result:
    """What became of a message: its ACK, and where it is logged."""

    ack: str
    code: AckCode
    log_id: str | None = None
    duplicate: bool = False
    resources: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: bool = False  # logged as `failed`: a re-send gets this answer without being processed


@dataclass
class Job:
    """A message ready to commit: translated (or failed), with its log row prepared."""

    raw: str
    source: Source
    received_us: int
    message: Message | None
    translation: Translation | None
    code: AckCode
    errors: list[AckError]
    ack_control_id: str
    key: tuple[str, str]  # (sender, control id)
    content_hash: str
    reprocess_id: str | None = None
    future: asyncio.Future[Result] | None = None
    status: str | None = None  # the log status when it is not the ACK code's (`failed`)
    # The message's correlation id (gateway/logs.py), taken where it was received: the batch writer
    # is another task and logs a message's failures under it.
    correlation_id: str | None = field(default_factory=logs.correlation_id.get)
    # The receiving span (gateway/tracing.py), which the batch's commit span links to.
    trace_context: Any = field(default_factory=tracing.current_context)


def decode(raw: bytes) -> str:
    """Message bytes as text: UTF-8 unless MSH-18 names a single-byte character set; never fails."""
    head = raw[:512].decode("latin-1")
    first = head.split("\r", 1)[0].split("\n", 1)[0]
    if first.startswith("MSH") and len(first) > 3:
        fields = first.split(first[3])
        charset = fields[17].upper() if len(fields) > 17 else ""
        if charset.startswith("8859") or charset in ("ASCII", "ISO IR100"):
            return raw.decode("latin-1")
    return raw.decode("utf-8", errors="replace")


def content_hash(text: str) -> str:
    """A digest of a message's segments: the same content whatever its segment separators or BOM."""
    return hashlib.sha256("\r".join(split_segments(text)).encode()).hexdigest()


def limits_of(settings: Any) -> Limits:
    """The HL7 v2 caps a Settings object names (GATEWAY_HL7_MAX_*)."""
    return Limits(
        segments=settings.hl7_max_segments,
        fields=settings.hl7_max_fields,
        repetitions=settings.hl7_max_repetitions,
        components=settings.hl7_max_components,
        line_skip=settings.hl7_max_line_skip,
        number_digits=settings.hl7_max_number_digits,
        decoded_bytes=settings.hl7_max_decoded_bytes,
    )


def header_of(text: str) -> Message | None:
    """The message's MSH alone, tokenized: enough to address an ACK and name the sender and control id
    of a message that cannot be read whole. None when the MSH itself is unreadable."""
    first = text.lstrip("\ufeff")[:65536].split("\r", 1)[0].split("\n", 1)[0]
    try:
        return Message(first, DEFAULT_LIMITS)
    except ER7Error:
        return None


def storable(text: str, escape: str = "\\") -> str:
    """Text as it can be stored in any database: NUL characters as the HL7 hex escape `\\X00\\`."""
    return text.replace("\x00", f"{escape}X00{escape}") if "\x00" in text else text


def _locate(message: Message, value: str) -> tuple[str, int | None, int]:
    """Where a value first appears in a message: (segment, its occurrence, field)."""
    seen: dict[str, int] = {}
    for segment in message.segments:
        seen[segment.name] = seen.get(segment.name, 0) + 1
        for number in range(1, len(segment.fields)):
            if value in segment.fields[number]:
                return segment.name, seen[segment.name], number
    return "", None, 0


def _now_stamp() -> str:
    return hl7_timestamp(datetime.now(UTC))


def _ack_control_id() -> str:
    # MSH-10 is at most 20 characters in 2.5 (ST 20); 19 hex digits are unique enough.
    return "A" + uuid.uuid4().hex[:19]


# FHIR type names that end a choice element's name (medicationReference, valueQuantity, deceasedBoolean).
_CHOICE_TYPES = (
    "CodeableConcept", "Reference", "Quantity", "String", "Boolean", "Integer", "Range", "Ratio", "Period",
    "DateTime", "Date", "Time", "Instant", "Timing", "Age", "Duration", "Attachment", "SampledData", "Coding",
)  # fmt: skip


def _choice_base(key: str) -> str | None:
    for suffix in _CHOICE_TYPES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)]
    return None


def fill(existing: JSON, incoming: JSON) -> JSON:
    """`incoming` merged into `existing` without overwriting: missing elements added, identifiers joined."""
    merged = {k: v for k, v in existing.items() if k != "meta"}
    for key, value in incoming.items():
        if key == "identifier":
            known = {(i.get("system"), i.get("value")) for i in merged.get("identifier", [])}
            extra = [i for i in value if (i.get("system"), i.get("value")) not in known]
            if extra:
                merged["identifier"] = [*merged.get("identifier", []), *extra]
        elif key not in merged:
            base = _choice_base(key)
            if base is not None and any(_choice_base(k) == base for k in merged):
                continue  # one choice element holds one type: the stored one stays (medication[x])
            merged[key] = value
    return merged


class Lane:
    """The messages of one file: prepared concurrently, queued in the order they were submitted."""

    def __init__(self) -> None:
        self._last: asyncio.Future[None] | None = None

    def join(self) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        """(the previous message's turn, this message's): taken when a message is submitted."""
        previous, self._last = self._last, asyncio.get_running_loop().create_future()
        return previous, self._last


class Pipeline:
    """Takes HL7 v2 messages from any transport and answers each with its ACK once committed."""

    def __init__(
        self,
        fhir: FhirService,
        translator: Translator,
        validator: Validator,
        *,
        limits: Limits = DEFAULT_LIMITS,
        pool: WorkerPool | None = None,
        offload_bytes: int = 8 * 1024,
        audit: AuditLog | None = None,
    ) -> None:
        self.fhir = fhir
        self.audit = audit
        self.translator = translator
        self.validator = validator
        self.limits = limits
        self.pool = pool  # None: every message is prepared in the event loop
        self.offload_bytes = offload_bytes
        self.ctx = RequestContext(base_url=fhir.configured_base)
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._committer: asyncio.Task[None] | None = None
        self.counts: dict[str, int] = {"AA": 0, "AE": 0, "AR": 0, "duplicate": 0}
        self._failures: OrderedDict[str, None] = OrderedDict()  # content hashes, see REMEMBERED_FAILURES

    @classmethod
    def preparer(cls, translator: Translator, validator: Validator, limits: Limits) -> Pipeline:
        """A pipeline that only prepares (in a worker process): no database, no committer."""
        pipeline = cls.__new__(cls)
        pipeline.translator, pipeline.validator, pipeline.limits = translator, validator, limits
        return pipeline

    async def start(self) -> None:
        structure.preload()
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_forever(), name="hl7v2-committer")

    async def stop(self) -> None:
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None

    # -- intake ----------------------------------------------------------------------------------

    async def submit(
        self,
        raw: bytes | str,
        source: Source,
        *,
        ctx: RequestContext | None = None,
        reprocess_id: str | None = None,
        lane: Lane | None = None,
    ) -> Result:
        """Process one message; returns after it (and its resources) are committed.

        Raises only when the message cannot be answered yet (the database is unreachable) or the
        caller may not write what it makes (FhirError); anything in the message itself is answered.
        """
        previous, mine = lane.join() if lane is not None else (None, None)
        try:
            text = decode(raw) if isinstance(raw, bytes) else raw
            big = self.pool is not None and len(text) >= self.offload_bytes
            digest = (await asyncio.to_thread(content_hash, text)) if big else content_hash(text)
            if reprocess_id is None and (big or digest in self._failures):
                answered = await self._answered_before(text, digest)
                if answered is not None:
                    return answered
            if big:
                job = await self._prepare_in_worker(text, source, ctx, reprocess_id)
            else:
                job = self.guarded_prepare(text, source, ctx=ctx, reprocess_id=reprocess_id)
            if previous is not None:
                await asyncio.shield(previous)  # the file's earlier message is queued first
            job.future = asyncio.get_running_loop().create_future()
            await self.start()
            self._queue.put_nowait(job)
        finally:
            if mine is not None and not mine.done():
                mine.set_result(None)
        return await job.future

    def guarded_prepare(
        self,
        text: str,
        source: Source,
        *,
        ctx: RequestContext | None = None,
        reprocess_id: str | None = None,
    ) -> Job:
        """`prepare` under this pipeline's limits, with any failure turned into a `failed` job."""
        try:
            with limits_in_force(self.limits):
                return self.prepare(text, source, ctx=ctx, reprocess_id=reprocess_id)
        except FhirError:
            raise  # the caller may not do this: its answer (403), not the message's
        except LimitExceeded as exc:
            return self._over_limit(text, source, exc, reprocess_id)
        except Exception as exc:
            return self._crashed(text, source, exc, reprocess_id)

    async def _prepare_in_worker(
        self, text: str, source: Source, ctx: RequestContext | None, reprocess_id: str | None
    ) -> Job:
        assert self.pool is not None
        try:
            return await self.pool.run(prepare_in_worker, text, source, ctx, reprocess_id)
        except FhirError:
            raise
        except WorkerFailed as exc:
            return self._crashed(text, source, exc, reprocess_id)

    async def _answered_before(self, text: str, digest: str) -> Result | None:
        """The logged answer to a message with this content, when a re-send must not run it again:
        it was accepted (a duplicate) or it failed (poison)."""
        header = header_of(text)
        key = _key(header.sender, header.control_id) if header is not None else None
        if key is None or not key[1]:
            return None
        async with self.fhir.db.read() as conn:
            rows = (await message_log.by_keys(conn, [key])).get(key, [])
        same = next((row for row in rows if _hash_of(row) == digest), None)
        if same is None:
            return None
        if same.status in ("accepted", "quarantined"):
            result = Result(same.ack, "AA", same.id, duplicate=True, resources=orjson.loads(same.resources))
        elif same.status == "failed":
            errors = [str(e.get("text", "")) for e in orjson.loads(same.errors)]
            code: AckCode = "AE" if same.ack_code == "AE" else "AR"
            result = Result(same.ack, code, same.id, duplicate=True, errors=errors, failed=True)
        else:
            return None
        self.counts["duplicate"] += 1
        return result

    def _over_limit(self, text: str, source: Source, error: LimitExceeded, reprocess_id: str | None) -> Job:
        """A value past a cap met while translating (a number's digits): AE naming its field."""
        header = header_of(text)
        segment, sequence, number = error.segment, error.sequence, error.field
        if not segment and error.value is not None:
            with contextlib.suppress(ER7Error):
                segment, sequence, number = _locate(Message(text, self.limits), error.value)
        ack_error = AckError(error.code, str(error), segment=segment, sequence=sequence, field=number or None)
        log.warning("message from %s %s over a limit: %s", source.kind, source.detail, error)
        return self._failed_job(text, source, header, "AE", ack_error, reprocess_id)

    def _crashed(self, text: str, source: Source, error: BaseException, reprocess_id: str | None) -> Job:
        """Translation, validation or the worker failed on this message: AE 207, logged as failed."""
        where = "".join(traceback.format_tb(error.__traceback__)[-3:]) if error.__traceback__ else ""
        # The exception's type and where it happened; never its text (it may quote patient data).
        log.error("processing a message from %s failed: %s\n%s", source.kind, type(error).__name__, where)
        reason = str(error) if isinstance(error, WorkerFailed) else type(error).__name__
        ack_error = AckError("207", f"The message could not be processed ({reason}); it is logged")
        return self._failed_job(text, source, header_of(text), "AE", ack_error, reprocess_id)

    def _failed_job(
        self,
        text: str,
        source: Source,
        header: Message | None,
        code: AckCode,
        error: AckError,
        reprocess_id: str | None,
    ) -> Job:
        received = dates.now_us()
        if header is None:
            unreadable = ER7Error(
                error.text, segment=error.segment or "MSH", field=error.field or 0, code=error.code
            )
            job = self._unparseable(text, source, received, unreadable, reprocess_id)
            job.status = "failed"
            return job
        return self._job(text, source, received, header, None, code, [error], reprocess_id, status="failed")

    def prepare(
        self,
        raw: bytes | str,
        source: Source,
        *,
        ctx: RequestContext | None = None,
        reprocess_id: str | None = None,
    ) -> Job:
        """Everything that needs no database: decode, tokenize, translate, validate, check permissions."""
        text = decode(raw) if isinstance(raw, bytes) else raw
        received = dates.now_us()
        try:
            message = Message(text)
        except ER7Error as exc:
            return self._unparseable(text, source, received, exc, reprocess_id)
        try:
            translation = self.translator.translate(message)
            errors = self._validate(translation, message)
            if ctx is not None and ctx.grants is not None:
                for produced in translation.resources:
                    ctx.require(produced.resource["resourceType"], CREATE)
                    ctx.require(produced.resource["resourceType"], UPDATE)
                ctx.require("Provenance", CREATE)
        except TranslationError as exc:
            error = AckError(
                exc.code, exc.text, segment=exc.segment or "", sequence=exc.sequence, field=exc.field
            )
            return self._job(text, source, received, message, None, exc.ack, [error], reprocess_id)
        if errors:
            return self._job(text, source, received, message, translation, "AE", errors, reprocess_id)
        return self._job(text, source, received, message, translation, "AA", [], reprocess_id)

    def _validate(self, translation: Translation, message: Message) -> list[AckError]:
        errors: list[AckError] = []
        for produced in translation.resources:
            issues = [i for i in self.validator.validate(produced.resource) if i.is_error]
            if not issues:
                continue
            segment = produced.source
            sequence = (
                sum(1 for s in message.segments[: segment.index + 1] if s.name == segment.name)
                if segment
                else None
            )
            origin = segment.name if segment else "the message"
            for issue in issues[:5]:
                where = ", ".join(issue.expression)
                errors.append(
                    AckError(
                        "207",
                        f"{produced.resource['resourceType']} from {origin} is invalid at {where}:"
                        f" {issue.diagnostics}",
                        segment=segment.name if segment else "",
                        sequence=sequence,
                    )
                )
        return errors

    def _job(
        self,
        text: str,
        source: Source,
        received: int,
        message: Message,
        translation: Translation | None,
        code: AckCode,
        errors: list[AckError],
        reprocess_id: str | None,
        status: str | None = None,
    ) -> Job:
        return Job(
            text,
            source,
            received,
            message,
            translation,
            code,
            errors,
            _ack_control_id(),
            _key(message.sender, message.control_id or f"no-control-id:{uuid.uuid4()}"),
            content_hash(text),
            reprocess_id,
            status=status,
        )

    def _unparseable(
        self, text: str, source: Source, received: int, error: ER7Error, reprocess_id: str | None
    ) -> Job:
        log.warning("unparseable message from %s %s: %s", source.kind, source.detail, error)
        ack_error = AckError(
            error.code, str(error), segment=error.segment, sequence=error.sequence, field=error.field or None
        )
        header = header_of(text) if isinstance(error, LimitExceeded) else None
        if header is not None:  # over a cap: refused whole, but addressed and logged under its own key
            return self._job(
                text, source, received, header, None, "AR", [ack_error], reprocess_id, status="failed"
            )
        return Job(
            text,
            source,
            received,
            None,
            None,
            "AR",
            [ack_error],
            _ack_control_id(),
            ("", f"unparsed:{uuid.uuid4()}"),
            content_hash(text),
            reprocess_id,
        )

    # -- committing ------------------------------------------------------------------------------

    async def _commit_forever(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < MAX_BATCH and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            await self._commit_jobs(jobs)

    async def _commit_jobs(self, jobs: list[Job]) -> None:
        try:
            results = await self._commit_batch(jobs)
        except Exception:
            if len(jobs) == 1:
                await self._commit_single(jobs[0])
                return
            for job in jobs:
                await self._commit_single(job)
            return
        for job, result in zip(jobs, results, strict=True):
            self._resolve(job, result)

    async def _commit_single(self, job: Job) -> None:
        reset = logs.correlation_id.set(job.correlation_id)
        try:
            await self._commit_single_logged(job)
        finally:
            logs.correlation_id.reset(reset)

    async def _commit_single_logged(self, job: Job) -> None:
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                (result,) = await self._commit_batch([job])
            except ConnectionLost:
                # Not this message's doing, and the database may be back already: run it again on another
                # connection; if they all fail, no answer (the sender tries again).
                if attempt < CONFLICT_RETRIES:
                    continue
                log.error("committing a message from %s lost its connection on every try", job.source.kind)
                self._fail(job, ConnectionLost())
                return
            except (VersionConflict, sql_errors.IntegrityError):
                # lost a race with a concurrent writer (a REST update, another process's log row)
                if attempt < CONFLICT_RETRIES:
                    continue
                log.error("message %s lost every retry to concurrent updates", job.key[1])
                await self._commit_failed(job, RuntimeError("concurrent updates"))
                return
            except _UNAVAILABLE as exc:
                if not _busy(exc) and await self.fhir.db.answers():
                    # The database is up and refused this message's statements (too deep, too long):
                    # sending it again would fail again, forever. It is logged as failed and answered AE.
                    await self._commit_failed(job, exc)
                    return
                log.error("committing a message from %s failed: %s", job.source.kind, type(exc).__name__)
                self._fail(job, exc)  # no answer: the sender tries again once the database is back
                return
            except Exception as exc:
                await self._commit_failed(job, exc)
                return
            self._resolve(job, result)
            return

    async def _commit_failed(self, job: Job, error: Exception) -> None:
        """The message's own content broke the commit (a value the database refuses, say): log it as
        failed, without its resources, and answer AE; only if even that fails is there no answer."""
        log.error(
            "committing a message from %s failed (%s); logging it as failed",
            job.source.kind,
            type(error).__name__,
        )
        failed = Job(
            job.raw,
            job.source,
            job.received_us,
            job.message,
            None,
            "AE",
            [AckError("207", f"The message could not be stored ({type(error).__name__}); it is logged")],
            job.ack_control_id,
            job.key,
            job.content_hash,
            job.reprocess_id,
            job.future,
            status="failed",
        )
        try:
            (result,) = await self._commit_batch([failed])
        except Exception as exc:
            log.error("logging a failed message from %s failed too: %s", job.source.kind, type(exc).__name__)
            self._fail(job, exc)
            return
        self._resolve(job, result)

    def _resolve(self, job: Job, result: Result) -> None:
        self.counts["duplicate" if result.duplicate else result.code] += 1
        if result.failed:
            self._failures[job.content_hash] = None
            self._failures.move_to_end(job.content_hash)
            while len(self._failures) > REMEMBERED_FAILURES:
                self._failures.popitem(last=False)
        if self.audit is not None:
            self.audit.message(job, result)
        if job.future is not None and not job.future.done():
            job.future.set_result(result)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job.future is not None and not job.future.done():
            job.future.set_exception(exc)

    async def _commit_batch(self, jobs: Sequence[Job]) -> list[Result]:
        links = [job.trace_context for job in jobs]
        with tracing.span("hl7.commit", {"hl7.messages": len(jobs)}, links):
            try:
                async with self.fhir.db.write() as conn:
                    try:
                        return await _Batch(self, conn).commit(jobs)
                    except Exception as error:
                        if connection_lost(conn, error):  # judged here: the rollback closes the connection
                            raise ConnectionLost from error
                        raise
            except sql_errors.DBAPIError as error:  # the COMMIT itself, or a before-commit hook
                if error.connection_invalidated:
                    raise ConnectionLost from error
                raise


class _Batch:
    """One transaction's worth of messages: duplicates, identity, resource versions, Provenance, log rows."""

    def __init__(self, pipeline: Pipeline, conn: AsyncConnection) -> None:
        self.pipeline = pipeline
        self.fhir = pipeline.fhir
        self.conn = conn
        self.now = dates.now_us()
        self.currents: dict[tuple[str, str], Stored] = {}
        self.pending: list[PendingVersion] = []
        self.pending_keys: set[tuple[str, str]] = set()
        self.log_inserts: list[dict[str, Any]] = []
        self.log_updates: list[tuple[str, dict[str, Any]]] = []
        self.coverage: dict[tuple[str, str, str], tuple[int, str]] = {}
        self.matcher = Matcher(self.currents, {}, self._load, self.now)

    async def commit(self, jobs: Sequence[Job]) -> list[Result]:
        logged = await message_log.by_keys(self.conn, [j.key for j in jobs])
        wanted = {
            (p.resource["resourceType"], p.resource["id"])
            for j in jobs
            if j.translation
            for p in j.translation.resources
        }
        wanted |= {("Provenance", self._provenance_id(j)) for j in jobs if j.translation and j.code == "AA"}
        self.currents.update(await store.current_many(self.conn, wanted))
        await self._find_known_patients(jobs)
        seen: dict[tuple[str, str], list[tuple[str, Result]]] = {}  # this batch's messages by key
        results: list[Result] = []
        for job in jobs:
            result = await self._dispatch(job, logged.get(job.key, []), seen.get(job.key, []))
            seen.setdefault(job.key, []).append((job.content_hash, result))
            results.append(result)
        await self._flush()
        await message_log.insert_many(self.conn, self.log_inserts)
        for log_id, values in self.log_updates:
            await message_log.replace(self.conn, log_id, values)
        await message_log.count_unmapped(self.conn, self.coverage, self.now)
        return results

    async def _dispatch(
        self, job: Job, logged: list[LoggedMessage], earlier: list[tuple[str, Result]]
    ) -> Result:
        """Duplicates by content: only a re-send identical to a stored message gets that message's ACK."""
        if job.reprocess_id is not None:
            return await self._one(job, job.reprocess_id)
        for digest, result in earlier:
            if digest == job.content_hash and result.code == "AA" and not result.duplicate:
                return Result(result.ack, "AA", result.log_id, duplicate=True, resources=result.resources)
        same = next((row for row in logged if _hash_of(row) == job.content_hash), None)
        if same is not None and same.status in ("accepted", "quarantined"):
            resources = orjson.loads(same.resources)
            return Result(same.ack, "AA", same.id, duplicate=True, resources=resources)
        if same is not None and same.status == "failed":
            # poison sent again: its logged answer, and it is not run (or written) again
            errors = [str(e.get("text", "")) for e in orjson.loads(same.errors)]
            code: AckCode = "AE" if same.ack_code == "AE" else "AR"
            return Result(same.ack, code, same.id, duplicate=True, errors=errors, failed=True)
        if same is not None:
            return await self._one(job, same.id)  # a failed message sent again: processed again, same row
        if not (logged or earlier) or job.message is None:
            return await self._one(job, None)
        previous = logged[-1].id if logged else (earlier[-1][1].log_id or "")
        policy = job.translation.reused_control_id if job.translation is not None else "process"
        note: JSON = {"kind": "reused-control-id", "previous": previous}
        if policy == "refuse":
            note["outcome"] = "refused"
            text = (
                f"MSH-10 {job.key[1]!r} was already used by another message from this sender with other"
                f" content (logged as {previous}); refused"
            )
            error = AckError("205", text, segment="MSH", sequence=1, field=10)
            return await self._one(job, None, refuse=error, notes=[note])
        note["outcome"] = "processed as a new message"
        problem = (
            f"MSH-10 {job.key[1]!r} was already used by message {previous} from this sender with other"
            " content; this one was processed as a new message"
        )
        return await self._one(job, None, notes=[note], problems=[problem])

    def _provenance_id(self, job: Job) -> str:
        return stable_id("Provenance", *job.key, job.content_hash)

    async def _load(self, key: tuple[str, str]) -> Stored | None:
        return await store.current(self.conn, *key)

    async def _one(
        self,
        job: Job,
        existing_log_id: str | None,
        *,
        refuse: AckError | None = None,
        notes: list[JSON] | None = None,
        problems: list[str] | None = None,
    ) -> Result:
        log_id = existing_log_id or str(uuid.uuid4())
        refs: list[str] = []
        code, errors = job.code, list(job.errors)
        notes, problems = list(notes or []), list(problems or [])
        translation = job.translation
        status = job.status or {"AA": "accepted", "AE": "error", "AR": "rejected"}[code]
        if refuse is not None:
            code, status, errors = "AE", "error", [refuse, *errors]
        elif code == "AA" and translation is not None and translation.quarantine:
            status = "quarantined"
            errors.append(AckError("101", f"{translation.quarantine}; held in quarantine", "W", "PID", 1, 3))
        elif code == "AA" and translation is not None:
            checked = await self._check_identity(job, log_id)
            problems += checked.problems
            notes += checked.notes
            if checked.refused:
                code, status = "AE", "error"
                errors += checked.errors
                refs = await self._write_tasks(job, log_id, checked.tasks)
            else:
                errors += checked.warnings
                refs = await self._write(job, log_id, checked, notes, problems)
        ack = self._ack(job, code, errors)
        row = self._log_row(job, log_id, status, code, ack, errors, problems, notes, refs)
        if existing_log_id is not None:
            self.log_updates.append((log_id, row))
        else:
            self.log_inserts.append({**row, "attempts": 1})
            self._count_coverage(job, log_id)  # once per message: a retry or reprocessing adds nothing
        errors_text = [e.text for e in errors if e.severity == "E"]
        return Result(ack, code, log_id, resources=refs, errors=errors_text, failed=status == "failed")

    def _log_row(
        self,
        job: Job,
        log_id: str,
        status: str,
        code: AckCode,
        ack: str,
        errors: list[AckError],
        problems: list[str],
        notes: list[JSON],
        refs: list[str],
    ) -> dict[str, Any]:
        translation = job.translation
        message_type = (
            translation.event
            if translation
            else (f"{job.message.message_code}^{job.message.trigger}" if job.message else "")
        )
        escape = job.message.encoding.escape if job.message is not None else "\\"
        return {
            "id": log_id,
            "sender": storable(job.key[0], escape),
            "control_id": storable(job.key[1], escape),
            "content_hash": job.content_hash,
            "message_type": message_type[:TYPE_WIDTH],
            "source": job.source.kind,
            "source_detail": job.source.detail[:500],
            "received_us": job.received_us,
            "processed_us": dates.now_us(),
            "status": status,
            "ack_code": code,
            "raw": storable(job.raw, escape),
            "ack": ack,
            "errors": orjson.dumps([_error_json(e) for e in errors]).decode(),
            "problems": orjson.dumps([*(translation.problems if translation else []), *problems]).decode(),
            "unused": orjson.dumps(translation.unused if translation else []).decode(),
            "unmapped": orjson.dumps(translation.unmapped if translation else []).decode(),
            "notes": orjson.dumps(notes).decode(),
            "resources": orjson.dumps(refs).decode(),
        }

    def _count_coverage(self, job: Job, log_id: str) -> None:
        """Each field a message carried and no mapping read counts once for its sender and type."""
        if job.translation is None or not job.translation.unmapped:
            return
        for name in sorted({loss.field_name(entry) for entry in job.translation.unmapped}):
            key = (job.key[0], job.translation.event, name)
            count, _ = self.coverage.get(key, (0, log_id))
            self.coverage[key] = (count + 1, log_id)

    def _ack(self, job: Job, code: AckCode, errors: list[AckError]) -> str:
        """The ACK; NUL characters a sender put in the header fields it echoes come back escaped (the
        answer is stored in the log as it is sent)."""
        if job.message is None:
            first = errors[0] if errors else AckError("100", "unreadable message")
            return storable(
                build_nak(
                    job.raw,
                    first.text,
                    code=first.code,
                    control_id=job.ack_control_id,
                    timestamp=_now_stamp(),
                    segment=first.segment or "MSH",
                    field=first.field or 0,
                )
            )
        return storable(
            build_ack(
                job.message, code, errors=errors, control_id=job.ack_control_id, timestamp=_now_stamp()
            ),
            job.message.encoding.escape,
        )

    # -- identity --------------------------------------------------------------------------------

    async def _find_known_patients(self, jobs: Sequence[Job]) -> None:
        """Stored Patients carrying the match keys of this batch's messages (one query), with content.

        A message with one match key whose Patient is stored under the id that key derives needs no
        look-up: that Patient is the one carrying the key (the common case, skipped for speed)."""
        keys = [
            key
            for job in jobs
            if job.translation is not None and job.code == "AA"
            for identity in job.translation.patients
            if len(identity.match_keys) > 1 or not self._stored_patient(identity.patient_id)
            for key in identity.match_keys
        ]
        if not keys:
            return
        self.matcher.known = await store_search.all_ids_by_identifier(self.conn, "Patient", keys)
        found = {("Patient", pid) for ids in self.matcher.known.values() for pid in ids}
        missing = [key for key in found if key not in self.currents]
        if missing:
            self.currents.update(await store.current_many(self.conn, missing))

    def _stored_patient(self, patient_id: str) -> bool:
        stored = self.currents.get(("Patient", patient_id))
        return stored is not None and not stored.deleted

    async def _check_identity(self, job: Job, log_id: str) -> IdentityOutcome:
        translation = job.translation
        assert translation is not None and job.message is not None
        if any(("Patient", i.patient_id) in self.pending_keys for i in translation.patients):
            await self._flush()  # a Patient an earlier message of this batch wrote: compare with it
        message = job.message

        def sequence(segment: Segment) -> int:
            return sum(1 for s in message.segments[: segment.index + 1] if s.name == segment.name)

        return await self.matcher.check(translation, sender=job.key[0], log_id=log_id, sequence=sequence)

    # -- resources -------------------------------------------------------------------------------

    async def _write(
        self, job: Job, log_id: str, checked: IdentityOutcome, notes: list[JSON], problems: list[str]
    ) -> list[str]:
        """Plan every resource of the message (and its Provenance); returns their versioned references."""
        assert job.translation is not None
        translation = job.translation
        await self._adopt_twins(translation)
        refs: list[str] = []
        for number, produced in enumerate(translation.resources, 1):
            if number % PLAN_SLICE == 0:
                await asyncio.sleep(0)  # thousands of results in one message: others are served meanwhile
            resource = produced.resource
            key = (resource["resourceType"], resource["id"])
            if key[0] == "Patient" and key[1] in checked.keep:
                continue  # identity in doubt: the stored demographics stay as they are
            if key in self.pending_keys:
                # Written earlier in this batch (by this message or another): make that version current first.
                await self._flush()
            if key[0] == "DiagnosticReport":
                refs += await self._flag_absent_results(resource, notes, problems)
            refs.append(self._plan(resource, produced.mode))
        if translation.merge is not None:
            refs += await self._merge(*translation.merge, translation.merge_keys)
        refs += [self._plan(task, "replace") for task in checked.tasks]
        if refs:  # a Provenance always has targets (R4: target is 1..*)
            refs.append(self._plan(self._provenance(job, log_id, refs), "replace"))
        return refs

    async def _adopt_twins(self, translation: Translation) -> None:
        """A lab result an EHR pushed over FHIR before the lab's message came (gateway/adapters/fhir/
        results.py): the message's new Observation is filed under that one's id, so it is one Observation
        with the lab's content, keeping the EHR's identifiers and feed tag. Only when an EHR feed merges
        results (no look-up otherwise), and only for Observations the gateway has not stored yet."""
        feeds = self.fhir.feeds
        if feeds is None or not await feeds.merging(self.conn):
            return
        bases = self.fhir.local_bases(self.pipeline.ctx)
        for produced in translation.resources:
            resource = produced.resource
            stored = self.currents.get(("Observation", resource["id"]))
            if resource["resourceType"] != "Observation" or (stored is not None and not stored.deleted):
                continue
            twin = await feeds.twin_of(self.conn, resource, bases, from_feed_only=True)
            if twin is None or twin.content is None:
                continue
            rename(translation, "Observation", resource["id"], twin.id)
            marked = merged_marks(resource, jsonio.loads(twin.content))
            resource.clear()
            resource.update(marked)
            self.currents[("Observation", twin.id)] = twin

    async def _write_tasks(self, job: Job, log_id: str, tasks: list[JSON]) -> list[str]:
        """A refused message still opens (or adds itself to) its identity-review Task."""
        refs = [self._plan(task, "replace") for task in tasks]
        if refs:
            refs.append(self._plan(self._provenance(job, log_id, refs), "replace"))
        return refs

    async def _flag_absent_results(self, report: JSON, notes: list[JSON], problems: list[str]) -> list[str]:
        """Results of the stored version of a report that this version leaves out: kept as they were,
        no longer linked from the report, tagged, and named in the message log."""
        current = self.currents.get(("DiagnosticReport", report["id"]))
        if current is None or current.deleted or current.content is None:
            return []
        before = {r.get("reference") for r in orjson.loads(current.content).get("result", [])}
        now = {r.get("reference") for r in report.get("result", [])}
        absent = sorted(r for r in before - now if isinstance(r, str) and r.startswith("Observation/"))
        keys = [("Observation", r.split("/", 1)[1]) for r in absent]
        missing = [key for key in keys if key not in self.currents]
        if missing:
            self.currents.update(await store.current_many(self.conn, missing))
        refs: list[str] = []
        for reference, key in zip(absent, keys, strict=True):
            if key in self.pending_keys:
                await self._flush()
            stored = self.currents.get(key)
            note: JSON = {"kind": "absent-from-report", "report": f"DiagnosticReport/{report['id']}"}
            problems.append(
                f"{reference} was in the previous version of DiagnosticReport/{report['id']} and is not in"
                " this one: kept as it was, no longer linked from the report, tagged absent-from-report"
            )
            notes.append({**note, "result": reference})
            if stored is None or stored.deleted or stored.content is None:
                continue
            content = jsonio.loads(stored.content)
            tags = content.setdefault("meta", {}).setdefault("tag", [])
            if not any(t.get("code") == ABSENT_FROM_REPORT["code"] for t in tags):
                tags.append(dict(ABSENT_FROM_REPORT))
                refs.append(self._plan(content, "replace"))
        return refs

    def _plan(self, resource: JSON, mode: str) -> str:
        key = (resource["resourceType"], resource["id"])
        current = self.currents.get(key)
        live = current is not None and current.content is not None and not current.deleted
        if live and mode == "fill":
            assert current is not None and current.content is not None
            resource = fill(jsonio.loads(current.content), resource)
        elif live and key[0] == "Patient":
            assert current is not None and current.content is not None
            resource = replace_patient(jsonio.loads(current.content), resource)
        plan = self.fhir.plan_update(self.pipeline.ctx, resource, resource["id"], current, None, self.now)
        if isinstance(plan, Stored):
            return f"{key[0]}/{key[1]}/_history/{plan.version}"
        self.pending.append(plan)
        self.pending_keys.add(key)
        return f"{key[0]}/{key[1]}/_history/{plan.version}"

    async def _flush(self) -> None:
        if not self.pending:
            return
        for start in range(0, len(self.pending), WRITE_SLICE):
            if start:
                await asyncio.sleep(0)  # building thousands of rows is loop time too: serve others between
            versions = self.pending[start : start + WRITE_SLICE]
            for stored in await self.fhir.write_versions(self.conn, self.pipeline.ctx, versions):
                self.currents[(stored.type, stored.id)] = stored
        self.pending, self.pending_keys = [], set()

    def _provenance(self, job: Job, log_id: str, refs: list[str]) -> JSON:
        message = job.message
        assert message is not None and job.translation is not None
        sender = (
            " / ".join(p for p in (message.sending_application, message.sending_facility) if p) or "unknown"
        )
        return {
            "resourceType": "Provenance",
            "id": self._provenance_id(job),
            "target": [{"reference": ref} for ref in refs],
            "recorded": dates.format_instant(self.now),
            "activity": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}
                ]
            },
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "author",
                            }
                        ]
                    },
                    "who": {"display": f"HL7 v2 sender {sender}"},
                }
            ],
            "entity": [
                {
                    "role": "source",
                    "what": {
                        "identifier": {"system": PROVENANCE_MESSAGE_SYSTEM, "value": log_id},
                        "display": f"{job.translation.event.replace('^', ' ')} message {message.control_id}",
                    },
                }
            ],
        }

    async def _merge(self, prior_id: str, survivor_id: str, prior_keys: list[tuple[str, str]]) -> list[str]:
        """ADT^A40: the prior Patient points at the survivor, and what pointed at the prior moves over.
        The prior Patient is the one its identifiers derive, else the one stored Patient carrying them."""
        await self._flush()
        old_key, new_key = ("Patient", prior_id), ("Patient", survivor_id)
        self.currents.update(await store.current_many(self.conn, [old_key, new_key]))
        prior_stored = self.currents.get(old_key)
        if prior_stored is None or prior_stored.deleted:
            found = await store_search.all_ids_by_identifier(self.conn, "Patient", prior_keys)
            candidates = {pid for ids in found.values() for pid in ids} - {survivor_id}
            if len(candidates) == 1:
                prior_id = candidates.pop()
                old_key = ("Patient", prior_id)
                self.currents.update(await store.current_many(self.conn, [old_key]))
        refs: list[str] = []
        for content, stored in await merged_versions(self.conn, prior_id, survivor_id):
            key = (content["resourceType"], content["id"])
            if stored is not None:
                self.currents[key] = stored
            refs.append(self._plan_exact(content) if key[0] == "Patient" else self._plan(content, "replace"))
        return refs

    def _plan_exact(self, resource: JSON) -> str:
        """A new version exactly as given (merge links are set, not merged with what is stored)."""
        key = (resource["resourceType"], resource["id"])
        plan = self.fhir.plan_update(
            self.pipeline.ctx, resource, resource["id"], self.currents.get(key), None, self.now
        )
        if isinstance(plan, Stored):
            return f"{key[0]}/{key[1]}/_history/{plan.version}"
        self.pending.append(plan)
        self.pending_keys.add(key)
        return f"{key[0]}/{key[1]}/_history/{plan.version}"


# -- in a worker process ------------------------------------------------------------------------

_worker_pipeline: Pipeline | None = None


def _preparing_pipeline() -> Pipeline:
    """This worker's pipeline for preparing, built once from the server's settings."""
    global _worker_pipeline
    if _worker_pipeline is None:
        from gateway.fhir.profiles import ProfileSet
        from gateway.mapping import files as mapping_files

        settings = workers.worker_settings()
        translator = Translator(
            mapping_files.load(settings.mappings_dir),
            default_zone=mapping_files.default_zone(settings.hl7_default_offset),
        )
        validator = Validator(ProfileSet.load(settings.profiles_dir))
        _worker_pipeline = Pipeline.preparer(translator, validator, limits_of(settings))
    return _worker_pipeline


def warm_worker() -> None:
    """Load mappings and profiles in a new worker before its first message."""
    _preparing_pipeline()


def prepare_in_worker(text: str, source: Source, ctx: RequestContext | None, reprocess_id: str | None) -> Job:
    """`Pipeline.guarded_prepare` in a worker process; the job comes back pickled."""
    return _preparing_pipeline().guarded_prepare(text, source, ctx=ctx, reprocess_id=reprocess_id)


def _key(sender: str, control_id: str) -> tuple[str, str]:
    """A message's key in the log (sender, control id), cut to the widths of its columns."""
    return sender[:SENDER_WIDTH], control_id[:CONTROL_ID_WIDTH]


def _hash_of(row: LoggedMessage) -> str:
    """A logged message's content hash (rows from before hashes were kept: computed from the raw text)."""
    return row.content_hash or content_hash(row.raw)


def _error_json(error: AckError) -> dict[str, Any]:
    found = {"code": error.code, "text": error.text, "segment": error.segment, "field": error.field}
    if error.severity != "E":
        found["severity"] = error.severity
    return found
