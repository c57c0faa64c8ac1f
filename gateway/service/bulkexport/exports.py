"""Bulk Data `$export` (v2.0): system, Patient and Group level, built in the background.

Kick-off (`GET [base]/$export`, `[base]/Patient/$export`, `[base]/Group/{id}/$export`, with
`Prefer: respond-async`) decides everything about authorization at once, before anything is looked up:
the export holds the types the token may read (system scopes), `_type` naming a type it may not read is
403 (whether such resources exist is never told), and people's tokens do not open these routes at all.
Patient and Group level hold the Patient compartment's types only (gateway/fhir/compartment.py); Group
level also needs read on Group, and the Group must exist. The job is a row (store/bulk.py), so any
process answers its status and files, which only the client that started it sees (others get 404).

Building: a background round claims a queued job by lease, fixes its `transactionTime` (now: what was
last updated at or before it is in the files, what changes later is the next incremental pull's), and
writes parts of at most `file_resources` resources, each one keyset page read and stored in one
transaction with the job's new place; a process that dies mid-job leaves a place another continues from.
Group members are read from the stored Group when the job starts to build (inactive members and ended
periods left out). Jobs and their files are deleted `retention_s` after they finish (24 h by default).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from sqlalchemy import ColumnElement

from gateway.exceptions import BadRequest, Forbidden, Gone, NotFound
from gateway.fhir import dates
from gateway.fhir.bulkdata import (
    BulkDataError,
    OutputFile,
    group_members,
    manifest,
    output_format_ok,
    parse_types,
)
from gateway.fhir.compartment import PATIENT_COMPARTMENT
from gateway.fhir.searchparams import RESOURCE_TYPES
from gateway.fhir.urls import check_id
from gateway.service.access.context import READ, RequestContext
from gateway.service.fhirapi.interactions import FhirService, since_param
from gateway.service.workers import Repeating
from gateway.store import bulk as store
from gateway.store import resources as resources_store
from gateway.types import Issue

log = logging.getLogger("gateway.bulkexport")

LEASE_US = 120_000_000  # renewed with every part; a builder silent this long is taken to have died
KNOWN_PARAMS = frozenset({"_outputFormat", "_type", "_since"})
COMPARTMENT_TYPES = frozenset({"Patient", *PATIENT_COMPARTMENT})
RETRY_AFTER_S = 2


@dataclass(frozen=True, slots=True)
class Status:
    """What a status request answers: 202 with progress, 200 with the manifest, or a failure."""

    status: int
    progress: str | None = None
    body: dict[str, object] | None = None
    issues: list[Issue] = field(default_factory=list)


class BulkExports:
    def __init__(
        self,
        fhir: FhirService,
        *,
        file_resources: int = 1000,
        retention_s: int = 24 * 3600,
        poll_s: float = 1.0,
    ) -> None:
        self.fhir = fhir
        self.db = fhir.db
        self.file_resources = file_resources
        self.retention_us = retention_s * 1_000_000
        self.worker = f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.timer = Repeating("bulk-export", "Bulk export round", self.run_once, poll_s, log)
        self.built = 0  # jobs this process finished (for tests and logs)

    async def start(self) -> None:
        self.timer.start()

    async def stop(self) -> None:
        await self.timer.stop()

    # --- kick-off, status, files, cancel -------------------------------------------------------------

    def readable_types(self, ctx: RequestContext, level: str) -> list[str]:
        # Types with rules beyond scopes (Subscription) are never exported.
        allowed = [t for t in RESOURCE_TYPES if t not in self.fhir.policies and ctx.can(t, READ)]
        return [t for t in allowed if level == "system" or t in COMPARTMENT_TYPES]

    def _types(self, ctx: RequestContext, level: str, asked: list[str]) -> list[str]:
        if not asked:
            types = self.readable_types(ctx, level)
            if not types:
                raise Forbidden("The access token's scopes allow reading none of the types this export holds")
            return types
        unserved = [t for t in asked if t not in RESOURCE_TYPES]
        if unserved:
            raise BadRequest(f"_type names types this server does not serve: {', '.join(unserved)}")
        unreadable = [t for t in asked if t in self.fhir.policies or not ctx.can(t, READ)]
        if unreadable:
            raise Forbidden(f"The access token's scopes do not allow reading {', '.join(unreadable)}")
        outside = [t for t in asked if level != "system" and t not in COMPARTMENT_TYPES]
        if outside:
            raise BadRequest(
                f"_type names types outside the Patient compartment, not in a {level}-level export: "
                + ", ".join(outside)
            )
        return asked

    async def kick_off(
        self,
        ctx: RequestContext,
        *,
        level: str,
        group_id: str | None,
        params: list[tuple[str, str]],
        request_url: str,
        respond_async: bool,
    ) -> str:
        """A queued job's id; BadRequest/Forbidden/NotFound when it cannot be started as asked."""
        if not respond_async:
            raise BadRequest("$export is asynchronous: send Prefer: respond-async")
        unknown = sorted({k for k, _ in params if k not in KNOWN_PARAMS})
        if unknown:
            raise BadRequest(f"$export does not support these parameters: {', '.join(unknown)}")
        for key, value in params:
            if key == "_outputFormat" and not output_format_ok(value):
                raise BadRequest(
                    f"_outputFormat {value[:64]!r} is not supported; use application/fhir+ndjson"
                )
        since = [v for k, v in params if k == "_since"]
        if len(since) > 1:
            raise BadRequest("_since is given more than once")
        since_us = since_param(since[0]) if since else None
        try:
            asked = parse_types([v for k, v in params if k == "_type"])
        except BulkDataError as exc:
            raise BadRequest(str(exc)) from None
        types = self._types(ctx, level, asked)
        if level == "group":
            assert group_id is not None
            ctx.require("Group", READ)
            check_id(group_id)
            async with self.db.read() as conn:
                head = await resources_store.head(conn, "Group", group_id)
            if head is None:
                raise NotFound(f"Group/{group_id} is not known")
            if head.deleted:
                raise Gone(f"Group/{group_id} was deleted")
        if ctx.client_id is None:
            raise Forbidden("$export needs a client's token")
        job_id = uuid.uuid4().hex
        async with self.db.write() as conn:
            await store.create(
                conn,
                job_id=job_id,
                client_id=ctx.client_id,
                request=request_url,
                level=level,
                group_id=group_id,
                types=types,
                since_us=since_us,
                now=dates.now_us(),
            )
        log.info("bulk export job=%s level=%s types=%s queued", job_id, level, ",".join(types))
        return job_id

    async def _own_job(self, ctx: RequestContext, job_id: str) -> store.Job:
        # Someone else's job, an expired one and one that never was look the same: 404.
        async with self.db.read() as conn:
            job = await store.get(conn, job_id[:64])
        if job is None or ctx.client_id is None or job.client_id != ctx.client_id:
            raise NotFound("No such export job (it may have expired or been cancelled)")
        return job

    async def status(self, ctx: RequestContext, job_id: str) -> Status:
        job = await self._own_job(ctx, job_id)
        if job.status in (store.QUEUED, store.RUNNING):
            where = "queued" if job.status == store.QUEUED or job.type_index >= len(job.types) else None
            if where is None:
                where = f"{job.types[job.type_index]} ({job.type_index + 1} of {len(job.types)})"
            return Status(202, progress=f"{where}, {job.written} resources written")
        if job.status == store.FAILED:
            return Status(500, issues=[Issue("error", "exception", f"The export failed: {job.error}")])
        async with self.db.read() as conn:
            parts = await store.files(conn, job.id)
        assert job.transaction_us is not None
        outputs = [OutputFile(p.res_type, self.file_url(ctx, job.id, p.seq), p.count) for p in parts]
        return Status(
            200,
            body=manifest(
                transaction_time=dates.format_instant(job.transaction_us),
                request=job.request,
                outputs=outputs,
            ),
        )

    @staticmethod
    def file_url(ctx: RequestContext, job_id: str, seq: int) -> str:
        return f"{ctx.base_url}/$export-jobs/{job_id}/files/{seq}"

    async def file(self, ctx: RequestContext, job_id: str, seq: int) -> str:
        job = await self._own_job(ctx, job_id)
        async with self.db.read() as conn:
            content = await store.file_content(conn, job.id, seq) if job.status == store.DONE else None
        if content is None:
            raise NotFound("No such file in this export")
        return content

    async def cancel(self, ctx: RequestContext, job_id: str) -> None:
        job = await self._own_job(ctx, job_id)
        async with self.db.write() as conn:
            await store.remove(conn, job.id)
        log.info("bulk export job=%s cancelled", job.id)

    # --- the builder ---------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Expired jobs removed, then queued jobs built one after another; how many were finished."""
        async with self.db.write() as conn:
            await store.expire(conn, dates.now_us())
        finished = 0
        while True:
            async with self.db.write() as conn:
                job = await store.claim(conn, self.worker, dates.now_us(), LEASE_US)
            if job is None:
                return finished
            try:
                await self.build(job)
            except Exception as exc:  # a bug or the database: the job fails, with a name but no content
                log.exception("bulk export job=%s failed", job.id)
                async with self.db.write() as conn:
                    await store.finish(
                        conn,
                        job.id,
                        self.worker,
                        now=dates.now_us(),
                        expires_us=dates.now_us() + self.retention_us,
                        error=type(exc).__name__,
                    )
            finished += 1

    async def _patients(self, job: store.Job) -> list[str] | None:
        """Whose compartments the job holds: None for everyone's (system and Patient level)."""
        if job.level != "group":
            return None
        assert job.group_id is not None
        async with self.db.read() as conn:
            group = await resources_store.current(conn, "Group", job.group_id)
        if group is None or group.content is None:
            return []
        return group_members(orjson.loads(group.content), datetime.now(UTC))

    async def build(self, job: store.Job) -> None:
        transaction_us = job.transaction_us
        if transaction_us is None:
            transaction_us = dates.now_us()
            async with self.db.write() as conn:
                if not await store.start(conn, job.id, self.worker, transaction_us):
                    return  # cancelled, or another process took it
        patients = await self._patients(job)
        type_index, after_rid = job.type_index, job.after_rid
        while type_index < len(job.types):
            res_type = job.types[type_index]
            condition: ColumnElement[bool] | None = None
            if job.level != "system":
                condition = store.compartments_condition(res_type, patients)
            rows = []
            if patients is None or patients:  # a Group without current members: empty files, none written
                async with self.db.read() as conn:  # read apart from the write: writers are not held up
                    rows = await store.page(
                        conn,
                        res_type,
                        condition=condition,
                        since_us=job.since_us,
                        after_rid=after_rid,
                        limit=self.file_resources,
                    )
            lines = [row.content.decode() for row in rows if row.content is not None]
            if len(rows) < self.file_resources:
                type_index, after_rid = type_index + 1, None
            else:
                after_rid = rows[-1].rid
            async with self.db.write() as conn:
                seq = await store.next_seq(conn, job.id) if lines else None
                saved = await store.save_part(
                    conn,
                    job.id,
                    self.worker,
                    seq=seq,
                    res_type=res_type,
                    lines=lines,
                    type_index=type_index,
                    after_rid=after_rid,
                    until_us=dates.now_us() + LEASE_US,
                )
            if not saved:  # nothing was written: the job is gone (cancelled) or another process has it
                log.info("bulk export job=%s stopped: cancelled or taken over", job.id)
                return
        now = dates.now_us()
        async with self.db.write() as conn:
            await store.finish(
                conn, job.id, self.worker, now=now, expires_us=now + self.retention_us, error=None
            )
        self.built += 1
        log.info("bulk export job=%s done", job.id)
