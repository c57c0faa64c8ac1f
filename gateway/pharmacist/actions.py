"""What a pharmacist's console actions write: the next version of an alert Task (claim, acknowledge,
resolve, escalate) and the Communication that records an interaction. Pure: the console's handlers read
the current Task and write what these return through the FHIR service, where the alert rules
(`alerts.move_problems`) and the person's reach are checked like any other write.

- claim: `accepted`, owned by the person;
- acknowledge: `in-progress` (working on it), owned by the person when nobody owns it yet;
- resolve: `completed`, with the person's note saying what was done (a note is required);
- escalate: businessStatus `escalated`, the role it goes to (`performerType`) and the reason
  (`statusReason`), with a note.
"""

from __future__ import annotations

import copy
from typing import Literal

from gateway.pharmacist.alerts import MARK_DISPLAY
from gateway.pharmacist.timeline import INTERVENTION_DISPLAY, INTERVENTION_OUTCOME, INTERVENTION_TYPE
from gateway.pharmacist.vocabulary import ALERT_MARK, ESCALATED
from gateway.types import JSON

Action = Literal["claim", "acknowledge", "resolve", "escalate"]
ACTIONS: tuple[Action, ...] = ("claim", "acknowledge", "resolve", "escalate")
MAX_TEXT = 2000  # a note or a reason typed at the console; longer is cut, not refused


class ActionRefused(ValueError):
    """The action cannot be made as asked (no note to resolve, an unknown interaction type...)."""


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())[:MAX_TEXT]


def _note(author: str, now: str, text: str) -> JSON:
    return {"authorReference": {"reference": author}, "time": now, "text": text}


def alert_move(task: JSON, action: str, practitioner: str, now: str, text: str = "", role: str = "") -> JSON:
    """The alert Task after `action` by `practitioner` (`Practitioner/ID`) at `now` (an instant)."""
    moved = copy.deepcopy(task)
    note = _clean(text)
    owner = {"reference": practitioner}
    if action == "claim":
        moved["status"] = "accepted"
        moved["owner"] = owner
    elif action == "acknowledge":
        moved["status"] = "in-progress"
        moved.setdefault("owner", owner)
    elif action == "resolve":
        if not note:
            raise ActionRefused("Resolving an alert needs a note saying what was done")
        moved["status"] = "completed"
        moved.setdefault("owner", owner)
    elif action == "escalate":
        target = _clean(role)
        if not target or not note:
            raise ActionRefused("Escalating needs the role it goes to and a reason")
        moved["businessStatus"] = {
            "coding": [{"system": ALERT_MARK, "code": ESCALATED, "display": MARK_DISPLAY[ESCALATED]}]
        }
        moved["performerType"] = [{"text": target}]
        moved["statusReason"] = {"text": note}
    else:
        raise ActionRefused(f"Unknown action {action[:40]!r}")
    if note:
        moved["note"] = [*(task.get("note") or []), _note(practitioner, now, note)]
    moved["lastModified"] = now
    return moved


def interaction(
    patient_id: str, practitioner: str, kind: str, text: str, now: str, outcome: str = "", about: str = ""
) -> JSON:
    """A Communication recording a pharmacist's interaction (a call, a message to the prescriber...)."""
    if kind not in INTERVENTION_DISPLAY:
        raise ActionRefused(f"Unknown interaction type {kind[:40]!r}")
    said = _clean(text)
    if not said:
        raise ActionRefused("Record what was said or done")
    made: JSON = {
        "resourceType": "Communication",
        "status": "completed",
        "category": [
            {"coding": [{"system": INTERVENTION_TYPE, "code": kind, "display": INTERVENTION_DISPLAY[kind]}]}
        ],
        "subject": {"reference": f"Patient/{patient_id}"},
        "sent": now,
        "sender": {"reference": practitioner},
        "payload": [{"contentString": said}],
    }
    if kind == "call" or kind == "patient-education":
        made["recipient"] = [{"reference": f"Patient/{patient_id}"}]
    if about:
        made["about"] = [{"reference": about}]
    if _clean(outcome):
        made["extension"] = [{"url": INTERVENTION_OUTCOME, "valueCodeableConcept": {"text": _clean(outcome)}}]
    return made
