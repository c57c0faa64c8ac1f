"""The console's metrics (`/console/metrics`): the pharmacist Measures over the trailing period, overall
and per pharmacist, each figure with a small server-drawn bar chart (gateway/pharmacist/bars.py).

The figures come from `$evaluate-measure` (MeasureService.evaluate) with the person's context, so the
same scope and reach checks apply as to a client's request: a role that may not read what a Measure
counts gets that Measure's refusal on the page, not figures. Only summaries are asked for: the page
names pharmacists, never a patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request
from markupsafe import Markup
from starlette.responses import Response

from gateway.auth.roles import Area
from gateway.exceptions import FhirError
from gateway.fhir import dates
from gateway.pharmacist import bars, figures
from gateway.transports.http.console.patient_view import person_name
from gateway.transports.http.console.render import render
from gateway.transports.http.console.session import Caller, caller_of
from gateway.transports.http.measure_routes import measures_of

router = APIRouter(prefix="/console", include_in_schema=False)

SNOMED_PHARMACIST = "http://snomed.info/sct|46255001"
MAX_PHARMACISTS = 25  # each costs one evaluation per Measure; a larger pharmacy reads the FHIR reports


@dataclass(frozen=True, slots=True)
class Figure:
    measure: str
    group: str
    label: str
    unit: str  # "%" (a proportion, shown as a percentage) or "h"


FIGURES = (
    Figure("pdc", "adherent", "Adherent patients (PDC >= 80 %)", "%"),
    Figure("pdc", "pdc", "Mean PDC", "%"),
    Figure("time-to-first-dose", "time-to-first-dose", "Time to first dose (median)", "h"),
    Figure("pa-turnaround", "decided-on-time", "PA decided on time", "%"),
    Figure("pa-turnaround", "turnaround", "PA turnaround (median)", "h"),
    Figure("alert-response", "acknowledge", "Alert time to acknowledge (median)", "h"),
    Figure("alert-response", "resolve", "Alert time to resolve (median)", "h"),
)
MEASURES = tuple(dict.fromkeys(f.measure for f in FIGURES))


async def pharmacists(caller: Caller) -> list[tuple[str, str]]:
    """(Practitioner id, name) of the active pharmacist PractitionerRoles, read with the person's context."""
    params = [
        ("code", SNOMED_PHARMACIST),
        ("active", "true"),
        ("_include", "PractitionerRole:practitioner"),
        ("_count", str(MAX_PHARMACISTS)),
    ]
    found = await caller.gateway.fhir.search(caller.ctx, "PractitionerRole", params)
    bundle = orjson.loads(found.body or b"{}")
    named: dict[str, str] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Practitioner":
            named[str(resource.get("id"))] = person_name(resource) or f"Practitioner/{resource.get('id')}"
    return sorted(named.items(), key=lambda item: (item[1], item[0]))[:MAX_PHARMACISTS]


async def evaluate(
    request: Request, caller: Caller, measure: str, period: tuple[str, str], subject: str | None
) -> dict[str, float | None] | str:
    """The group scores of one summary report, or why it was refused."""
    params = [("periodStart", period[0]), ("periodEnd", period[1]), ("reportType", "population")]
    if subject:
        params.append(("subject", subject))
    try:
        found = await measures_of(request.app).evaluate(caller.ctx, measure, params)
    except FhirError as exc:
        return "; ".join(i.diagnostics for i in exc.issues if i.is_error) or str(exc)
    return figures.scores(orjson.loads(found.body or b"{}"))


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    caller = await caller_of(request)
    if not caller.reaches(Area.METRICS):
        message = {"message": "Metrics are not part of this user's role."}
        return render(request, caller, "refused.html", "Refused", message, 403)
    today = dates.from_us(dates.now_us()).date()
    days = caller.gateway.settings.measures_period_days
    period = ((today - timedelta(days=days - 1)).isoformat(), today.isoformat())
    overall = {m: await evaluate(request, caller, m, period, None) for m in MEASURES}
    people: list[tuple[str, str]] = []
    if any(isinstance(v, dict) for v in overall.values()) and caller.ctx.can("PractitionerRole", "s"):
        people = await pharmacists(caller)
    per_person = {
        pid: {m: await evaluate(request, caller, m, period, f"Practitioner/{pid}") for m in MEASURES}
        for pid, _ in people
    }
    values = {
        "period": period,
        "refused": sorted({v for v in overall.values() if isinstance(v, str)}),
        "figures": [_figure_view(f, overall, per_person, people) for f in FIGURES],
        "pharmacists": [name for _, name in people],
    }
    return render(request, caller, "metrics.html", "Metrics", values)


def _figure_view(
    figure: Figure,
    overall: dict[str, dict[str, float | None] | str],
    per_person: dict[str, dict[str, dict[str, float | None] | str]],
    people: list[tuple[str, str]],
) -> dict[str, Any]:
    rows = [("All patients", _value(figure, overall))]
    rows += [(name, _value(figure, per_person[pid])) for pid, name in people]
    available = isinstance(overall.get(figure.measure), dict)
    scale = 100.0 if figure.unit == "%" else None  # a proportion's bar is out of 100 %
    return {
        "label": figure.label,
        "measure": figure.measure,
        "group": figure.group,
        "available": available,
        "rows": [(label, bars.value_text(value, figure.unit)) for label, value in rows],
        "chart": Markup(bars.bar_chart(figure.label, rows, figure.unit, scale)) if available else None,
    }


def _value(figure: Figure, found: dict[str, dict[str, float | None] | str]) -> float | None:
    scores = found.get(figure.measure)
    value = scores.get(figure.group) if isinstance(scores, dict) else None
    if value is None:
        return None
    return value * 100 if figure.unit == "%" else value
