"""`GET /fhir/Patient/{id}/$everything`: the Patient and its compartment, page by page.

What is returned (https://hl7.org/fhir/R4/patient-operation-everything.html), as segments in this order,
each ordered by creation (row id; AuditEvents by recorded time and id):

1. the Patient, and Patients whose `link` points at it (`search.mode` match);
2. the compartment types of `gateway.fhir.compartment` in alphabetical order (match), Task included by
   `Task.for`;
3. the Medications, Organizations, Practitioners and PractitionerRoles that the Patient or the returned
   compartment types reference (include); references are followed only out of types the caller may
   read, so nothing shows up because of a resource the caller could not see;
4. the AuditEvents about the Patient, only for holders of `audit/events.read` (match).

Authorization: read on Patient (403 otherwise, before anything is looked up), then the Patient must
exist (404; 410 when deleted). Every other type is in the answer only when the token may read it; a type
it may not read is left out without a word: not counted in `total`, not named in a warning, an empty
answer when `_type` names only such types. References inside a returned resource are kept as stored (a
Provenance's `target`, a DiagnosticReport's `result`): the caller may read that resource anyway, and a
plain read would show the same references.

Parameters: `_type` (comma-separated, repeatable), `_since` (lastUpdated at or after; for AuditEvents
their recorded time), `_count` (page size, default GATEWAY_DEFAULT_PAGE_SIZE, capped by
GATEWAY_MAX_PAGE_SIZE), `_cursor` (from the `next` link: where the previous page ended; opaque).
`start`/`end` (care dates) are not supported: they are ignored with a warning in an OperationOutcome
entry, as are unknown parameters (400 with `Prefer: handling=strict`).

Paging: keyset, not offset. A page reads at most `_count` + 1 rows from each segment it looks into; a
resource created while a client pages appears when its segment is reached, one updated meanwhile keeps
its place, and no entry is on two pages.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson
from sqlalchemy import ColumnElement, and_
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.exceptions import BadRequest, Gone, NotFound, TooCostly
from gateway.fhir.bundles import Entry, bundle_bytes
from gateway.fhir.compartment import PATIENT_COMPARTMENT, REFERENCED_TYPES
from gateway.fhir.outcome import outcome_bytes
from gateway.fhir.searchparams import RESOURCE_TYPES
from gateway.fhir.urls import check_id
from gateway.service.access.context import READ, RequestContext
from gateway.service.fhirapi.audit import AUDIT_READ
from gateway.service.fhirapi.interactions import FhirService, Outcome, since_param, strict_count_param
from gateway.store import everything as store
from gateway.store import resources as resources_store
from gateway.store import search as search_store
from gateway.types import Issue

AUDIT_EVENT = "AuditEvent"
OPERATION = "$everything"
KNOWN_PARAMS = frozenset({"_type", "_since", "_count", "_cursor", "start", "end", "_format", "_pretty"})


@dataclass(frozen=True, slots=True)
class Segment:
    resource_type: str
    mode: str  # match | include


@dataclass(slots=True)
class _Found:
    segment: Segment
    full_url: str
    content: bytes
    cursor: list[object]  # [type, key...]: where a next page starts after this entry


def encode_cursor(key: list[object]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[str, int | None, tuple[int, str] | None]:
    """(segment type, resource row id, AuditEvent (recorded_us, id)) of a `_cursor`; 400 if malformed."""
    try:
        key = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        key = None
    # Keys beyond SQL's 64-bit integers would fail in the database, not here: refused as malformed.
    if (
        isinstance(key, list)
        and key
        and isinstance(key[0], str)
        and all(0 <= k < 2**63 for k in key[1:] if type(k) is int)
    ):
        if len(key) == 2 and type(key[1]) is int and key[0] != AUDIT_EVENT:
            return key[0], key[1], None
        if len(key) == 3 and key[0] == AUDIT_EVENT and type(key[1]) is int and isinstance(key[2], str):
            return key[0], None, (key[1], key[2])
    raise BadRequest("_cursor is not valid: use the next link of a previous page as it is")


class PatientEverything:
    """The operation over the FHIR store (and the audit trail for those who may read it)."""

    def __init__(self, fhir: FhirService) -> None:
        self.fhir = fhir

    def segments(self, ctx: RequestContext, wanted: set[str] | None) -> list[Segment]:
        """What this caller may get, in answer order; types it may not read are simply not there."""

        def readable(rtype: str) -> bool:
            # Types with rules beyond scopes (Subscription) are never part of a patient's record.
            return rtype in RESOURCE_TYPES and rtype not in self.fhir.policies and ctx.can(rtype, READ)

        found = [Segment("Patient", "match")]
        found += [Segment(t, "match") for t in sorted(PATIENT_COMPARTMENT) if readable(t)]
        found += [Segment(t, "include") for t in REFERENCED_TYPES if readable(t)]
        if ctx.may(AUDIT_READ):
            found.append(Segment(AUDIT_EVENT, "match"))
        return [s for s in found if wanted is None or s.resource_type in wanted]

    def sources(self, ctx: RequestContext) -> list[str]:
        """Compartment types whose references are followed: those the caller may read (whatever `_type`)."""
        return [t for t in sorted(PATIENT_COMPARTMENT) if t not in self.fhir.policies and ctx.can(t, READ)]

    async def run(self, ctx: RequestContext, patient_id: str, params: list[tuple[str, str]]) -> Outcome:
        ctx.require("Patient", READ)
        check_id(patient_id)
        self.fhir.check_reach(ctx, patient_id)
        wanted, since_us, count, cursor, issues = self._parse(ctx, params)
        try:
            async with self.fhir.db.read() as conn:
                return await self._run(conn, ctx, patient_id, params, wanted, since_us, count, cursor, issues)
        except DBAPIError as exc:
            if "statement timeout" not in str(exc.orig):
                raise
            raise TooCostly(
                "$everything ran past the statement timeout (GATEWAY_DB_STATEMENT_TIMEOUT_SECONDS);"
                " narrow it with _type or _since"
            ) from None

    def _parse(
        self, ctx: RequestContext, params: list[tuple[str, str]]
    ) -> tuple[set[str] | None, int | None, int, str | None, list[Issue]]:
        wanted: set[str] | None = None
        since_us: int | None = None
        count = self.fhir.default_count
        cursor: str | None = None
        unknown: list[str] = []
        care_dates: list[str] = []
        unserved: list[str] = []
        for key, value in params:
            if key == "_type":
                names = {v.strip() for v in value.split(",") if v.strip()}
                unserved += sorted(n for n in names if n not in RESOURCE_TYPES and n != AUDIT_EVENT)
                wanted = (wanted or set()) | names
            elif key == "_since":
                since_us = since_param(value)
            elif key == "_count":
                count = strict_count_param(value, self.fhir.max_count)
            elif key == "_cursor":
                cursor = value
            elif key in ("start", "end"):
                care_dates.append(key)
            elif key not in KNOWN_PARAMS:
                unknown.append(key)
        if unknown and ctx.strict_handling:
            raise BadRequest(f"Unknown parameters for $everything: {', '.join(unknown)}")
        issues: list[Issue] = []
        if care_dates:
            issues.append(
                Issue(
                    "warning",
                    "not-supported",
                    f"{' and '.join(care_dates)} (care dates) are not supported and were ignored; use _since",
                )
            )
        if unserved:
            issues.append(
                Issue(
                    "warning",
                    "not-supported",
                    f"_type names types this server does not serve: {', '.join(unserved)}",
                )
            )
        if unknown:
            issues.append(
                Issue("warning", "not-supported", f"Ignored unknown parameters: {', '.join(unknown)}")
            )
        return wanted, since_us, count, cursor, issues

    async def _run(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        patient_id: str,
        params: list[tuple[str, str]],
        wanted: set[str] | None,
        since_us: int | None,
        count: int,
        cursor: str | None,
        issues: list[Issue],
    ) -> Outcome:
        patient = await resources_store.head(conn, "Patient", patient_id)
        if patient is None:
            raise NotFound(f"Patient/{patient_id} is not known")
        if patient.deleted:
            raise Gone(f"Patient/{patient_id} was deleted (version {patient.version})")
        segments = self.segments(ctx, wanted)
        sources = self.sources(ctx)
        start = 0
        after_rid: int | None = None
        after_event: tuple[int, str] | None = None
        if cursor is not None:
            at, after_rid, after_event = decode_cursor(cursor)
            names = [s.resource_type for s in segments]
            if at not in names:
                raise BadRequest("_cursor is not valid for these parameters: use the next link as it is")
            start = names.index(at)
        found: list[_Found] = []
        more = False
        for number, segment in enumerate(segments[start:]):
            first = number == 0
            room = count - len(found)
            rows = await self._segment_page(
                conn,
                ctx,
                patient_id,
                segment,
                sources,
                since_us,
                after_rid if first else None,
                after_event if first else None,
                room + 1,
            )
            found += rows[:room]
            if len(rows) > room:
                more = True
                break
        total = 0
        for segment in segments:
            total += await self._segment_count(conn, ctx, patient_id, segment, sources, since_us)
        return self._answer(ctx, patient_id, params, found, total, more, count, issues)

    async def _segment_page(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        patient_id: str,
        segment: Segment,
        sources: list[str],
        since_us: int | None,
        after_rid: int | None,
        after_event: tuple[int, str] | None,
        limit: int,
    ) -> list[_Found]:
        rtype = segment.resource_type
        if rtype == AUDIT_EVENT:
            events = await store.audit_page(
                conn, patient_id, since_us=since_us, after=after_event, limit=limit
            )
            return [
                _Found(segment, f"{ctx.base_url}/AuditEvent/{i}", content.encode(), [AUDIT_EVENT, at, i])
                for at, i, content in events
            ]
        condition = self._condition(ctx, patient_id, segment, sources)
        rows = await store.page(conn, condition, since_us=since_us, after_rid=after_rid, limit=limit)
        return [
            _Found(segment, f"{ctx.base_url}/{s.type}/{s.id}", s.content, [rtype, s.rid])
            for s in rows
            if s.content is not None
        ]

    def _condition(
        self, ctx: RequestContext, patient_id: str, segment: Segment, sources: list[str]
    ) -> ColumnElement[bool]:
        if segment.mode == "include":
            return store.referenced_condition(patient_id, segment.resource_type, sources)
        condition = store.compartment_condition(patient_id, segment.resource_type)
        restriction = ctx.person.restriction(segment.resource_type) if ctx.person else None
        if restriction is None:
            return condition
        # A resource also in another patient's record that the person does not reach is left out.
        return and_(condition, search_store.restriction_condition(segment.resource_type, restriction))

    async def _segment_count(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        patient_id: str,
        segment: Segment,
        sources: list[str],
        since_us: int | None,
    ) -> int:
        if segment.resource_type == AUDIT_EVENT:
            return await store.audit_count(conn, patient_id, since_us=since_us)
        condition = self._condition(ctx, patient_id, segment, sources)
        return await store.count(conn, condition, since_us=since_us)

    def _answer(
        self,
        ctx: RequestContext,
        patient_id: str,
        params: list[tuple[str, str]],
        found: list[_Found],
        total: int,
        more: bool,
        count: int,
        issues: list[Issue],
    ) -> Outcome:
        path = f"{ctx.base_url}/Patient/{patient_id}/{OPERATION}"
        kept = [(k, v) for k, v in params if k not in ("_count", "_cursor")]
        this_page = [(k, v) for k, v in params if k != "_count"]
        links = [("self", f"{path}?{urlencode([*this_page, ('_count', str(count))])}")]
        if more and found and count:
            after = encode_cursor(found[-1].cursor)
            links.append(("next", f"{path}?{urlencode([*kept, ('_count', str(count)), ('_cursor', after)])}"))
        entries = [Entry(f.full_url, f.content, f.segment.mode) for f in found]
        if issues:
            entries.append(Entry(f"urn:uuid:{uuid.uuid4()}", outcome_bytes(issues), "outcome"))
        self._audit(ctx, params, found)
        return Outcome(200, body=bundle_bytes("searchset", entries, total=total, links=links))

    def _audit(self, ctx: RequestContext, params: list[tuple[str, str]], found: list[_Found]) -> None:
        """A read of the Patient (the route names it), with the types returned and the Patients they are
        about; the resources are not listed one by one (as for a search)."""
        record = ctx.audit
        if record is None:
            return
        record.action_code = "R"
        types = sorted({f.segment.resource_type for f in found})
        shown = urlencode([(k, v) for k, v in params if k != "_cursor"])
        record.operation = (
            f"{OPERATION}{'?' + shown if shown else ''}; returned: {', '.join(types) if types else 'nothing'}"
        )
        record.saw(f.content for f in found if f.segment.resource_type != AUDIT_EVENT)
