"""`GET /fhir/Patient/{id}/$timeline`: one chronological list of what happened to a patient.

Kinds, times and summaries are `gateway.pharmacist.timeline`'s. The answer is a plain JSON document
(README, "Patient $timeline"):

    {"patient": "Patient/123", "total": 9,
     "entries": [{"id": "Observation/7", "time": "2024-03-01T08:00:00Z", "kind": "observation",
                  "summary": "ANC 1.2 10*3/uL (low)", "source": {"system": "LAB / ACME", "kind": "hl7v2"},
                  "resource": "Observation/7/_history/2"}, ...],
     "next": "https://.../fhir/Patient/123/$timeline?_count=50&_cursor=..."}

Entries are oldest first, ordered by (time, entry id); `_cursor` names the last entry of a page, so a
page starts right after it whatever was written meanwhile (an entry whose time an update moves can move
to another page). `_since` keeps entries whose time is at or after it; `_count` is the page size.

Built per request from the Patient's compartment rows of the timeline's types and the versions of its
PA Tasks, then sorted and paged in memory (times are inside the resources, not indexed): a request reads
at most GATEWAY_MAX_PAGE_SIZE x 20 rows of one type, and answers 422 (too costly) past that.

Authorization as for `$everything`: `Patient.r` (403 before anything is looked up), the Patient must
exist (404, 410 when deleted), and every type is on the timeline only when the token may read it: a
token without `Observation.r` sees no Observation entry, summary or id, and nothing says it was left
out. The source (from Provenance) is given only to a token that may read Provenance; otherwise it is
null. Audited as a read of the Patient (`operation` `$timeline`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from gateway.exceptions import BadRequest, Gone, NotFound, TooCostly
from gateway.fhir import jsonio
from gateway.fhir.references import parse_reference
from gateway.fhir.urls import check_id
from gateway.pharmacist import timeline as tl
from gateway.service.access.context import READ, RequestContext
from gateway.service.fhirapi.interactions import FhirService, Outcome, since_param, strict_count_param
from gateway.store import resources as resources_store
from gateway.store import timeline as store
from gateway.store.resources import Stored

OPERATION = "$timeline"
KNOWN_PARAMS = frozenset({"_since", "_count", "_cursor", "_format", "_pretty", "_stream"})  # _stream=false
ROWS_PER_TYPE_FACTOR = 20  # at most GATEWAY_MAX_PAGE_SIZE x this rows of one type are read


@dataclass(slots=True)
class TimelineEntry:
    entry_id: str
    moment: tl.Moment
    kind: str
    summary: str
    resource: str  # Type/id/_history/n
    key: tuple[str, str]  # (type, id)
    version: int
    content: bytes
    source: dict[str, Any] | None = None

    @property
    def order(self) -> tuple[int, str]:
        return (self.moment.us, self.entry_id)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.entry_id,
            "time": self.moment.text,
            "kind": self.kind,
            "summary": self.summary,
            "source": self.source,
            "resource": self.resource,
        }


def _today() -> date:
    return datetime.now(UTC).date()


def _focus(entry: TimelineEntry) -> tuple[str, str] | None:
    """The (type, id) an alert work item's `focus` names (its result)."""
    task = orjson.loads(entry.content)
    reference = (task.get("focus") or {}).get("reference") if isinstance(task, dict) else None
    return parse_reference(reference) if isinstance(reference, str) else None


def encode_cursor(order: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(order))).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, str]:
    try:
        key = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        key = None
    if (
        isinstance(key, list)
        and len(key) == 2
        and type(key[0]) is int
        and -(2**63) <= key[0] < 2**63
        and isinstance(key[1], str)
    ):
        return key[0], key[1]
    raise BadRequest("_cursor is not valid: use the next link of a previous page as it is")


class PatientTimeline:
    def __init__(self, fhir: FhirService) -> None:
        self.fhir = fhir

    def types(self, ctx: RequestContext) -> list[str]:
        """The timeline's types this caller may read."""
        return [t for t in sorted(tl.KINDS) if t not in self.fhir.policies and ctx.can(t, READ)]

    async def run(self, ctx: RequestContext, patient_id: str, params: list[tuple[str, str]]) -> Outcome:
        ctx.require("Patient", READ)
        check_id(patient_id)
        self.fhir.check_reach(ctx, patient_id)
        since_us, count, after = self._parse(ctx, params)
        async with self.fhir.db.read() as conn:
            await self.check_patient(conn, patient_id)
            entries = await self.collect(conn, ctx, patient_id)
        if since_us is not None:
            entries = [e for e in entries if e.moment.us >= since_us]
        total = len(entries)
        if after is not None:
            entries = [e for e in entries if e.order > after]
        page, more = entries[:count], len(entries) > count
        return self._answer(ctx, patient_id, params, page, more, count, total)

    @staticmethod
    async def check_patient(conn: Any, patient_id: str) -> None:
        """404 for a Patient that is not known, 410 for a deleted one."""
        patient = await resources_store.head(conn, "Patient", patient_id)
        if patient is None:
            raise NotFound(f"Patient/{patient_id} is not known")
        if patient.deleted:
            raise Gone(f"Patient/{patient_id} was deleted (version {patient.version})")

    async def collect(self, conn: Any, ctx: RequestContext, patient_id: str) -> list[TimelineEntry]:
        """Every entry this caller may see, with its source, ordered by (time, entry id)."""
        limit = self.fhir.max_count * ROWS_PER_TYPE_FACTOR
        entries: list[TimelineEntry] = []
        for rtype in self.types(ctx):
            rows = await store.compartment(conn, patient_id, rtype, limit + 1)
            if len(rows) > limit:
                raise TooCostly(f"$timeline: more than {limit} {rtype} resources for this patient")
            # A resource also in the record of a patient a person does not reach is not theirs to see.
            rows = [r for r in rows if self.fhir.person_sees(ctx, r)]
            entries += await self._entries(conn, rtype, rows)
        await self.with_sources(conn, ctx, entries)
        entries.sort(key=lambda e: e.order)
        return entries

    async def with_sources(self, conn: Any, ctx: RequestContext, entries: list[TimelineEntry]) -> None:
        """Each entry's source, for a caller that may read Provenance; None for the others."""
        if ctx.can("Provenance", READ) and "Provenance" not in self.fhir.policies:
            await self._sources(conn, entries)
        else:
            for entry in entries:
                entry.source = None

    def _parse(
        self, ctx: RequestContext, params: list[tuple[str, str]]
    ) -> tuple[int | None, int, tuple[int, str] | None]:
        since_us: int | None = None
        count = self.fhir.default_count
        after: tuple[int, str] | None = None
        unknown: list[str] = []
        for key, value in params:
            if key == "_since":
                since_us = since_param(value)
            elif key == "_count":
                count = strict_count_param(value, self.fhir.max_count)
            elif key == "_cursor":
                after = decode_cursor(value)
            elif key not in KNOWN_PARAMS:
                unknown.append(key)
        if unknown:
            # No OperationOutcome entry to carry a warning in this document: unknown parameters are refused.
            raise BadRequest(f"Unknown parameters for $timeline: {', '.join(sorted(set(unknown)))}")
        return since_us, count, after

    async def _entries(self, conn: Any, rtype: str, rows: list[Stored]) -> list[TimelineEntry]:
        found: list[TimelineEntry] = []
        pa_rids: list[int] = []
        for row in rows:
            assert row.content is not None
            resource = jsonio.loads(row.content)
            kind = tl.kind_of(resource)
            if kind is None:
                continue
            if kind == "pa-task":
                pa_rids.append(row.rid)
                continue
            if kind == "monitoring-due":
                today = _today()
                found += [
                    self._due(row, resource, index, when, today)
                    for index, when in tl.calendar_entries(resource, today)
                ]
                continue
            found.append(
                self._entry(
                    f"{row.type}/{row.id}", kind, resource, row, tl.time_of(kind, resource, row.updated_us)
                )
            )
        if pa_rids:
            previous: dict[int, Any] = {}
            for version in await store.versions(conn, pa_rids):
                if version.deleted or version.content is None:
                    previous.pop(version.rid, None)
                    continue
                resource = jsonio.loads(version.content)
                before = previous.get(version.rid)
                previous[version.rid] = resource
                entry = self.pa_move(version, resource, before)
                if entry is not None:
                    found.append(entry)
        return found

    @classmethod
    def entry_of(cls, version: Stored, previous: Stored | None) -> TimelineEntry | None:
        """The entry a stored version makes on its own (the stream's unit): None when it makes none
        (a deletion, a Task that is neither a PA nor an alert, a PA Task version that did not move)."""
        if version.deleted or version.content is None:
            return None
        resource = jsonio.loads(version.content)
        kind = tl.kind_of(resource)
        if kind is None:
            return None
        before = None
        if previous is not None and not previous.deleted and previous.content is not None:
            before = jsonio.loads(previous.content)
        if kind == "pa-task":
            return cls.pa_move(version, resource, before)
        if kind == "monitoring-due":
            index = tl.changed_activity(resource, before)
            when = tl.due_moment(resource, index) if index is not None else None
            if index is None or when is None:
                return None
            return cls._due(version, resource, index, when, _today())
        when = tl.time_of(kind, resource, version.updated_us)
        return cls._entry(f"{version.type}/{version.id}", kind, resource, version, when)

    @classmethod
    def pa_move(cls, version: Stored, resource: Any, before: Any) -> TimelineEntry | None:
        if not tl.is_pa_move(resource, before):
            return None
        when = tl.pa_move_time(resource, before, version.updated_us)
        entry_id = f"{version.type}/{version.id}/_history/{version.version}"
        return cls._entry(entry_id, "pa-task", resource, version, when)

    @classmethod
    def _due(cls, row: Stored, resource: Any, index: int, when: tl.Moment, today: date) -> TimelineEntry:
        entry = cls._entry(f"{row.type}/{row.id}/activity/{index}", "monitoring-due", resource, row, when)
        entry.summary = tl.activity_summary(resource, index, today)
        entry.source = {"system": "specialty-gateway", "kind": "gateway"}  # the calendar is the gateway's own
        return entry

    @staticmethod
    def _entry(entry_id: str, kind: str, resource: Any, row: Stored, when: tl.Moment) -> TimelineEntry:
        assert row.content is not None
        return TimelineEntry(
            entry_id,
            when,
            kind,
            tl.summary(kind, resource),
            f"{row.type}/{row.id}/_history/{row.version}",
            (row.type, row.id),
            row.version,
            row.content,
            tl.source_from_meta(resource),
        )

    async def _sources(self, conn: Any, entries: list[TimelineEntry]) -> None:
        """Each entry's source (README, "Patient $timeline"):

        - the Provenance that first named the entry's version: the message or payer answer that wrote it
          (a later HL7 v2 message that repeats an order unchanged, as a dispense does, names the same version
          without having written it);
        - else the latest Provenance naming the resource without a version (one naming *other* versions says
          nothing about this one: a PA Task's submission is not the payer's answer);
        - else, for an alert work item (the gateway opens it in the transaction of the result that met the
          rule, and writes no Provenance for it), the source of that result: its focus;
        - else what the resource's meta says (`fhir-client`).
        """
        focus = {id(e): _focus(e) for e in entries if e.kind == "alert"}
        keys = sorted({e.key for e in entries} | {k for k in focus.values() if k is not None})
        exact: dict[tuple[str, str, int], dict[str, Any]] = {}
        unversioned: dict[tuple[str, str], dict[str, Any]] = {}
        first: dict[tuple[str, str], dict[str, Any]] = {}
        for provenance in await store.provenances_naming(conn, keys):  # oldest first
            assert provenance.content is not None
            content = jsonio.loads(provenance.content)
            source = tl.source_from_provenance(content)
            for target in content.get("target") or []:
                reference = target.get("reference") if isinstance(target, dict) else None
                if not isinstance(reference, str):
                    continue
                parsed = parse_reference(reference)
                if parsed is None:
                    continue
                first.setdefault(parsed, source)
                parts = reference.split("/_history/")
                if len(parts) == 2 and parts[1].isdigit():
                    exact.setdefault((*parsed, int(parts[1])), source)
                else:
                    unversioned[parsed] = source
        for entry in entries:
            found = exact.get((*entry.key, entry.version)) or unversioned.get(entry.key)
            about = focus.get(id(entry))
            if found is None and about is not None:
                found = first.get(about)
            if found is not None:
                entry.source = found

    def _answer(
        self,
        ctx: RequestContext,
        patient_id: str,
        params: list[tuple[str, str]],
        page: list[TimelineEntry],
        more: bool,
        count: int,
        total: int,
    ) -> Outcome:
        path = f"{ctx.base_url}/Patient/{patient_id}/{OPERATION}"
        kept = [(k, v) for k, v in params if k not in ("_count", "_cursor")]
        next_url = None
        if more and page and count:
            after = encode_cursor(page[-1].order)
            next_url = f"{path}?{urlencode([*kept, ('_count', str(count)), ('_cursor', after)])}"
        body = {
            "patient": f"Patient/{patient_id}",
            "total": total,
            "entries": [e.as_json() for e in page],
            "next": next_url,
        }
        self._audit(ctx, params, page)
        return Outcome(200, body=jsonio.dumps(body))

    def _audit(self, ctx: RequestContext, params: list[tuple[str, str]], page: list[TimelineEntry]) -> None:
        record = ctx.audit
        if record is None:
            return
        record.action_code = "R"
        kinds = sorted({e.kind for e in page})
        shown = urlencode([(k, v) for k, v in params if k != "_cursor"])
        record.operation = (
            f"{OPERATION}{'?' + shown if shown else ''}; returned: {', '.join(kinds) if kinds else 'nothing'}"
        )
        record.saw(e.content for e in page)
