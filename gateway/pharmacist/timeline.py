"""What a stored resource version says on a patient's timeline: its kind, its time and a one-line summary.

Pure: `gateway.service.pharmacist.timeline` reads the store and asks this module about each version.

- `medication-order`: MedicationRequest, at `authoredOn`;
- `dispense`: MedicationDispense, at `whenHandedOver`, else `whenPrepared`;
- `observation`: Observation, at `effective[x]` (a Period's start), else `issued`;
- `report`: DiagnosticReport, at `effective[x]`, else `issued`;
- `pa-task`: a Task coded from the gateway's `task-type` (prior authorization, renewal, appeal), one entry
  per version that changed `status` or `businessStatus` (the PA moves): the first version at
  `authoredOn`, later ones at `lastModified` when the version changed it, else when it was recorded;
- `payer-answer`: ClaimResponse, at `created`;
- `alert`: a Task coded from the gateway's `work-item-type` with a code other than `identity-review`
  and `unassigned-patient` (the alert work items), at `authoredOn`;
- `interaction`: Communication (pharmacist interventions), at `sent`, else `received`;
- `monitoring-due`: an activity of a monitoring calendar (CarePlan of category monitoring-calendar), at
  its due date: in the document, every activity due up to `DUE_AHEAD_DAYS` from today (the next labs
  owed, and what became of the past ones); on the live stream, the activity a calendar version changed
  (a result completed it, a hold moved it) or, for a new calendar, its first lab owed.

A resource without its clinical time is placed at when the gateway recorded it (`meta.lastUpdated`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from gateway.fhir import dates
from gateway.pa.tasks import SOURCES as PAYER_SOURCES
from gateway.pharmacist.calendar import is_calendar
from gateway.pharmacist.vocabulary import SEVERITY_OF

GATEWAY = "https://specialty-gateway.org/fhir"
TASK_TYPE = f"{GATEWAY}/CodeSystem/task-type"
WORK_ITEM_TYPE = f"{GATEWAY}/CodeSystem/work-item-type"
INTERVENTION_TYPE = f"{GATEWAY}/CodeSystem/intervention-type"
INTERVENTION_OUTCOME = f"{GATEWAY}/StructureDefinition/intervention-outcome"
NOT_ALERTS = frozenset({"identity-review", "unassigned-patient"})

# resource type -> the kinds it can give
KINDS: dict[str, tuple[str, ...]] = {
    "MedicationRequest": ("medication-order",),
    "MedicationDispense": ("dispense",),
    "Observation": ("observation",),
    "DiagnosticReport": ("report",),
    "Task": ("pa-task", "alert"),
    "ClaimResponse": ("payer-answer",),
    "Communication": ("interaction",),
    "CarePlan": ("monitoring-due",),
}
DUE_AHEAD_DAYS = 31
ALL_KINDS: tuple[str, ...] = (
    "medication-order",
    "dispense",
    "observation",
    "report",
    "pa-task",
    "payer-answer",
    "alert",
    "monitoring-due",
    "interaction",
)
SUMMARY_MAX = 200

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Moment:
    us: int  # for ordering
    text: str  # as written in the resource (or the recorded instant)


def _codes(concept: Any, system: str) -> list[str]:
    if not isinstance(concept, Mapping):
        return []
    return [
        str(c.get("code"))
        for c in concept.get("coding") or []
        if isinstance(c, Mapping) and c.get("system") == system and c.get("code")
    ]


def task_kind(task: JSON) -> str | None:
    """`pa-task`, `alert`, or None for Tasks that are not on the timeline."""
    if _codes(task.get("code"), TASK_TYPE):
        return "pa-task"
    work = _codes(task.get("code"), WORK_ITEM_TYPE)
    if work and not set(work) <= NOT_ALERTS:
        return "alert"
    return None


def kind_of(resource: JSON) -> str | None:
    rtype = resource.get("resourceType")
    if rtype == "Task":
        return task_kind(resource)
    if rtype == "CarePlan":
        return "monitoring-due" if is_calendar(resource) else None
    kinds = KINDS.get(str(rtype))
    return kinds[0] if kinds else None


def moment(value: Any) -> Moment | None:
    """The start of a FHIR date, dateTime, instant or Period; None when absent or unreadable."""
    if isinstance(value, Mapping):
        value = value.get("start") or value.get("end")
    if not isinstance(value, str) or not value:
        return None
    try:
        return Moment(dates.date_range(value)[0], value)
    except dates.DateFormatError:
        return None


def recorded(updated_us: int) -> Moment:
    return Moment(updated_us, dates.format_instant(updated_us))


def _first(resource: JSON, *names: str) -> Moment | None:
    for name in names:
        if name.endswith("[x]"):
            stem = name[:-3]
            for key, value in resource.items():
                if key.startswith(stem) and key[len(stem) : len(stem) + 1].isupper():
                    found = moment(value)
                    if found is not None:
                        return found
        else:
            found = moment(resource.get(name))
            if found is not None:
                return found
    return None


TIME_ELEMENTS: dict[str, tuple[str, ...]] = {
    "medication-order": ("authoredOn",),
    "dispense": ("whenHandedOver", "whenPrepared"),
    "observation": ("effective[x]", "issued"),
    "report": ("effective[x]", "issued"),
    "pa-task": ("authoredOn", "lastModified"),
    "payer-answer": ("created",),
    "alert": ("authoredOn", "lastModified"),
    "interaction": ("sent", "received"),
}


def time_of(kind: str, resource: JSON, updated_us: int) -> Moment:
    return _first(resource, *TIME_ELEMENTS.get(kind, ())) or recorded(updated_us)


def pa_move_time(version: JSON, previous: JSON | None, updated_us: int) -> Moment:
    """When a PA Task version happened: see the module's table."""
    if previous is None:
        return time_of("pa-task", version, updated_us)
    if version.get("lastModified") and version.get("lastModified") != previous.get("lastModified"):
        found = moment(version.get("lastModified"))
        if found is not None:
            return found
    return recorded(updated_us)


def is_pa_move(version: JSON, previous: JSON | None) -> bool:
    """The first version, or one whose status or businessStatus differs from the one before."""
    if previous is None:
        return True
    return version.get("status") != previous.get("status") or version.get("businessStatus") != previous.get(
        "businessStatus"
    )


# --- summaries ---------------------------------------------------------------------------------------


def concept_text(concept: Any) -> str | None:
    if not isinstance(concept, Mapping):
        return None
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, Mapping) and coding.get("display"):
            return str(coding["display"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, Mapping) and coding.get("code"):
            return str(coding["code"])
    return None


def _medication(resource: JSON) -> str:
    text = concept_text(resource.get("medicationCodeableConcept"))
    if text:
        return text
    reference = resource.get("medicationReference")
    if isinstance(reference, Mapping):
        return str(reference.get("display") or reference.get("reference") or "medication")
    return "medication"


def _quantity(value: Any) -> str | None:
    if not isinstance(value, Mapping) or value.get("value") is None:
        return None
    unit = value.get("unit") or value.get("code")
    return f"{value['value']} {unit}" if unit else str(value["value"])


INTERPRETATION = {
    "L": "low",
    "H": "high",
    "LL": "critically low",
    "HH": "critically high",
    "LU": "significantly low",
    "HU": "significantly high",
    "A": "abnormal",
    "AA": "critically abnormal",
    "N": "normal",
}


def _interpretation(resource: JSON) -> str | None:
    for concept in resource.get("interpretation") or []:
        if not isinstance(concept, Mapping):
            continue
        for coding in concept.get("coding") or []:
            if isinstance(coding, Mapping) and coding.get("code") in INTERPRETATION:
                return INTERPRETATION[str(coding["code"])]
        text = concept_text(concept)
        if text:
            return text
    return None


def _observation_value(resource: JSON) -> str | None:
    for key, value in resource.items():
        if not key.startswith("value"):
            continue
        if key == "valueQuantity":
            return _quantity(value)
        if key == "valueCodeableConcept":
            return concept_text(value)
        if key in ("valueString", "valueInteger", "valueBoolean", "valueDateTime", "valueTime"):
            return str(value)
    return None


def _with(text: str, *parts: str | None) -> str:
    extra = [p for p in parts if p]
    return f"{text} ({', '.join(extra)})" if extra else text


def _task_line(task: JSON, what: str) -> str:
    business = concept_text(task.get("businessStatus"))
    line = f"{what}: {task.get('status', 'unknown')}"
    return f"{line}, {business}" if business else line


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def summary(kind: str, resource: JSON) -> str:
    """One line saying what happened, from the resource alone."""
    if kind == "observation":
        name = concept_text(resource.get("code")) or "Observation"
        value = _observation_value(resource)
        line = f"{name} {value}" if value else name
        return _clip(_with(line, _interpretation(resource), _status_unless(resource, "final")))
    if kind == "medication-order":
        dose = next(
            (d.get("text") for d in resource.get("dosageInstruction") or [] if isinstance(d, Mapping)), None
        )
        return _clip(_with(f"Order: {_medication(resource)}", dose, resource.get("status")))
    if kind == "dispense":
        quantity = _quantity(resource.get("quantity"))
        return _clip(
            _with(f"Dispensed: {_medication(resource)}", quantity, _status_unless(resource, "completed"))
        )
    if kind == "report":
        name = concept_text(resource.get("code")) or "report"
        return _clip(_with(f"Report: {name}", resource.get("status"), resource.get("conclusion")))
    if kind == "pa-task":
        codes = _codes(resource.get("code"), TASK_TYPE)
        what = PA_DISPLAY.get(codes[0], codes[0]) if codes else "Prior authorization"
        return _clip(_task_line(resource, what))
    if kind == "alert":
        # The rule (alert-rule) says what fired; the work item's own type when there is none.
        what = concept_text(resource.get("reasonCode")) or concept_text(resource.get("code")) or "alert"
        severity = SEVERITY_OF.get(str(resource.get("priority")))
        mark = concept_text(resource.get("businessStatus"))
        return _clip(_with(f"Alert: {what}", severity, resource.get("status"), mark))
    if kind == "payer-answer":
        disposition = resource.get("disposition")
        return _clip(_with(f"Payer answer: {resource.get('outcome', 'unknown')}", disposition))
    if kind == "interaction":
        return _clip(_interaction(resource))
    return _clip(kind)


def _status_unless(resource: JSON, usual: str) -> str | None:
    status = resource.get("status")
    return str(status) if status and status != usual else None


def _interaction(resource: JSON) -> str:
    category = next(
        (
            INTERVENTION_DISPLAY.get(code)
            for c in resource.get("category") or []
            for code in _codes(c, INTERVENTION_TYPE)
        ),
        None,
    ) or next((concept_text(c) for c in resource.get("category") or [] if concept_text(c)), None)
    said = next(
        (
            str(p["contentString"])
            for p in resource.get("payload") or []
            if isinstance(p, Mapping) and p.get("contentString")
        ),
        None,
    )
    outcome = next(
        (
            concept_text(e.get("valueCodeableConcept"))
            for e in resource.get("extension") or []
            if isinstance(e, Mapping) and e.get("url") == INTERVENTION_OUTCOME
        ),
        None,
    )
    line = category or "Communication"
    if said:
        line = f"{line}: {said}"
    return f"{line} (outcome: {outcome})" if outcome else line


# --- sources -----------------------------------------------------------------------------------------

HL7_SENDER = "HL7 v2 sender "
PA_DISPLAY = {
    "prior-authorization": "Prior authorization",
    "prior-authorization-renewal": "Prior authorization renewal",
    "prior-authorization-appeal": "Prior authorization appeal",
}
INTERVENTION_DISPLAY = {
    "call": "Call",
    "prescriber-message": "Message to the prescriber",
    "patient-education": "Patient education",
    "adherence-barrier": "Adherence barrier",
}


def source_from_provenance(provenance: JSON) -> JSON:
    """`{"system", "kind"}` from a Provenance: the HL7 v2 pipeline's (kind `hl7v2`, system the sender's
    MSH-3 / MSH-4), a payer answer's (kind `payer`, system the payer's reference or "payer"), any other
    (kind `provenance`, system its first agent)."""
    whos = [a.get("who") for a in provenance.get("agent") or [] if isinstance(a, Mapping)]
    who = next((w for w in whos if isinstance(w, Mapping)), {})
    named = str(who.get("display") or who.get("reference") or "unknown")
    if named.startswith(HL7_SENDER):
        return {"system": named[len(HL7_SENDER) :], "kind": "hl7v2"}
    entities = [
        e.get("what", {}).get("display")
        for e in provenance.get("entity") or []
        if isinstance(e, Mapping) and isinstance(e.get("what"), Mapping)
    ]
    if any(d in PAYER_SOURCES.values() for d in entities):
        return {"system": str(who.get("reference") or who.get("display") or "payer"), "kind": "payer"}
    return {"system": named, "kind": "provenance"}


def source_from_meta(resource: JSON) -> JSON:
    """A REST write without Provenance: the client said where it came from in `meta.source`, or not."""
    meta = resource.get("meta")
    said = meta.get("source") if isinstance(meta, Mapping) else None
    return {"system": str(said) if said else None, "kind": "fhir-client"}


# --- monitoring calendars ---------------------------------------------------------------------------------


def _activity_detail(resource: JSON, index: int) -> JSON:
    activities = resource.get("activity") or []
    item = activities[index] if 0 <= index < len(activities) else {}
    detail = item.get("detail") if isinstance(item, Mapping) else None
    return dict(detail) if isinstance(detail, Mapping) else {}


def _due_of(detail: JSON) -> Moment | None:
    period = detail.get("scheduledPeriod")
    return moment(period.get("start")) if isinstance(period, Mapping) else None


def activity_summary(resource: JSON, index: int, today: date) -> str:
    """`Lab due: clozapine monitoring lab #3 (completed)`; `overdue` for a scheduled one past its last day."""
    detail = _activity_detail(resource, index)
    what = str(detail.get("description") or concept_text(detail.get("code")) or "monitoring lab")
    status = str(detail.get("status") or "unknown")
    period = detail.get("scheduledPeriod")
    last = str(period.get("end") or "")[:10] if isinstance(period, Mapping) else ""
    if status == "scheduled" and last and last < today.isoformat():
        status = "overdue"
    return _clip(f"Lab due: {what} ({status})")


def calendar_entries(resource: JSON, today: date) -> list[tuple[int, Moment]]:
    """(activity index, due) of the activities the timeline document shows: due up to DUE_AHEAD_DAYS ahead."""
    horizon = (today + timedelta(days=DUE_AHEAD_DAYS)).isoformat()
    found = []
    for index in range(len(resource.get("activity") or [])):
        due = _due_of(_activity_detail(resource, index))
        if due is not None and due.text[:10] <= horizon:
            found.append((index, due))
    return found


def changed_activity(resource: JSON, previous: JSON | None) -> int | None:
    """The activity a calendar version changed (status or due date), the first owed one of a new calendar;
    None when the version changed no activity."""
    count = len(resource.get("activity") or [])
    if previous is None:
        return next(
            (n for n in range(count) if _activity_detail(resource, n).get("status") == "scheduled"),
            0 if count else None,
        )
    for n in range(count):
        now, before = _activity_detail(resource, n), _activity_detail(previous, n)
        if (now.get("status"), now.get("scheduledPeriod")) != (
            before.get("status"),
            before.get("scheduledPeriod"),
        ):
            return n
    return None


def due_moment(resource: JSON, index: int) -> Moment | None:
    return _due_of(_activity_detail(resource, index))
