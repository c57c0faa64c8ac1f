"""The ingest pipeline every HL7 v2 message takes, whatever brought it (MLLP, HTTP, a file).

    submit(raw) -> decode -> tokenize -> translate (mappings) -> validate -> [queue]
    committer: one database transaction per batch of queued messages {
        duplicate check, plan resource versions, Provenance, message log rows } -> ACKs

Everything before the queue is CPU work done by the submitting task, without awaiting, so messages
from one connection or file enter the queue in the order they arrived. The committer then writes
whatever has queued up in one transaction (group commit): an ACK is only returned once its message
and resources are committed, and a burst of messages costs one commit, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters.hl7v2 import loss
from gateway.adapters.hl7v2.ack import AckError, build_ack, build_nak, hl7_timestamp
from gateway.adapters.hl7v2.er7 import ER7Error, Message, Segment, split_segments
from gateway.adapters.hl7v2.identity import stable_id
from gateway.adapters.hl7v2.translate import (
    PROVENANCE_MESSAGE_SYSTEM,
    Translation,
    TranslationError,
    Translator,
)
from gateway.fhir import dates, jsonio
from gateway.fhir.audit import AuditRecord
from gateway.fhir.validation import Validator
from gateway.service.audit import AuditLog
from gateway.service.context import CREATE, UPDATE, RequestContext
from gateway.service.interactions import FhirService
from gateway.service.patient_matching import IdentityOutcome, Matcher, replace_patient
from gateway.service.patient_merge import merged_versions
from gateway.store import messages as message_log
from gateway.store import resources as store
from gateway.store import search as store_search
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
# A committed message whose batch lost a race with a concurrent REST update is retried this often.
CONFLICT_RETRIES = 3


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


class Pipeline:
    """Takes HL7 v2 messages from any transport and answers each with its ACK once committed."""

    def __init__(
        self, fhir: FhirService, translator: Translator, validator: Validator, audit: AuditLog | None = None
    ) -> None:
        self.fhir = fhir
        self.audit = audit
        self.translator = translator
        self.validator = validator
        self.ctx = RequestContext(base_url=fhir.configured_base)
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._committer: asyncio.Task[None] | None = None
        self.counts: dict[str, int] = {"AA": 0, "AE": 0, "AR": 0, "duplicate": 0}

    async def start(self) -> None:
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
    ) -> Result:
        """Process one message; returns after it (and its resources) are committed."""
        job = self.prepare(raw, source, ctx=ctx, reprocess_id=reprocess_id)
        job.future = asyncio.get_running_loop().create_future()
        await self.start()
        self._queue.put_nowait(job)
        return await job.future

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
            (message.sender, message.control_id or f"no-control-id:{uuid.uuid4()}"),
            content_hash(text),
            reprocess_id,
        )

    def _unparseable(
        self, text: str, source: Source, received: int, error: ER7Error, reprocess_id: str | None
    ) -> Job:
        log.warning("unparseable message from %s %s: %s", source.kind, source.detail, error)
        ack_error = AckError(error.code, str(error), segment=error.segment, field=error.field or None)
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
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                (result,) = await self._commit_batch([job])
            except VersionConflict:
                if attempt < CONFLICT_RETRIES:
                    continue
                log.exception("message %s lost every retry to concurrent updates", job.key[1])
                self._fail(job, RuntimeError("concurrent updates"))
                return
            except Exception as exc:
                log.exception("committing a message from %s failed", job.source.kind)
                self._fail(job, exc)
                return
            self._resolve(job, result)
            return

    def _resolve(self, job: Job, result: Result) -> None:
        self.counts["duplicate" if result.duplicate else result.code] += 1
        if self.audit is not None:
            self.audit.message(job, result)
        if job.future is not None and not job.future.done():
            job.future.set_result(result)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job.future is not None and not job.future.done():
            job.future.set_exception(exc)

    async def _commit_batch(self, jobs: Sequence[Job]) -> list[Result]:
        async with self.fhir.db.write() as conn:
            return await _Batch(self, conn).commit(jobs)


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
        status = {"AA": "accepted", "AE": "error", "AR": "rejected"}[code]
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
        return Result(ack, code, log_id, resources=refs, errors=[e.text for e in errors if e.severity == "E"])

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
        return {
            "id": log_id,
            "sender": job.key[0],
            "control_id": job.key[1],
            "content_hash": job.content_hash,
            "message_type": message_type,
            "source": job.source.kind,
            "source_detail": job.source.detail[:500],
            "received_us": job.received_us,
            "processed_us": dates.now_us(),
            "status": status,
            "ack_code": code,
            "raw": job.raw,
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
        if job.message is None:
            first = errors[0] if errors else AckError("100", "unreadable message")
            return build_nak(
                job.raw,
                first.text,
                code=first.code,
                control_id=job.ack_control_id,
                timestamp=_now_stamp(),
                segment=first.segment or "MSH",
                field=first.field or 0,
            )
        return build_ack(
            job.message, code, errors=errors, control_id=job.ack_control_id, timestamp=_now_stamp()
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
        refs: list[str] = []
        for produced in translation.resources:
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
        for stored in await self.fhir.write_versions(self.conn, self.pipeline.ctx, self.pending):
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


def _hash_of(row: LoggedMessage) -> str:
    """A logged message's content hash (rows from before hashes were kept: computed from the raw text)."""
    return row.content_hash or content_hash(row.raw)


def _error_json(error: AckError) -> dict[str, Any]:
    found = {"code": error.code, "text": error.text, "segment": error.segment, "field": error.field}
    if error.severity != "E":
        found["severity"] = error.severity
    return found
