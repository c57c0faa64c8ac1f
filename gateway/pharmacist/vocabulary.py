"""The codes and shapes of the pharmacist's work items, shared by the code that writes them and the code that
reads them (timeline, worklist, metrics). Defined in `profiles/` (CodeSystems) and the README.

Alert Task (one per Observation and rule; `gateway.pharmacist.alerts` works out which):
    code        work-item-type#alert
    status      ready -> accepted -> in-progress -> completed (or cancelled, entered-in-error)
    priority    from the severity: critical stat, high asap, moderate urgent, low routine
    focus       the Observation;  for  the Patient;  basedOn  the MedicationRequest of a drug-lab rule
    reasonCode  alert-rule#<drug-lab rule id> | #critical-value | #abnormal-result
    owner       the patient's pharmacist (the PractitionerRole of the pharmacist-assignment CareTeam)
    businessStatus  alert-mark#corrected | #back-to-normal | #escalated (the latest mark)
    No result value is written into the Task: whoever may read Tasks but not Observations learns nothing.

Lab-overdue Task (one per monitoring CarePlan activity missed):
    code        work-item-type#lab-overdue;  focus  the CarePlan;  basedOn  the MedicationRequest
    reasonCode  alert-rule#<drug-lab rule id>;  input  the activity's lab and due date

Monitoring CarePlan (one per active specialty MedicationRequest and drug-lab rule with a schedule):
    category    care-plan-category#monitoring-calendar;  supportingInfo  the MedicationRequest
    activity.detail: kind ServiceRequest, code the rule's labs, status scheduled | on-hold | completed |
    cancelled, scheduledPeriod {start: due date, end: the last day a result counts (due + grace)},
    the result that completed it in activity.outcomeReference.
"""

from __future__ import annotations

from typing import Final

GATEWAY: Final = "https://specialty-gateway.org/fhir"
WORK_ITEM_TYPE: Final = f"{GATEWAY}/CodeSystem/work-item-type"
ALERT_RULE: Final = f"{GATEWAY}/CodeSystem/alert-rule"
ALERT_MARK: Final = f"{GATEWAY}/CodeSystem/alert-mark"
CARE_PLAN_CATEGORY: Final = f"{GATEWAY}/CodeSystem/care-plan-category"

ALERT: Final = "alert"
LAB_OVERDUE: Final = "lab-overdue"
MONITORING_CALENDAR: Final = "monitoring-calendar"

CRITICAL_VALUE: Final = "critical-value"  # alert-rule: a critical value with no drug-lab rule about it
ABNORMAL_RESULT: Final = "abnormal-result"  # alert-rule: abnormal, no critical value, no drug-lab rule

CORRECTED: Final = "corrected"
BACK_TO_NORMAL: Final = "back-to-normal"
ESCALATED: Final = "escalated"

# Task.priority (request-priority) of each severity, and back.
PRIORITY_OF: Final = {"critical": "stat", "high": "asap", "moderate": "urgent", "low": "routine"}
SEVERITY_OF: Final = {priority: severity for severity, priority in PRIORITY_OF.items()}

OPEN_STATUSES: Final = frozenset({"requested", "received", "ready", "accepted", "in-progress", "on-hold"})


def has_category(resource: dict[str, object], system: str, code: str) -> bool:
    """Whether one of the resource's `category` concepts holds this coding (what a token search on
    `category` with `system|code` finds)."""
    concepts = resource.get("category")
    return isinstance(concepts, list) and any(
        isinstance(coding, dict) and coding.get("system") == system and coding.get("code") == code
        for concept in concepts
        if isinstance(concept, dict)
        for coding in concept.get("coding") or []
    )
