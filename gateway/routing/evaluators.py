"""Whether a write fires a topic, and what the event says: one pure function per topic evaluator.

Each evaluator sees the change (previous and current version; None for a creation or deletion) and
returns the events it fires: usually none or one; a monitoring topic may fire one per drug rule. An event
may add filter keys (e.g. the monitored drug) and details that the notification carries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.fhir.dates import date_range, format_instant
from gateway.fhir.demographics import is_identity_review
from gateway.fhir.extract import IndexRows
from gateway.mapping.monitoring import MonitoringRules
from gateway.pa.lifecycle import APPROVED, AWAITING_PAYER
from gateway.pa.tasks import due as due_date
from gateway.pa.tasks import is_pa_task
from gateway.routing import labs
from gateway.routing.filters import token_keys
from gateway.types import JSON

_VALUE_ELEMENTS = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "interpretation",
    "status",
    "referenceRange",
)


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write: the version before (None for a creation) and after (None for a deletion)."""

    type: str
    id: str
    version: int
    previous: JSON | None
    current: JSON | None
    index: IndexRows | None = None

    @property
    def interaction(self) -> str:
        if self.current is None:
            return "delete"
        return "create" if self.previous is None else "update"

    @property
    def patient(self) -> str | None:
        """The `Patient/id` the resource is about, from its search index."""
        if self.index is None:
            return None
        for parameter, target_type, target_id in sorted(self.index.references):
            if parameter == "patient" and target_type == "Patient":
                return f"Patient/{target_id}"
        return None


@dataclass(frozen=True, slots=True)
class Fired:
    """An event a change fires: details for the notification and extra keys for filters."""

    details: JSON | None = None
    keys: frozenset[str] = frozenset()


@dataclass
class EvaluationContext:
    """What evaluators may consult besides the change: rules, and data the service fetched for them."""

    rules: MonitoringRules
    # Active MedicationRequests (and Medications they reference) by `Patient/id`, fetched only when a
    # medication-monitoring subscription exists and the batch holds Observations.
    active_requests: Mapping[str, Sequence[JSON]] = field(default_factory=dict)
    medications: Mapping[str, JSON] = field(default_factory=dict)
    # Timer-driven topics: the time of the run and how far ahead it looks.
    now_us: int | None = None
    window_us: int = 0


Evaluator = Callable[[Change, EvaluationContext], list[Fired]]


def _became(change: Change, predicate: Callable[[JSON], bool]) -> bool:
    if change.current is None or not predicate(change.current):
        return False
    return change.previous is None or not predicate(change.previous)


def abnormal_lab_result(change: Change, _: EvaluationContext) -> list[Fired]:
    return [Fired()] if _became(change, labs.is_abnormal) else []


def critical_lab_result(change: Change, context: EvaluationContext) -> list[Fired]:
    current = change.current
    if current is None:
        return []
    reasons = labs.critical_reasons(current, context.rules)
    if not reasons:
        return []
    if change.previous is not None and labs.critical_reasons(change.previous, context.rules):
        return []
    return [Fired({"reason": "; ".join(reasons)})]


def _value_changed(change: Change) -> bool:
    if change.previous is None:
        return True
    assert change.current is not None
    return any(change.previous.get(k) != change.current.get(k) for k in _VALUE_ELEMENTS)


def medication_monitoring(change: Change, context: EvaluationContext) -> list[Fired]:
    if change.current is None or not _value_changed(change):
        return []
    patient = change.patient
    requests = context.active_requests.get(patient, ()) if patient else ()
    if not requests:
        return []
    fired: list[Fired] = []
    for alert in labs.monitoring_alerts(
        change.current, list(requests), context.rules, dict(context.medications)
    ):
        keys = {f"medication={labs_rule_key(alert.rule_id)}"}
        for system, code in alert.medication_codes:
            keys.update(token_keys("medication", system, code))
        details: JSON = {
            "rule": alert.rule_id,
            "drug": alert.drug,
            "lab": alert.lab_code,
            "value": alert.value,
            "unit": alert.unit,
            "band": alert.band,
            "severity": alert.severity,
            "action": alert.action,
            "source": alert.source,
            "context": [f"MedicationRequest/{alert.medication_request_id}"],
        }
        fired.append(Fired(details, frozenset(keys)))
    return fired


def labs_rule_key(rule_id: str) -> str:
    """Filter key for a rule id (`medication=clozapine-anc` matches an alert of that rule)."""
    return f"*|{rule_id}"


def _medication_keys(resource: JSON, medications: Mapping[str, JSON] | None = None) -> frozenset[str]:
    """Filter keys for an order's drug: its codes (`medication=` and `code=`), and the Medication it
    references, whose codes count as the order's own (compound orders reference one)."""
    keys: set[str] = set()
    concept = resource.get("medicationCodeableConcept")
    reference = resource.get("medicationReference")
    if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
        keys.add(f"medication={reference['reference']}")
        medication = (medications or {}).get(reference["reference"])
        if medication is not None and concept is None:
            concept = medication.get("code")
    if isinstance(concept, dict):
        for coding in concept.get("coding", []):
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                keys.update(token_keys("medication", coding.get("system"), coding["code"]))
                if reference is not None:
                    keys.update(token_keys("code", coding.get("system"), coding["code"]))
    return frozenset(keys)


def medication_order(change: Change, context: EvaluationContext) -> list[Fired]:
    current, previous = change.current, change.previous
    if current is None:
        return []
    if previous is not None and previous.get("status") == current.get("status"):
        return []
    return [
        Fired(
            {"status": current.get("status"), "previousStatus": (previous or {}).get("status")},
            _medication_keys(current, context.medications),
        )
    ]


def _business_status(task: JSON) -> str | None:
    concept = task.get("businessStatus")
    if not isinstance(concept, dict):
        return None
    codes = [c.get("code") for c in concept.get("coding", []) if isinstance(c, dict)]
    return codes[0] if codes else concept.get("text")


def pa_status_changed(change: Change, context: EvaluationContext) -> list[Fired]:
    current, previous = change.current, change.previous
    if current is None or not is_pa_task(current):
        return []
    status, business = current.get("status"), _business_status(current)
    if previous is not None and previous.get("status") == status and _business_status(previous) == business:
        return []
    details: JSON = {
        "status": status,
        "businessStatus": business,
        "previousStatus": (previous or {}).get("status"),
        "previousBusinessStatus": _business_status(previous) if previous else None,
    }
    return [Fired(details, pa_medication_keys(current, context))]


def pa_medication_keys(task: JSON, context: EvaluationContext) -> frozenset[str]:
    """Filter keys for the medication of the MedicationRequest a PA Task is about, when it is at hand."""
    focus = task.get("focus", {}).get("reference") if isinstance(task.get("focus"), dict) else None
    request = context.medications.get(focus) if isinstance(focus, str) else None
    return _medication_keys(request) if request else frozenset()


def authorization_end_us(task: JSON) -> int | None:
    """The end of the authorized period (`Task.restriction.period.end`), as the last microsecond it covers."""
    restriction = task.get("restriction")
    period = restriction.get("period") if isinstance(restriction, dict) else None
    end = period.get("end") if isinstance(period, dict) else None
    if not isinstance(end, str):
        return None
    try:
        return date_range(end)[1]
    except ValueError:
        return None


def pa_expiring(change: Change, context: EvaluationContext) -> list[Fired]:
    """An approved PA Task whose authorization ends within the window (from `context.now_us`).

    Writes never fire it (the topic has no resource trigger); the service's timer calls it.
    """
    task = change.current
    if task is None or not is_pa_task(task) or _business_status(task) not in APPROVED:
        return []
    end = authorization_end_us(task)
    if (
        end is None
        or context.now_us is None
        or not context.now_us <= end <= context.now_us + context.window_us
    ):
        return []
    days_left = (end - context.now_us) // 86_400_000_000
    details: JSON = {
        "businessStatus": _business_status(task),
        "periodEnd": format_instant(end),
        "daysLeft": days_left,
    }
    return [Fired(details, pa_medication_keys(task, context))]


def pa_overdue(change: Change, context: EvaluationContext) -> list[Fired]:
    """A PA Task still waiting on the payer after its decision due date (`pa-decision-due`).

    Like pa-expiring, a timer calls it (once per Task and due date), never a write.
    """
    task = change.current
    if task is None or not is_pa_task(task) or _business_status(task) not in AWAITING_PAYER:
        return []
    due = due_date(task)
    try:
        due_us = date_range(due)[0] if isinstance(due, str) else None
    except ValueError:
        due_us = None
    if due_us is None or context.now_us is None or due_us >= context.now_us:
        return []
    details: JSON = {
        "businessStatus": _business_status(task),
        "due": due,
        "hoursOverdue": (context.now_us - due_us) // 3_600_000_000,
        "priority": task.get("priority", "routine"),
    }
    return [Fired(details, pa_medication_keys(task, context))]


def patient_identity_conflict(change: Change, _: EvaluationContext) -> list[Fired]:
    """An identity-review Task opened, reopened, or given another conflicting message."""
    current, previous = change.current, change.previous
    if current is None or not is_identity_review(current):
        return []
    inputs = len(current.get("input") or [])
    if previous is not None:
        grew = inputs > len(previous.get("input") or [])
        reopened = current.get("status") == "requested" and previous.get("status") != "requested"
        if not (grew or reopened):
            return []
    reason: JSON = current["reasonCode"] if isinstance(current.get("reasonCode"), dict) else {}
    details: JSON = {"status": current.get("status"), "reason": reason.get("text"), "messages": str(inputs)}
    return [Fired(details)]


WORK_ITEM_TYPE = "https://specialty-gateway.org/fhir/CodeSystem/work-item-type"
ALERT_CODES = frozenset({"alert", "lab-overdue"})
_ALERT_ELEMENTS = ("status", "owner", "priority", "businessStatus")


def _alert_kind(task: JSON) -> str | None:
    concept = task.get("code")
    for coding in concept.get("coding") or [] if isinstance(concept, dict) else []:
        if (
            isinstance(coding, dict)
            and coding.get("system") == WORK_ITEM_TYPE
            and coding.get("code") in ALERT_CODES
        ):
            return str(coding["code"])
    return None


def alert_changed(change: Change, _: EvaluationContext) -> list[Fired]:
    """An alert work item opened, or its status, owner, priority or mark changed."""
    current, previous = change.current, change.previous
    kind = _alert_kind(current) if current is not None else None
    if current is None or kind is None:
        return []
    if previous is not None and all(previous.get(k) == current.get(k) for k in _ALERT_ELEMENTS):
        return []
    owner = current.get("owner")
    details: JSON = {
        "kind": kind,
        "status": current.get("status"),
        "previousStatus": (previous or {}).get("status"),
        "priority": current.get("priority"),
        "mark": _business_status(current),
        "owner": owner.get("reference") if isinstance(owner, dict) else None,
    }
    return [Fired(details)]


def monitoring_overdue(change: Change, _: EvaluationContext) -> list[Fired]:
    """A lab-overdue Task opened (the monitoring sweep creates each once)."""
    current = change.current
    if current is None or change.previous is not None or _alert_kind(current) != "lab-overdue":
        return []
    inputs = {
        str((i.get("type") or {}).get("text")): i for i in current.get("input") or [] if isinstance(i, dict)
    }
    details: JSON = {
        "due": (inputs.get("due") or {}).get("valueDate"),
        "rule": ((current.get("reasonCode") or {}).get("coding") or [{}])[0].get("code"),
        "priority": current.get("priority"),
    }
    return [Fired(details)]


def resource_written(change: Change, _: EvaluationContext) -> list[Fired]:
    """Every new version, deletions included (forwarding to an upstream, gateway/ehr/forward.py: the
    deletion's event names the deletion version; the forwarder reads the one before for its identifier)."""
    return [Fired()]


EVALUATORS: dict[str, Evaluator] = {
    "resource-written": resource_written,
    "alert-changed": alert_changed,
    "monitoring-overdue": monitoring_overdue,
    "abnormal-lab-result": abnormal_lab_result,
    "critical-lab-result": critical_lab_result,
    "medication-monitoring": medication_monitoring,
    "medication-order": medication_order,
    "pa-status-changed": pa_status_changed,
    "pa-expiring": pa_expiring,
    "pa-overdue": pa_overdue,
    "patient-identity-conflict": patient_identity_conflict,
}
