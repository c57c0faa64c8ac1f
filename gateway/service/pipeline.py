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
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters.hl7v2.ack import AckError, build_ack, build_nak, hl7_timestamp
from gateway.adapters.hl7v2.er7 import ER7Error, Message
from gateway.adapters.hl7v2.identity import stable_id
from gateway.adapters.hl7v2.translate import (
    PROVENANCE_MESSAGE_SYSTEM,
    Translation,
    TranslationError,
    Translator,
)
from gateway.fhir import dates, jsonio
from gateway.fhir.references import iter_references
from gateway.fhir.validation import Validator
from gateway.service.context import CREATE, UPDATE, RequestContext
from gateway.service.interactions import FhirService
from gateway.store import messages as message_log
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.store.resources import PendingVersion, Stored, VersionConflict
from gateway.store.tables import sp_reference
from gateway.types import JSON

log = logging.getLogger("gateway.pipeline")

AckCode = Literal["AA", "AE", "AR"]
# Messages written per transaction at most; larger bursts are split. Big enough to amortise the commit,
# small enough that one transaction never holds the SQLite write lock for long.
MAX_BATCH = 200
# A committed message whose batch lost a race with a concurrent REST update is retried this often.
CONFLICT_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Source:
    kind: str  # mllp | http | file
    detail: str = ""  # peer address or file name: never content


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


def _now_stamp() -> str:
    return hl7_timestamp(datetime.now(UTC))


def _ack_control_id() -> str:
    # MSH-10 is at most 20 characters in 2.5 (ST 20); 19 hex digits are unique enough.
    return "A" + uuid.uuid4().hex[:19]


def _fill(existing: JSON, incoming: JSON) -> JSON:
    """`incoming` merged into `existing` without overwriting: missing elements added, identifiers joined."""
    merged = {k: v for k, v in existing.items() if k != "meta"}
    for key, value in incoming.items():
        if key == "identifier":
            known = {(i.get("system"), i.get("value")) for i in merged.get("identifier", [])}
            extra = [i for i in value if (i.get("system"), i.get("value")) not in known]
            if extra:
                merged["identifier"] = [*merged.get("identifier", []), *extra]
        elif key not in merged:
            merged[key] = value
    return merged


class Pipeline:
    """Takes HL7 v2 messages from any transport and answers each with its ACK once committed."""

    def __init__(self, fhir: FhirService, translator: Translator, validator: Validator) -> None:
        self.fhir = fhir
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
        if job.future is not None and not job.future.done():
            job.future.set_result(result)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job.future is not None and not job.future.done():
            job.future.set_exception(exc)

    async def _commit_batch(self, jobs: Sequence[Job]) -> list[Result]:
        async with self.fhir.db.write() as conn:
            return await _Batch(self, conn).commit(jobs)


class _Batch:
    """One transaction's worth of messages: duplicates, resource versions, Provenance, log rows."""

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
        self.known_patients: dict[tuple[str | None, str], str] = {}

    async def commit(self, jobs: Sequence[Job]) -> list[Result]:
        logged = await message_log.by_keys(self.conn, [j.key for j in jobs])
        wanted = {
            (p.resource["resourceType"], p.resource["id"])
            for j in jobs
            if j.translation
            for p in j.translation.resources
        }
        wanted |= {("Provenance", self._provenance_id(j)) for j in jobs if j.translation and j.code == "AA"}
        self.currents = await store.current_many(self.conn, wanted)
        await self._find_known_patients(jobs)
        accepted_here: dict[tuple[str, str], Result] = {}
        results: list[Result] = []
        for job in jobs:
            previous = logged.get(job.key)
            if job.reprocess_id is None and job.key in accepted_here:
                first = accepted_here[job.key]
                results.append(
                    Result(first.ack, first.code, first.log_id, duplicate=True, resources=first.resources)
                )
                continue
            if job.reprocess_id is None and previous is not None and previous.status == "accepted":
                results.append(
                    Result(
                        previous.ack,
                        "AA",
                        previous.id,
                        duplicate=True,
                        resources=orjson.loads(previous.resources),
                    )
                )
                continue
            result = await self._one(job, previous.id if previous is not None else job.reprocess_id)
            if result.code == "AA":
                accepted_here[job.key] = result
            results.append(result)
        await self._flush()
        await message_log.insert_many(self.conn, self.log_inserts)
        for log_id, values in self.log_updates:
            await message_log.replace(self.conn, log_id, values)
        return results

    def _provenance_id(self, job: Job) -> str:
        return stable_id("Provenance", *job.key)

    async def _one(self, job: Job, existing_log_id: str | None) -> Result:
        log_id = existing_log_id or str(uuid.uuid4())
        refs: list[str] = []
        code, errors = job.code, list(job.errors)
        if code == "AA" and job.translation is not None:
            refs = await self._write(job, log_id)
        ack = self._ack(job, code, errors)
        row = {
            "id": log_id,
            "sender": job.key[0],
            "control_id": job.key[1],
            "message_type": job.translation.event
            if job.translation
            else (f"{job.message.message_code}^{job.message.trigger}" if job.message else ""),
            "source": job.source.kind,
            "source_detail": job.source.detail[:500],
            "received_us": job.received_us,
            "processed_us": dates.now_us(),
            "status": {"AA": "accepted", "AE": "error", "AR": "rejected"}[code],
            "ack_code": code,
            "raw": job.raw,
            "ack": ack,
            "errors": orjson.dumps([_error_json(e) for e in errors]).decode(),
            "problems": orjson.dumps(job.translation.problems if job.translation else []).decode(),
            "unused": orjson.dumps(job.translation.unused if job.translation else []).decode(),
            "resources": orjson.dumps(refs).decode(),
        }
        if existing_log_id is not None:
            self.log_updates.append((log_id, row))
        else:
            self.log_inserts.append({**row, "attempts": 1})
        return Result(ack, code, log_id, resources=refs, errors=[e.text for e in errors])

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

    # -- resources -------------------------------------------------------------------------------

    async def _write(self, job: Job, log_id: str) -> list[str]:
        """Plan every resource of the message (and its Provenance); returns their versioned references."""
        assert job.translation is not None
        translation = job.translation
        self._adopt_known_patients(translation)
        refs: list[str] = []
        for produced in translation.resources:
            if (produced.resource["resourceType"], produced.resource["id"]) in self.pending_keys:
                # Written earlier in this batch (by this message or another): make that version current first.
                await self._flush()
            refs.append(self._plan(produced.resource, produced.mode))
        if translation.merge is not None:
            refs += await self._merge(*translation.merge)
        refs.append(self._plan(self._provenance(job, log_id, refs), "replace"))
        return refs

    def _plan(self, resource: JSON, mode: str) -> str:
        key = (resource["resourceType"], resource["id"])
        current = self.currents.get(key)
        if mode == "fill" and current is not None and current.content is not None and not current.deleted:
            resource = _fill(jsonio.loads(current.content), resource)
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

    async def _find_known_patients(self, jobs: Sequence[Job]) -> None:
        """For Patients this batch would create: a stored Patient with the same identifier (one query)."""
        pairs = [
            (i.get("system"), i["value"])
            for job in jobs
            if job.translation is not None and job.code == "AA"
            for p in job.translation.resources
            if p.resource["resourceType"] == "Patient" and ("Patient", p.resource["id"]) not in self.currents
            for i in p.resource.get("identifier", [])
            if i.get("value")
        ]
        if not pairs:
            return
        self.known_patients = await store_search.ids_by_identifier(self.conn, "Patient", pairs)
        if self.known_patients:
            keys = [("Patient", pid) for pid in set(self.known_patients.values())]
            self.currents.update(await store.current_many(self.conn, keys))

    def _adopt_known_patients(self, translation: Translation) -> None:
        """A Patient the message would create, but one with the same identifier exists (registered over
        the FHIR API, say): use that one, so results and orders join the patient already known."""
        for produced in translation.resources:
            resource = produced.resource
            if resource["resourceType"] != "Patient" or ("Patient", resource["id"]) in self.currents:
                continue
            match = next(
                (
                    self.known_patients[key]
                    for key in ((i.get("system"), i.get("value")) for i in resource.get("identifier", []))
                    if key in self.known_patients
                ),
                None,
            )
            if match is None:
                continue
            old = f"Patient/{resource['id']}"
            resource["id"] = match
            for other in translation.resources:
                for reference in iter_references(other.resource):
                    if reference["reference"] == old:
                        reference["reference"] = f"Patient/{match}"

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
                        "display": f"{job.translation.event} message {message.control_id}",
                    },
                }
            ],
        }

    async def _merge(self, prior_id: str, survivor_id: str) -> list[str]:
        """ADT^A40: the prior Patient points at the survivor, and what pointed at the prior moves over."""
        await self._flush()
        old_key, new_key = ("Patient", prior_id), ("Patient", survivor_id)
        self.currents.update(await store.current_many(self.conn, [old_key, new_key]))
        refs: list[str] = []
        prior = self.currents.get(old_key)
        if prior is not None and prior.content is not None and not prior.deleted:
            content = jsonio.loads(prior.content)
            content["active"] = False
            content["link"] = [{"other": {"reference": f"Patient/{survivor_id}"}, "type": "replaced-by"}]
            refs.append(self._plan(content, "replace"))
        survivor = self.currents.get(new_key)
        if survivor is not None and survivor.content is not None:
            content = jsonio.loads(survivor.content)
            links = [
                link
                for link in content.get("link", [])
                if link.get("other", {}).get("reference") != f"Patient/{prior_id}"
            ]
            content["link"] = [*links, {"other": {"reference": f"Patient/{prior_id}"}, "type": "replaces"}]
            refs.append(self._plan(content, "replace"))
        rows = await self.conn.execute(
            select(sp_reference.c.rid)
            .where(sp_reference.c.target_type == "Patient", sp_reference.c.target_id == prior_id)
            .distinct()
        )
        movers = await store.load_by_rids(self.conn, [row.rid for row in rows])
        for stored in movers.values():
            if stored.deleted or stored.content is None or stored.type == "Patient":
                continue
            content = jsonio.loads(stored.content)
            for reference in iter_references(content):
                if reference["reference"] == f"Patient/{prior_id}":
                    reference["reference"] = f"Patient/{survivor_id}"
            self.currents[(stored.type, stored.id)] = stored
            refs.append(self._plan(content, "replace"))
        return refs


def _error_json(error: AckError) -> dict[str, Any]:
    return {"code": error.code, "text": error.text, "segment": error.segment, "field": error.field}
