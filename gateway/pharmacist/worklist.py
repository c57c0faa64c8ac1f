"""The worklist's rows from stored Tasks: which Tasks are work, of what kind, due when, said how.

Pure: `gateway.service.pharmacist.worklist` reads the store, hands the Tasks (and the Observations and
orders the caller may read) to this module, and ranks what comes back with `ranking.rank_worklist`.

A Task is a row when it is one of (README, "Worklist ($worklist)"):

- an open alert Task (`work-item-type#alert`; severity from `Task.priority`, `vocabulary.SEVERITY_OF`);
- an open lab-overdue Task (`work-item-type#lab-overdue`; `Task.priority` is the lab's urgency);
- an open unassigned-patient Task (`work-item-type#unassigned-patient`);
- a PA Task (`task-type`) in one of the states `ranking.PaState`:
  `info-requested` (businessStatus info-requested: the payer waits for an answer; due: the decision due
  date, whose clock runs on), `denied-appealable` (denied, no appeal Task `partOf` it yet, and the denial
  less than the appeal window old; due: the end of that window), `expiring` (approved and the authorized
  period ends within the expiring window, and no renewal `basedOn` it has been submitted; due: the
  period end), `overdue` (waiting on the payer past `pa-decision-due`; due: that date).

"Open" is `vocabulary.OPEN_STATUSES`. Times are microseconds since the epoch (UTC) throughout.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Any

from gateway.fhir import dates
from gateway.mapping.monitoring import DrugLabRule, MonitoringRules
from gateway.pa import lifecycle
from gateway.pa import tasks as pa_tasks
from gateway.pharmacist import vocabulary as v
from gateway.pharmacist.dispenses import fills_from_dispenses
from gateway.pharmacist.pdc import pdc
from gateway.pharmacist.ranking import TIERS, Kind, PaState, RankedRow, Severity, WorkItem
from gateway.pharmacist.timeline import concept_text
from gateway.pharmacist.timeline import summary as resource_summary
from gateway.types import JSON

KINDS: tuple[Kind, ...] = ("alert", "lab-overdue", "pa", "unassigned-patient")
UNASSIGNED_PATIENT = "unassigned-patient"
# work-item-type codes that are worklist rows (identity-review is the HL7 v2 identity team's work).
WORK_ITEM_CODES: tuple[str, ...] = (v.ALERT, v.LAB_OVERDUE, UNASSIGNED_PATIENT)
PA_TASK_CODES: tuple[str, ...] = (
    "prior-authorization",
    "prior-authorization-renewal",
    "prior-authorization-appeal",
)
# PA businessStatus values a PA row can come from: waiting on the payer (info-requested, overdue) and
# approved (expiring), searched as they stand; denied ones only when recent (`denied_since`).
PA_LIVE_STATUSES: tuple[str, ...] = tuple(sorted(lifecycle.AWAITING_PAYER | lifecycle.APPROVED))
DENIED = "denied"
# A renewal counts as under way once submitted: anything but still to do or given up.
RENEWAL_NOT_STARTED = frozenset({"pa-required", "cancelled"})
# An appeal that was withdrawn leaves the denial appealable (if the window is still open).
APPEAL_WITHDRAWN = frozenset({"cancelled"})
# An alert Task without a usable priority: nobody graded it, so it is not known to be minor.
UNGRADED_ALERT: Severity = "moderate"
DAY_US = 86_400_000_000
PDC_DAYS = 180  # the adherence look-back: the last 180 days, today included
PDC_MIN_FILL_DATES = 2  # PQA's denominator: at least two fills of the drug on different days


@dataclass(frozen=True, slots=True)
class PaWindows:
    """How the PA states are judged at `now_us`: approvals ending within `expiring_days` are expiring;
    denials younger than `appeal_days` are appealable."""

    now_us: int
    expiring_days: int
    appeal_days: int

    @property
    def expiring_until_us(self) -> int:
        return self.now_us + self.expiring_days * DAY_US

    @property
    def denied_since_us(self) -> int:
        return self.now_us - self.appeal_days * DAY_US


@dataclass(frozen=True, slots=True)
class Summary:
    """What a row is about, for people (`text`) and programs (the parts)."""

    text: str
    drug: str | None = None
    rule: str | None = None
    what: str | None = None

    def to_json(self) -> JSON:
        return {"text": self.text, "drug": self.drug, "rule": self.rule, "what": self.what}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A Task that is a row, before ranking: the ranking's item and what the row says besides."""

    item: WorkItem
    task: str  # Task/id
    summary: Summary


@dataclass(frozen=True, slots=True)
class Lookups:
    """What the caller may read beside the Tasks, by reference: the alert Tasks' focus Observations (only
    with Observation read) and the PA Tasks' focus MedicationRequests (only with MedicationRequest read)."""

    observations: Mapping[str, JSON]
    orders: Mapping[str, JSON]


# --- reading a Task ----------------------------------------------------------------------------------


def codes(concept: Any, system: str) -> list[str]:
    """The codes of a CodeableConcept's codings from `system`."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return []
    return [
        c["code"]
        for c in codings
        if isinstance(c, dict) and c.get("system") == system and isinstance(c.get("code"), str)
    ]


def kind_of(task: JSON) -> Kind | None:
    """The worklist kind of a Task by its code, whatever its status; None for any other Task."""
    if pa_tasks.is_pa_task(task):
        return "pa"
    for code in codes(task.get("code"), v.WORK_ITEM_TYPE):
        if code == v.ALERT:
            return "alert"
        if code == v.LAB_OVERDUE:
            return "lab-overdue"
        if code == UNASSIGNED_PATIENT:
            return "unassigned-patient"
    return None


def patient_of(task: JSON) -> str | None:
    """The id of the Patient in `Task.for` (relative `Patient/id` references only)."""
    reference = _reference(task.get("for"))
    if reference is None or not reference.startswith("Patient/"):
        return None
    return reference.split("/", 1)[1] or None


def _reference(value: Any) -> str | None:
    reference = value.get("reference") if isinstance(value, dict) else None
    return reference if isinstance(reference, str) else None


def references(values: Any) -> list[str]:
    """The reference strings of a list of References (`Task.partOf`, `Task.basedOn`)."""
    return [r for x in values if (r := _reference(x))] if isinstance(values, list) else []


def _start_us(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        return dates.date_range(text)[0]
    except dates.DateFormatError:
        return None


def _end_us(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        return dates.date_range(text)[1]
    except dates.DateFormatError:
        return None


def _when(us: int) -> datetime:
    return dates.from_us(us)


def _day(text: str) -> str:
    return text[:10]


def created_us(task: JSON, updated_us: int) -> int:
    """When the work appeared: `authoredOn`, else when the gateway recorded the Task."""
    return _start_us(task.get("authoredOn")) or updated_us


def restriction_end_us(task: JSON) -> int | None:
    """`Task.restriction.period.end`: by when the work should be done (R4's fulfilment period)."""
    restriction = task.get("restriction")
    period = restriction.get("period") if isinstance(restriction, dict) else None
    return _start_us(period.get("end")) if isinstance(period, dict) else None


def _input_date(task: JSON) -> str | None:
    """The first date among `Task.input` values (the lab-overdue Task's due date)."""
    for entry in task.get("input") or []:
        if isinstance(entry, dict):
            for key in ("valueDate", "valueDateTime", "valueInstant"):
                if isinstance(entry.get(key), str):
                    return str(entry[key])
            period = entry.get("valuePeriod")
            if isinstance(period, dict) and isinstance(period.get("start"), str):
                return str(period["start"])
    return None


def _input_lab(task: JSON) -> str | None:
    """The lab named in `Task.input` (a CodeableConcept's text, display or code)."""
    for entry in task.get("input") or []:
        if isinstance(entry, dict):
            text = concept_text(entry.get("valueCodeableConcept"))
            if text:
                return text
    return None


def rule_id(task: JSON) -> str | None:
    """The alert-rule code in `Task.reasonCode` (a drug-lab rule id, critical-value, abnormal-result)."""
    found = codes(task.get("reasonCode"), v.ALERT_RULE)
    return found[0] if found else None


# --- PA states -----------------------------------------------------------------------------------------


def pa_state(
    task: JSON,
    windows: PaWindows,
    *,
    decided_us: int,
    appealed: bool = False,
    renewed: bool = False,
) -> tuple[PaState, int | None] | None:
    """The PA state a PA Task is in at `windows.now_us` and its deadline, or None when it needs nothing.

    `decided_us` is when the Task reached its status (its `lastModified`, else its recorded time): the
    denial date for the appeal window. `appealed`: an appeal Task `partOf` it exists (and was not
    withdrawn); `renewed`: a renewal Task `basedOn` it has been submitted.
    """
    status = pa_tasks.business_status(task)
    decision_due = _start_us(pa_tasks.due(task))
    now = windows.now_us
    if status == "info-requested":
        return "info-requested", decision_due
    if status in lifecycle.AWAITING_PAYER:
        if decision_due is not None and decision_due < now:
            return "overdue", decision_due
        return None
    if status in lifecycle.APPROVED:
        end = _end_us(pa_tasks.authorized_end(task))
        if end is None or renewed or not now <= end <= windows.expiring_until_us:
            return None
        return "expiring", _start_us(pa_tasks.authorized_end(task))
    if status == DENIED and not appealed:
        closes = decided_us + windows.appeal_days * DAY_US
        return ("denied-appealable", closes) if now < closes else None
    return None


def decided_us(task: JSON, updated_us: int) -> int:
    """When a PA Task got its current status: `lastModified`, else when the gateway recorded it."""
    return _start_us(task.get("lastModified")) or updated_us


# --- candidates -----------------------------------------------------------------------------------------


_SEVERITIES: tuple[Severity, ...] = ("critical", "high", "moderate", "low")


def _severity_of_alert(task: JSON) -> Severity:
    """`Task.priority` read back through `vocabulary.PRIORITY_OF` (stat critical ... routine low)."""
    priority = task.get("priority")
    return next((s for s in _SEVERITIES if v.PRIORITY_OF[s] == priority), UNGRADED_ALERT)


def _rule(rules: MonitoringRules, rule: str | None) -> DrugLabRule | None:
    return next((r for r in rules.drug_lab if r.id == rule), None) if rule else None


def _joined(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


_RULE_WHAT = {v.CRITICAL_VALUE: "critical value", v.ABNORMAL_RESULT: "abnormal result"}


def alert_summary(task: JSON, rules: MonitoringRules, lookups: Lookups) -> Summary:
    """The alert's rule and drug (from the gateway's rules), its result only from a readable Observation,
    else the Task's own description (which never carries a result value)."""
    rule_code = rule_id(task)
    rule = _rule(rules, rule_code)
    drug = rule.drug if rule else None
    focus = _reference(task.get("focus"))
    observation = lookups.observations.get(focus) if focus else None
    description = task.get("description")
    what: str | None = None
    if observation is not None:
        what = resource_summary("observation", observation)
    elif isinstance(description, str) and description:
        what = description
    what = what or _RULE_WHAT.get(rule_code or "") or ("monitoring result out of band" if drug else "alert")
    head = f"{what} on {drug}" if drug and drug.casefold() not in what.casefold() else what
    return Summary(f"{head} (rule {rule_code})" if rule_code else head, drug, rule_code, what)


def lab_overdue_summary(task: JSON, rules: MonitoringRules) -> Summary:
    rule_code = rule_id(task)
    rule = _rule(rules, rule_code)
    drug = rule.drug if rule else None
    lab = _input_lab(task) or (", ".join(f"{c.code}" for c in rule.labs) if rule else None) or "lab"
    due = _input_date(task)
    what = f"{lab} due {_day(due)}" if due else f"{lab} overdue"
    head = f"{what} for {drug}" if drug else what
    return Summary(f"{head} (rule {rule_code})" if rule_code else head, drug, rule_code, what)


def _order_drug(order: JSON | None) -> str | None:
    if order is None:
        return None
    text = concept_text(order.get("medicationCodeableConcept"))
    if text:
        return text
    reference = order.get("medicationReference")
    display = reference.get("display") if isinstance(reference, dict) else None
    return display if isinstance(display, str) else None


def pa_summary(task: JSON, state: PaState, lookups: Lookups) -> Summary:
    """The PA row's drug (from its order, when readable), business status and what the payer said."""
    focus = _reference(task.get("focus"))
    drug = _order_drug(lookups.orders.get(focus) if focus else None)
    reason = concept_text(task.get("statusReason"))
    status = pa_tasks.business_status(task) or "unknown"
    payer = _reference(task.get("owner"))
    if state == "info-requested":
        what = f"payer asks: {reason}" if reason else "the payer asks for more information"
    elif state == "denied-appealable":
        what = f"denied: {reason}" if reason else "denied"
    elif state == "expiring":
        what = f"authorization ends {_day(pa_tasks.authorized_end(task) or '')}"
    else:
        what = f"decision due {_day(pa_tasks.due(task) or '')}, still {status}"
    text = _joined(f"PA {drug}" if drug else "PA", what, f"payer {payer}" if payer else None)
    return Summary(text, drug, None, what)


def unassigned_summary(task: JSON) -> Summary:
    reason = concept_text(task.get("reasonCode"))
    what = reason or "no eligible pharmacist"
    return Summary(f"no pharmacist: {what}", None, None, what)


def candidate(
    task: JSON,
    *,
    updated_us: int,
    windows: PaWindows,
    rules: MonitoringRules,
    lookups: Lookups,
    appealed: bool = False,
    renewed: bool = False,
) -> Candidate | None:
    """The row a Task makes, or None (not a work Task, closed, no Patient, a PA Task needing nothing)."""
    kind = kind_of(task)
    patient = patient_of(task)
    task_id = task.get("id")
    if kind is None or patient is None or not isinstance(task_id, str):
        return None
    created = _when(created_us(task, updated_us))
    if kind == "pa":
        found = pa_state(
            task, windows, decided_us=decided_us(task, updated_us), appealed=appealed, renewed=renewed
        )
        if found is None:
            return None
        state, due = found
        summary = pa_summary(task, state, lookups)
        item = WorkItem(
            task_id,
            "pa",
            patient,
            created,
            due=_when(due) if due is not None else None,
            state=state,
            summary=summary.text,
        )
        return Candidate(item, f"Task/{task_id}", summary)
    if task.get("status") not in v.OPEN_STATUSES:
        return None
    deadline = restriction_end_us(task)
    if kind == "alert":
        summary = alert_summary(task, rules, lookups)
        severity: Severity | None = _severity_of_alert(task)
        priority = None
    elif kind == "lab-overdue":
        summary = lab_overdue_summary(task, rules)
        deadline = deadline if deadline is not None else _start_us(_input_date(task))
        severity, priority = None, str(task.get("priority") or "routine")
    else:
        summary = unassigned_summary(task)
        severity, priority = None, None
    item = WorkItem(
        task_id,
        kind,
        patient,
        created,
        severity=severity,
        due=_when(deadline) if deadline is not None else None,
        priority=priority,
        summary=summary.text,
    )
    return Candidate(item, f"Task/{task_id}", summary)


# --- patient risk: adherence ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Adherence:
    """The lowest PDC among the patient's drugs over the look-back, and which drug it is."""

    pdc: Fraction
    drug: str
    start: date
    end: date


def lowest_pdc(
    dispenses: Iterable[Mapping[str, Any]], medications: Mapping[str, Mapping[str, Any]], today: date
) -> Adherence | None:
    """PDC per drug (each drug its own group, PQA's method in `pdc.py`) over the last `PDC_DAYS` days,
    counting only drugs with fills on at least two days; the lowest, or None when no drug qualifies."""
    start = today - timedelta(days=PDC_DAYS - 1)
    extracted = fills_from_dispenses(dispenses, medications)
    by_drug: dict[str, list[Any]] = {}
    for fill in extracted.fills:
        by_drug.setdefault(fill.drug, []).append(fill)
    lowest: Adherence | None = None
    for drug, fills in sorted(by_drug.items()):
        result = pdc(fills, start, today)
        if result.pdc is None or result.distinct_fill_dates < PDC_MIN_FILL_DATES:
            continue
        if lowest is None or result.pdc < lowest.pdc:
            lowest = Adherence(result.pdc, drug, start, today)
    return lowest


# --- rows, order keys and cursors -----------------------------------------------------------------------


RowKey = tuple[int, int, int, int, int, str]


def row_key(row: RankedRow) -> RowKey:
    """The ranking's order as integers (`ranking.rank_worklist`'s key): what a cursor names."""
    item = row.item
    return (
        TIERS[row.severity],
        0 if item.due is not None else 1,
        dates.to_us(item.due) if item.due is not None else 0,
        -row.risk.score,
        dates.to_us(item.created),
        item.id,
    )


def encode_cursor(key: RowKey) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> RowKey | None:
    """The key a cursor names, or None when it is not one this module wrote."""
    try:
        key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return None
    if (
        isinstance(key, list)
        and len(key) == 6
        and all(type(k) is int and -(2**63) <= k < 2**63 for k in key[:5])
        and isinstance(key[5], str)
    ):
        return key[0], key[1], key[2], key[3], key[4], key[5]
    return None


@dataclass(frozen=True, slots=True)
class Via:
    """How a row's patient or Task came to be the caller's: `code` care-team | owner | no-pharmacist."""

    code: str
    text: str
    reference: str | None = None

    def to_json(self) -> JSON:
        return {"code": self.code, "text": self.text, "reference": self.reference}


def row_json(row: RankedRow, found: Candidate, via: Via) -> JSON:
    """One row of the answer (README, "Worklist ($worklist)")."""
    shown = row.to_json()
    return {
        "rank": row.rank,
        "kind": row.item.kind,
        "task": found.task,
        "patient": shown["patient"],
        "severity": row.severity,
        "state": row.item.state,
        "due": shown["due"],
        "created": shown["created"],
        "summary": found.summary.to_json(),
        "why": f"{row.why}; {via.text}",
        "via": via.to_json(),
        "rankReason": row.rank_reason,
        "patientRisk": shown["patientRisk"],
    }


def current_members(team: JSON, now_us: int) -> list[str]:
    """The member references of the team's participants whose period has not ended at `now_us`."""
    found = []
    for participant in team.get("participant") or []:
        if not isinstance(participant, dict):
            continue
        end = (participant.get("period") or {}).get("end")
        try:
            if isinstance(end, str) and dates.date_range(end)[1] < now_us:
                continue
        except dates.DateFormatError:
            continue
        member = _member_reference(participant.get("member"))
        if member:
            found.append(member)
    return found


def _member_reference(value: object) -> str | None:
    reference = value.get("reference") if isinstance(value, dict) else None
    return reference if isinstance(reference, str) else None
