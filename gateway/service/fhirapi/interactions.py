"""The FHIR RESTful interactions: create, read, vread, update, delete, history and search.

Each interaction has an inner form that runs on a connection the caller provides (so that a transaction
Bundle can run many of them in one database transaction) and an outer form that opens its own
transaction. Route handlers call the outer forms; `bundles.py` calls the inner ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters.fhir.results import merged_marks
from gateway.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    PreconditionFailed,
    TooCostly,
    Unprocessable,
)
from gateway.fhir import dates, jsonio
from gateway.fhir.bundles import Entry, bundle_bytes
from gateway.fhir.demographics import disagreements
from gateway.fhir.extract import extract
from gateway.fhir.outcome import outcome_bytes
from gateway.fhir.query import QueryParser, SearchLimits, SearchQuery, parse_offset
from gateway.fhir.urls import check_id, check_type
from gateway.fhir.validation import Validator
from gateway.mapping.fhir_clients import FhirClientMapping
from gateway.service.access.authorization import ResourcePolicy, check_query, restrict_to
from gateway.service.access.context import CREATE, DELETE, READ, SEARCH, UPDATE, RequestContext
from gateway.service.access.people import Reach
from gateway.service.fhirapi.ehr_feeds import EhrFeeds
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.store.database import Database
from gateway.store.resources import PendingVersion, Stored, VersionConflict
from gateway.types import JSON, Issue

# How often an update without If-Match, or a create, is retried after losing a race to another writer.
MAX_CONFLICT_RETRIES = 3

# (connection, context of the writer, versions planned, versions stored) -> None; may raise to roll back.
WriteObserver = Callable[
    [AsyncConnection, "RequestContext", Sequence[PendingVersion], list[Stored]], Awaitable[None]
]


@dataclass(slots=True)
class Outcome:
    """What an interaction produced, for a transport to render."""

    status: int
    stored: Stored | None = None
    body: bytes | None = None
    issues: list[Issue] = field(default_factory=list)
    location: str | None = None

    @property
    def etag(self) -> str | None:
        return f'W/"{self.stored.version}"' if self.stored else None

    @property
    def last_modified(self) -> str | None:
        if self.stored is None:
            return None
        return dates.http_date(self.stored.updated_us)


def parse_resource(body: bytes | JSON, expected_type: str | None = None) -> JSON:
    """A resource from request bytes: a JSON object with a resourceType (matching `expected_type`).

    Decimals keep the literal they were sent with (`jsonio`), and so does whatever is stored from it.
    """
    if isinstance(body, dict):
        resource = body
    else:
        if not body:
            raise BadRequest("The request body is empty; a FHIR resource in JSON was expected")
        try:
            resource = jsonio.loads(body)
        except jsonio.JSONDecodeError as exc:
            raise BadRequest(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(resource, dict):
        raise BadRequest("The body must be a JSON object (a FHIR resource)")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise BadRequest("The resource has no resourceType", expression="resourceType")
    if expected_type is not None and rtype != expected_type:
        raise BadRequest(
            f"resourceType {rtype!r} does not match the URL, which expects {expected_type!r}",
            expression=f"{rtype}.resourceType",
        )
    check_type(rtype)
    return resource


def parse_if_match(value: str | None) -> int | None:
    """The version number in an If-Match header (W/"3" or "3")."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise BadRequest(f'If-Match must be an ETag such as W/"1", got {value!r}')
    return int(text)


def _without_meta_stamps(resource: JSON) -> JSON:
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    body = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        body["meta"] = meta
    return body


def stamp(resource: JSON, resource_id: str, version: int, updated_us: int) -> bytes:
    """Serialise with the server-owned id and meta.versionId/lastUpdated, resourceType, id and meta first."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = dates.format_instant(updated_us)
    # The three keys first, then the rest in the resource's order (a key keeps its place when set again).
    ordered: JSON = {"resourceType": None, "id": None, "meta": None, **resource}
    ordered["resourceType"] = resource["resourceType"]
    ordered["id"] = resource_id
    ordered["meta"] = meta
    return jsonio.dumps(ordered)


def same_content(stored: bytes, resource: JSON) -> bool:
    """Whether `resource` says exactly what the `stored` version says, server stamps aside.

    Written precision counts: 7.2 where 7.20 was stored is a new version, because a lab correcting the
    precision of a result has changed it (7.20 has three significant figures, 7.2 two). Equal values
    are compared first (the cheap, usual answer when something changed); only then the literals, as
    the JSON each side would write with its keys sorted, so that key order alone is no change.
    """
    before = _without_meta_stamps(jsonio.loads(stored))
    after = _without_meta_stamps(resource)
    if before != after:
        return False
    sort = orjson.OPT_SORT_KEYS
    return jsonio.dumps(before, option=sort) == jsonio.dumps(after, option=sort)


def since_param(value: str) -> int:
    """`_since` (history, `$everything`, `$timeline`): the instant as microseconds, or 400."""
    try:
        return dates.date_range(value)[0]
    except dates.DateFormatError as exc:
        raise BadRequest(f"Invalid _since: {exc}") from exc


def strict_count_param(value: str, max_count: int) -> int:
    """`_count` for the patient operations: a non-negative integer (400 otherwise), capped at `max_count`."""
    if not value.isdigit() or len(value) > 9:
        raise BadRequest(f"_count must be a non-negative integer, got {value[:20]!r}")
    return min(int(value), max_count)


class FhirService:
    """FHIR interactions over one database, with validation on every write."""

    def __init__(
        self,
        db: Database,
        validator: Validator,
        *,
        default_count: int = 20,
        max_count: int = 1000,
        max_included: int = 1000,
        configured_base: str = "",
        search_limits: SearchLimits | None = None,
    ) -> None:
        self.db = db
        self.validator = validator
        self.default_count = default_count
        self.max_count = max_count
        self.search_limits = search_limits or SearchLimits()
        self.max_included = max_included
        self.configured_base = configured_base.rstrip("/")
        # Called inside the write transaction with every batch of versions written (subscriptions).
        self.write_observers: list[WriteObserver] = []
        # Rules beyond scopes for some types (Subscriptions belong to their creator): see authorization.py.
        self.policies: dict[str, ResourcePolicy] = {}
        # EHRs that push FHIR (mappings/fhir/clients/): codes, Provenance, one result per lab result.
        self.feeds: EhrFeeds | None = None

    # -- helpers ---------------------------------------------------------------------------------

    def local_bases(self, ctx: RequestContext) -> tuple[str, ...]:
        return tuple(b for b in (self.configured_base, ctx.base_url.rstrip("/")) if b)

    def parser(self, ctx: RequestContext) -> QueryParser:
        return QueryParser(
            default_count=self.default_count,
            max_count=self.max_count,
            local_bases=self.local_bases(ctx),
            limits=self.search_limits,
        )

    def parse_query(
        self, ctx: RequestContext, resource_type: str, params: list[tuple[str, str]]
    ) -> SearchQuery:
        query = self.parser(ctx).parse(resource_type, params)
        check_query(ctx, query)
        if query.unknown and ctx.strict_handling:
            raise BadRequest(f"Unknown search parameters for {resource_type}: {', '.join(query.unknown)}")
        return query

    # -- what a caller may see of a type with a policy (authorization.py) -------------------------

    async def _visible(
        self, conn: AsyncConnection, ctx: RequestContext, resource_type: str
    ) -> set[str] | None:
        policy = self.policies.get(resource_type)
        return None if policy is None else await policy.visible(conn, ctx)

    async def _check_visible(
        self, conn: AsyncConnection, ctx: RequestContext, resource_type: str, resource_id: str
    ) -> None:
        """A resource the caller may not see does not exist for it (404, as if it were never there)."""
        visible = await self._visible(conn, ctx, resource_type)
        if visible is not None and resource_id not in visible:
            raise NotFound(f"{resource_type}/{resource_id} is not known")

    def person_sees(self, ctx: RequestContext, stored: Stored) -> bool:
        """Whether a person's context reaches this version (people.py); always for other callers. A
        deletion carries no content to tell whose it was: a person reaches it only with the whole type."""
        if ctx.person is None:
            return True
        if stored.content is None:
            return ctx.person.reach(stored.type) is Reach.ALL
        return ctx.person.sees(jsonio.loads(stored.content), self.local_bases(ctx))

    @staticmethod
    def check_reach(ctx: RequestContext, patient_id: str) -> None:
        """A patient outside a person's reach does not exist for them (404), for the patient operations."""
        if ctx.person is not None and not ctx.person.sees_patient(patient_id):
            raise NotFound(f"Patient/{patient_id} is not known")

    def _check_person(self, ctx: RequestContext, stored: Stored) -> None:
        if not self.person_sees(ctx, stored):
            raise NotFound(f"{stored.type}/{stored.id} is not known")

    def _shown(self, ctx: RequestContext, resource_type: str, content: bytes | None) -> bytes | None:
        policy = self.policies.get(resource_type)
        if policy is None or content is None:
            return content
        return policy.redact(ctx, content)

    async def _restricted(self, conn: AsyncConnection, ctx: RequestContext, query: SearchQuery) -> bool:
        """Narrow a query to what the caller may see; False when it may see none of that type."""
        if ctx.person is not None:
            query.restriction = ctx.person.restriction(query.resource_type)
            if query.restriction is not None and not query.restriction.patient_ids:
                return False
        visible = await self._visible(conn, ctx, query.resource_type)
        return visible is None or restrict_to(query, visible)

    def location(self, ctx: RequestContext, stored: Stored) -> str:
        return f"{ctx.base_url}/{stored.type}/{stored.id}/_history/{stored.version}"

    def validate(self, resource: JSON, *, where: str | None = None) -> list[Issue]:
        """Validation issues; raises Unprocessable when any is an error."""
        issues = self.validator.validate(resource)
        if where is not None:
            issues = [i.at(where) for i in issues]
        if any(i.is_error for i in issues):
            raise Unprocessable(issues=issues)
        return issues

    def written(self, ctx: RequestContext, stored: Stored, status: int, issues: list[Issue]) -> Outcome:
        ctx.note(stored.type, stored.id, stored.content)
        body: bytes | None = None
        if ctx.prefer_return == "representation":
            body = self._shown(ctx, stored.type, stored.content)
        elif ctx.prefer_return == "OperationOutcome":
            body = outcome_bytes(issues)
        return Outcome(status, stored, body, issues, self.location(ctx, stored))

    async def conditional_matches(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        resource_type: str,
        criteria: str | list[tuple[str, str]],
    ) -> list[str]:
        """Ids (at most two) matching conditional criteria; unknown parameters are refused, not ignored."""
        from urllib.parse import parse_qsl

        params = parse_qsl(criteria, keep_blank_values=True) if isinstance(criteria, str) else criteria
        if not params:
            raise BadRequest("Conditional criteria are empty")
        query = self.parser(ctx).parse(resource_type, params)
        check_query(ctx, query)  # criteria reveal which resource matches: search rights on all they touch
        if query.unknown:
            raise BadRequest(f"Unknown search parameters in conditional criteria: {', '.join(query.unknown)}")
        if not await self._restricted(conn, ctx, query):
            return []
        return await store_search.matching_ids(conn, query, limit=2)

    async def all_matching(
        self, conn: AsyncConnection, ctx: RequestContext, resource_type: str, params: list[tuple[str, str]]
    ) -> list[Stored]:
        """Every current match of a search a use case makes for itself (the caller checked the scopes), in
        pages of `max_count`; not noted for the audit trail (callers note what they return)."""
        query = self.parser(ctx).parse(
            resource_type, [*params, ("_sort", "_id"), ("_count", str(self.max_count))]
        )
        assert not query.unknown, query.unknown
        found: list[Stored] = []
        while True:
            page, _ = await store_search.search(conn, query)
            found += [s for s in page if s.content is not None and not s.deleted]
            if len(page) < query.count:
                return found
            query.offset += query.count

    async def write_versions(
        self, conn: AsyncConnection, ctx: RequestContext, pending: Sequence[PendingVersion]
    ) -> list[Stored]:
        """Every write goes through here: store the versions, then observers act in the same transaction."""
        if ctx.person is not None:
            self._check_person_writes(ctx, pending)
        written = await store.write(conn, pending)
        for version in pending:
            ctx.note(version.type, version.id, version.content or version.previous)
        for observer in self.write_observers:
            await observer(conn, ctx, pending, written)
        return written

    def _check_person_writes(self, ctx: RequestContext, pending: Sequence[PendingVersion]) -> None:
        """A person writes only what they reach, before and after: no resource moved into or out of the
        records of patients who are not theirs."""
        assert ctx.person is not None
        bases = self.local_bases(ctx)
        for version in pending:
            for content in (version.previous, version.content):
                if content is not None and not ctx.person.sees(jsonio.loads(content), bases):
                    raise Forbidden(
                        f"{version.type}/{version.id} would be outside the records of the patients this"
                        " user reaches"
                    )

    async def write_derived(
        self, conn: AsyncConnection, ctx: RequestContext, writes: dict[str, tuple[JSON, Stored | None]]
    ) -> None:
        """Write what a use case derived (alert Tasks, calendars): by id, the resource and the stored version
        it replaces (None, or a deleted one: a new resource). Unchanged ones make no version; one write."""
        now = dates.now_us()
        plans: list[PendingVersion] = []
        for resource_id, (resource, stored) in writes.items():
            if stored is None or stored.deleted:
                plans.append(self.plan_new(ctx, resource, resource_id, "PUT", now))
            else:
                plan = self.plan_update(ctx, resource, resource_id, stored, None, now)
                if isinstance(plan, PendingVersion):
                    plans.append(plan)
        if plans:
            await self.write_versions(conn, ctx, plans)

    # -- planning writes (no I/O): what version each write would store -----------------------------

    def plan_new(
        self, ctx: RequestContext, resource: JSON, resource_id: str, method: str, now: int
    ) -> PendingVersion:
        return PendingVersion(
            resource["resourceType"],
            resource_id,
            1,
            now,
            method,
            stamp(resource, resource_id, 1, now),
            extract(resource, self.local_bases(ctx)),
        )

    def plan_update(
        self,
        ctx: RequestContext,
        resource: JSON,
        resource_id: str,
        current: Stored | None,
        if_match: int | None,
        now: int,
    ) -> PendingVersion | Stored:
        """The next version of `resource_id`, or the current one when the update changes nothing."""
        rtype = resource["resourceType"]
        ctx.require(rtype, UPDATE)
        if resource.get("id") != resource_id:
            raise BadRequest(
                f"The resource id ({resource.get('id')!r}) must match the id in the URL ({resource_id!r})",
                expression=f"{rtype}.id",
            )
        if if_match is not None and (current is None or current.deleted or current.version != if_match):
            now_at = "none" if current is None or current.deleted else f'W/"{current.version}"'
            raise PreconditionFailed(f'If-Match W/"{if_match}" does not match the current version ({now_at})')
        if current is None:
            ctx.require(rtype, CREATE)
            return self.plan_new(ctx, resource, resource_id, "PUT", now)
        unchanged = (
            not current.deleted
            and current.content is not None
            and same_content(current.content, {**resource, "id": resource_id})
        )
        if unchanged:
            return current  # no change (written precision included): no new version
        version = current.version + 1
        return PendingVersion(
            rtype,
            resource_id,
            version,
            now,
            "PUT",
            stamp(resource, resource_id, version, now),
            extract(resource, self.local_bases(ctx)),
            store.head_of(current),
            None if current.deleted else current.content,
        )

    def plan_delete(
        self,
        ctx: RequestContext,
        resource_type: str,
        resource_id: str,
        current: Stored | None,
        if_match: int | None,
        now: int,
    ) -> PendingVersion | None:
        """The deletion version, or None when the resource is already deleted."""
        ctx.require(resource_type, DELETE)
        if current is None:
            raise NotFound(f"{resource_type}/{resource_id} does not exist")
        if if_match is not None and current.version != if_match:
            raise PreconditionFailed(f'If-Match W/"{if_match}" does not match the current version')
        if current.deleted:
            return None
        return PendingVersion(
            resource_type,
            resource_id,
            current.version + 1,
            now,
            "DELETE",
            None,
            None,
            store.head_of(current),
            current.content,
        )

    # -- writes on a connection ------------------------------------------------------------------

    async def create_on(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        resource: JSON,
        *,
        if_none_exist: str | None = None,
        resource_id: str | None = None,
        issues: list[Issue] | None = None,
    ) -> Outcome:
        rtype = resource["resourceType"]
        ctx.require(rtype, CREATE)
        if if_none_exist:
            ctx.require(rtype, SEARCH)
            found = await self.conditional_matches(conn, ctx, rtype, if_none_exist)
            if len(found) > 1:
                raise PreconditionFailed(f"If-None-Exist criteria match more than one {rtype}")
            if found:
                existing = await store.current(conn, rtype, found[0])
                assert existing is not None
                return self.written(ctx, existing, 200, [])
        if issues is None:
            issues = self.validate(resource)
        mapping = await self.feeds.mapping_for(conn, ctx.client_id) if self.feeds is not None else None
        if mapping is not None and self.feeds is not None:
            self.feeds.normalize(mapping, resource)
            await self.feeds.resolve_subject(conn, resource)
            if rtype == "Patient":
                same = await self.feeds.same_patient(conn, resource)
                if same is not None:
                    self._guard_identity(same, resource)
                    return await self._merge_into(conn, ctx, same, resource, mapping, issues)
            if mapping.merge_results and rtype == "Observation":
                twin = await self.feeds.twin_of(conn, resource, self.local_bases(ctx), from_feed_only=False)
                if twin is not None:
                    return await self._merge_into(conn, ctx, twin, resource, mapping, issues)
        pending = self.plan_new(ctx, resource, resource_id or str(uuid.uuid4()), "POST", dates.now_us())
        (stored,) = await self.write_versions(conn, ctx, [pending])
        if mapping is not None:
            await self._feed_provenance(conn, ctx, mapping, stored, "CREATE")
        return self.written(ctx, stored, 201, issues)

    @staticmethod
    def _guard_identity(stored: Stored, pushed: JSON) -> None:
        """The demographic guard of the HL7 v2 path, for a Patient an EHR pushes with an identifier that a
        stored Patient carries: beyond the tolerance (gateway/fhir/demographics.py) it is refused, not
        merged and not filed as a second person."""
        assert stored.content is not None
        elements = disagreements(jsonio.loads(stored.content), pushed)
        if elements:
            raise Conflict(
                f"Patient/{stored.id} carries this identifier, but {', '.join(elements)} disagree: not merged"
                " (correct the identifier or the demographics, or resolve the identity first)",
                expression=f"Patient.{elements[0]}",
            )

    async def _merge_into(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        twin: Stored,
        pushed: JSON,
        mapping: FhirClientMapping,
        issues: list[Issue],
    ) -> Outcome:
        """What the EHR pushes that is already stored (a result, a Patient): one resource, knowing both
        sources' marks (identifiers, feed tags)."""
        assert twin.content is not None
        merged = merged_marks(jsonio.loads(twin.content), pushed)
        planner = RequestContext(base_url=ctx.base_url)  # the merge is the gateway's, not an update asked for
        plan = self.plan_update(planner, merged, twin.id, twin, None, dates.now_us())
        if isinstance(plan, Stored):
            stored = plan
        else:
            (stored,) = await self.write_versions(conn, ctx, [plan])
        await self._feed_provenance(conn, ctx, mapping, stored, "UPDATE")
        note = Issue(
            "information",
            "duplicate",
            f"The same {twin.type} is stored already: merged into {twin.type}/{twin.id}",
        )
        return self.written(ctx, stored, 200, [*issues, note])

    async def _feed_provenance(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        mapping: FhirClientMapping,
        stored: Stored,
        activity: str,
    ) -> None:
        assert self.feeds is not None and ctx.client_id is not None
        target = f"{stored.type}/{stored.id}/_history/{stored.version}"
        provenance = self.feeds.provenance(mapping, ctx.client_id, [target], activity)
        await self.write_versions(
            conn, ctx, [self.plan_new(ctx, provenance, str(uuid.uuid4()), "POST", dates.now_us())]
        )

    async def update_on(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        resource: JSON,
        resource_id: str,
        *,
        if_match: int | None = None,
        issues: list[Issue] | None = None,
    ) -> Outcome:
        check_id(resource_id)
        if issues is None:
            issues = self.validate(resource)
        mapping = await self.feeds.mapping_for(conn, ctx.client_id) if self.feeds is not None else None
        if mapping is not None and self.feeds is not None:
            self.feeds.normalize(mapping, resource)
        current = await store.current(conn, resource["resourceType"], resource_id)
        if current is not None and not current.deleted:
            self._check_person(ctx, current)
        policy = self.policies.get(resource["resourceType"])
        if policy is not None and current is not None:
            await self._check_visible(conn, ctx, resource["resourceType"], resource_id)
            resource = policy.restore(None if current.deleted else current.content, resource)
        plan = self.plan_update(ctx, resource, resource_id, current, if_match, dates.now_us())
        if isinstance(plan, Stored):
            return self.written(ctx, plan, 200, issues)
        (stored,) = await self.write_versions(conn, ctx, [plan])
        created = current is None or current.deleted
        if mapping is not None:
            await self._feed_provenance(conn, ctx, mapping, stored, "CREATE" if created else "UPDATE")
        return self.written(ctx, stored, 201 if created else 200, issues)

    async def delete_on(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        resource_type: str,
        resource_id: str,
        *,
        if_match: int | None = None,
    ) -> Outcome:
        current = await store.current(conn, resource_type, resource_id)
        if current is not None and not current.deleted:
            self._check_person(ctx, current)
        if current is not None and resource_type in self.policies:
            await self._check_visible(conn, ctx, resource_type, resource_id)
        plan = self.plan_delete(ctx, resource_type, resource_id, current, if_match, dates.now_us())
        if plan is None:
            return Outcome(204)
        (stored,) = await self.write_versions(conn, ctx, [plan])
        return Outcome(204, stored)

    async def conditional_update_on(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        resource: JSON,
        params: list[tuple[str, str]],
        *,
        if_match: int | None = None,
    ) -> Outcome:
        rtype = resource["resourceType"]
        ctx.require(rtype, SEARCH)
        found = await self.conditional_matches(conn, ctx, rtype, params)
        if len(found) > 1:
            raise PreconditionFailed(f"The conditional update criteria match more than one {rtype}")
        if not found:
            given = resource.get("id")
            if given is None:
                return await self.create_on(conn, ctx, resource)
            return await self.update_on(conn, ctx, resource, given, if_match=if_match)
        if resource.get("id") not in (None, found[0]):
            raise BadRequest(
                f"The resource id does not match the {rtype} the criteria found", expression=f"{rtype}.id"
            )
        return await self.update_on(conn, ctx, {**resource, "id": found[0]}, found[0], if_match=if_match)

    async def conditional_delete_on(
        self, conn: AsyncConnection, ctx: RequestContext, resource_type: str, params: list[tuple[str, str]]
    ) -> Outcome:
        ctx.require(resource_type, SEARCH)
        found = await self.conditional_matches(conn, ctx, resource_type, params)
        if len(found) > 1:
            raise PreconditionFailed(f"The conditional delete criteria match more than one {resource_type}")
        if not found:
            return Outcome(204)
        return await self.delete_on(conn, ctx, resource_type, found[0])

    # -- reads on a connection -------------------------------------------------------------------

    async def read_on(
        self, conn: AsyncConnection, ctx: RequestContext, resource_type: str, resource_id: str
    ) -> Outcome:
        ctx.require(resource_type, READ)
        check_id(resource_id)
        stored = await store.current(conn, resource_type, resource_id)
        if stored is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        ctx.note(resource_type, resource_id, stored.content)
        await self._check_visible(conn, ctx, resource_type, resource_id)
        self._check_person(ctx, stored)
        if stored.deleted:
            raise Gone(f"{resource_type}/{resource_id} was deleted (version {stored.version})")
        return Outcome(200, stored, self._shown(ctx, resource_type, stored.content))

    async def vread_on(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        resource_type: str,
        resource_id: str,
        version_id: str,
    ) -> Outcome:
        ctx.require(resource_type, READ)
        check_id(resource_id)
        if not version_id.isdigit() or len(version_id) > 18:  # longer ones overflow SQL's 64-bit integers
            raise NotFound(f"Version {version_id[:40]!r} of {resource_type}/{resource_id} is not known")
        stored = await store.version(conn, resource_type, resource_id, int(version_id))
        if stored is None:
            raise NotFound(f"Version {version_id} of {resource_type}/{resource_id} is not known")
        ctx.note(resource_type, resource_id, stored.content)
        await self._check_visible(conn, ctx, resource_type, resource_id)
        self._check_person(ctx, stored)
        if stored.deleted:
            raise Gone(f"Version {version_id} of {resource_type}/{resource_id} is a deletion")
        return Outcome(200, stored, self._shown(ctx, resource_type, stored.content))

    async def search_on(
        self, conn: AsyncConnection, ctx: RequestContext, resource_type: str, params: list[tuple[str, str]]
    ) -> Outcome:
        check_type(resource_type)
        ctx.require(resource_type, SEARCH)
        query = self.parse_query(ctx, resource_type, params)
        if await self._restricted(conn, ctx, query):
            matches, total = await store_search.search(conn, query)
        else:
            matches, total = [], 0
        extra: list[Stored] = []
        if query.includes or query.revincludes:
            pulled = await store_search.included(
                conn, matches, query.includes, query.revincludes, self.max_included
            )
            # Never leak what the token may not read.
            extra = [s for s in pulled if ctx.can(s.type, READ) and await self._may_see(conn, ctx, s)]
        ctx.note_search(resource_type, params, [s.content for s in (*matches, *extra)])
        entries = [
            Entry(f"{ctx.base_url}/{s.type}/{s.id}", self._shown(ctx, s.type, s.content), "match")
            for s in matches
        ]
        entries += [
            Entry(f"{ctx.base_url}/{s.type}/{s.id}", self._shown(ctx, s.type, s.content), "include")
            for s in extra
        ]
        if query.unknown:
            warning = Issue(
                "warning", "not-supported", f"Ignored unknown search parameters: {', '.join(query.unknown)}"
            )
            entries.append(Entry(f"urn:uuid:{uuid.uuid4()}", outcome_bytes([warning]), "outcome"))
        links = self._page_links(ctx, query, len(matches), total)
        return Outcome(200, body=bundle_bytes("searchset", entries, total=total, links=links))

    async def _may_see(self, conn: AsyncConnection, ctx: RequestContext, stored: Stored) -> bool:
        if not self.person_sees(ctx, stored):
            return False
        visible = await self._visible(conn, ctx, stored.type)
        return visible is None or stored.id in visible

    def _page_links(
        self, ctx: RequestContext, query: SearchQuery, returned: int, total: int | None
    ) -> list[tuple[str, str]]:
        base = f"{ctx.base_url}/{query.resource_type}"

        def page(offset: int) -> str:
            params = [*query.used, ("_count", str(query.count)), ("_offset", str(offset))]
            return f"{base}?{urlencode(params)}"

        links = [("self", page(query.offset))]
        more = (query.offset + returned < total) if total is not None else returned == query.count
        if query.count and more and returned:
            links.append(("next", page(query.offset + query.count)))
        if query.offset > 0 and query.count:
            links.append(("previous", page(max(0, query.offset - query.count))))
        return links

    async def history_on(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        resource_type: str,
        resource_id: str | None,
        params: list[tuple[str, str]],
    ) -> Outcome:
        check_type(resource_type)
        ctx.require(resource_type, READ if resource_id else SEARCH)
        count, offset, since = self.default_count, 0, None
        for key, value in params:
            if key == "_count":
                count = min(max(int(value), 0) if value.isdigit() else self.default_count, self.max_count)
            elif key == "_offset" and value.isdigit():
                offset = parse_offset(value, self.search_limits.max_offset)
            elif key == "_since":
                since = since_param(value)
            elif key not in ("_format", "_pretty"):
                raise BadRequest(f"History parameter {key!r} is not supported (use _count, _offset, _since)")
        if resource_id is not None:
            check_id(resource_id)
            if await store.head(conn, resource_type, resource_id) is None:
                raise NotFound(f"{resource_type}/{resource_id} is not known")
            await self._check_visible(conn, ctx, resource_type, resource_id)
            if ctx.person is not None:
                latest = await store.current(conn, resource_type, resource_id)
                if latest is None or latest.deleted or not self.person_sees(ctx, latest):
                    raise NotFound(f"{resource_type}/{resource_id} is not known")
        elif ctx.person is not None and ctx.person.reach(resource_type) is not Reach.ALL:
            raise Forbidden(
                f"The history of all {resource_type} resources includes other patients' records; read the"
                f" history of one {resource_type} by id"
            )
        elif await self._visible(conn, ctx, resource_type) is not None:
            raise Forbidden(
                f"The history of all {resource_type} resources includes other clients'; read the history"
                f" of one {resource_type} by id"
            )
        versions, total = await store.history(
            conn,
            resource_type=resource_type,
            resource_id=resource_id,
            since_us=since,
            at_most_us=None,
            count=count,
            offset=offset,
        )
        # A version from when the resource was in another patient's record is not this person's to see.
        versions = [v for v in versions if v.content is None or self.person_sees(ctx, v)]
        if resource_id is None:
            ctx.note_search(resource_type, params, [v.content for v in versions])
        else:
            ctx.note(resource_type, resource_id, next((v.content for v in versions if v.content), None))
        entries = [self._history_entry(ctx, v) for v in versions]
        path = f"{ctx.base_url}/{resource_type}" + (f"/{resource_id}" if resource_id else "") + "/_history"
        kept = [(k, v) for k, v in params if k not in ("_count", "_offset")]

        def page(at: int) -> str:
            return f"{path}?{urlencode([*kept, ('_count', str(count)), ('_offset', str(at))])}"

        links = [("self", page(offset))]
        if offset + len(versions) < total and versions:
            links.append(("next", page(offset + count)))
        if offset > 0:
            links.append(("previous", page(max(0, offset - count))))
        return Outcome(200, body=bundle_bytes("history", entries, total=total, links=links))

    def _history_entry(self, ctx: RequestContext, stored: Stored) -> Entry:
        url = f"{stored.type}/{stored.id}"
        if stored.method == "POST":
            request, status = {"method": "POST", "url": stored.type}, "201 Created"
        elif stored.method == "DELETE":
            request, status = {"method": "DELETE", "url": url}, "204 No Content"
        else:
            request, status = (
                {"method": "PUT", "url": url},
                "201 Created" if stored.version == 1 else "200 OK",
            )
        response: dict[str, Any] = {
            "status": status,
            "etag": f'W/"{stored.version}"',
            "lastModified": dates.format_instant(stored.updated_us),
        }
        content = self._shown(ctx, stored.type, stored.content)
        return Entry(f"{ctx.base_url}/{url}", content, None, request, response)

    # -- outer forms: one transaction each -------------------------------------------------------

    async def create(
        self, ctx: RequestContext, resource_type: str, body: bytes, if_none_exist: str | None
    ) -> Outcome:
        check_type(resource_type)
        resource = parse_resource(body, resource_type)
        resource.pop("id", None)  # the server assigns ids on create
        issues = self.validate(resource)
        # A new resource clashes with no one, but what its observers derive may (a patient's alert Task
        # moved on by another result's transaction): nothing was committed, so it is run again.
        for attempt in range(MAX_CONFLICT_RETRIES + 1):
            if attempt:  # as sent: a feed's mapping edits the resource in place
                resource = parse_resource(body, resource_type)
                resource.pop("id", None)
            try:
                async with self.db.write() as conn:
                    return await self.create_on(
                        conn, ctx, resource, if_none_exist=if_none_exist, issues=issues
                    )
            except VersionConflict as exc:
                if attempt == MAX_CONFLICT_RETRIES:
                    raise Conflict(str(exc)) from exc
        raise AssertionError("unreachable")

    async def update(
        self, ctx: RequestContext, resource_type: str, resource_id: str, body: bytes, if_match: str | None
    ) -> Outcome:
        check_type(resource_type)
        check_id(resource_id)
        resource = parse_resource(body, resource_type)
        version = parse_if_match(if_match)
        issues = self.validate(resource)
        for attempt in range(MAX_CONFLICT_RETRIES + 1):
            try:
                async with self.db.write() as conn:
                    return await self.update_on(
                        conn, ctx, resource, resource_id, if_match=version, issues=issues
                    )
            except VersionConflict as exc:
                if version is not None:
                    raise PreconditionFailed(f'If-Match W/"{version}" lost to a concurrent update') from exc
                if attempt == MAX_CONFLICT_RETRIES:
                    raise Conflict(str(exc)) from exc
        raise AssertionError("unreachable")

    async def conditional_update(
        self,
        ctx: RequestContext,
        resource_type: str,
        params: list[tuple[str, str]],
        body: bytes,
        if_match: str | None,
    ) -> Outcome:
        check_type(resource_type)
        resource = parse_resource(body, resource_type)
        version = parse_if_match(if_match)
        try:
            async with self.db.write() as conn:
                return await self.conditional_update_on(conn, ctx, resource, params, if_match=version)
        except VersionConflict as exc:
            raise Conflict(str(exc)) from exc

    async def delete(
        self, ctx: RequestContext, resource_type: str, resource_id: str, if_match: str | None
    ) -> Outcome:
        check_type(resource_type)
        check_id(resource_id)
        version = parse_if_match(if_match)
        try:
            async with self.db.write() as conn:
                return await self.delete_on(conn, ctx, resource_type, resource_id, if_match=version)
        except VersionConflict as exc:
            raise (PreconditionFailed if version is not None else Conflict)(str(exc)) from exc

    async def conditional_delete(
        self, ctx: RequestContext, resource_type: str, params: list[tuple[str, str]]
    ) -> Outcome:
        check_type(resource_type)
        try:
            async with self.db.write() as conn:
                return await self.conditional_delete_on(conn, ctx, resource_type, params)
        except VersionConflict as exc:
            raise Conflict(str(exc)) from exc

    async def read(self, ctx: RequestContext, resource_type: str, resource_id: str) -> Outcome:
        check_type(resource_type)
        async with self.db.read() as conn:
            return await self.read_on(conn, ctx, resource_type, resource_id)

    async def vread(
        self, ctx: RequestContext, resource_type: str, resource_id: str, version_id: str
    ) -> Outcome:
        check_type(resource_type)
        async with self.db.read() as conn:
            return await self.vread_on(conn, ctx, resource_type, resource_id, version_id)

    async def search(self, ctx: RequestContext, resource_type: str, params: list[tuple[str, str]]) -> Outcome:
        try:
            async with self.db.read() as conn:
                return await self.search_on(conn, ctx, resource_type, params)
        except DBAPIError as exc:
            if "statement timeout" not in str(exc.orig):
                raise
            raise TooCostly(
                "The search ran past the statement timeout (GATEWAY_DB_STATEMENT_TIMEOUT_SECONDS); narrow it"
            ) from None

    async def history(
        self, ctx: RequestContext, resource_type: str, resource_id: str | None, params: list[tuple[str, str]]
    ) -> Outcome:
        async with self.db.read() as conn:
            return await self.history_on(conn, ctx, resource_type, resource_id, params)
