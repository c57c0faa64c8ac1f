"""Alerts as work items: which alert Task a lab result opens, what a later version of the result does to it,
and which moves a person may make. Pure: `gateway.service.pharmacist.alerts` reads and writes the store.

One alert per Observation and rule (the Task id is derived from both, so a re-sent result finds its alert
and never opens a second). The rules, most specific first:
- a drug-lab rule (`mappings/monitoring/drug-lab.yaml`) whose lab this is and whose drug the patient has an
  active order for: one alert per rule, `basedOn` that order, the band's severity (critical when the result
  is also a critical value);
- otherwise `critical-value` (a critical interpretation or threshold, `critical.yaml`): severity critical;
- otherwise `abnormal-result` (flagged other than normal, or outside its reference range): severity low.

A later version of the same Observation: with the rule still holding and the value changed, an open alert
is updated (priority, description) and marked `corrected` with a note; a closed one is reopened, as a
corrected result after someone resolved the alert must be seen again. With the rule no longer holding
(back within limits, or the result withdrawn), an open alert stays open and is marked `back-to-normal`
with a note. A later, different result of the same lab for the same patient that no longer meets the
rule marks the patient's open alerts of that rule and lab `back-to-normal` too.

The Task never carries the result's value: a client that may read Tasks but not Observations learns only
that a rule fired, not what the lab showed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.pharmacist.vocabulary import (
    ALERT,
    ALERT_MARK,
    ALERT_RULE,
    BACK_TO_NORMAL,
    CORRECTED,
    ESCALATED,
    OPEN_STATUSES,
    PRIORITY_OF,
    WORK_ITEM_TYPE,
)

JSON = dict[str, Any]
Severity = Literal["critical", "high", "moderate", "low"]
NOTE_AUTHOR = "specialty-gateway"
MARK_DISPLAY = {
    CORRECTED: "Result corrected since the alert opened",
    BACK_TO_NORMAL: "Result back within limits",
    ESCALATED: "Escalated",
}
CORRECTION_STATUSES = frozenset({"corrected", "amended"})
WITHDRAWN_STATUSES = frozenset({"entered-in-error", "cancelled"})
# Status moves a person may make on an alert (the gateway's own reopen is not one of them).
MOVES: dict[str, frozenset[str]] = {
    "requested": frozenset({"ready", "accepted", "in-progress", "completed", "cancelled"}),
    "received": frozenset({"ready", "accepted", "in-progress", "completed", "cancelled"}),
    "ready": frozenset({"accepted", "in-progress", "completed", "cancelled"}),
    "accepted": frozenset({"ready", "in-progress", "completed", "cancelled"}),
    "in-progress": frozenset({"ready", "on-hold", "completed", "cancelled"}),
    "on-hold": frozenset({"ready", "in-progress", "completed", "cancelled"}),
    "completed": frozenset(),
    "cancelled": frozenset(),
    "entered-in-error": frozenset(),
}
NEEDS_OWNER = frozenset({"accepted", "in-progress", "completed"})
FIXED = ("code", "focus", "for", "basedOn", "reasonCode", "authoredOn", "input")


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule that holds for a result. `order` is the MedicationRequest id of a drug-lab rule."""

    rule: str
    title: str  # "clozapine: ANC monitoring", "Critical value", "Abnormal result"
    severity: Severity
    action: str = ""  # what the rule says to do; never the value
    band: str = ""  # the threshold that holds ("< 1500 /uL"), not the value
    order: str | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.rule, self.order)


def alert_id(observation_id: str, rule: str, order: str | None) -> str:
    """The alert's Task id: the same for the same result and rule, whatever sends it again."""
    digest = hashlib.sha256(f"alert|{observation_id}|{rule}|{order or ''}".encode()).hexdigest()
    return f"alert-{digest[:40]}"


def strongest(findings: Sequence[Finding]) -> list[Finding]:
    """The findings that become alerts: the drug-lab ones, else a critical value, else abnormal."""
    drug = [f for f in findings if f.order is not None]
    if drug:
        return drug
    for rule in ("critical-value", "abnormal-result"):
        generic = [f for f in findings if f.rule == rule]
        if generic:
            return generic[:1]
    return []


def _description(finding: Finding) -> str:
    parts = [finding.title]
    if finding.band:
        parts.append(f"rule band {finding.band}")
    text = " - ".join(parts)
    return f"{text}. {finding.action}" if finding.action else text


def _mark(code: str) -> JSON:
    return {"coding": [{"system": ALERT_MARK, "code": code, "display": MARK_DISPLAY[code]}]}


def _note(now: str, text: str) -> JSON:
    return {"authorString": NOTE_AUTHOR, "time": now, "text": text}


def new_alert(
    task_id: str,
    finding: Finding,
    observation: str,
    patient: str,
    owner: str | None,
    now: str,
) -> JSON:
    """A new alert Task (status `ready`: anyone on the patient's team may take it)."""
    task: JSON = {
        "resourceType": "Task",
        "id": task_id,
        "status": "ready",
        "intent": "order",
        "priority": PRIORITY_OF[finding.severity],
        "code": {"coding": [{"system": WORK_ITEM_TYPE, "code": ALERT, "display": "Result alert"}]},
        "description": _description(finding),
        "focus": {"reference": observation},
        "for": {"reference": patient},
        "authoredOn": now,
        "lastModified": now,
        "reasonCode": {
            "coding": [{"system": ALERT_RULE, "code": finding.rule, "display": finding.title}],
            "text": finding.title,
        },
    }
    if finding.order is not None:
        task["basedOn"] = [{"reference": f"MedicationRequest/{finding.order}"}]
    if owner is not None:
        task["owner"] = {"reference": owner}
    return task


def is_open(task: JSON) -> bool:
    return task.get("status") in OPEN_STATUSES


def is_live(task: JSON) -> bool:
    """Open and not yet marked back to normal: a later result may still mark it."""
    return is_open(task) and mark_of(task) != BACK_TO_NORMAL


def corrected(task: JSON, finding: Finding, observation_status: str | None, now: str) -> JSON:
    """The alert after its result changed and the rule still holds: priority and description follow the
    new band; a closed alert opens again."""
    said = "Result corrected" if observation_status in CORRECTION_STATUSES else "Result updated"
    updated = {
        **task,
        "priority": PRIORITY_OF[finding.severity],
        "description": _description(finding),
        "businessStatus": _mark(CORRECTED),
        "lastModified": now,
    }
    if is_open(task):
        text = f"{said}; the rule still holds ({finding.severity})."
    else:
        text = f"Reopened: {said.lower()} after the alert was {task.get('status')}; the rule still holds."
        updated["status"] = "ready"
        updated.pop("statusReason", None)
    updated["note"] = [*(task.get("note") or []), _note(now, text)]
    return updated


def back_to_normal(task: JSON, why: str, now: str) -> JSON | None:
    """An open alert whose rule no longer holds: marked, left open for a person to close. None when it is
    closed or already says so."""
    if not is_open(task) or mark_of(task) == BACK_TO_NORMAL:
        return None
    return {
        **task,
        "businessStatus": _mark(BACK_TO_NORMAL),
        "lastModified": now,
        "note": [*(task.get("note") or []), _note(now, why)],
    }


def superseded(task: JSON, others: Sequence[str], now: str) -> JSON | None:
    """An alert whose result, changed, now meets another rule: marked corrected, pointing at the new alert.
    None when it is closed or already points there."""
    text = f"Result corrected: it now meets another rule (Task/{', Task/'.join(others)})."
    notes = task.get("note") or []
    if not is_open(task) or any(isinstance(n, dict) and n.get("text") == text for n in notes):
        return None
    return {
        **task,
        "businessStatus": _mark(CORRECTED),
        "lastModified": now,
        "note": [*notes, _note(now, text)],
    }


def withdrawn_or_normal(observation_status: str | None) -> str:
    if observation_status in WITHDRAWN_STATUSES:
        return f"The result was withdrawn ({observation_status}); the rule no longer holds."
    return "The result is back within limits: the rule no longer holds. Close the alert when reviewed."


def mark_of(task: JSON) -> str | None:
    concept = task.get("businessStatus")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings or []:
        if isinstance(coding, dict) and coding.get("system") == ALERT_MARK:
            return str(coding.get("code"))
    return None


def rule_of(task: JSON) -> str | None:
    concept = task.get("reasonCode")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings or []:
        if isinstance(coding, dict) and coding.get("system") == ALERT_RULE:
            return str(coding.get("code"))
    return None


def is_alert(task: JSON | None) -> bool:
    if not isinstance(task, dict):
        return False
    concept = task.get("code")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return any(
        isinstance(c, dict) and c.get("system") == WORK_ITEM_TYPE and c.get("code") == ALERT
        for c in codings or []
    )


def _has(value: Any) -> bool:
    return isinstance(value, dict) and bool(
        value.get("reference") or value.get("coding") or value.get("text")
    )


def move_problems(previous: JSON | None, current: JSON) -> list[tuple[str, str]]:
    """What is wrong with a person's write of an alert Task: (message, element) pairs, none when fine.

    Claim (`accepted`) and work (`in-progress`) need an owner; resolving (`completed`) needs a note added
    by this write; escalating (businessStatus `escalated`) names the role (`performerType`) and the reason
    (`statusReason`). What the gateway derived from the result (code, focus, patient, order, rule, lab) is
    fixed; the gateway's own marks (corrected, back-to-normal) are not set by hand."""
    problems: list[tuple[str, str]] = []
    status = current.get("status")
    if previous is None:
        if not _has(current.get("for")):
            problems.append(("An alert Task needs `for` (the patient)", "Task.for"))
    else:
        if not is_alert(current):
            return [("An alert Task cannot stop being one", "Task.code")]
        for element in FIXED:
            if previous.get(element) != current.get(element):
                problems.append(
                    (f"Task.{element} of an alert is set by the gateway and cannot change", f"Task.{element}")
                )
        before = previous.get("status")
        if status != before and status != "entered-in-error":
            allowed = MOVES.get(str(before), frozenset())
            if status not in allowed:
                problems.append((f"An alert cannot move from {before} to {status}", "Task.status"))
    if status in NEEDS_OWNER and not _has(current.get("owner")):
        problems.append((f"An alert {status} needs an owner (who claimed it)", "Task.owner"))
    if status == "completed" and (previous is None or previous.get("status") != "completed"):
        before_notes = len((previous or {}).get("note") or [])
        added = (current.get("note") or [])[before_notes:]
        if not any(isinstance(n, dict) and str(n.get("text") or "").strip() for n in added):
            problems.append(("Resolving an alert needs a note saying what was done", "Task.note"))
    mark, before_mark = mark_of(current), mark_of(previous or {})
    if mark != before_mark and mark in (CORRECTED, BACK_TO_NORMAL):
        problems.append(
            (f"The mark {mark} is the gateway's; set `escalated` or leave it", "Task.businessStatus")
        )
    if mark == ESCALATED and before_mark != ESCALATED:
        roles = current.get("performerType")
        if not (isinstance(roles, list) and any(_has(role) for role in roles)):
            problems.append(("Escalating names the role it goes to (performerType)", "Task.performerType"))
        if not _has(current.get("statusReason")):
            problems.append(("Escalating needs a reason (statusReason)", "Task.statusReason"))
    return problems
