"""The monitoring calendar as a FHIR CarePlan, and back: `gateway.pharmacist.schedule` works out the dates,
this module writes them down and reads them again. Pure.

One CarePlan per MedicationRequest and drug-lab rule with a schedule (README, "Monitoring calendar"):
- `category` care-plan-category#monitoring-calendar, `supportingInfo` the MedicationRequest, `subject`
  the Patient, `period.start` the therapy start the phases count from, `status` active, on-hold (the
  order is held; the `monitoring-calendar` extension's `heldOn` says since when), revoked (stopped) or
  completed;
- one `activity` per scheduled lab, in order, never removed: `detail.code` the rule's labs,
  `detail.reasonCode` the rule (alert-rule), `detail.status` scheduled | on-hold | completed | cancelled,
  `detail.scheduledPeriod` {start: the due date, end: the last day a result counts}, the
  `monitoring-activity` extension's `windowStart` (the first day a result counts) and `satisfiedOn`, and
  the result that completed it in `outcomeReference`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date
from typing import Any

from gateway.mapping.monitoring import Code, DrugLabRule
from gateway.pharmacist.schedule import Activity, Status
from gateway.pharmacist.vocabulary import (
    ALERT_RULE,
    CARE_PLAN_CATEGORY,
    GATEWAY,
    MONITORING_CALENDAR,
    has_category,
)

JSON = dict[str, Any]
CALENDAR_EXTENSION = f"{GATEWAY}/StructureDefinition/monitoring-calendar"
ACTIVITY_EXTENSION = f"{GATEWAY}/StructureDefinition/monitoring-activity"
STATUSES: frozenset[str] = frozenset({"scheduled", "on-hold", "completed", "cancelled"})


def calendar_id(request_id: str, rule_id: str) -> str:
    digest = hashlib.sha256(f"monitoring|{request_id}|{rule_id}".encode()).hexdigest()
    return f"monitoring-{digest[:40]}"


def _coding(code: Code) -> JSON:
    return {"system": code.system, "code": code.code}


def _activity_json(activity: Activity, outcome: str | None, rule: DrugLabRule) -> JSON:
    window: list[JSON] = [{"url": "windowStart", "valueDate": activity.window_start.isoformat()}]
    if activity.satisfied_on is not None:
        window.append({"url": "satisfiedOn", "valueDate": activity.satisfied_on.isoformat()})
    label = "baseline" if activity.sequence == 0 else f"#{activity.sequence}"
    detail: JSON = {
        "extension": [{"url": ACTIVITY_EXTENSION, "extension": window}],
        "kind": "ServiceRequest",
        "code": {"coding": [_coding(lab) for lab in activity.labs], "text": f"{rule.drug} monitoring lab"},
        "reasonCode": [{"coding": [{"system": ALERT_RULE, "code": activity.rule_id}]}],
        "status": activity.status,
        "doNotPerform": False,
        "scheduledPeriod": {"start": activity.due.isoformat(), "end": activity.late_after.isoformat()},
        "description": f"{rule.drug} monitoring lab {label}",
    }
    item: JSON = {"detail": detail}
    if outcome is not None:
        item["outcomeReference"] = [{"reference": outcome}]
    return item


def care_plan(
    plan_id: str,
    rule: DrugLabRule,
    activities: Sequence[Activity],
    *,
    patient: str,
    request: str,
    start: date,
    status: str = "active",
    held_on: date | None = None,
    outcomes: dict[int, str] | None = None,
) -> JSON:
    """The CarePlan for these activities (`outcomes`: activity index -> the result that completed it)."""
    outcomes = outcomes or {}
    schedule_source = rule.schedule.source if rule.schedule else ""
    resource: JSON = {
        "resourceType": "CarePlan",
        "id": plan_id,
        "status": status,
        "intent": "plan",
        "category": [
            {
                "coding": [
                    {
                        "system": CARE_PLAN_CATEGORY,
                        "code": MONITORING_CALENDAR,
                        "display": "Monitoring calendar",
                    }
                ]
            }
        ],
        "title": f"{rule.drug} lab monitoring ({rule.id})",
        "description": schedule_source or f"Monitoring labs for {rule.drug}",
        "subject": {"reference": patient},
        "period": {"start": start.isoformat()},
        "supportingInfo": [{"reference": request}],
        "activity": [_activity_json(a, outcomes.get(n), rule) for n, a in enumerate(activities)],
    }
    calendar: list[JSON] = [{"url": "rule", "valueCode": rule.id}]
    if held_on is not None:
        calendar.append({"url": "heldOn", "valueDate": held_on.isoformat()})
    resource["extension"] = [{"url": CALENDAR_EXTENSION, "extension": calendar}]
    return resource


def _date(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def _parts(element: JSON, url: str) -> dict[str, Any]:
    for extension in element.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == url:
            return {
                str(part.get("url")): next((v for k, v in part.items() if k.startswith("value")), None)
                for part in extension.get("extension") or []
                if isinstance(part, dict)
            }
    return {}


def is_calendar(resource: JSON) -> bool:
    return has_category(resource, CARE_PLAN_CATEGORY, MONITORING_CALENDAR)


def rule_of(resource: JSON) -> str | None:
    value = _parts(resource, CALENDAR_EXTENSION).get("rule")
    return str(value) if value else None


def held_on(resource: JSON) -> date | None:
    return _date(_parts(resource, CALENDAR_EXTENSION).get("heldOn"))


def request_of(resource: JSON) -> str | None:
    for info in resource.get("supportingInfo") or []:
        reference = info.get("reference") if isinstance(info, dict) else None
        if isinstance(reference, str) and reference.startswith("MedicationRequest/"):
            return reference
    return None


def read_activities(resource: JSON, rule: DrugLabRule) -> tuple[tuple[Activity, ...], dict[int, str]]:
    """The activities a CarePlan holds (in order) and the results that completed them, by index. A
    malformed activity (edited by hand) is read as cancelled, so it is never overdue nor completed."""
    activities: list[Activity] = []
    outcomes: dict[int, str] = {}
    for n, item in enumerate(resource.get("activity") or []):
        detail = item.get("detail") if isinstance(item, dict) else None
        detail = detail if isinstance(detail, dict) else {}
        period = detail.get("scheduledPeriod")
        period = period if isinstance(period, dict) else {}
        due, end = _date(period.get("start")), _date(period.get("end"))
        window = _parts(detail, ACTIVITY_EXTENSION)
        status: Status = "cancelled"
        if due is not None and end is not None and detail.get("status") in STATUSES:
            status = detail["status"]
        else:  # unreadable: never owed
            due = end = due or end or date.min
        activities.append(
            Activity(
                rule.id,
                n if rule.schedule is not None and rule.schedule.baseline else n + 1,
                rule.labs,
                due,
                _date(window.get("windowStart")) or due,
                max((end - due).days, 0),
                status,
                _date(window.get("satisfiedOn")),
            )
        )
        for reference in item.get("outcomeReference") or []:
            if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
                outcomes[n] = reference["reference"]
    return tuple(activities), outcomes
