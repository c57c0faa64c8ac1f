"""Coverage rules at work: a PA Task opened when a specialty order arrives, and CDS Hooks `order-sign`.

    order becomes active (HL7 v2 RDE/RDS, FHIR create/update) ──> observe (in the order's transaction):
        gather coverages, labs ──> gateway.pa.coverage.evaluate ──> PA required and no PA Task yet:
        one Task (draft, pa-required, the labs found as input `supporting-info`)
        ──> after commit, when the rule says auto_submit: $request-prior-auth and send (PriorAuthService,
            PayerWorker), never inside the order's transaction
    POST /cds-services/specialty-pa ──> the same evaluation for each draft order ──> cards

Logs carry resource ids only: no names, and no rule ids or codes (they would say what a patient takes).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.exceptions import BadRequest
from gateway.fhir import dates, jsonio
from gateway.mapping.monitoring import MonitoringRules
from gateway.pa import coverage as rules_
from gateway.pa import tasks
from gateway.pa.coverage import CoverageDecision, CoverageRules, PayerCoverage
from gateway.routing.labs import ordered_rules
from gateway.service.access.context import RequestContext
from gateway.service.fhirapi.interactions import FhirService
from gateway.service.priorauth.requests import PriorAuthService, resource_of
from gateway.service.priorauth.worker import PayerWorker
from gateway.store import priorauth as pa_store
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.types import JSON

log = logging.getLogger("gateway.coverage")

SERVICE_ID = "specialty-pa"
HOOK = "order-sign"
# What a CDS client must hold (a registered client's bearer token, not an EHR-signed JWT): read on what
# the evaluation reads. Nothing is written: the suggested Task is the EHR's to create.
READS = (("Patient", "r"), ("Coverage", "r"), ("Observation", "r"), ("MedicationRequest", "r"))
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "coverage": "Coverage?patient={{context.patientId}}&status=active",
}
SOURCE = {"label": "Specialty gateway coverage rules"}


def pa_task_id(order_id: str) -> str:
    """The id of the PA Task the gateway opens for an order: the same order never gets two."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pa-required:MedicationRequest/{order_id}"))


@dataclass(frozen=True, slots=True)
class _AutoSubmit:
    order_id: str
    coverage: str
    supporting: tuple[str, ...]


class CoverageChecks:
    def __init__(
        self,
        fhir: FhirService,
        priorauth: PriorAuthService,
        worker: PayerWorker,
        rules: CoverageRules,
        drug_rules: MonitoringRules,
    ) -> None:
        self.fhir = fhir
        self.priorauth = priorauth
        self.worker = worker
        self.rules = rules
        self.drug_rules = drug_rules
        self._queued: dict[int, list[_AutoSubmit]] = {}  # per write transaction, until it commits
        self._running: set[asyncio.Task[None]] = set()
        fhir.db.after_commit.append(self._committed)
        fhir.db.after_rollback.append(self._rolled_back)

    # -- gathering the facts ---------------------------------------------------------------------------

    async def _medication(self, conn: AsyncConnection, order: JSON) -> JSON | None:
        reference = (order.get("medicationReference") or {}).get("reference")
        if not isinstance(reference, str):
            return None
        if reference.startswith("#"):  # a contained Medication (CDS draft orders often carry one)
            return next((c for c in order.get("contained") or [] if c.get("id") == reference[1:]), None)
        rtype, _, rid = reference.partition("/")
        return resource_of(await store.current(conn, rtype, rid)) if rtype == "Medication" else None

    async def _coverages(
        self, conn: AsyncConnection, patient_ref: str, given: list[JSON] | None
    ) -> list[PayerCoverage]:
        found = given
        if found is None:
            found = [
                c
                for c in (
                    resource_of(s)
                    for s in await store_search.by_reference(conn, "Coverage", "beneficiary", [patient_ref])
                )
                if c
            ]
        payers = self.priorauth.payers
        coverages = []
        for coverage in sorted(found, key=lambda c: str(c.get("id"))):
            if coverage.get("status") != "active":
                continue
            insurer = next(
                (
                    p["reference"]
                    for p in coverage.get("payor") or []
                    if isinstance(p, dict) and isinstance(p.get("reference"), str)
                ),
                None,
            )
            org = (
                resource_of(await store.current(conn, "Organization", insurer.partition("/")[2]))
                if insurer
                else None
            )
            identifiers = tuple(
                f"{i.get('system')}|{i.get('value')}" if i.get("system") else str(i.get("value"))
                for i in (org or {}).get("identifier") or []
                if isinstance(i, dict) and i.get("value")
            )
            payer = payers.for_insurer(insurer, list(identifiers)) if insurer else None
            coverages.append(
                PayerCoverage(
                    reference=f"Coverage/{coverage.get('id')}",
                    payer=payer.name if payer else None,
                    insurer=insurer,
                    insurer_identifiers=identifiers,
                    plans=tuple(
                        str(c["value"])
                        for c in coverage.get("class") or []
                        if isinstance(c, dict) and c.get("value")
                    ),
                    insurer_name=(org or {}).get("name") or None,
                )
            )
        return coverages

    async def _observations(self, conn: AsyncConnection, patient_ref: str) -> list[JSON]:
        codes = rules_.lab_codes(self.rules)
        if not codes:
            return []
        found = await store_search.by_reference_and_token(
            conn, "Observation", ("subject", patient_ref), ("code", codes)
        )
        return [o for o in (resource_of(s) for s in found) if o]

    async def decide(
        self, conn: AsyncConnection, order: JSON, patient_ref: str, coverages: list[JSON] | None = None
    ) -> CoverageDecision | None:
        """The coverage decision for one order of `patient_ref` (Coverages from the store unless given)."""
        if not self.rules.rules:
            return None
        medication = await self._medication(conn, order)
        classes = frozenset(
            r.drug_class
            for r in ordered_rules(
                order,
                self.drug_rules,
                {f"Medication/{medication['id']}": medication}
                if medication and medication.get("id")
                else None,
            )
            if r.drug_class
        )
        if not rules_.concerns_drug(self.rules, rules_.order_rxnorm_codes(order, medication), classes):
            return None
        payer_coverages = await self._coverages(conn, patient_ref, coverages)
        if not payer_coverages:
            return None
        observations = await self._observations(conn, patient_ref)
        return rules_.evaluate(
            order,
            medication,
            classes,
            payer_coverages,
            observations,
            dates.from_us(dates.now_us()),
            self.rules,
        )

    # -- on order arrival --------------------------------------------------------------------------------

    async def observe(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        pending: Sequence[store.PendingVersion],
        _: list[store.Stored],
    ) -> None:
        """A write observer: an order becoming active whose payer's rule requires PA, and which has no PA
        Task yet, gets one (as the gateway, in the order's transaction)."""
        for p in pending:
            if p.type != "MedicationRequest" or p.content is None:
                continue
            order = orjson.loads(p.content)
            before = orjson.loads(p.previous) if p.previous else {}
            subject = (order.get("subject") or {}).get("reference")
            if order.get("status") != "active" or before.get("status") == "active":
                continue
            if not isinstance(subject, str) or not subject.startswith("Patient/"):
                continue
            decision = await self.decide(conn, order, subject)
            if decision is not None and decision.pa_required:
                await self._open_task(conn, order, decision)

    async def _open_task(self, conn: AsyncConnection, order: JSON, decision: CoverageDecision) -> None:
        order_id = str(order["id"])
        await pa_store.lock_order(conn, order_id)  # two feeds delivering the same order at once
        found = await store_search.by_reference(conn, "Task", "focus", [f"MedicationRequest/{order_id}"])
        if any(t and tasks.is_pa_task(t) for t in (resource_of(s) for s in found)):
            return  # a PA already exists for this order (opened here earlier, or by a person)
        task_id = pa_task_id(order_id)
        if await store.current(conn, "Task", task_id) is not None:
            return  # opened earlier and since deleted: a person's choice stands
        now = dates.from_us(dates.now_us())
        task = draft_task(task_id, order, decision, now)
        self.fhir.validate(task)
        system = self.priorauth.internal
        pending = self.fhir.plan_new(system, task, task_id, "POST", dates.to_us(now))
        await self.fhir.write_versions(conn, system, [pending])
        log.info("PA Task/%s opened for MedicationRequest/%s", task_id, order_id)
        if decision.rule.auto_submit:
            supporting = tuple(lab.reference for lab in decision.labs_found)
            self._queued.setdefault(id(conn), []).append(
                _AutoSubmit(order_id, decision.coverage.reference, supporting)
            )

    def _committed(self, conn: AsyncConnection) -> None:
        for job in self._queued.pop(id(conn), []):
            running = asyncio.get_running_loop().create_task(self._submit(job))
            self._running.add(running)
            running.add_done_callback(self._running.discard)

    def _rolled_back(self, conn: AsyncConnection | None) -> None:
        if conn is not None:
            self._queued.pop(id(conn), None)

    async def _submit(self, job: _AutoSubmit) -> None:
        """Submit through $request-prior-auth's own path. A failure leaves the Task pa-required on the
        board for a person (and a payer failure is retried by the worker like any other)."""
        parameters: JSON = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "coverage", "valueReference": {"reference": job.coverage}},
                *({"name": "supportingInfo", "valueReference": {"reference": r}} for r in job.supporting),
            ],
        }
        try:
            sub_id = await self.priorauth.prepare_request(self.priorauth.internal, job.order_id, parameters)
            await self.worker.send(sub_id)
            log.info("PA for MedicationRequest/%s submitted automatically (%s)", job.order_id, sub_id)
        except Exception as exc:  # logged by type and id only: messages may quote resource content
            log.warning(
                "automatic PA submission for MedicationRequest/%s failed: %s",
                job.order_id,
                type(exc).__name__,
            )

    async def drain(self) -> None:
        """Wait for the automatic submissions under way (tests, shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    # -- CDS Hooks ----------------------------------------------------------------------------------------

    def discovery(self) -> JSON:
        return {
            "services": [
                {
                    "hook": HOOK,
                    "id": SERVICE_ID,
                    "title": "Specialty drug prior authorization",
                    "description": "Says when the patient's payer requires prior authorization for a"
                    " specialty drug being ordered, which labs and documents it expects, and offers to open"
                    " the request.",
                    "prefetch": PREFETCH,
                }
            ]
        }

    async def order_sign(self, ctx: RequestContext, service_id: str, body: bytes) -> JSON:
        for rtype, permission in READS:
            ctx.require(rtype, permission)
        request = _cds_request(body)
        patient_ref = f"Patient/{request.patient_id}"
        cards: list[JSON] = []
        async with self.fhir.db.read() as conn:
            for order in request.orders:
                decision = await self.decide(conn, order, patient_ref, request.coverages)
                if decision is not None and decision.pa_required:
                    cards += _cards(order, patient_ref, decision)
        return {"cards": cards}


@dataclass(frozen=True, slots=True)
class _CdsRequest:
    patient_id: str
    orders: list[JSON]
    coverages: list[JSON] | None  # from prefetch; None: read from the store


def _cds_request(body: bytes) -> _CdsRequest:
    try:
        request = jsonio.loads(body)
    except jsonio.JSONDecodeError:
        raise BadRequest("The body is not JSON") from None
    if not isinstance(request, dict):
        raise BadRequest("The body must be a CDS Hooks request (a JSON object)")
    if request.get("hook") != HOOK:
        raise BadRequest(f"This service answers the {HOOK!r} hook, not {request.get('hook')!r}")
    if not isinstance(request.get("hookInstance"), str):
        raise BadRequest("hookInstance is required")
    context = request.get("context")
    if not isinstance(context, dict):
        raise BadRequest("context is required")
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id or "/" in patient_id:
        raise BadRequest("context.patientId must be a Patient id")
    draft = context.get("draftOrders")
    if not isinstance(draft, dict) or draft.get("resourceType") != "Bundle":
        raise BadRequest("context.draftOrders must be a Bundle")
    entries = draft.get("entry") or []
    if not isinstance(entries, list):
        raise BadRequest("context.draftOrders.entry must be a list")
    orders = [
        e["resource"]
        for e in entries
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") == "MedicationRequest"
    ]
    return _CdsRequest(patient_id, orders, _prefetched_coverages(request.get("prefetch")))


def _prefetched_coverages(prefetch: Any) -> list[JSON] | None:
    bundle = prefetch.get("coverage") if isinstance(prefetch, dict) else None
    if not isinstance(bundle, dict):
        return None  # not prefetched (or the EHR could not): read from the store
    if bundle.get("resourceType") == "Coverage":
        return [bundle]
    if bundle.get("resourceType") != "Bundle":
        raise BadRequest("prefetch.coverage must be a Bundle of Coverages")
    return [
        e["resource"]
        for e in bundle.get("entry") or []
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") == "Coverage"
    ]


def _supporting_inputs(decision: CoverageDecision) -> list[JSON]:
    return [
        {
            "type": {"coding": [{"system": tasks.PARAMETER_SYSTEM, "code": "supporting-info"}]},
            "valueReference": {"reference": lab.reference},
        }
        for lab in decision.labs_found
    ]


def draft_task(task_id: str | None, order: JSON, decision: CoverageDecision, now: datetime) -> JSON:
    """The PA Task a rule asks for: draft, pa-required, focus the order, the labs found linked, the
    coverage named, and what is still missing as a note."""
    task = tasks.new_task(task_id or "", medication_request=order, now=now)
    if task_id is None:
        task.pop("id")
    task["input"] = [
        {
            "type": {"coding": [{"system": tasks.PARAMETER_SYSTEM, "code": "coverage"}]},
            "valueReference": {"reference": decision.coverage.reference},
        },
        *_supporting_inputs(decision),
    ]
    notes = [f"Prior authorization required by {decision.payer_label} (coverage rule {decision.rule.id})."]
    if decision.missing():
        notes.append("Missing documentation: " + "; ".join(decision.missing()) + ".")
    if decision.quantity_over:
        notes.append(f"Quantity over the payer's limit: {decision.quantity_over}.")
    task["note"] = [{"text": " ".join(notes), "time": tasks.instant(now)}]
    return task


def _card(summary: str, indicator: str, detail: str, **extra: Any) -> JSON:
    return {
        "uuid": str(uuid.uuid4()),
        "summary": rules_.summary(summary),
        "indicator": indicator,
        "detail": detail,
        "source": SOURCE,
        **extra,
    }


def _cards(order: JSON, patient_ref: str, decision: CoverageDecision) -> list[JSON]:
    rule = decision.rule
    drug = (order.get("medicationCodeableConcept") or {}).get("text") or "this drug"
    detail = f"Coverage rule `{rule.id}`" + (f" ({rule.source})" if rule.source else "") + "."
    if decision.labs_found:
        detail += (
            " On file: "
            + ", ".join(f"{f.requirement.display} ({f.reference})" for f in decision.labs_found)
            + "."
        )
    extra: JSON = {}
    if order.get("id"):
        draft = {**order, "subject": order.get("subject") or {"reference": patient_ref}}
        task = draft_task(None, draft, decision, dates.from_us(dates.now_us()))
        extra = {
            "selectionBehavior": "at-most-one",
            "suggestions": [
                {
                    "label": "Open the prior authorization request",
                    "uuid": str(uuid.uuid4()),
                    "isRecommended": True,
                    "actions": [
                        {
                            "type": "create",
                            "description": "Create the PA Task (pa-required)",
                            "resource": task,
                        }
                    ],
                }
            ],
        }
    cards = [
        _card(
            f"Prior authorization required by {decision.payer_label} for {drug}", "warning", detail, **extra
        )
    ]
    if decision.missing():
        cards.append(
            _card(
                "Missing documentation: " + "; ".join(decision.missing()),
                "info",
                "The payer expects these with the request: " + "; ".join(decision.missing()) + ".",
            )
        )
    if decision.quantity_over:
        cards.append(
            _card("Quantity over the payer's limit", "warning", decision.quantity_over.capitalize() + ".")
        )
    return cards
