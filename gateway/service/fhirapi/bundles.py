"""Transaction and batch Bundles posted to the base URL.

A transaction is all or nothing: every entry is resolved, its references rewritten and every resource
validated before the first write, and all writes share one database transaction, so one bad entry
leaves the store untouched. Entries run in the order the specification prescribes (DELETE, POST, PUT,
GET) and answer in the order they came. A batch runs each entry on its own and reports each outcome.

Bounded: a Bundle of more than `max_entries` entries is refused whole (413), and the answer's size is
counted as entries are answered: once it passes `max_response_bytes`, a batch's remaining GET entries
are answered 413 without being run, and a transaction fails (its writes are rolled back). A large body
is parsed in a worker process (`offload_bytes`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.exceptions import (
    BadRequest,
    Conflict,
    FhirError,
    PayloadTooLarge,
    PreconditionFailed,
    Unprocessable,
)
from gateway.fhir import dates, jsonio
from gateway.fhir.bundles import Entry, bundle_bytes
from gateway.fhir.outcome import outcome_bytes
from gateway.fhir.references import iter_references, parse_reference
from gateway.fhir.urls import Target, parse_target
from gateway.service.access.context import CREATE, DELETE, READ, SEARCH, RequestContext
from gateway.service.fhirapi.interactions import FhirService, Outcome, parse_if_match, parse_resource
from gateway.service.workers import WorkerFailed, WorkerPool
from gateway.store import resources as store
from gateway.store.resources import PendingVersion, Stored, VersionConflict
from gateway.types import JSON, Issue

DEFAULT_MAX_ENTRIES = 500  # as other FHIR servers default to
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024

# Processing order within a transaction (http.html#trules).
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass(slots=True)
class PlannedEntry:
    index: int
    method: str
    target: Target
    full_url: str | None
    resource: JSON | None
    if_none_exist: str | None
    if_match: int | None
    resource_id: str | None = None  # the id this entry will write, once resolved
    exists: bool = False  # a conditional create that found its match

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def _status_text(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def _at_entry(error: FhirError, entry: PlannedEntry) -> FhirError:
    """The same error, its issues pointing at the entry that caused it."""
    issues = []
    for issue in error.issues:
        if issue.expression:
            issues.append(issue.at(f"{entry.where}.resource"))
        else:
            issues.append(
                Issue(issue.severity, issue.code, f"{entry.where}: {issue.diagnostics}", (entry.where,))
            )
    return type(error)(issues=issues)


def parse_bundle(body: bytes) -> JSON:
    """A posted transaction or batch Bundle; its resources' decimals keep their literals (`jsonio`)."""
    try:
        bundle = jsonio.loads(body) if body else None
    except jsonio.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        found = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise BadRequest(f"Only a Bundle can be posted to the base URL, got {found!r}", expression="Bundle")
    if bundle.get("type") not in ("transaction", "batch"):
        raise BadRequest(
            f"Bundle.type must be transaction or batch, got {bundle.get('type')!r}", expression="Bundle.type"
        )
    if not isinstance(bundle.get("entry", []), list):
        raise BadRequest("Bundle.entry must be a list", expression="Bundle.entry")
    return bundle


def plan_entry(index: int, raw: Any, base_urls: tuple[str, ...]) -> PlannedEntry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise BadRequest(f"{where} has no request", expression=f"{where}.request")
    request = raw["request"]
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or method not in _ORDER or not isinstance(url, str):
        raise BadRequest(
            f"{where}.request needs a method (GET, POST, PUT, DELETE) and a url",
            expression=f"{where}.request",
        )
    if method == "PATCH":
        raise BadRequest(f"{where}: PATCH is not supported", expression=f"{where}.request.method")
    try:
        target = parse_target(method, url, base_urls)
    except FhirError as exc:
        raise type(exc)(f"{where}: {exc}", expression=f"{where}.request.url") from exc
    resource = None
    if method in ("POST", "PUT"):
        try:
            resource = parse_resource(raw.get("resource") or b"", target.resource_type)
        except FhirError as exc:
            raise type(exc)(f"{where}.resource: {exc}", expression=f"{where}.resource") from exc
    return PlannedEntry(
        index,
        method,
        target,
        raw.get("fullUrl"),
        resource,
        request.get("ifNoneExist"),
        parse_if_match(request.get("ifMatch")),
    )


class _Budget:
    """What a Bundle's answer may still hold, in bytes of entry content."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit

    def spend(self, entry: Entry) -> Entry:
        self.spent += len(entry.resource or b"") + 200  # the entry's own fields, roughly
        return entry

    def refusal(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The Bundle's response reached its size limit ({self.limit} bytes); this entry was not run"
        )


class BundleProcessor:
    def __init__(
        self,
        service: FhirService,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        pool: WorkerPool | None = None,
        offload_bytes: int = 1024 * 1024,
    ) -> None:
        self.service = service
        self.max_entries = max_entries
        self.max_response_bytes = max_response_bytes
        self.pool = pool
        self.offload_bytes = offload_bytes

    async def _parse(self, body: bytes) -> JSON:
        if self.pool is None or len(body) < self.offload_bytes:
            return parse_bundle(body)
        try:
            return await self.pool.run(parse_bundle, body)
        except WorkerFailed as exc:
            raise PayloadTooLarge(f"The Bundle could not be parsed: {exc}") from None

    async def process(self, ctx: RequestContext, body: bytes) -> Outcome:
        bundle = await self._parse(body)
        ctx.audit_as(bundle["type"])
        bases = self.service.local_bases(ctx)
        raw_entries = bundle.get("entry", [])
        if len(raw_entries) > self.max_entries:
            raise PayloadTooLarge(
                f"The Bundle has {len(raw_entries)} entries; at most {self.max_entries} are accepted",
                expression="Bundle.entry",
            )
        budget = _Budget(self.max_response_bytes)
        if bundle["type"] == "batch":
            return await self._batch(ctx, raw_entries, bases, budget)
        entries = [plan_entry(i, raw, bases) for i, raw in enumerate(raw_entries)]
        try:
            async with self.service.db.write() as conn:
                results = await self._transaction(conn, ctx, entries, budget)
        except VersionConflict as exc:
            raise Conflict(f"The transaction lost a race with a concurrent update: {exc}") from exc
        return Outcome(200, body=bundle_bytes("transaction-response", results))

    # -- transaction -----------------------------------------------------------------------------

    async def _transaction(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        entries: list[PlannedEntry],
        budget: _Budget | None = None,
    ) -> list[Entry]:
        mapping = await self._resolve_identities(conn, ctx, entries)
        self._check_duplicates(entries)
        await self._rewrite_references(conn, ctx, entries, mapping)
        issues: list[Issue] = []
        for entry in entries:
            if entry.resource is not None and not entry.exists:
                try:
                    issues += self.service.validate(entry.resource, where=f"{entry.where}.resource")
                except Unprocessable as exc:
                    issues += exc.issues
        if any(i.is_error for i in issues):
            raise Unprocessable(issues=issues)
        results: dict[int, Entry] = {}
        await self._write_entries(conn, ctx, [e for e in entries if e.method != "GET"], results)
        for entry in entries:
            if entry.method == "GET":  # reads come last and see the writes
                if budget is not None and budget.exhausted:
                    raise _at_entry(budget.refusal(), entry)  # all or nothing: the writes roll back
                try:
                    outcome = await self._read(conn, ctx, entry.target)
                except FhirError as exc:
                    raise _at_entry(exc, entry) from exc
                answer = self._response_entry(ctx, outcome, entry)
                results[entry.index] = budget.spend(answer) if budget is not None else answer
        return [results[e.index] for e in entries]

    async def _write_entries(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        writes: list[PlannedEntry],
        results: dict[int, Entry],
    ) -> None:
        """Plan every write against the current versions (read in one query), then write them in one batch."""
        # A plain create has a fresh UUID: nothing to look up for it.
        keys = [
            (e.target.resource_type, e.resource_id)
            for e in writes
            if e.resource_id and (e.target.kind != "create" or e.exists)
        ]
        currents = await store.current_many(conn, keys)
        now = dates.now_us()
        planned: list[tuple[PlannedEntry, PendingVersion]] = []
        for entry in sorted(writes, key=lambda e: _ORDER[e.method]):
            try:
                plan = self._plan(ctx, entry, currents, now)
            except FhirError as exc:
                raise _at_entry(exc, entry) from exc
            if isinstance(plan, Outcome):
                results[entry.index] = self._response_entry(ctx, plan, entry)
            else:
                planned.append((entry, plan))
        written = await self.service.write_versions(conn, ctx, [plan for _, plan in planned])
        for (entry, plan), stored in zip(planned, written, strict=True):
            if plan.content is None:
                outcome = Outcome(204, stored)
            else:
                created = plan.head is None or plan.head.deleted
                outcome = self.service.written(ctx, stored, 201 if created else 200, [])
            results[entry.index] = self._response_entry(ctx, outcome, entry)

    def _plan(
        self, ctx: RequestContext, entry: PlannedEntry, currents: dict[tuple[str, str], Stored], now: int
    ) -> PendingVersion | Outcome:
        svc, target = self.service, entry.target
        rtype = target.resource_type
        current = currents.get((rtype, entry.resource_id)) if entry.resource_id else None
        if target.kind.startswith("conditional") or entry.if_none_exist:
            ctx.require(rtype, SEARCH)
        if target.kind == "create":
            assert entry.resource is not None and entry.resource_id is not None
            ctx.require(rtype, CREATE)
            if entry.exists and current is not None:
                ctx.require(rtype, READ)
                return svc.written(ctx, current, 200, [])
            return svc.plan_new(ctx, entry.resource, entry.resource_id, "POST", now)
        if target.kind in ("update", "conditional-update"):
            assert entry.resource is not None and entry.resource_id is not None
            plan = svc.plan_update(ctx, entry.resource, entry.resource_id, current, entry.if_match, now)
            return svc.written(ctx, plan, 200, []) if isinstance(plan, Stored) else plan
        if target.kind == "conditional-delete" and entry.resource_id is None:
            ctx.require(rtype, DELETE)
            return Outcome(204)  # nothing matched: nothing to delete
        deletion = svc.plan_delete(ctx, rtype, entry.resource_id or "", current, entry.if_match, now)
        return Outcome(204) if deletion is None else deletion

    async def _resolve_identities(
        self, conn: AsyncConnection, ctx: RequestContext, entries: list[PlannedEntry]
    ) -> dict[str, str]:
        """Decide every written id up front, so references between entries can point at them."""
        mapping: dict[str, str] = {}
        for entry in entries:
            rtype, kind = entry.target.resource_type, entry.target.kind
            try:
                if kind == "create":
                    entry.resource_id = str(uuid.uuid4())
                    if entry.if_none_exist:
                        found = await self.service.conditional_matches(conn, ctx, rtype, entry.if_none_exist)
                        if len(found) > 1:
                            raise PreconditionFailed(f"ifNoneExist matches more than one {rtype}")
                        if found:
                            entry.resource_id, entry.exists = found[0], True
                elif kind == "update":
                    entry.resource_id = entry.target.id
                elif kind == "conditional-update":
                    found = await self.service.conditional_matches(conn, ctx, rtype, entry.target.params)
                    if len(found) > 1:
                        raise PreconditionFailed(f"The conditional update matches more than one {rtype}")
                    given = entry.resource.get("id") if entry.resource else None
                    entry.resource_id = found[0] if found else (given or str(uuid.uuid4()))
                elif kind == "conditional-delete":
                    found = await self.service.conditional_matches(conn, ctx, rtype, entry.target.params)
                    if len(found) > 1:
                        raise PreconditionFailed(f"The conditional delete matches more than one {rtype}")
                    entry.resource_id = found[0] if found else None
                elif kind in ("delete", "read", "vread"):
                    entry.resource_id = entry.target.id
            except FhirError as exc:
                raise _at_entry(exc, entry) from exc
            if entry.full_url and entry.resource_id and entry.method in ("POST", "PUT"):
                mapping[entry.full_url] = f"{rtype}/{entry.resource_id}"
        return mapping

    def _check_duplicates(self, entries: list[PlannedEntry]) -> None:
        seen: dict[tuple[str, str], int] = {}
        for entry in entries:
            if entry.method == "GET" or entry.resource_id is None or entry.exists:
                continue
            key = (entry.target.resource_type, entry.resource_id)
            if key in seen:
                raise BadRequest(
                    f"{entry.where} and Bundle.entry[{seen[key]}] both change {key[0]}/{key[1]}",
                    expression=entry.where,
                )
            seen[key] = entry.index

    async def _rewrite_references(
        self, conn: AsyncConnection, ctx: RequestContext, entries: list[PlannedEntry], mapping: dict[str, str]
    ) -> None:
        """urn:uuid and fullUrl references become Type/id; conditional ones (Type?params) are searched."""
        for entry in entries:
            if entry.resource is None:
                continue
            for ref in iter_references(entry.resource):
                value = ref["reference"]
                if value in mapping:
                    ref["reference"] = mapping[value]
                elif value.startswith("urn:uuid:") or value.startswith("urn:oid:"):
                    raise Unprocessable(
                        f"{entry.where}: reference {value} matches no fullUrl in this transaction",
                        expression=f"{entry.where}.resource",
                    )
                elif "?" in value and parse_reference(value.split("?", 1)[0] + "/x") is not None:
                    ref["reference"] = await self._conditional_reference(conn, ctx, entry, value)
            if entry.target.kind == "conditional-update" and entry.resource_id is not None:
                entry.resource["id"] = entry.resource_id

    async def _conditional_reference(
        self, conn: AsyncConnection, ctx: RequestContext, entry: PlannedEntry, value: str
    ) -> str:
        rtype, criteria = value.split("?", 1)
        found = await self.service.conditional_matches(
            conn, ctx, rtype, parse_qsl(criteria, keep_blank_values=True)
        )
        if len(found) != 1:
            what = "no" if not found else "more than one"
            raise PreconditionFailed(
                f"{entry.where}: conditional reference {value} matches {what} {rtype}",
                expression=f"{entry.where}.resource",
            )
        return f"{rtype}/{found[0]}"

    async def _read(self, conn: AsyncConnection, ctx: RequestContext, target: Target) -> Outcome:
        svc = self.service
        if target.kind == "read":
            return await svc.read_on(conn, ctx, target.resource_type, target.id or "")
        if target.kind == "vread":
            return await svc.vread_on(conn, ctx, target.resource_type, target.id or "", target.version or "")
        if target.kind == "search":
            return await svc.search_on(conn, ctx, target.resource_type, target.params)
        if target.kind in ("history-instance", "history-type"):
            return await svc.history_on(conn, ctx, target.resource_type, target.id, target.params)
        raise BadRequest(f"{target.kind} is not supported in a Bundle")

    def _response_entry(self, ctx: RequestContext, outcome: Outcome, entry: PlannedEntry) -> Entry:
        response: dict[str, Any] = {"status": _status_text(outcome.status)}
        stored = outcome.stored
        full_url = f"{ctx.base_url}/{entry.target.resource_type}" + (
            f"/{entry.resource_id}" if entry.resource_id else ""
        )
        if stored is not None:
            full_url = f"{ctx.base_url}/{stored.type}/{stored.id}"
            response["etag"] = f'W/"{stored.version}"'
            response["lastModified"] = dates.format_instant(stored.updated_us)
            if entry.method in ("POST", "PUT"):
                response["location"] = f"{stored.type}/{stored.id}/_history/{stored.version}"
        if outcome.issues and ctx.prefer_return == "OperationOutcome":
            response["outcome"] = orjson.loads(outcome_bytes(outcome.issues))
        body = outcome.body if entry.method == "GET" or ctx.prefer_return == "representation" else None
        if entry.method == "DELETE":
            body = None
        return Entry(full_url, body, None, None, response)

    # -- batch -----------------------------------------------------------------------------------

    async def _batch(
        self, ctx: RequestContext, raw_entries: list[Any], bases: tuple[str, ...], budget: _Budget
    ) -> Outcome:
        results = []
        for index, raw in enumerate(raw_entries):
            results.append(budget.spend(await self._batch_entry(ctx, index, raw, bases, budget)))
        return Outcome(200, body=bundle_bytes("batch-response", results))

    async def _batch_entry(
        self, ctx: RequestContext, index: int, raw: Any, bases: tuple[str, ...], budget: _Budget
    ) -> Entry:
        """One batch entry, processed like a transaction of one; its failure is reported, not raised."""
        try:
            entry = plan_entry(index, raw, bases)
            if entry.method == "GET":
                if budget.exhausted:
                    raise budget.refusal()
                async with self.service.db.read() as conn:
                    return self._response_entry(ctx, await self._read(conn, ctx, entry.target), entry)
            if entry.resource is not None and entry.target.kind == "create":
                entry.resource.pop("id", None)
            async with self.service.db.write() as conn:
                (result,) = await self._transaction(conn, ctx, [entry])
                return result
        except VersionConflict as exc:
            error: FhirError = Conflict(str(exc))
        except FhirError as exc:
            error = exc
        response = {
            "status": _status_text(error.status),
            "outcome": orjson.loads(outcome_bytes(error.issues)),
        }
        return Entry(f"urn:uuid:{uuid.uuid4()}", None, None, None, response)
