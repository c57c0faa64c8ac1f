"""Prior authorization: building and submitting PAS requests, and turning every payer answer into the
PA Task's next state.

    $request-prior-auth ──> load MedicationRequest, Patient, Coverage, insurer, provider, supporting info
                      ──> build Claim + PAS request Bundle (gateway.pa.request), validate against profiles
                      ──> one transaction {Claim, Task submitted, submission row (idempotency key)}
                      ──> send (PayerWorker.send) ──> synchronous ClaimResponse ──> apply
    payer feeds (PAS response/notification, X12 278, CSV) ──> PayerDecision ──> correlate ──> apply
    apply: one transaction {ClaimResponse, Task next state (lifecycle), correlation keys}

The lifecycle is enforced on every Task write by `pa_tracking.observe`; this module only proposes moves.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters.payer import pas
from gateway.exceptions import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from gateway.fhir import dates, jsonio
from gateway.pa import lifecycle, tasks
from gateway.pa.decision import PayerDecision, named_reasons
from gateway.pa.payers import PayerConfig, PayerDirectory, number_key
from gateway.pa.request import (
    TRACE_SYSTEM,
    RequestError,
    RequestParts,
    build_claim,
    build_request_bundle,
    referenced,
)
from gateway.service.access.context import RequestContext
from gateway.service.fhirapi.interactions import FhirService
from gateway.store import priorauth as pa_store
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.types import JSON, Issue

log = logging.getLogger("gateway.priorauth")

# Statuses from which a MedicationRequest's PA Task is submitted again rather than replaced.
RESUBMITTABLE = frozenset({"pa-required", "submission-error", "rejected-by-payer", "info-requested"})
# References followed from the Claim when assembling the Bundle (Claim -> PractitionerRole -> ...).
MAX_REFERENCE_DEPTH = 3
# What a Claim's provider may be (PAS): a requester given only by identifier is looked up among these.
PROVIDER_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization"})


@dataclass(frozen=True, slots=True)
class _Kind:
    """A request (the defaults; a resubmission relates to the Task's previous Claim), an appeal of a
    denied Task, or the cancellation of a Task's request."""

    appeal_of: str | None = None
    cancel_of: str | None = None
    related_claim_id: str | None = None
    reason: str | None = None

    def certification(self, priority: str) -> str:
        """X12 1322: 3 cancel, 1 appeal - immediate, 2 appeal - standard, I initial."""
        if self.cancel_of:
            return "3"
        if self.appeal_of:
            return "1" if priority in tasks.EXPEDITED_PRIORITIES else "2"
        return "I"


@dataclass(frozen=True, slots=True)
class Applied:
    task_id: str
    business_status: str
    changed: bool


def _now() -> datetime:
    return dates.from_us(dates.now_us())


def resource_of(stored: store.Stored | None) -> JSON | None:
    """The JSON of a stored current version; None when absent or deleted.

    Decimals keep their literals: what is loaded here is written back (Tasks moved) or sent to payers
    (the PAS request Bundle embeds the order, the patient, the coverage, ...).
    """
    if stored is None or stored.deleted or stored.content is None:
        return None
    value = jsonio.loads(stored.content)
    return value if isinstance(value, dict) else None


def _ref(element: object) -> str | None:
    reference = element.get("reference") if isinstance(element, dict) else None
    return reference if isinstance(reference, str) and "/" in reference else None


def _identifiers(resource: JSON) -> list[str]:
    return [
        f"{i.get('system')}|{i.get('value')}" if i.get("system") else str(i.get("value"))
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and i.get("value")
    ]


def submission_id(task_id: str, version: int, kind: str = "submit", n: int | None = None) -> str:
    """The Idempotency-Key of a request: names the Task version it is about."""
    return f"{task_id}/{version}/{kind}" + (f"/{n}" if n is not None else "")


class PriorAuthService:
    def __init__(
        self,
        fhir: FhirService,
        payers: PayerDirectory,
        *,
        base_url: str,
        reason_displays: Mapping[str, Any] | None = None,
    ) -> None:
        self.fhir = fhir
        self.db = fhir.db
        self.payers = payers
        # X12 886 review decision reason code -> its meaning (mappings/tables/x12-review-decision-reasons).
        self.reason_displays: Mapping[str, Any] = reason_displays or {}
        self.base_url = base_url.rstrip("/")
        self.internal = RequestContext(base_url=self.base_url)

    # -- $request-prior-auth -----------------------------------------------------------------------

    async def prepare_request(self, ctx: RequestContext, request_id: str, parameters: JSON | None) -> str:
        """Assemble, validate and record a PA request for a MedicationRequest; returns the submission id.

        The request is sent by the caller (after this transaction committed), never from inside it.
        """
        _require_all(ctx, ("MedicationRequest", "r"), ("Task", "cr"), ("Claim", "c"))
        params = _parameters(parameters)
        _require_named(ctx, params)
        async with self.db.read() as conn:
            request = resource_of(await store.current(conn, "MedicationRequest", request_id))
            if request is None:
                raise NotFound(f"MedicationRequest/{request_id} does not exist")
            loaded = await self._load_parts(conn, request, params)
        return await self._record_request(request, loaded, params, _Kind())

    async def prepare_appeal(self, ctx: RequestContext, task_id: str, parameters: JSON | None) -> str:
        """An appeal of a denied authorization: a new Task partOf the denied one, a Claim related to the
        denied request's Claim, submitted like a request. Returns the submission id."""
        _require_all(ctx, ("MedicationRequest", "r"), ("Task", "cr"), ("Claim", "c"))
        params = _parameters(parameters)
        _require_named(ctx, params)
        async with self.db.read() as conn:
            denied = resource_of(await store.current(conn, "Task", task_id))
            if denied is None or not tasks.is_pa_task(denied):
                raise NotFound(f"Task/{task_id} is not a prior-authorization Task here")
            if tasks.business_status(denied) != "denied":
                raise Conflict(
                    f"Only a denied prior authorization can be appealed; Task/{task_id} is"
                    f" {tasks.business_status(denied)}"
                )
            request_ref = _ref(denied.get("focus")) or ""
            request = resource_of(
                await store.current(conn, "MedicationRequest", request_ref.partition("/")[2])
            )
            if request is None:
                raise Unprocessable(f"{request_ref} (the denied Task's focus) no longer exists")
            params.coverage = params.coverage or tasks.reference_of(denied, "input", "coverage")
            loaded = await self._load_parts(conn, request, params)
        claim_ref = tasks.reference_of(denied, "input", "claim") or ""
        kind = _Kind(appeal_of=task_id, related_claim_id=claim_ref.partition("/")[2] or None)
        return await self._record_request(request, loaded, params, kind)

    async def prepare_cancel(self, ctx: RequestContext, task_id: str, parameters: JSON | None) -> str | None:
        """Withdraw a PA request: the Task becomes cancelled now; when the payer has the request, a
        cancellation (certification type 3, related to the Task's Claim) is recorded for sending.

        Returns the submission id to send, or None when the payer never had the request.
        """
        _require_all(ctx, ("Task", "ru"))
        reason = _reason(parameters)
        async with self.db.read() as conn:
            task = resource_of(await store.current(conn, "Task", task_id))
            if task is None or not tasks.is_pa_task(task):
                raise NotFound(f"Task/{task_id} is not a prior-authorization Task here")
            status = tasks.business_status(task)
            problem = lifecycle.transition_problem(status, "cancelled")
            if problem:
                raise Conflict(f"Task/{task_id}: {problem}")
            claim_ref = tasks.reference_of(task, "input", "claim")
            request_ref = _ref(task.get("focus")) or ""
            request = resource_of(
                await store.current(conn, "MedicationRequest", request_ref.partition("/")[2])
            )
            loaded = None
            # The payer has the request (it was sent and not refused): it is told of the withdrawal.
            if claim_ref and request and status not in ("pa-required", "rejected-by-payer"):
                params = RequestParams(coverage=tasks.reference_of(task, "input", "coverage"))
                loaded = await self._load_parts(conn, request, params)
        if claim_ref is None or request is None or loaded is None:
            async with self.db.write() as conn:
                await self.move(conn, task_id, "cancelled", reason or "Withdrawn by the requester")
            return None
        kind = _Kind(cancel_of=task_id, related_claim_id=claim_ref.partition("/")[2], reason=reason)
        return await self._record_request(request, loaded, RequestParams(), kind)

    async def _record_request(
        self, request: JSON, loaded: dict[str, Any], params: RequestParams, kind: _Kind
    ) -> str:
        payer = self._payer_for(loaded["insurer"])
        now = _now()
        now_us = dates.to_us(now)
        priority = params.priority or str(request.get("priority") or "routine")
        async with self.db.write() as conn:
            # One PA flow per order at a time (two clicks, a retry racing a resubmission, ...).
            await pa_store.lock_order(conn, str(request["id"]))
            if kind.cancel_of:
                current = await store.current(conn, "Task", kind.cancel_of)
                problem = lifecycle.transition_problem(
                    tasks.business_status(resource_of(current) or {}), "cancelled"
                )
                if problem:
                    raise Conflict(f"Task/{kind.cancel_of}: {problem}")
            elif kind.appeal_of:
                current = None
                await self._no_live_appeal(conn, kind.appeal_of)
            else:
                current = await self._task_for(conn, request)
            task = resource_of(current)
            previous_claim = (tasks.reference_of(task, "input", "claim") or "") if task else ""
            related = kind.related_claim_id or previous_claim.partition("/")[2] or None
            task_id = str(task["id"]) if task else str(uuid.uuid4())
            trace = (tasks.trace_number(task) if task else None) or uuid.uuid4().hex[:20].upper()
            claim_id = str(uuid.uuid4())
            parts = RequestParts(
                task_id=task_id,
                claim_id=claim_id,
                trace_number=trace,
                bundle_id=f"{trace}-{now_us}",
                created=tasks.instant(now),
                base_url=self.base_url,
                medication_request=request,
                patient=loaded["patient"],
                coverage=loaded["coverage"],
                insurer=loaded["insurer"],
                provider=loaded["provider"],
                medication=loaded["medication"],
                supporting=tuple(loaded["supporting"]),
                priority=priority,
                related_claim_id=related,
                certification_type=kind.certification(priority),
                claim_type=payer.claim_type,
                extras=tuple(loaded["extras"]),
            )
            try:
                claim = build_claim(parts)
                bundle = build_request_bundle(parts)
            except RequestError as exc:
                raise Unprocessable(str(exc)) from None
            self.fhir.validate(claim)
            bundle_issues = [i for i in self.fhir.validator.validate(bundle) if i.is_error]
            if bundle_issues:
                raise Unprocessable(issues=bundle_issues)
            if task is None:
                task = tasks.new_task(
                    task_id,
                    medication_request=request,
                    task_type="prior-authorization-appeal" if kind.appeal_of else "prior-authorization",
                    priority=_task_priority(priority),
                    now=now,
                    trace_number=trace,
                    part_of=kind.appeal_of,
                )
            elif not task.get("identifier"):
                task = {**task, "identifier": [{"system": TRACE_SYSTEM, "value": trace}]}
            if kind.cancel_of:
                sent = tasks.moved(task, "cancelled", now, reason=kind.reason or "Withdrawn by the requester")
            else:
                sent = tasks.submitted(
                    task,
                    claim_id=claim_id,
                    coverage_ref=f"Coverage/{loaded['coverage']['id']}",
                    insurer_ref=f"Organization/{loaded['insurer']['id']}",
                    now=now,
                    appeal=kind.appeal_of is not None,
                )
            self.fhir.validate(sent)
            plans = [
                self.fhir.plan_new(self.internal, claim, claim_id, "POST", now_us),
                self.fhir.plan_update(self.internal, sent, task_id, current, None, now_us),
            ]
            written = await self.fhir.write_versions(
                conn, self.internal, [p for p in plans if isinstance(p, store.PendingVersion)]
            )
            version = written[-1].version
            sub_kind = "cancel" if kind.cancel_of else "submit"
            sub_id = submission_id(task_id, version, sub_kind)
            await pa_store.add_submission(
                conn,
                pa_store.new_submission(
                    sub_id, task_id, version, sub_kind, payer.name, 1, now_us, jsonio.dumps(bundle).decode()
                ),
            )
            identifier = bundle.get("identifier") or {}
            await pa_store.add_references(
                conn,
                task_id,
                [
                    ("claim", claim_id),
                    ("trace", trace),
                    ("trace", f"{TRACE_SYSTEM}|{trace}"),
                    ("trace", f"{identifier.get('system')}|{identifier.get('value')}"),
                ],
            )
        log.info("prior authorization prepared task=%s claim=%s payer=%s", task_id, claim_id, payer.name)
        return sub_id

    def _payer_for(self, insurer: JSON) -> PayerConfig:
        reference = f"Organization/{insurer['id']}"
        payer = self.payers.for_insurer(reference, _identifiers(insurer))
        if payer is None:
            raise Unprocessable(
                f"No payer is configured for the insurer {reference}: add it to a payer's `insurers`"
                " in the payers file (GATEWAY_PAYERS_FILE)",
                expression="Coverage.payor",
            )
        return payer

    async def _task_for(self, conn: AsyncConnection, request: JSON) -> store.Stored | None:
        """The MedicationRequest's PA Task to (re)submit (as stored now), None for a new one; 409 while
        one is live."""
        found = await store_search.by_reference(conn, "Task", "focus", [f"MedicationRequest/{request['id']}"])
        live = [t for t in (resource_of(s) for s in found) if t and tasks.is_pa_task(t)]
        for task in sorted(live, key=lambda t: str(t.get("authoredOn") or ""), reverse=True):
            status = tasks.business_status(task)
            if status in RESUBMITTABLE:
                current = await store.current(conn, "Task", str(task["id"]))  # the version to build on
                if tasks.business_status(resource_of(current) or {}) in RESUBMITTABLE:
                    return current
                status = tasks.business_status(resource_of(current) or {})
            if status in lifecycle.AWAITING_PAYER or status in lifecycle.APPROVED:
                raise Conflict(
                    f"MedicationRequest/{request['id']} already has a prior authorization that is {status}"
                    f" (Task/{task['id']})"
                )
        return None

    async def _no_live_appeal(self, conn: AsyncConnection, denied_id: str) -> None:
        """One appeal at a time: 409 while an earlier appeal of this denial is not finished."""
        for stored in await store_search.by_reference(conn, "Task", "part-of", [f"Task/{denied_id}"]):
            appeal = resource_of(stored)
            status = tasks.business_status(appeal) if appeal else None
            if appeal and tasks.is_pa_task(appeal) and status not in lifecycle.FINAL | {"rejected-by-payer"}:
                raise Conflict(
                    f"Task/{denied_id} already has an appeal that is {status} (Task/{appeal['id']})"
                )

    async def _load_parts(
        self, conn: AsyncConnection, request: JSON, params: RequestParams
    ) -> dict[str, Any]:
        patient_ref = _ref(request.get("subject"))
        if not patient_ref or not patient_ref.startswith("Patient/"):
            raise Unprocessable(
                "The MedicationRequest has no subject Patient", expression="MedicationRequest.subject"
            )
        patient = await self._must(conn, patient_ref, "MedicationRequest.subject")
        coverage_ref = params.coverage
        if not coverage_ref:
            coverage_ref = await self._only_coverage(conn, patient_ref)
        coverage = await self._must(conn, str(coverage_ref), "Parameters.parameter.coverage")
        insurer_ref = next((_ref(p) for p in coverage.get("payor") or [] if _ref(p)), None)
        if not insurer_ref or not insurer_ref.startswith("Organization/"):
            raise Unprocessable(
                f"{coverage_ref} names no insurer Organization in payor", expression="Coverage.payor"
            )
        insurer = await self._must(conn, insurer_ref, "Coverage.payor")
        requester = _ref(request.get("requester"))
        provider = (
            await self._must(conn, requester, "MedicationRequest.requester")
            if requester
            else await self._by_identifier(conn, request.get("requester"))
        )
        medication_ref = _ref(request.get("medicationReference"))
        medication = (
            await self._must(conn, medication_ref, "MedicationRequest.medicationReference")
            if medication_ref
            else None
        )
        supporting = [
            await self._must(conn, str(ref), "Parameters.parameter.supportingInfo")
            for ref in params.supporting
        ]
        chosen = [request, patient, coverage, insurer, *(r for r in (provider, medication) if r), *supporting]
        extras = await self._closure(conn, chosen)
        return {
            "patient": patient,
            "coverage": coverage,
            "insurer": insurer,
            "provider": provider,
            "medication": medication,
            "supporting": supporting,
            "extras": extras,
        }

    @staticmethod
    async def _by_identifier(conn: AsyncConnection, reference: object) -> JSON | None:
        """The resource a logical reference names by identifier (an HL7 v2 order's ORC-12 becomes
        `{type: Practitioner, identifier: {system, value}}`): the one live resource of that type here with
        that identifier; None when there is none, or more than one (then the request names no provider)."""
        if not isinstance(reference, dict):
            return None
        rtype, identifier = reference.get("type"), reference.get("identifier")
        if rtype not in PROVIDER_TYPES or not isinstance(identifier, dict):
            return None
        system, value = identifier.get("system"), identifier.get("value")
        if not isinstance(system, str) or not system or not isinstance(value, str) or not value:
            return None
        found = await store_search.all_ids_by_identifier(conn, str(rtype), [(system, value)])
        ids = found.get((system, value), [])
        if len(ids) != 1:
            return None
        return resource_of(await store.current(conn, str(rtype), ids[0]))

    async def _closure(self, conn: AsyncConnection, chosen: list[JSON]) -> list[JSON]:
        """Resources the chosen ones reference (a few levels deep) that exist here: the Bundle needs them."""
        have = {(r["resourceType"], r["id"]) for r in chosen}
        extras: list[JSON] = []
        frontier = chosen
        for _ in range(MAX_REFERENCE_DEPTH):
            wanted = {key for r in frontier for key in referenced(r, self.base_url)} - have
            if not wanted:
                break
            found = [resource_of(s) for s in await store.load_by_keys(conn, wanted)]
            frontier = [r for r in found if r]
            have |= wanted
            extras += frontier
        return extras

    async def _only_coverage(self, conn: AsyncConnection, patient_ref: str) -> str:
        found = [
            c
            for c in (
                resource_of(s)
                for s in await store_search.by_reference(conn, "Coverage", "beneficiary", [patient_ref])
            )
            if c and c.get("status") == "active"
        ]
        if len(found) != 1:
            raise BadRequest(
                f"{patient_ref} has {len(found)} active Coverages: name one with the `coverage` parameter",
                expression="Parameters.parameter.coverage",
            )
        return f"Coverage/{found[0]['id']}"

    async def _must(self, conn: AsyncConnection, reference: str, where: str) -> JSON:
        rtype, _, rid = reference.partition("/")
        resource = resource_of(await store.current(conn, rtype, rid)) if rid else None
        if resource is None:
            raise Unprocessable(
                f"{reference} does not exist here; a PA request must include it", expression=where
            )
        return resource

    # -- applying payers' answers ------------------------------------------------------------------

    async def receive(self, decisions: list[PayerDecision], client_id: str | None = None) -> list[Applied]:
        """Answers from a payer feed, all or nothing: each must match a request the gateway made, and a
        client bound to a payer (its `clients` in the payers file) may answer only that payer's requests."""
        if not decisions:
            return []
        bound = self.payers.for_client(client_id) if client_id else None
        async with self.db.write() as conn:
            applied = []
            for index, decision in enumerate(decisions):
                task_id = await self.correlate(conn, decision, bound, index)
                if task_id is None:
                    raise Unprocessable(
                        "No prior-authorization request here matches this answer (looked for "
                        + ", ".join(f"{k} {v}" for k, v in decision.correlation.lookups()[:8])
                        + ")",
                        expression=f"decision[{index}]",
                    )
                if bound is not None and await self._payer_of(conn, task_id) is not bound:
                    raise Forbidden(
                        f"Task/{task_id} is not a request to {bound.name}, the payer this client answers for"
                    )
                applied.append(await self.apply(conn, task_id, decision))
        return applied

    async def _payer_of(self, conn: AsyncConnection, task_id: str) -> PayerConfig | None:
        """The configured payer of the insurer a PA Task was sent to (its owner)."""
        task = resource_of(await store.current(conn, "Task", task_id))
        return await self.payer_for_owner(conn, tasks.owner_key(task or {}))

    async def payer_for_owner(self, conn: AsyncConnection, owner: str | None) -> PayerConfig | None:
        """The configured payer of a PA Task's owner (the insurer), given as `tasks.owner_key` gives it: by
        reference, where the payers file may list the Organization's reference or any identifier of
        it, or by an identifier (`system|value`) when the owner names the insurer only that way."""
        if not owner:
            return None
        if "|" in owner:  # an identifier (its system is a URL, so test this before the reference)
            return self.payers.for_insurer(None, [owner])
        rtype, _, rid = owner.partition("/")
        insurer = resource_of(await store.current(conn, rtype, rid)) if rtype.isalpha() and rid else None
        return self.payers.for_insurer(owner, _identifiers(insurer) if insurer else [])

    async def correlate(
        self, conn: AsyncConnection, decision: PayerDecision, payer: PayerConfig | None = None, index: int = 0
    ) -> str | None:
        """The PA Task an answer is about: named directly, by the gateway's own Claim id or trace number,
        else by a number the payer gave before. Payers' numbers are only unique per payer: the answering
        payer's (`payer`, from the client bound to it) are looked up; when the payer is unknown, a number
        that belongs to requests to more than one payer is refused, not guessed."""
        correlation = decision.correlation
        if correlation.task_id:
            task = resource_of(await store.current(conn, "Task", correlation.task_id))
            if task is not None and tasks.is_pa_task(task):
                return correlation.task_id
        lookups = correlation.lookups()
        found = await pa_store.find_task(conn, [k for k in lookups if k[0] in ("claim", "trace")])
        if found is not None:
            return found
        scopes = [payer.name] if payer else [p.name for p in self.payers.payers] + [""]
        for number in (v for kind, v in lookups if kind == "payer"):
            keyed = {number_key(scope, number): scope for scope in scopes}
            hits = await pa_store.tasks_by_key(conn, [("payer", k) for k in keyed])
            owners: dict[str, list[str]] = {}
            for (_, key), task_id in hits.items():
                owners.setdefault(task_id, []).append(keyed.get(key, "") or "an unconfigured payer")
            if len(owners) > 1:
                named = sorted({name for names in owners.values() for name in names})
                raise Unprocessable(
                    f"The payer's number {number!r} belongs to requests to several payers"
                    f" ({', '.join(named)}): post the answer as the payer's own client (bound to it in"
                    " the payers file) or name the request by the gateway's Claim id or trace number",
                    expression=f"decision[{index}]",
                )
            if owners:
                return next(iter(owners))
            # Remembered before numbers were kept per payer (one Task per number, first come).
            legacy = await pa_store.find_task(conn, [("payer", number)])
            if legacy is not None and (payer is None or await self._payer_of(conn, legacy) is payer):
                return legacy
        return None

    async def apply(self, conn: AsyncConnection, task_id: str, decision: PayerDecision) -> Applied:
        """One answer onto its Task: store the ClaimResponse, move the Task, remember the payer's numbers."""
        stored = await store.current(conn, "Task", task_id)
        task = resource_of(stored)
        if task is None:
            raise NotFound(f"Task/{task_id} does not exist")
        decision = named_reasons(decision, self.reason_displays)
        before = tasks.business_status(task)
        after = lifecycle.outcome(decision)
        item_lines = [tasks.describe_item(i) for i in decision.items]
        # The payer's numbers find this Task next time, even when this answer changes nothing; another
        # payer may use the same numbers for its own requests.
        payer = await self.payer_for_owner(conn, tasks.owner_key(task))
        numbers = [*decision.correlation.payer_references]
        numbers += [i.authorization_number for i in decision.items if i.authorization_number]
        keys = [("payer", number_key(payer.name if payer else None, n)) for n in numbers]
        await pa_store.add_references(conn, task_id, keys)
        if before == after and _item_lines(task) == item_lines:
            return Applied(task_id, after, False)  # the same answer again (a re-sent notification, a poll)
        problem = lifecycle.transition_problem(before, after)
        if problem:
            raise Unprocessable(
                issues=[
                    Issue("error", "business-rule", f"Task/{task_id}: {problem}", ("Task.businessStatus",))
                ]
            )
        now = _now()
        now_us = dates.to_us(now)
        response = self._claim_response(task, decision, now)
        self.fhir.validate(response)
        moved = tasks.decided(task, decision, after, str(response["id"]), now)
        self.fhir.validate(moved)
        plan = self.fhir.plan_update(self.internal, moved, task_id, stored, None, now_us)
        pending = [self.fhir.plan_new(self.internal, response, str(response["id"]), "POST", now_us)]
        targets = [f"ClaimResponse/{response['id']}/_history/1"]
        if isinstance(plan, store.PendingVersion):
            pending.append(plan)
            targets.insert(0, f"Task/{task_id}/_history/{plan.version}")
        provenance = tasks.answer_provenance(
            str(uuid.uuid4()), targets, _ref(task.get("owner")), decision.source, now
        )
        pending.append(self.fhir.plan_new(self.internal, provenance, str(provenance["id"]), "POST", now_us))
        await self.fhir.write_versions(conn, self.internal, pending)
        log.info(
            "prior authorization answered task=%s %s -> %s source=%s", task_id, before, after, decision.source
        )
        return Applied(task_id, after, True)

    def _claim_response(self, task: JSON, decision: PayerDecision, now: datetime) -> JSON:
        claim_ref = tasks.reference_of(task, "input", "claim") or ""
        claim_id = claim_ref.split("/", 1)[1] if "/" in claim_ref else str(task["id"])
        owner = _ref(task.get("owner"))
        response_id = str(uuid.uuid4())
        if decision.claim_response is not None:
            response = copy.deepcopy(decision.claim_response)
            response.pop("meta", None)
            response.pop("requestor", None)  # the payer's reference means nothing in this store
            response["id"] = response_id
            response["patient"] = dict(task["for"])
            request = {"reference": f"Claim/{claim_id}"}
            if isinstance(response.get("request"), dict) and response["request"].get("identifier"):
                request["identifier"] = response["request"]["identifier"]
            response["request"] = request
            response["insurer"] = (
                {"reference": owner} if owner else response.get("insurer") or {"display": "payer"}
            )
            if not _ref(response["insurer"]):
                response["insurer"] = {"display": "payer"}
            return response
        response = pas.claim_response_for(
            decision,
            claim_id=claim_id,
            patient_ref=str(task["for"]["reference"]),
            insurer_ref=owner,
            requestor_ref=None,
            created=tasks.instant(now),
        )
        response["id"] = response_id
        return response

    # -- moves the gateway makes itself -------------------------------------------------------------

    async def move(
        self, conn: AsyncConnection, task_id: str, status: str, reason: str | None = None
    ) -> int | None:
        """Put a Task in `status` (a submission error, a retry, expiry); returns the new version."""
        stored = await store.current(conn, "Task", task_id)
        task = resource_of(stored)
        if task is None:
            return None
        now = _now()
        moved = tasks.moved(task, status, now, reason=reason)
        plan = self.fhir.plan_update(self.internal, moved, task_id, stored, None, dates.to_us(now))
        if not isinstance(plan, store.PendingVersion):
            return plan.version
        written = await self.fhir.write_versions(conn, self.internal, [plan])
        return written[0].version


def _item_lines(task: JSON) -> list[str]:
    return [
        str(o.get("valueString"))
        for o in task.get("output") or []
        if any(c.get("code") == "item-decision" for c in (o.get("type") or {}).get("coding") or [])
    ]


def _reason(body: JSON | None) -> str | None:
    """`reason` (string) from an optional Parameters body."""
    if not body:
        return None
    if body.get("resourceType") != "Parameters":
        raise BadRequest("The body must be a Parameters resource (reason)")
    given = body.get("parameter") or []
    for parameter in given if isinstance(given, list) else []:
        if isinstance(parameter, dict) and parameter.get("name") == "reason":
            value = parameter.get("valueString")
            return str(value)[:500] if value else None
    return None


def _task_priority(priority: str) -> str:
    return "urgent" if priority in tasks.EXPEDITED_PRIORITIES else "routine"


def _require_all(ctx: RequestContext, *needs: tuple[str, str]) -> None:
    """An operation reads what it works on and answers with the PA Task: read is needed as well as write,
    before anything is looked up, so a token that may not read learns nothing (not even that an id exists)."""
    for rtype, interactions in needs:
        for interaction in interactions:
            ctx.require(rtype, interaction)


def _require_named(ctx: RequestContext, params: RequestParams) -> None:
    """Read on the type of every resource the caller names (their existence shows in the answer)."""
    for ref in [params.coverage, *params.supporting]:
        rtype = (ref or "").split("/", 1)[0]
        if rtype.isalpha():  # Type/id; anything else is refused later as a bad reference
            ctx.require(rtype, "r")


@dataclass
class RequestParams:
    coverage: str | None = None
    supporting: list[str] = field(default_factory=list)
    priority: str | None = None


def _parameters(body: JSON | None) -> RequestParams:
    """coverage (Reference), supportingInfo (Reference, repeating), priority (code) from a Parameters body."""
    found = RequestParams()
    if not body:
        return found
    if body.get("resourceType") != "Parameters":
        raise BadRequest("The body must be a Parameters resource (coverage, supportingInfo, priority)")
    given = body.get("parameter") or []
    if not isinstance(given, list):
        raise BadRequest("Parameters.parameter must be a list", expression="Parameters.parameter")
    for index, parameter in enumerate(given):
        name = parameter.get("name") if isinstance(parameter, dict) else None
        where = f"Parameters.parameter[{index}]"
        if name in ("coverage", "supportingInfo"):
            reference = _ref(parameter.get("valueReference"))
            if reference is None:
                raise BadRequest(f"{name} needs a valueReference like Type/id", expression=where)
            if name == "coverage":
                found.coverage = reference
            else:
                found.supporting.append(reference)
        elif name == "priority":
            code = parameter.get("valueCode")
            if code not in ("routine", "urgent", "asap", "stat"):
                raise BadRequest("priority is one of routine, urgent, asap, stat", expression=where)
            found.priority = code
        else:
            raise BadRequest(
                f"Unknown parameter {name!r} (coverage, supportingInfo, priority)", expression=where
            )
    return found
