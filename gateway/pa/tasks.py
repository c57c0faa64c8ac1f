"""The PA Task as FHIR: building one, reading its facts, and moving it through the lifecycle.

Everything returns new dicts; callers store them. Conventions (documented in the README):
- `Task.input` links the Claim (`claim`) and Coverage (`coverage`); `Task.output` the payer's
  ClaimResponse (`claim-response`), the authorization number and the authorized period, with types from
  the gateway's `pa-task-parameter` CodeSystem.
- `Task.restriction.period` is the authorized period (what `pa-expiring` watches).
- The decision due date (CMS time limits) is the `pa-decision-due` extension.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.pa.decision import REVIEW_ACTIONS, ItemDecision, PayerDecision
from gateway.pa.lifecycle import BUSINESS_STATUS_SYSTEM, TASK_STATUS, TASK_TYPE_SYSTEM
from gateway.pa.request import TRACE_SYSTEM

PA_TASK_PROFILE = "https://specialty-gateway.org/fhir/StructureDefinition/pa-task"
PARAMETER_SYSTEM = "https://specialty-gateway.org/fhir/CodeSystem/pa-task-parameter"
DUE_EXTENSION = "https://specialty-gateway.org/fhir/StructureDefinition/pa-decision-due"

# CMS-0057-F decision time limits.
EXPEDITED = timedelta(hours=72)
STANDARD = timedelta(days=7)
EXPEDITED_PRIORITIES = frozenset({"urgent", "asap", "stat"})

JSON = dict[str, Any]


def decision_due(submitted: datetime, priority: str) -> datetime:
    """When the payer's decision is due: 72 hours for expedited requests, 7 calendar days otherwise."""
    return submitted + (EXPEDITED if priority in EXPEDITED_PRIORITIES else STANDARD)


def instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _coding(system: str, code: str, display: str | None = None) -> JSON:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _codings(concept: Any) -> list[JSON]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings or [] if isinstance(c, dict)]


def _parameter_type(code: str) -> JSON:
    return _coding(PARAMETER_SYSTEM, code)


def new_task(
    task_id: str,
    *,
    medication_request: JSON,
    task_type: str = "prior-authorization",
    business_status: str = "pa-required",
    priority: str = "routine",
    now: datetime,
    trace_number: str | None = None,
    part_of: str | None = None,
    based_on: str | None = None,
) -> JSON:
    """A PA Task for a MedicationRequest (focus) and its patient (for)."""
    task: JSON = {
        "resourceType": "Task",
        "id": task_id,
        "meta": {"profile": [PA_TASK_PROFILE]},
        "status": TASK_STATUS[business_status],
        "businessStatus": _coding(BUSINESS_STATUS_SYSTEM, business_status),
        "intent": "order",
        "priority": priority,
        "code": _coding(TASK_TYPE_SYSTEM, task_type),
        "focus": {"reference": f"MedicationRequest/{medication_request['id']}"},
        "for": dict(medication_request["subject"]),
        "authoredOn": instant(now),
        "lastModified": instant(now),
    }
    if trace_number:
        task["identifier"] = [{"system": TRACE_SYSTEM, "value": trace_number}]
    if "requester" in medication_request:
        task["requester"] = dict(medication_request["requester"])
    if part_of:
        task["partOf"] = [{"reference": f"Task/{part_of}"}]
    if based_on:
        task["basedOn"] = [{"reference": f"Task/{based_on}"}]
    return task


def business_status(task: JSON) -> str | None:
    for coding in (task.get("businessStatus") or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") == BUSINESS_STATUS_SYSTEM:
            code = coding.get("code")
            return code if isinstance(code, str) else None
    return None


def is_pa_task(task: JSON) -> bool:
    return any(c.get("system") == TASK_TYPE_SYSTEM for c in _codings(task.get("code")))


def trace_number(task: JSON) -> str | None:
    for identifier in task.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == TRACE_SYSTEM:
            value = identifier.get("value")
            return value if isinstance(value, str) else None
    return None


def owner_key(task: JSON) -> str | None:
    """The Task's owner (the insurer) as one string: its reference `Type/id`, or, for an owner named by
    identifier only, that identifier as `system|value` (the bare value without a system)."""
    owner = task.get("owner")
    if not isinstance(owner, dict):
        return None
    reference = owner.get("reference")
    if isinstance(reference, str) and "/" in reference:
        return reference
    identifier = owner.get("identifier")
    value = identifier.get("value") if isinstance(identifier, dict) else None
    if not isinstance(value, str) or not value:
        return None
    system = identifier.get("system") if isinstance(identifier, dict) else None
    return f"{system}|{value}" if isinstance(system, str) and system else value


def reference_of(task: JSON, element: str, code: str) -> str | None:
    """The valueReference of the input/output of type `code` (e.g. input `claim`)."""
    for entry in task.get(element) or []:
        codings = ((entry or {}).get("type") or {}).get("coding") or []
        if any(c.get("system") == PARAMETER_SYSTEM and c.get("code") == code for c in codings):
            ref = (entry.get("valueReference") or {}).get("reference")
            return ref if isinstance(ref, str) else None
    return None


def due(task: JSON) -> str | None:
    for extension in task.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == DUE_EXTENSION:
            value = extension.get("valueDateTime")
            return value if isinstance(value, str) else None
    return None


def authorized_end(task: JSON) -> str | None:
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    return end if isinstance(end, str) else None


def moved(task: JSON, status: str, now: datetime, *, reason: str | None = None) -> JSON:
    """The Task in businessStatus `status` (and the Task.status that goes with it)."""
    updated = copy.deepcopy(task)
    updated["status"] = TASK_STATUS[status]
    updated["businessStatus"] = _coding(BUSINESS_STATUS_SYSTEM, status)
    updated["lastModified"] = instant(now)
    if reason:
        updated["statusReason"] = {"text": reason[:1000]}
    else:
        updated.pop("statusReason", None)
    return updated


def submitted(
    task: JSON, *, claim_id: str, coverage_ref: str, insurer_ref: str, now: datetime, appeal: bool = False
) -> JSON:
    """The Task as sent to the payer: inputs linking the Claim and Coverage, owner the payer, due date."""
    updated = moved(task, "appeal-submitted" if appeal else "submitted", now)
    inputs = [
        entry
        for entry in updated.get("input") or []
        if not any(c.get("code") in ("claim", "coverage") for c in _codings(entry.get("type")))
    ]
    inputs.append({"type": _parameter_type("claim"), "valueReference": {"reference": f"Claim/{claim_id}"}})
    inputs.append({"type": _parameter_type("coverage"), "valueReference": {"reference": coverage_ref}})
    updated["input"] = inputs
    updated["owner"] = {"reference": insurer_ref}
    if due(updated) is None:  # the clock starts at the first submission
        when = decision_due(now, str(updated.get("priority") or "routine"))
        extensions = [e for e in updated.get("extension") or [] if e.get("url") != DUE_EXTENSION]
        updated["extension"] = [*extensions, {"url": DUE_EXTENSION, "valueDateTime": instant(when)}]
    return updated


def _period(items: tuple[ItemDecision, ...]) -> JSON | None:
    starts = [i.period_start for i in items if i.period_start]
    ends = [i.period_end for i in items if i.period_end]
    if not starts and not ends:
        return None
    period: JSON = {}
    if starts:
        period["start"] = min(starts)
    if ends:
        period["end"] = max(ends)
    return period


def _denial_reason(decision: PayerDecision) -> str:
    texts = [r.label() for item in decision.items for r in item.reasons if r.label()]
    if texts:
        return "; ".join(dict.fromkeys(texts))
    if decision.disposition:
        return decision.disposition
    return "Not certified by the payer (review action A3); the payer gave no reason"


def _reason_concept(decision: PayerDecision, status: str) -> JSON | None:
    if status == "denied":
        reasons = [r for item in decision.items for r in item.reasons]
        concept: JSON = {"text": _denial_reason(decision)}
        codings = [
            {k: v for k, v in (("system", r.system), ("code", r.code), ("display", r.display)) if v}
            for r in reasons
            if r.code
        ]
        if codings:
            concept["coding"] = codings
        return concept
    if status == "rejected-by-payer":
        texts = [e.label() for e in decision.errors if e.label()]
        return {"text": "Rejected by the payer: " + ("; ".join(texts) or "no reason given")}
    if status == "info-requested":
        return {"text": decision.info_requested or "The payer asks for more information"}
    return None


def decided(task: JSON, decision: PayerDecision, status: str, claim_response_id: str, now: datetime) -> JSON:
    """The Task after a payer's answer: status, reason, authorization number and period, outputs."""
    updated = moved(task, status, now)
    reason = _reason_concept(decision, status)
    if reason:
        updated["statusReason"] = reason
    outputs: list[JSON] = [
        {
            "type": _parameter_type("claim-response"),
            "valueReference": {"reference": f"ClaimResponse/{claim_response_id}"},
        }
    ]
    numbers = [i.authorization_number for i in decision.items if i.authorization_number]
    certified = tuple(i for i in decision.items if i.action in ("A1", "A2", "A6", "NA"))
    if status in ("approved", "approved-modified", "partially-approved"):
        for number in dict.fromkeys(numbers):
            outputs.append({"type": _parameter_type("authorization-number"), "valueString": number})
        period = _period(certified)
        if period:
            outputs.append({"type": _parameter_type("authorization-period"), "valuePeriod": period})
            updated["restriction"] = {**(updated.get("restriction") or {}), "period": period}
    for item in decision.items:
        outputs.append({"type": _parameter_type("item-decision"), "valueString": describe_item(item)})
    updated["output"] = outputs
    return updated


def describe_item(item: ItemDecision) -> str:
    """One line per item decision, kept on the Task so partial and modified answers stay readable."""
    parts = [f"item {item.sequence or 1}: {item.action} {REVIEW_ACTIONS.get(item.action, '')}".rstrip()]
    if item.authorization_number:
        parts.append(f"authorization {item.authorization_number}")
    if item.period_start or item.period_end:
        parts.append(f"period {item.period_start or '?'}..{item.period_end or '?'}")
    if item.authorized_detail:
        detail = [_detail_text(name, value) for name, value in item.authorized_detail.items()]
        parts.append("authorized " + ", ".join(d for d in detail if d))
    if item.reasons:
        parts.append("reason " + "; ".join(r.label() for r in item.reasons))
    return ", ".join(parts)


# Authorized detail (PAS itemAuthorizedDetail / addItem, CSV) in words: its parts' names for people.
_DETAIL_NAMES = {
    "productOrServiceCode": "product",
    "unitPrice": "unit price",
    "servicedDate": "service date",
    "servicedPeriod": "service period",
    "bodySite": "body site",
    "subSite": "sub-site",
}


def _detail_text(name: str, value: Any) -> str:
    words = _value_text(value)
    return f"{_DETAIL_NAMES.get(name, name)} {words}" if words else ""


def _value_text(value: Any) -> str:
    """A FHIR value (Quantity, Money, CodeableConcept, Period, a primitive, a list of them) in words."""
    if isinstance(value, list):
        return ", ".join(t for t in (_value_text(v) for v in value) if t)
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    number = value.get("value")
    if isinstance(number, int | float | str) and not isinstance(number, bool):
        shown = f"{number:g}" if isinstance(number, float) else str(number)
        unit = value.get("unit") or value.get("currency") or value.get("code")
        return f"{shown} {unit}" if unit else shown
    if "start" in value or "end" in value:
        return f"{value.get('start') or '?'} to {value.get('end') or '?'}"
    codings = [c for c in value.get("coding") or [] if isinstance(c, dict)]
    text = value.get("text") or next((c["display"] for c in codings if c.get("display")), None)
    code = next((c["code"] for c in codings if c.get("code")), None)
    if text and code:
        return f"{text} ({code})"
    if text or code:
        return str(text or code)
    # Anything else: its parts in words, never a Python repr.
    return ", ".join(f"{k} {t}" for k, v in value.items() if (t := _value_text(v)))


def renewal(task: JSON, renewal_id: str, now: datetime) -> JSON:
    """A new PA Task to renew an authorization that is about to end (basedOn the approved one)."""
    fresh = {
        "id": task["focus"]["reference"].split("/", 1)[1],
        "subject": task["for"],
    }
    if "requester" in task:
        fresh["requester"] = task["requester"]
    return new_task(
        renewal_id,
        medication_request=fresh,
        task_type="prior-authorization-renewal",
        priority=str(task.get("priority") or "routine"),
        now=now,
        based_on=str(task["id"]),
    )


SOURCES = {
    "pas-response": "PAS Claim/$submit response",
    "pas-inquiry": "PAS Claim/$inquire response",
    "pas-notification": "PAS subscription notification",
    "x12-278": "X12 278 response file",
    "csv": "CSV status file",
}


def answer_provenance(
    provenance_id: str, targets: list[str], payer: str | None, source: str, now: datetime
) -> JSON:
    """Who said so: the payer's answer (by format) behind a ClaimResponse and the Task version it made."""
    who: JSON = {"reference": payer} if payer else {"display": "payer"}
    return {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [{"reference": t} for t in targets],
        "recorded": instant(now),
        "activity": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}]
        },
        "agent": [
            {
                "type": _coding(
                    "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author"
                ),
                "who": who,
            }
        ],
        "entity": [{"role": "source", "what": {"display": SOURCES.get(source, source)}}],
    }
