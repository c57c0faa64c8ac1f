"""The console's patient page: the header (identifiers, language, state, care team, active orders, PA
states with expiry, PDC), the monitored labs as charts against their thresholds, the interaction form
and the timeline.

Everything is read through the FHIR service with the person's context: a patient outside their reach is
"not found" (the same 404 as one that does not exist), and the request's AuditEvent names the person's
Practitioner as agent and the Patient as entity, so every page opened is in the audit trail.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.exceptions import FhirError, Gone, NotFound
from gateway.fhir import dates
from gateway.mapping.monitoring import DrugLabRule
from gateway.pharmacist.charts import render_lab_chart
from gateway.pharmacist.timeline import INTERVENTION_DISPLAY
from gateway.pharmacist.worklist import PA_TASK_CODES, PDC_DAYS
from gateway.routing.labs import WITHDRAWN_STATUSES, ordered_rules
from gateway.service.pharmacist.timeline import PatientTimeline
from gateway.transports.http.console import patient_view as view
from gateway.transports.http.console.render import render
from gateway.transports.http.console.session import Caller, caller_of
from gateway.transports.http.console.worklist_pages import DONE
from gateway.types import JSON

router = APIRouter(prefix="/console", include_in_schema=False)

TASK_TYPE = "https://specialty-gateway.org/fhir/CodeSystem/task-type"
TIMELINE_ENTRIES = 100


async def _search(caller: Caller, rtype: str, params: list[tuple[str, str]]) -> list[JSON]:
    """One page of up to the server's maximum, as the person may see it (types they may not read: none)."""
    if not caller.ctx.can(rtype, "s"):
        return []
    found = await caller.gateway.fhir.search(
        caller.ctx, rtype, [*params, ("_count", str(caller.gateway.fhir.max_count))]
    )
    bundle = orjson.loads(found.body or b"{}")
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == "match" and "resource" in e
    ]


async def _by_id(caller: Caller, rtype: str, references: set[str]) -> dict[str, JSON]:
    ids = sorted(r.split("/", 1)[1] for r in references if r.startswith(f"{rtype}/"))
    if not ids:
        return {}
    return {f"{rtype}/{r['id']}": r for r in await _search(caller, rtype, [("_id", ",".join(ids))])}


def _refs(resources: list[JSON], key: str) -> set[str]:
    return {
        ref
        for r in resources
        if isinstance(r.get(key), dict) and isinstance(ref := r[key].get("reference"), str)
    }


def _member_name(reference: str, practitioners: dict[str, JSON], roles: dict[str, JSON]) -> str:
    """A care team member as a person reads it: the pharmacist's name (a role: its Practitioner's)."""
    role = roles.get(reference)
    person = reference
    if role is not None:
        person = next(iter(_refs([role], "practitioner")), reference)
    found = practitioners.get(person)
    name = view.person_name(found) if found is not None else None
    return f"{name} ({reference})" if name else reference


@router.get("/patients/{patient_id}")
async def patient_page(patient_id: str, request: Request) -> Response:
    caller = await caller_of(request)
    values = await _values(request, caller, patient_id)
    if isinstance(values, Response):
        return values
    return render(request, caller, "patient.html", values["header"].name, values)


@router.get("/patients/{patient_id}/live")
async def patient_fragment(patient_id: str, request: Request) -> Response:
    """The page's body alone, for its live update (a new result redraws the chart)."""
    caller = await caller_of(request)
    values = await _values(request, caller, patient_id)
    if isinstance(values, Response):
        return values
    return render(request, caller, "patient_fragment.html", values["header"].name, values)


async def _values(request: Request, caller: Caller, patient_id: str) -> dict[str, Any] | Response:
    fhir = caller.gateway.fhir
    if caller.ctx.audit is not None:  # what the person opened, in their words (the reads below add the rest)
        caller.ctx.audit.operation = f"console: patient page of Patient/{patient_id[:64]}"
    try:
        read = await fhir.read(caller.ctx, "Patient", patient_id)
    except (NotFound, Gone):
        message = {"message": f"No patient Patient/{patient_id[:64]} among the patients you care for."}
        return render(request, caller, "refused.html", "Patient not found", message, 404)
    patient = orjson.loads(read.body or b"{}")
    now_us = dates.now_us()
    today = datetime.now(UTC).date()
    subject = f"Patient/{patient_id}"
    teams = await _search(caller, "CareTeam", [("patient", subject)])
    requests = await _search(caller, "MedicationRequest", [("patient", subject)])
    start = (today - timedelta(days=PDC_DAYS - 1)).isoformat()
    dispenses = await _search(
        caller, "MedicationDispense", [("patient", subject), ("whenhandedover", f"ge{start}")]
    )
    medications = await _by_id(caller, "Medication", _refs([*requests, *dispenses], "medicationReference"))
    pa_codes = ",".join(f"{TASK_TYPE}|{c}" for c in PA_TASK_CODES)
    tasks = await _search(caller, "Task", [("patient", subject), ("code", pa_codes)])
    rules = caller.gateway.subscriptions.rules
    applied: dict[str, DrugLabRule] = {}
    for request_ in requests:
        if request_.get("status") == "active":
            applied.update((r.id, r) for r in ordered_rules(request_, rules, medications))
    codes = sorted({f"{c.system}|{c.code}" for r in applied.values() for c in r.labs})
    observations = (
        await _search(caller, "Observation", [("patient", subject), ("code", ",".join(codes))])
        if codes
        else []
    )
    members = view.care_team(teams, now_us)
    roles = await _by_id(caller, "PractitionerRole", set(members))
    practitioners = await _by_id(
        caller, "Practitioner", set(members) | _refs(list(roles.values()), "practitioner")
    )
    charts = []
    for number, spec in enumerate(view.chart_specs(observations, list(applied.values()), WITHDRAWN_STATUSES)):
        svg = render_lab_chart(
            spec.name,
            spec.series,
            reference_range=spec.reference_range,
            thresholds=spec.thresholds,
            threshold_unit=spec.threshold_unit,
            threshold_factor=spec.threshold_factor,
            unit_factors=spec.unit_factors,
            chart_id=f"chart-{number}",
        )
        charts.append({"rule": spec.rule, "name": spec.name, "svg": svg, "count": len(spec.series)})
    timeline: dict[str, Any] = {"entries": []}
    try:
        answered = await PatientTimeline(fhir).run(
            caller.ctx, patient_id, [("_count", str(TIMELINE_ENTRIES))]
        )
        timeline = orjson.loads(answered.body or b"{}")
    except FhirError:
        timeline = {"entries": [], "unavailable": True}
    values = {
        "patient_id": patient_id,
        "header": view.header(patient),
        "care_team": [_member_name(m, practitioners, roles) for m in members],
        "orders": view.orders(requests, rules, medications),
        "prior_auths": view.prior_auths(tasks, today),
        "adherence": view.adherence(dispenses, medications, today),
        "charts": charts,
        "timeline": list(reversed(timeline.get("entries") or [])),
        "timeline_unavailable": bool(timeline.get("unavailable")),
        "done": DONE.get(request.query_params.get("done", "")),
        "interaction_kinds": INTERVENTION_DISPLAY,
        "can_record": bool(caller.person.practitioner) and caller.ctx.can("Communication", "c"),
    }
    return values
